"""Speed, parameter and FLOP measurement of the detector's steady-state per-frame cost.

In the sliding-buffer engine (``harness.infer``) each new frame costs one backbone pass, one
aggregation over ``T`` cached support features and one head pass with post-processing. That is
what :func:`measure` times, on ``batch_size`` references (default 1), after ``warmup`` untimed
frames, for ``iters`` (default 30) timed frames; it reports the median, quartiles, interquartile
range, mean and minimum per frame and per part. The supports' offsets are those of a real window
(:func:`support_offsets` takes them from ``harness.infer.plan_supports`` at a mid-video reference),
because methods may read them (STMN orders its memory by offset). Frame decoding and letterboxing
are not timed (they depend on the disk and the JPEG decoder).

Parts are named scopes. The detector and the aggregators open ``with scope("alignment"):`` (or
decorate a method with ``@scope("backbone")``) around the code of a part; :func:`measure` picks up
every scope opened while it runs, whatever its name, so a new method reports its own parts
(``"memory"``, ``"proposal_aggregation"``, ...) without this module knowing the method. A part that
does not occur for a model is absent from the result (not 0). Scopes nest: each part is timed
inclusively and records the scope it ran in (``parent``: ``alignment`` and ``fusion`` run inside
``aggregation``); a scope nested in a scope of the same name is counted once, by the outer one.

How a scope is timed. A scope is timed by ``time.perf_counter`` at entry and exit into a recorder
held in a ``contextvars.ContextVar`` that only :func:`measure` sets: outside a measurement a scope
costs a context-variable read and a profiler check (~1 us per scope on the 2-core CPU machine),
inside it ~5 us of bookkeeping (a few scopes per frame: well under 1% of a frame of the 128 px
detector), mostly outside the clock reads, and on CUDA a ``torch.cuda.synchronize()`` at both ends
so the kernels of a part are charged to it. The alternative, ``torch.profiler`` around every
iteration reading the ``record_function`` events back, was not taken: the profiler records every
dispatched op (microseconds each), which inflates op-dense parts (NMS, sampling kernels) more than
convolution-dense ones and so distorts the ratios the runtime tables compare, and it is slow (a
128 px identity + cosine-softmax frame at T = 6 took 12-14 ms plain and 42-64 ms with a profiler
per frame, events read back, one thread). The scopes are
still visible to the profiler: while one is running (``torch.autograd._profiler_enabled()``), a scope
also opens ``torch.profiler.record_function("vodbench.<name>")``, so a trace shows the same parts.
Outside a profiler it does not, since an idle ``record_function`` costs ~10 us per call here.

FLOPs come from one extra frame under ``torch.utils.flop_counter.FlopCounterMode``: each scope
records the counter's increase between its entry and exit. The counter counts matmuls and
convolutions (2 FLOPs per multiply-add) of the ops torch dispatches: custom ops (deformable sampling
via ``grid_sample``, CuPy kernels) are counted through their torch decomposition only, and
elementwise work is not counted.
"""

from __future__ import annotations

import contextlib
import contextvars
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

SCOPE_PREFIX = "vodbench."
# Parts the shared detector and the window aggregator open, in the order results list them; parts
# opened by methods (``memory``, ``proposal_aggregation``, ...) follow in the order they first occur.
KNOWN_PARTS = (
    "backbone",
    "aggregation",
    "alignment",
    "fusion",
    "memory",
    "proposal_aggregation",
    "head",
    "postprocess",
)
# Names that would collide with the whole-frame columns of :func:`summary_row`.
_RESERVED = ("total", "per_frame")


# ---------------------------------------------------------------------------------------------
# Named scopes
# ---------------------------------------------------------------------------------------------


class _Recorder:
    """Inclusive seconds, FLOPs and calls per scope name for the frame being measured."""

    def __init__(self, device: torch.device, flop_counter: FlopCounterMode | None = None):
        self.device = device
        self.flop_counter = flop_counter
        self.stack: list[str] = []
        self.frame: dict[str, dict[str, float]] = {}  # name -> {"seconds", "flops", "calls"}
        self.parents: dict[str, str | None] = {}
        self.order: list[str] = []

    def new_frame(self) -> None:
        self.frame = {}

    def _flops(self) -> int:
        return int(self.flop_counter.get_total_flops()) if self.flop_counter is not None else 0

    def enter(self, name: str) -> tuple[str, float, int] | None:
        if name in self.stack:  # counted once, by the outer scope of the same name
            return None
        _synchronize(self.device)
        self.stack.append(name)
        flops = self._flops()
        return name, time.perf_counter(), flops  # the clock is read last on entry, first on exit

    def exit(self, token: tuple[str, float, int] | None) -> None:
        if token is None:
            return
        _synchronize(self.device)
        name, tic, flops = token
        seconds = time.perf_counter() - tic
        popped = self.stack.pop()
        if popped != name:  # pragma: no cover - context managers always unwind in order
            raise RuntimeError(f"scope {name!r} closed while {popped!r} was open")
        if name not in self.parents:
            self.parents[name] = self.stack[-1] if self.stack else None
            self.order.append(name)
        entry = self.frame.setdefault(name, {"seconds": 0.0, "flops": 0, "calls": 0})
        entry["seconds"] += seconds
        entry["flops"] += self._flops() - flops
        entry["calls"] += 1


