"""Shared runtime for vodbench's CUDA kernels: NVRTC compile checks, CuPy launches, and a CPU shim.

Every op in ``ops/`` keeps its CUDA source in ``ops/cuda/<op>.cu``: plain ``extern "C" __global__``
kernels written on ``scalar_t``, which each file defines as ``typedef SCALAR_T scalar_t;`` from the
compile option ``-DSCALAR_T=float|double``. All sizes are kernel arguments, so a source is compiled
once per (device, dtype), never per shape. Kernel parameters are pointers, ``long long`` (sizes and
indices, 64-bit) or ``scalar_t`` (``int``, ``float`` and ``double`` are also understood).

The same text runs in three ways:

- on a GPU through CuPy: :func:`cupy_kernel` (cached ``cupy.RawKernel`` per op, kernel, dtype and
  device) + :func:`launch` (on torch's *current* stream, under the tensor's device, Python scalars
  converted to the numpy type the kernel's parameter declares);
- compiled by NVRTC for an explicit architecture without any GPU: :func:`nvrtc_compile` returns the
  PTX/CUBIN, the compiler log and the registers and spill bytes of every kernel (``ptxas -v``);
- on the CPU through a shim: :func:`shim_library` compiles the UNCHANGED ``.cu`` text with g++ behind
  ``ops/shim/cuda_shim.h`` plus one generated ``extern "C"`` launch wrapper per kernel (looping over the
  grid and the block sequentially), and :func:`shim_launch` calls a wrapper through ctypes with torch
  CPU tensors. This checks kernel arithmetic, indexing and gradients (and bounds, with
  ``sanitize="address"``) on a CPU-only machine; it says nothing about streams, devices, warp
  behaviour, fp16 numerics or speed.

:func:`run_kernel` hides the backend choice ("cupy" or "shim") so that an op's
``torch.autograd.Function`` is written once and tested on the CPU through the shim.
:func:`select_impl` implements the dispatch every op shares (``impl="auto"|"cupy"|"fast"|"reference"``
and the ``VODBENCH_OPS_REFERENCE=1`` kill switch).
"""

from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

CUDA_DIR = Path(__file__).resolve().parent / "cuda"
SHIM_HEADER = Path(__file__).resolve().parent / "shim" / "cuda_shim.h"

REFERENCE_ENV_VAR = "VODBENCH_OPS_REFERENCE"
SHIM_DIR_ENV_VAR = "VODBENCH_SHIM_DIR"

THREADS_PER_BLOCK = 256
# Grid-stride loops make any grid correct; this caps the grid for huge inputs on a GPU.
MAX_BLOCKS = 65535
# The shim runs threads one after another, so the grid size only changes the loop order. A small cap
# makes every test with more than SHIM_MAX_BLOCKS * threads elements exercise the grid-stride loop.
SHIM_MAX_BLOCKS = 4
SHIM_THREADS_PER_BLOCK = 64

IMPLS = ("auto", "cupy", "fast", "reference")

_SCALAR_NAMES = {torch.float32: "float", torch.float64: "double", "float": "float", "double": "double"}


