"""Speed, parameter and FLOP measurement of the detector's steady-state per-frame cost.

In the sliding-buffer engine (``harness.infer``) each new frame costs one backbone pass, one
aggregation over ``T`` cached support features and one head pass with post-processing. That is
what :func:`measure` times, part by part, on batch size 1, after ``warmup`` untimed frames, with
``torch.cuda.synchronize()`` around every part on CUDA; the dict it returns says so in ``timed``.
Frame decoding and letterboxing are not timed (they depend on the disk and the JPEG decoder).

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts matmuls and
convolutions (2 FLOPs per multiply-add) of the ops torch dispatches: custom ops (deformable
sampling via ``grid_sample``, CuPy kernels) are counted through their torch decomposition only,
and elementwise work is not counted.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

PARTS = ("backbone", "aggregation", "head")


def _count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


@torch.no_grad()
def measure(
    detector: Any,
    *,
    image_size: int,
    num_supports: int,
    device: str | torch.device = "cpu",
    warmup: int = 3,
    iters: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-frame steady-state cost of ``detector`` at ``image_size`` with ``num_supports`` supports.

    Returns a flat dict: ``fps``, ``seconds_per_frame`` and ``seconds_<part>``, ``params_<part>``,
    ``flops_<part>`` for part in backbone/aggregation/head plus their ``_total``; ``timed`` and
    ``flops_note`` describe exactly what the numbers mean.
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    if detector.aggregator.mode == "stream":
        raise NotImplementedError("measuring stream-mode aggregators is part of the LSTS issue")
    device = torch.device(device)
    detector.eval().to(device)
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (1, 3, image_size, image_size), generator=generator, dtype=torch.uint8)
    support_images = torch.randint(
        0, 256, (1, num_supports, 3, image_size, image_size), generator=generator, dtype=torch.uint8
    )
    image, support_images = image.to(device), support_images.to(device)
    with torch.no_grad():
        cached = detector.extract(support_images.flatten(0, 1))  # (T, C, H, W): the buffer's features
    support_feats = cached.unsqueeze(0)  # (T, C, H, W) -> (1, T, C, H, W)
    offsets = (
        torch.arange(1, num_supports + 1, device=device).reshape(1, num_supports) - (num_supports + 1) // 2
    )
    valid = torch.ones((1, num_supports), dtype=torch.bool, device=device)
    flow = None
    if detector.aggregator.needs_oracle_flow:
        flow = torch.zeros((1, num_supports, 2, image_size, image_size), device=device)

    state: dict[str, Any] = {}

    def run_backbone() -> None:
        state["reference"] = detector.extract(image)

    def run_aggregation() -> None:
        state["agg_out"] = detector.aggregate(
            state["reference"],
            support_feats,
            offsets,
            valid,
            images=image,
            support_images=support_images,
            oracle_flow=flow,
        )

    def run_head() -> None:
        state["detections"] = detector.detect(state["agg_out"], image_size)

    parts: dict[str, Callable[[], None]] = {
        "backbone": run_backbone,
        "aggregation": run_aggregation,
        "head": run_head,
    }

    result: dict[str, Any] = {}
    for name, fn in parts.items():
        with FlopCounterMode(display=False) as counter:
            fn()
        result[f"flops_{name}"] = int(counter.get_total_flops())
    result["flops_total"] = sum(result[f"flops_{p}"] for p in PARTS)

    result["params_backbone"] = _count_parameters(detector.backbone)
    result["params_aggregation"] = _count_parameters(detector.aggregator)
    result["params_head"] = _count_parameters(detector.heads)
    result["params_total"] = sum(result[f"params_{p}"] for p in PARTS)

    for _ in range(warmup):
        for fn in parts.values():
            fn()
    _synchronize(device)
    seconds = {name: 0.0 for name in PARTS}
    for _ in range(iters):
        for name, fn in parts.items():
            _synchronize(device)
            tic = time.perf_counter()
            fn()
            _synchronize(device)
            seconds[name] += time.perf_counter() - tic
    for name in PARTS:
        result[f"seconds_{name}"] = seconds[name] / iters
    result["seconds_per_frame"] = sum(result[f"seconds_{p}"] for p in PARTS)
    result["fps"] = 1.0 / result["seconds_per_frame"]
    result.update(
        {
            "timed": (
                f"steady-state per-frame cost of the sliding-buffer engine at batch 1: backbone on one "
                f"uint8 {image_size}x{image_size} frame + aggregation over {num_supports} cached support "
                f"features + head with post-processing (NMS); mean of {iters} frames after {warmup} "
                f"warm-up frames; each part timed separately with time.perf_counter"
                + (" between torch.cuda.synchronize() calls" if device.type == "cuda" else " on CPU")
                + "; frame decoding not included"
            ),
            "flops_note": (
                "FLOPs per frame from torch.utils.flop_counter.FlopCounterMode (matmul/conv, 2 per "
                "multiply-add); custom ops (deformable sampling via grid_sample, CuPy kernels) are "
                "counted by their torch decomposition only; elementwise ops are not counted"
            ),
            "image_size": image_size,
            "num_supports": num_supports,
            "warmup": warmup,
            "iters": iters,
            "device": str(device),
            "device_name": _device_name(device),
            "torch_threads": torch.get_num_threads(),
        }
    )
    return result