_ACTIVE: contextvars.ContextVar[_Recorder | None] = contextvars.ContextVar("vodbench_measure", default=None)


class Scope(contextlib.ContextDecorator):
    """A named part of a frame's computation; use :func:`scope` to make one."""

    def __init__(self, name: str):
        if not isinstance(name, str) or not name.isidentifier() or name in _RESERVED:
            raise ValueError(f"scope name must be a Python identifier other than {_RESERVED}, got {name!r}")
        self.name = name
        self._profiler_range: Any = None
        self._recorder: _Recorder | None = None
        self._token: tuple[str, float, int] | None = None

    def _recreate_cm(self) -> Scope:
        return Scope(self.name)  # a decorated function may run nested or in several threads

    def __enter__(self) -> Scope:
        if torch.autograd._profiler_enabled():
            self._profiler_range = torch.profiler.record_function(SCOPE_PREFIX + self.name)
            self._profiler_range.__enter__()
        self._recorder = _ACTIVE.get()
        if self._recorder is not None:
            self._token = self._recorder.enter(self.name)
        return self

    def __exit__(self, *exc: Any) -> bool:
        if self._recorder is not None:
            self._recorder.exit(self._token)
        if self._profiler_range is not None:
            self._profiler_range.__exit__(*exc)
        return False


def scope(name: str) -> Scope:
    """``with scope("alignment"): ...`` or ``@scope("backbone")``: time this code as part ``name``.

    Recorded by :func:`measure` (any name), and shown as ``vodbench.<name>`` by ``torch.profiler``.
    """
    return Scope(name)


@contextlib.contextmanager
def _recording(recorder: _Recorder):
    token = _ACTIVE.set(recorder)
    try:
        yield recorder
    finally:
        _ACTIVE.reset(token)