# ----------------------------------------------------------------------------------------------------
# Dispatch shared by all ops
# ----------------------------------------------------------------------------------------------------
def reference_forced() -> bool:
    """True when the kill switch ``VODBENCH_OPS_REFERENCE`` is set to a true value ("1", "true", "yes")."""
    return os.environ.get(REFERENCE_ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on")


@functools.cache
def _cupy_importable() -> bool:
    try:
        import cupy  # noqa: F401
    except Exception:  # ImportError, or a CUDA runtime that fails to load
        return False
    return True


def cuda_available() -> bool:
    """True when torch sees a CUDA device and CuPy can be imported (the CuPy kernels can run)."""
    return torch.cuda.is_available() and _cupy_importable()


def select_impl(impl: str, tensor: torch.Tensor) -> str:
    """Resolve ``impl`` to the implementation an op call runs: "cupy", "fast" or "reference".

    ``"auto"`` picks the CuPy kernel for a CUDA tensor when CuPy is importable, else the fast CPU/torch
    path. The kill switch ``VODBENCH_OPS_REFERENCE=1`` forces "reference" whatever ``impl`` says.
    Asking for "cupy" with a CPU tensor or without CuPy raises ``ValueError``.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if reference_forced():
        return "reference"
    if impl == "auto":
        return "cupy" if tensor.is_cuda and _cupy_importable() else "fast"
    if impl == "cupy" and not (tensor.is_cuda and _cupy_importable()):
        raise ValueError(
            f"impl='cupy' needs a CUDA tensor and an importable cupy (tensor on {tensor.device}, "
            f"cupy importable: {_cupy_importable()})"
        )
    return impl


def scalar_name(dtype: torch.dtype | str) -> str:
    """``torch.float32``/"float" -> "float", ``torch.float64``/"double" -> "double" (the SCALAR_T value)."""
    try:
        return _SCALAR_NAMES[dtype]
    except (KeyError, TypeError):
        raise ValueError(f"CUDA kernels support float32 and float64 only, got dtype {dtype!r}") from None


# ----------------------------------------------------------------------------------------------------
# Kernel sources and signatures
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelParam:
    """One kernel parameter as declared in the ``.cu`` source, e.g. ``const scalar_t* __restrict__ x``."""

    name: str
    base_type: str  # "scalar_t", "long long", "int", "float" or "double", without const/pointer
    is_pointer: bool
    declaration: str  # verbatim text, reused by the shim's launch wrapper


_KERNEL_RE = re.compile(
    r'extern\s+"C"\s+__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s+)?void\s+(\w+)\s*\(([^)]*)\)', re.S
)
_KNOWN_BASE_TYPES = ("scalar_t", "long long", "int", "float", "double")


def kernel_source(op: str) -> str:
    """The text of ``ops/cuda/<op>.cu``; ``FileNotFoundError`` naming the path if it does not exist."""
    path = CUDA_DIR / f"{op}.cu"
    if not path.is_file():
        raise FileNotFoundError(f"no CUDA source for op {op!r}: {path} does not exist")
    return path.read_text()


def _strip_comments(source: str) -> str:
    source = re.sub(r"/\*.*?\*/", " ", source, flags=re.S)
    return re.sub(r"//[^\n]*", " ", source)


def _parse_param(declaration: str, kernel: str) -> KernelParam:
    text = " ".join(declaration.split())
    match = re.match(r"^(.*?)(\w+)$", text)
    if match is None:
        raise ValueError(f"kernel {kernel!r}: cannot parse parameter {declaration!r}")
    type_text, name = match.groups()
    is_pointer = "*" in type_text
    base = type_text.replace("*", " ").replace("const", " ").replace("__restrict__", " ")
    base = " ".join(base.split()).replace("SCALAR_T", "scalar_t")
    if base not in _KNOWN_BASE_TYPES:
        raise ValueError(
            f"kernel {kernel!r}: parameter {name!r} has type {base!r}; use one of {_KNOWN_BASE_TYPES}"
        )
    return KernelParam(name=name, base_type=base, is_pointer=is_pointer, declaration=text)


@functools.lru_cache(maxsize=256)
def parse_kernels(source: str) -> dict[str, tuple[KernelParam, ...]]:
    """Map kernel name -> parameters for every ``extern "C" __global__`` kernel in ``source``."""
    kernels: dict[str, tuple[KernelParam, ...]] = {}
    for match in _KERNEL_RE.finditer(_strip_comments(source)):
        name, params_text = match.group(1), match.group(2)
        params = [p for p in params_text.split(",") if p.strip()]
        kernels[name] = tuple(_parse_param(p, name) for p in params)
    return kernels


def kernel_names(op: str) -> list[str]:
    """Names of the ``extern "C" __global__`` kernels in ``ops/cuda/<op>.cu``, in source order."""
    return list(parse_kernels(kernel_source(op)))


def kernel_params(op: str, name: str) -> tuple[KernelParam, ...]:
    """The declared parameters of kernel ``name`` of ``op``; ``KeyError`` listing the kernels if absent."""
    kernels = parse_kernels(kernel_source(op))
    if name not in kernels:
        raise KeyError(f"op {op!r} has no kernel {name!r}; kernels: {sorted(kernels)}")
    return kernels[name]


def _numpy_scalar_type(base_type: str, scalar: str) -> type:
    if base_type == "scalar_t":
        base_type = scalar
    return {"long long": np.int64, "int": np.int32, "float": np.float32, "double": np.float64}[base_type]


def _torch_pointer_dtype(base_type: str, scalar: str) -> torch.dtype:
    if base_type == "scalar_t":
        base_type = scalar
    return {"long long": torch.int64, "int": torch.int32, "float": torch.float32, "double": torch.float64}[
        base_type
    ]


def _check_tensor_arg(param: KernelParam, value: object, scalar: str, kernel: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"kernel {kernel!r}: pointer parameter {param.name!r} needs a tensor, got {type(value)}"
        )
    expected = _torch_pointer_dtype(param.base_type, scalar)
    if value.dtype != expected:
        raise TypeError(
            f"kernel {kernel!r}: parameter {param.name!r} needs dtype {expected}, got {value.dtype}"
        )
    if not value.is_contiguous():
        raise ValueError(f"kernel {kernel!r}: tensor for parameter {param.name!r} must be contiguous")
    return value


def _check_arg_count(params: Sequence[KernelParam], args: Sequence[object], kernel: str) -> None:
    if len(params) != len(args):
        names = [p.name for p in params]
        raise TypeError(f"kernel {kernel!r} takes {len(params)} arguments {names}, got {len(args)}")


# ----------------------------------------------------------------------------------------------------
# NVRTC: compile for an explicit architecture without a GPU
# ----------------------------------------------------------------------------------------------------
@dataclass
class CompileResult:
    """What NVRTC produced for one op: PTX, CUBIN (for ``sm_*`` targets), log and per-kernel resources."""

    op: str
    arch: str
    dtype: str
    ptx: str | None
    cubin: bytes | None
    log: str
    registers: dict[str, int] = field(default_factory=dict)  # kernel name -> registers per thread
    spill_bytes: dict[str, int] = field(default_factory=dict)  # kernel name -> spill stores + loads


def _nvrtc_library_candidates() -> list[str]:
    candidates = []
    for site_dir in sys.path:
        for sub in ("nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"):
            candidates += sorted(glob.glob(os.path.join(site_dir, sub, "libnvrtc.so*")))
    return [c for c in candidates if ".alt." not in c]


@functools.cache
def _load_nvrtc():
    """Return ``cupy.cuda.nvrtc`` once it can really compile, preloading the wheel's libnvrtc if needed."""
    from cupy.cuda import nvrtc

    try:
        nvrtc.getVersion()
        return nvrtc
    except Exception as first_error:
        for library in _nvrtc_library_candidates():
            try:
                ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)
                nvrtc.getVersion()
                return nvrtc
            except Exception:
                continue
        raise RuntimeError(f"NVRTC cannot be loaded (no usable libnvrtc.so): {first_error}") from first_error


