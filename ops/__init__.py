"""vodbench ops: numeric building blocks of temporal feature aggregation, independent of any method.

Each op has a public function, a thin ``nn.Module``, a slow ``*_reference`` beside it, a fast torch
path for CPUs, and CuPy CUDA kernels used on GPUs (``impl="auto"|"cupy"|"fast"|"reference"``;
``VODBENCH_OPS_REFERENCE=1`` forces the reference). See ``ops/README.md``. Import an op from its
module: ``from ops.deform_conv import deform_conv2d``.
"""
