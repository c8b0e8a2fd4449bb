"""vodbench ops: numeric building blocks of temporal feature aggregation, independent of any method.

Each op has a public function, a thin ``nn.Module``, a slow ``*_reference`` beside it, a fast torch
path for CPUs, and CuPy CUDA kernels used on GPUs (``impl="auto"|"cupy"|"fast"|"reference"``;
``VODBENCH_OPS_REFERENCE=1`` forces the reference). See ``ops/README.md``.
"""

import importlib
import importlib.util

# One module per op, exporting its ``__all__`` (or, failing that, the public functions and classes it
# defines). A module that does not exist yet (ops are written in parallel) is skipped; an existing
# module that fails to import raises as usual.
_OP_MODULES = ("deform_conv", "flow_warp", "correlation", "lsts_sampling", "matchtrans")

__all__: list[str] = []
for _name in _OP_MODULES:
    if importlib.util.find_spec(f"ops.{_name}") is None:
        continue
    _module = importlib.import_module(f"ops.{_name}")
    _public_names = getattr(_module, "__all__", None) or [
        name
        for name, value in vars(_module).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == _module.__name__
    ]
    # A function named like its module (flow_warp, correlation, matchtrans) is not re-exported: it
    # would hide the submodule (`import ops.flow_warp` would give the function). Use
    # `from ops.flow_warp import flow_warp`.
    _public_names = [p for p in _public_names if p not in _OP_MODULES]
    for _public in _public_names:
        globals()[_public] = getattr(_module, _public)
    __all__ += list(_public_names)