def nvrtc_unavailable_reason() -> str | None:
    """None when NVRTC can compile; otherwise a human-readable reason (tests skip with it)."""
    try:
        _load_nvrtc()
    except Exception as error:  # ImportError of cupy, missing libnvrtc...
        return f"NVRTC unavailable: {type(error).__name__}: {error}"
    return None


_PTXAS_ENTRY_RE = re.compile(r"Compiling entry function '(\w+)'")
_PTXAS_SPILL_RE = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGISTERS_RE = re.compile(r"Used (\d+) registers")


def _parse_ptxas_log(log: str) -> tuple[dict[str, int], dict[str, int]]:
    registers: dict[str, int] = {}
    spill_bytes: dict[str, int] = {}
    current = None
    for line in log.splitlines():
        if entry := _PTXAS_ENTRY_RE.search(line):
            current = entry.group(1)
        elif current and (spill := _PTXAS_SPILL_RE.search(line)):
            spill_bytes[current] = int(spill.group(1)) + int(spill.group(2))
        elif current and (used := _PTXAS_REGISTERS_RE.search(line)):
            registers[current] = int(used.group(1))
    return registers, spill_bytes


def nvrtc_compile(
    op: str, *, arch: str = "sm_90", dtype: torch.dtype | str = "float", verbose_ptxas: bool = True
) -> CompileResult:
    """Compile ``ops/cuda/<op>.cu`` with NVRTC for ``arch`` ("sm_75", "sm_90", "compute_90"...).

    Needs no GPU. For ``sm_*`` targets the CUBIN is produced too and, with ``verbose_ptxas``, the
    ``ptxas -v`` report is parsed into registers and spill bytes per kernel. A compile error raises
    ``RuntimeError`` carrying the compiler log.
    """
    nvrtc = _load_nvrtc()
    scalar = scalar_name(dtype)
    options = [f"-arch={arch}", f"-DSCALAR_T={scalar}", "-std=c++17"]
    if verbose_ptxas and arch.startswith("sm_"):
        options.append("--ptxas-options=-v")
    program = nvrtc.createProgram(kernel_source(op), f"{op}.cu", (), ())
    try:
        try:
            nvrtc.compileProgram(program, tuple(options))
        except nvrtc.NVRTCError as error:
            log = nvrtc.getProgramLog(program)
            raise RuntimeError(
                f"NVRTC failed to compile {op}.cu for {arch}/{scalar}: {error}\n{log}"
            ) from error
        log = nvrtc.getProgramLog(program).rstrip("\x00")
        ptx = nvrtc.getPTX(program)
        ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
        cubin = nvrtc.getCUBIN(program) if arch.startswith("sm_") else None
    finally:
        nvrtc.destroyProgram(program)
    registers, spill_bytes = _parse_ptxas_log(log)
    return CompileResult(
        op=op,
        arch=arch,
        dtype=scalar,
        ptx=ptx.rstrip("\x00"),
        cubin=cubin,
        log=log,
        registers=registers,
        spill_bytes=spill_bytes,
    )


