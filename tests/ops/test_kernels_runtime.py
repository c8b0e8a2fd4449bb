"""Tests of ops/_kernels.py on trivial kernels (ops/cuda/selftest.cu): parsing, NVRTC, shim, dispatch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ops import _kernels

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_kernel_names_and_params_are_parsed_from_source():
    assert _kernels.kernel_names("selftest") == ["axpy", "atomic_sum"]
    params = _kernels.kernel_params("selftest", "axpy")
    assert [p.name for p in params] == ["x", "y", "alpha", "n"]
    assert [p.base_type for p in params] == ["scalar_t", "scalar_t", "scalar_t", "long long"]
    assert [p.is_pointer for p in params] == [True, True, False, False]


def test_unknown_op_and_kernel_are_named_in_errors():
    with pytest.raises(FileNotFoundError, match="no_such_op"):
        _kernels.kernel_source("no_such_op")
    with pytest.raises(KeyError, match="no_such_kernel"):
        _kernels.kernel_params("selftest", "no_such_kernel")


def test_unsupported_parameter_type_is_rejected():
    source = 'extern "C" __global__ void k(const float* x, size_t n) {}'
    with pytest.raises(ValueError, match="'n'.*size_t"):
        _kernels.parse_kernels(source)


def test_ptxas_log_parsing():
    log = textwrap.dedent(
        """\
        ptxas info    : Compiling entry function 'first' for 'sm_90'
        ptxas info    : Function properties for first
        ptxas         .     8 bytes stack frame, 12 bytes spill stores, 4 bytes spill loads
        ptxas info    : Used 40 registers, used 0 barriers
        ptxas info    : Compiling entry function 'second' for 'sm_90'
        ptxas info    : Function properties for second
        ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
        ptxas info    : Used 9 registers, used 0 barriers
        """
    )
    registers, spill_bytes = _kernels._parse_ptxas_log(log)
    assert registers == {"first": 40, "second": 9}
    assert spill_bytes == {"first": 16, "second": 0}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shim_axpy_matches_torch_through_grid_stride_loop(dtype):
    # 1000 elements > SHIM_MAX_BLOCKS * SHIM_THREADS_PER_BLOCK = 256 threads: the loop must stride.
    n = 1000
    x = torch.randn(n, dtype=dtype)
    y = torch.randn(n, dtype=dtype)
    expected = 0.5 * x + y
    _kernels.run_kernel("selftest", "axpy", backend="shim", total_threads=n, args=(x, y, 0.5, n), like=x)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_shim_atomic_sum_and_explicit_multidimensional_launch():
    x = torch.arange(1, 101, dtype=torch.float64)
    total = torch.zeros(1, dtype=torch.float64)
    _kernels.shim_launch("selftest", "atomic_sum", torch.float64, (3,), (7,), (x, total, 100))
    assert total.item() == 5050.0


def test_shim_launch_rejects_bad_arguments():
    x = torch.zeros(8, dtype=torch.float64)
    y = torch.zeros(8, dtype=torch.float64)
    with pytest.raises(TypeError, match="takes 4 arguments"):
        _kernels.shim_launch("selftest", "axpy", torch.float64, 1, 8, (x, y, 1.0))
    with pytest.raises(TypeError, match="'y'.*torch.float64"):
        _kernels.shim_launch("selftest", "axpy", torch.float64, 1, 8, (x, y.float(), 1.0, 8))
    with pytest.raises(ValueError, match="'x' must be contiguous"):
        _kernels.shim_launch(
            "selftest", "axpy", torch.float64, 1, 8, (torch.zeros(16).double()[::2], y, 1.0, 8)
        )
    with pytest.raises(ValueError, match="grid"):
        _kernels.shim_launch("selftest", "axpy", torch.float64, 0, 8, (x, y, 1.0, 8))
    with pytest.raises(ValueError, match="float32 and float64"):
        _kernels.shim_launch("selftest", "axpy", torch.float16, 1, 8, (x, y, 1.0, 8))
    with pytest.raises(ValueError, match="backend"):
        _kernels.run_kernel(
            "selftest", "axpy", backend="opencl", total_threads=8, args=(x, y, 1.0, 8), like=x
        )


def test_shim_build_error_carries_compiler_output(tmp_path, monkeypatch):
    (tmp_path / "broken.cu").write_text(
        'typedef SCALAR_T scalar_t;\nextern "C" __global__ void k(scalar_t* x) { __syncthreads(); }\n'
    )
    monkeypatch.setattr(_kernels, "CUDA_DIR", tmp_path)
    monkeypatch.setenv(_kernels.SHIM_DIR_ENV_VAR, str(tmp_path / "build"))
    with pytest.raises(RuntimeError, match="__syncthreads"):
        _kernels.shim_library("broken", torch.float64)


@pytest.mark.parametrize("arch", ["sm_75", "sm_90"])
@pytest.mark.parametrize("dtype", ["float", "double"])
def test_nvrtc_compiles_selftest_without_spills(nvrtc_or_skip, arch, dtype):
    result = _kernels.nvrtc_compile("selftest", arch=arch, dtype=dtype)
    assert result.cubin and ".entry axpy" in result.ptx
    assert set(result.spill_bytes) == {"axpy", "atomic_sum"}
    assert result.spill_bytes == {"axpy": 0, "atomic_sum": 0}
    assert all(count > 0 for count in result.registers.values())


def test_nvrtc_compile_error_carries_log(nvrtc_or_skip, tmp_path, monkeypatch):
    (tmp_path / "broken.cu").write_text('extern "C" __global__ void k(float* x) { x[0] = undefined_name; }\n')
    monkeypatch.setattr(_kernels, "CUDA_DIR", tmp_path)
    with pytest.raises(RuntimeError, match="undefined_name"):
        _kernels.nvrtc_compile("broken", arch="sm_90")


def test_select_impl_dispatch_and_kill_switch(monkeypatch):
    cpu_tensor = torch.zeros(1)
    assert _kernels.select_impl("auto", cpu_tensor) == "fast"
    assert _kernels.select_impl("reference", cpu_tensor) == "reference"
    with pytest.raises(ValueError, match="impl must be one of"):
        _kernels.select_impl("fastest", cpu_tensor)
    with pytest.raises(ValueError, match="CUDA tensor"):
        _kernels.select_impl("cupy", cpu_tensor)
    monkeypatch.setenv(_kernels.REFERENCE_ENV_VAR, "1")
    assert _kernels.select_impl("auto", cpu_tensor) == "reference"
    assert _kernels.select_impl("fast", cpu_tensor) == "reference"


_ASAN_SCRIPT = """
import sys, torch
from ops import _kernels
x = torch.arange(300, dtype=torch.float64)
y = torch.zeros(300, dtype=torch.float64)
_kernels.shim_launch("selftest", "axpy", torch.float64, 2, 32, (x, y, 1.0, 300), sanitize="address")
print("in-bounds run ok:", bool(torch.equal(x, y)), flush=True)
# n larger than the buffers: the kernel reads and writes past their end.
_kernels.shim_launch("selftest", "axpy", torch.float64, 2, 32, (x, y, 1.0, 310), sanitize="address")
print("out-of-bounds run was not caught", flush=True)
"""


def test_address_sanitizer_build_accepts_valid_launch_and_catches_overflow(tmp_path):
    libasan = subprocess.run(
        ["g++", "-print-file-name=libasan.so"], capture_output=True, text=True
    ).stdout.strip()
    if not os.path.isabs(libasan):
        pytest.skip("g++ has no libasan.so on this machine")
    env = dict(
        os.environ,
        LD_PRELOAD=libasan,
        ASAN_OPTIONS="detect_leaks=0",
        PYTHONPATH=str(REPO_ROOT),
        CUDA_VISIBLE_DEVICES="",
    )
    result = subprocess.run(
        [sys.executable, "-c", _ASAN_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert "in-bounds run ok: True" in result.stdout, result.stderr[-2000:]
    assert "out-of-bounds run was not caught" not in result.stdout
    assert "heap-buffer-overflow" in result.stderr


@pytest.mark.cuda
def test_cupy_launch_on_gpu_uses_current_stream_and_matches_torch():
    device = torch.device("cuda", torch.cuda.current_device())
    x = torch.randn(5000, dtype=torch.float32, device=device)
    y = torch.randn(5000, dtype=torch.float32, device=device)
    expected = 2.0 * x + y
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        _kernels.run_kernel(
            "selftest", "axpy", backend="cupy", total_threads=5000, args=(x, y, 2.0, 5000), like=x
        )
    stream.synchronize()
    torch.testing.assert_close(y, expected)