# ---------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model(cpuinfo: Path | str = "/proc/cpuinfo") -> str:
    """The CPU's ``model name`` from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


# ---------------------------------------------------------------------------------------------
# Windows, parameters, statistics
# ---------------------------------------------------------------------------------------------


def support_offsets(support: Any, *, num_frames: int, reference: int | None = None) -> tuple[int, ...]:
    """Offsets (support index - reference index) of ``reference``'s window in a video of ``num_frames``.

    The window is the one the inference engine uses (``harness.infer.plan_supports`` with the
    test-time ``SupportSpec``); ``reference`` defaults to the middle frame, away from the boundaries,
    so a sliding window gives its full set of offsets without 0 (strategies that copy the reference,
    an odd ``buffer_uniform``, keep their 0).
    """
    from harness.infer import plan_supports

    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    reference = num_frames // 2 if reference is None else reference
    if not 0 <= reference < num_frames:
        raise ValueError(f"reference {reference} outside a video of {num_frames} frames")
    supports, _ = plan_supports(num_frames, support)
    return tuple(int(index) - reference for index in supports[reference])


def _check_offsets(offsets: Sequence[int]) -> list[int]:
    if isinstance(offsets, (str, bytes)) or not isinstance(offsets, (Sequence, np.ndarray)):
        raise TypeError(f"offsets must be a sequence of ints, got {type(offsets).__name__}")
    checked = []
    for value in offsets:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(
                f"offsets must be ints, got {value!r} ({type(value).__name__}) in {list(offsets)}"
            )
        checked.append(int(value))
    return checked


def count_parameters(detector: Any) -> dict[str, int]:
    """Parameters per submodule, keyed by module path.

    ``total``, ``backbone``, ``aggregator`` and every submodule of the aggregator two levels deep
    (``aggregator.alignment``, ``aggregator.alignment.flownet``; the second level only when it has
    parameters), ``heads`` and each head (``heads.main``).
    """

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    params = {
        "total": count(detector),
        "backbone": count(detector.backbone),
        "aggregator": count(detector.aggregator),
    }
    for name, child in detector.aggregator.named_children():
        params[f"aggregator.{name}"] = count(child)
        for grand_name, grandchild in child.named_children():
            if count(grandchild):
                params[f"aggregator.{name}.{grand_name}"] = count(grandchild)
    params["heads"] = count(detector.heads)
    for name, head in detector.heads.items():
        params[f"heads.{name}"] = count(head)
    return params


def _statistics(values: Sequence[float]) -> dict[str, float]:
    """median, q25, q75, iqr (q75 - q25), mean, min, max of ``values`` (linear interpolation)."""
    array = np.asarray(values, dtype=np.float64)
    q25, median, q75 = np.percentile(array, [25, 50, 75])
    return {
        "median": float(median),
        "q25": float(q25),
        "q75": float(q75),
        "iqr": float(q75 - q25),
        "mean": float(array.mean()),
        "min": float(array.min()),
        "max": float(array.max()),
    }


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def measure(
    detector: Any,
    *,
    image_size: int,
    offsets: Sequence[int],
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    warmup: int = 5,
    iters: int = 30,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-frame steady-state cost of ``detector`` (window mode) at ``image_size`` with the supports
    at ``offsets`` (e.g. :func:`support_offsets`), on ``batch_size`` references per call.

    Returns a JSON-ready dict:

    * ``frame``: ``seconds`` statistics (median, q25, q75, iqr, mean, min, max over ``iters``
      frames), the ``samples`` they summarise, ``unscoped_seconds`` (frame time outside every
      top-level scope: glue code), ``flops``;
    * ``fps`` = 1 / median seconds per frame;
    * ``parts``: per scope that occurred, ``seconds`` statistics and ``samples``, ``flops``,
      ``calls`` per batch, ``parent`` scope (None at top level) and ``frames`` (timed frames in
      which it occurred; a frame without the part counts 0 s in the statistics);
    * ``params``: :func:`count_parameters`;
    * what was measured and where: ``image_size``, ``num_supports``, ``offsets``, ``batch_size``,
      ``iters``, ``warmup``, ``device``, ``device_name``, ``cpu_model``, ``torch_threads``,
      ``torch_interop_threads``, ``torch_version``, ``timed`` and ``flops_note``.

    Times are per frame: a batch's time divided by ``batch_size``.
    :func:`summary_row` turns the dict into the numeric columns of a results row.
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    aggregator = detector.aggregator
    mode = getattr(aggregator, "mode", "window")
    if mode != "window":
        raise ValueError(
            f"{type(aggregator).__name__} is a {mode!r}-mode aggregator; measure() times window-mode "
            "aggregators only (one aggregation over a window of cached supports per frame)"
        )
    offsets = _check_offsets(offsets)
    num_supports = len(offsets)
    device = torch.device(device)
    detector.eval().to(device)

    generator = torch.Generator().manual_seed(seed)
    # (B, 3, S, S) and (B, T, 3, S, S) uint8 frames
    image = torch.randint(
        0, 256, (batch_size, 3, image_size, image_size), generator=generator, dtype=torch.uint8
    )
    support_images = torch.randint(
        0, 256, (batch_size, num_supports, 3, image_size, image_size), generator=generator, dtype=torch.uint8
    )
    image, support_images = image.to(device), support_images.to(device)
    # the buffer's cached features: (B*T, 3, S, S) -> (B*T, C, H, W) -> (B, T, C, H, W)
    support_feats = detector.backbone(support_images.flatten(0, 1)).unflatten(0, (batch_size, num_supports))
    offsets_tensor = torch.tensor([offsets] * batch_size, dtype=torch.int64, device=device).reshape(
        batch_size, num_supports
    )
    valid = torch.ones((batch_size, num_supports), dtype=torch.bool, device=device)
    flow = None
    if aggregator.needs_oracle_flow:
        flow = torch.zeros((batch_size, num_supports, 2, image_size, image_size), device=device)

    def run_frame() -> None:
        reference = detector.extract(image)
        agg_out = detector.aggregate(
            reference,
            support_feats,
            offsets_tensor,
            valid,
            images=image,
            support_images=support_images,
            oracle_flow=flow,
        )
        detector.detect(agg_out, image_size)

    # FLOPs: one frame under the counter, each scope reading the counter at entry and exit
    with FlopCounterMode(display=False) as counter:
        flop_recorder = _Recorder(device, flop_counter=counter)
        with _recording(flop_recorder):
            run_frame()
    frame_flops = int(counter.get_total_flops())
    flops_per_part = {name: int(entry["flops"]) for name, entry in flop_recorder.frame.items()}
    calls_per_part = {name: int(entry["calls"]) for name, entry in flop_recorder.frame.items()}

    for _ in range(warmup):
        run_frame()
    recorder = _Recorder(device)
    frame_seconds: list[float] = []
    part_seconds: list[dict[str, float]] = []
    with _recording(recorder):
        for _ in range(iters):
            recorder.new_frame()
            _synchronize(device)
            tic = time.perf_counter()
            run_frame()
            _synchronize(device)
            frame_seconds.append((time.perf_counter() - tic) / batch_size)
            part_seconds.append(
                {name: entry["seconds"] / batch_size for name, entry in recorder.frame.items()}
            )

    parents = {**flop_recorder.parents, **recorder.parents}
    seen = list(dict.fromkeys([*flop_recorder.order, *recorder.order]))
    names = [p for p in KNOWN_PARTS if p in seen] + [p for p in seen if p not in KNOWN_PARTS]
    parts: dict[str, dict[str, Any]] = {}
    for name in names:
        samples = [frame.get(name, 0.0) for frame in part_seconds]
        parts[name] = {
            "seconds": _statistics(samples),
            "samples": samples,
            "flops": flops_per_part.get(name),
            "calls": calls_per_part.get(name),
            "parent": parents[name],
            "frames": sum(name in frame for frame in part_seconds),
        }
    top_level = [name for name in names if parents[name] is None]
    unscoped = [
        total - sum(frame.get(name, 0.0) for name in top_level)
        for total, frame in zip(frame_seconds, part_seconds, strict=True)
    ]
    frame_stats = _statistics(frame_seconds)
    return {
        "frame": {
            "seconds": frame_stats,
            "samples": frame_seconds,
            "unscoped_seconds": _statistics(unscoped),
            "flops": frame_flops,
        },
        "fps": 1.0 / frame_stats["median"],
        "parts": parts,
        "params": count_parameters(detector),
        "image_size": image_size,
        "num_supports": num_supports,
        "offsets": offsets,
        "batch_size": batch_size,
        "iters": iters,
        "warmup": warmup,
        "device": str(device),
        "device_name": _device_name(device),
        "cpu_model": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_version": torch.__version__,
        "timed": (
            f"steady-state per-frame cost of the sliding-buffer engine at batch {batch_size}: backbone "
            f"on uint8 {image_size}x{image_size} frames + aggregation over {num_supports} cached support "
            f"features at offsets {offsets} + head with post-processing (NMS); statistics over {iters} "
            f"frames after {warmup} warm-up frames (and one FLOP-counting frame); the whole frame and "
            f"each named scope timed with time.perf_counter"
            + (" between torch.cuda.synchronize() calls" if device.type == "cuda" else " on CPU")
            + f" with {torch.get_num_threads()} torch threads; per frame = per batch / {batch_size}; "
            "frame decoding not included"
        ),
        "flops_note": (
            "FLOPs per frame from torch.utils.flop_counter.FlopCounterMode (matmul/conv, 2 per "
            "multiply-add), per part as the counter's increase inside the part's scope, per batch of "
            f"{batch_size}; custom ops (deformable sampling via grid_sample, CuPy kernels) are counted "
            "by their torch decomposition only; elementwise ops are not counted"
        ),
    }


# Parameter groups under the column names results tables have always used.
_PARAM_COLUMNS = {"total": "total", "backbone": "backbone", "aggregator": "aggregation", "heads": "head"}


def summary_row(measurement: dict[str, Any]) -> dict[str, float]:
    """The numeric columns a results row keeps from a :func:`measure` dict.

    ``fps``; ``seconds_per_frame`` (median) with ``_mean``, ``_q25``, ``_q75``, ``_iqr``;
    ``seconds_<part>`` (median) with ``_mean`` and ``_iqr`` and ``flops_<part>`` for every part that
    occurred (absent parts have no column); ``flops_total``; ``params_total``, ``params_backbone``,
    ``params_aggregation``, ``params_head`` and per submodule ``params_aggregation_<child>``,
    ``params_head_<stream>``; and ``num_supports``, ``batch_size``, ``image_size``, ``iters``,
    ``warmup``, ``torch_threads``. Strings (CPU model, notes, offsets) stay in ``measure.json``.
    """
    frame = measurement["frame"]["seconds"]
    row: dict[str, float] = {"fps": float(measurement["fps"]), "seconds_per_frame": float(frame["median"])}
    for stat in ("mean", "q25", "q75", "iqr"):
        row[f"seconds_per_frame_{stat}"] = float(frame[stat])
    row["flops_total"] = float(measurement["frame"]["flops"])
    for name, part in measurement["parts"].items():
        row[f"seconds_{name}"] = float(part["seconds"]["median"])
        row[f"seconds_{name}_mean"] = float(part["seconds"]["mean"])
        row[f"seconds_{name}_iqr"] = float(part["seconds"]["iqr"])
        if part["flops"] is not None:
            row[f"flops_{name}"] = float(part["flops"])
    for path, count in measurement["params"].items():
        head, *rest = path.split(".")
        row["_".join(["params", _PARAM_COLUMNS[head], *rest])] = float(count)
    for key in ("num_supports", "batch_size", "image_size", "iters", "warmup", "torch_threads"):
        row[key] = float(measurement[key])
    return row