# ----------------------------------------------------------------------------------------------------
# CuPy on a GPU
# ----------------------------------------------------------------------------------------------------
@functools.cache
def _cupy_kernel_cached(op: str, name: str, scalar: str, device_index: int):
    import cupy

    kernel_params(op, name)  # clear KeyError for unknown kernel names before CuPy's
    with cupy.cuda.Device(device_index):
        return cupy.RawKernel(kernel_source(op), name, options=(f"-DSCALAR_T={scalar}", "-std=c++17"))


def cupy_kernel(op: str, name: str, dtype: torch.dtype | str, device: torch.device | int):
    """The ``cupy.RawKernel`` for kernel ``name`` of ``op``, cached per (op, name, dtype, device index)."""
    index = device if isinstance(device, int) else (device.index if device.index is not None else 0)
    return _cupy_kernel_cached(op, name, scalar_name(dtype), index)


def launch(
    kernel,
    total_threads: int,
    args: Sequence[object],
    tensor: torch.Tensor,
    *,
    threads_per_block: int = THREADS_PER_BLOCK,
) -> None:
    """Launch a CuPy kernel over ``total_threads`` (grid-stride) on torch's current stream.

    ``tensor`` fixes the device and the ``scalar_t`` dtype. Tensor arguments must be contiguous and on
    that device; Python ints/floats are converted to the numpy type of the declared parameter
    (``long long`` -> int64, ``scalar_t`` -> float32/float64), never passed as 8-byte doubles.
    """
    import cupy

    if total_threads <= 0:
        return
    scalar = scalar_name(tensor.dtype)
    params = parse_kernels(kernel.code)[kernel.name]
    _check_arg_count(params, args, kernel.name)
    device = tensor.device
    converted = []
    with cupy.cuda.Device(device.index):
        stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream, device.index)
        with stream:
            for param, value in zip(params, args, strict=True):
                if param.is_pointer:
                    value = _check_tensor_arg(param, value, scalar, kernel.name)
                    if value.device != device:
                        raise ValueError(
                            f"kernel {kernel.name!r}: parameter {param.name!r} is on {value.device}, "
                            f"expected {device}"
                        )
                    converted.append(cupy.from_dlpack(value.detach()))
                else:
                    converted.append(_numpy_scalar_type(param.base_type, scalar)(value))
            blocks = min(math.ceil(total_threads / threads_per_block), MAX_BLOCKS)
            kernel((blocks,), (threads_per_block,), tuple(converted))


# ----------------------------------------------------------------------------------------------------
# CPU shim: the unchanged .cu text compiled by g++
# ----------------------------------------------------------------------------------------------------
def shim_build_dir() -> Path:
    """Where shim libraries are cached: ``$VODBENCH_SHIM_DIR`` or ``~/.cache/vodbench/shim``."""
    default = Path.home() / ".cache" / "vodbench" / "shim"
    return Path(os.environ.get(SHIM_DIR_ENV_VAR, default))


def _shim_wrappers(kernels: dict[str, tuple[KernelParam, ...]]) -> str:
    """One ``extern "C"`` wrapper per kernel that runs the whole grid sequentially."""
    parts = []
    for name, params in kernels.items():
        declarations = "".join(f", {p.declaration}" for p in params)
        call_args = ", ".join(p.name for p in params)
        parts.append(
            f"""
extern "C" void vodbench_shim_launch_{name}(
    unsigned int grid_x, unsigned int grid_y, unsigned int grid_z,
    unsigned int block_x, unsigned int block_y, unsigned int block_z{declarations}) {{
  gridDim = {{grid_x, grid_y, grid_z}};
  blockDim = {{block_x, block_y, block_z}};
  for (unsigned int bz = 0; bz < grid_z; ++bz)
    for (unsigned int by = 0; by < grid_y; ++by)
      for (unsigned int bx = 0; bx < grid_x; ++bx)
        for (unsigned int tz = 0; tz < block_z; ++tz)
          for (unsigned int ty = 0; ty < block_y; ++ty)
            for (unsigned int tx = 0; tx < block_x; ++tx) {{
              blockIdx = {{bx, by, bz}};
              threadIdx = {{tx, ty, tz}};
              {name}({call_args});
            }}
}}
"""
        )
    return "".join(parts)


_SHIM_FLAGS = ("-x", "c++", "-std=c++17", "-O1", "-fPIC", "-shared")
_SANITIZE_FLAGS = {None: (), "address": ("-fsanitize=address", "-fno-omit-frame-pointer", "-g")}


@functools.cache
def _shim_library_cached(op: str, scalar: str, sanitize: str | None) -> ctypes.CDLL:
    source = kernel_source(op)
    kernels = parse_kernels(source)
    if not kernels:
        raise ValueError(f'ops/cuda/{op}.cu declares no extern "C" __global__ kernel')
    header = SHIM_HEADER.read_text()
    flags = (*_SHIM_FLAGS, *_SANITIZE_FLAGS[sanitize], f"-DSCALAR_T={scalar}")
    digest = hashlib.sha256("\0".join((header, source, _shim_wrappers(kernels), *flags)).encode()).hexdigest()
    build_dir = shim_build_dir()
    build_dir.mkdir(parents=True, exist_ok=True)
    library = build_dir / f"{op}-{scalar}-{sanitize or 'plain'}-{digest[:16]}.so"
    if not library.exists():
        with tempfile.TemporaryDirectory(dir=build_dir) as tmp:
            # The .cu is copied verbatim: the translation unit is header + unchanged source + wrappers.
            (Path(tmp) / f"{op}.cu").write_text(source)
            (Path(tmp) / "cuda_shim.h").write_text(header)
            unit = Path(tmp) / f"{op}_shim.cpp"
            unit.write_text(f'#include "cuda_shim.h"\n#include "{op}.cu"\n{_shim_wrappers(kernels)}')
            partial = Path(tmp) / library.name
            result = subprocess.run(
                ["g++", *flags, "-o", str(partial), str(unit)], capture_output=True, text=True
            )
            if result.returncode != 0:
                raise RuntimeError(
                    f"g++ failed to build the CPU shim of {op}.cu ({scalar}):\n{result.stderr}"
                )
            os.replace(partial, library)  # atomic: concurrent test workers never load a half-written file
    return ctypes.CDLL(str(library))


def shim_library(op: str, dtype: torch.dtype | str, sanitize: str | None = None) -> ctypes.CDLL:
    """Build (or reuse) and load the CPU shim library of ``ops/cuda/<op>.cu`` for ``dtype``.

    ``sanitize="address"`` builds with AddressSanitizer; such a library only loads in a process started
    with ``LD_PRELOAD=$(g++ -print-file-name=libasan.so)`` (see tests/ops/test_kernels_runtime.py).
    """
    if sanitize not in _SANITIZE_FLAGS:
        raise ValueError(f"sanitize must be None or 'address', got {sanitize!r}")
    return _shim_library_cached(op, scalar_name(dtype), sanitize)


def _as_dim3(value: int | Sequence[int], what: str) -> tuple[int, int, int]:
    dims = (value,) if isinstance(value, int) else tuple(value)
    if not 1 <= len(dims) <= 3 or any(int(d) < 1 for d in dims):
        raise ValueError(f"{what} must be 1 to 3 positive ints, got {value!r}")
    return tuple(int(d) for d in dims) + (1,) * (3 - len(dims))


_CTYPES = {
    "long long": ctypes.c_longlong,
    "int": ctypes.c_int,
    "float": ctypes.c_float,
    "double": ctypes.c_double,
}


def shim_launch(
    op: str,
    name: str,
    dtype: torch.dtype | str,
    grid: int | Sequence[int],
    block: int | Sequence[int],
    args: Sequence[object],
    *,
    sanitize: str | None = None,
) -> None:
    """Run kernel ``name`` of ``op`` on the CPU through the shim, with the same arguments CuPy gets.

    Tensor arguments must be contiguous CPU tensors of the declared pointer type; scalars are converted
    to the declared C type.
    """
    scalar = scalar_name(dtype)
    params = kernel_params(op, name)
    _check_arg_count(params, args, name)
    function = getattr(shim_library(op, scalar, sanitize=sanitize), f"vodbench_shim_launch_{name}")
    converted: list[object] = [*_as_dim3(grid, "grid"), *_as_dim3(block, "block")]
    for param, value in zip(params, args, strict=True):
        if param.is_pointer:
            value = _check_tensor_arg(param, value, scalar, name)
            if value.device.type != "cpu":
                raise ValueError(
                    f"kernel {name!r}: shim needs CPU tensors, {param.name!r} is on {value.device}"
                )
            converted.append(ctypes.c_void_p(value.data_ptr()))
        else:
            base = scalar if param.base_type == "scalar_t" else param.base_type
            converted.append(_CTYPES[base](value))
    function.restype = None
    function(*converted)


def run_kernel(
    op: str, name: str, *, backend: str, total_threads: int, args: Sequence[object], like: torch.Tensor
) -> None:
    """Launch kernel ``name`` of ``op`` over ``total_threads`` on ``backend`` ("cupy" or "shim").

    ``like`` fixes dtype and device. This is the single launch point of the ops' autograd Functions,
    so the very same Function is exercised on the CPU (shim) in tests and on the GPU (CuPy) in use.
    """
    if total_threads <= 0:
        return
    if backend == "cupy":
        launch(cupy_kernel(op, name, like.dtype, like.device), total_threads, args, like)
    elif backend == "shim":
        blocks = min(math.ceil(total_threads / SHIM_THREADS_PER_BLOCK), SHIM_MAX_BLOCKS)
        shim_launch(op, name, like.dtype, blocks, SHIM_THREADS_PER_BLOCK, args)
    else:
        raise ValueError(f"backend must be 'cupy' or 'shim', got {backend!r}")
