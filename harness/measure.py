"""Speed, parameter and FLOP measurement of the detector's steady-state per-frame cost.

In the sliding-buffer engine (``harness.infer``) each new frame costs one backbone pass, one
aggregation over ``T`` cached support features and one head pass with post-processing. That is
what :func:`measure` times, on ``batch_size`` references (default 1), after ``warmup`` untimed
frames, for ``iters`` (default 30) timed frames; it reports the median, quartiles, interquartile
range, mean and minimum per frame and per part. The supports' offsets are those of a real window
(:func:`support_offsets` takes them from ``harness.infer.plan_supports`` at a mid-video reference),
because methods may read them (STMN orders its memory by offset). Frame decoding and letterboxing
are not timed (they depend on the disk and the JPEG decoder).

Stream mode (``aggregator.mode == "stream"``, ``harness.infer.predict_stream_videos``): a frame
costs ``forward_low``, ``forward_high`` only on keyframes, one step and the head, so keyframes and
non-keyframes cost differently. :func:`measure` then runs ``batch_size`` synthetic videos in lockstep
through the engine's own per-frame path (``harness.infer.stream_features``): at least ``warmup``
untimed frames from the stream's start, then ``iters`` keyframe intervals (``iters *
keyframe_interval`` timed frames from the next keyframe on, so every timed keyframe has a memory to
update, as in the middle of a video), and reports the keyframes' and the non-keyframes' cost separately
(``keyframe``, ``non_keyframe``) and the amortised per-frame cost (``frame``, ``parts``, ``fps``: the
statistics over the ``iters`` intervals of each interval's mean frame). FLOPs are counted on one
steady-state keyframe (the stream's second) and one non-keyframe and amortised by the share of
keyframes in the timed stream.

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


def _environment(device: torch.device) -> dict[str, Any]:
    """Where a measurement ran: device, its name, CPU model, torch threads and version."""
    return {
        "device": str(device),
        "device_name": _device_name(device),
        "cpu_model": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_version": torch.__version__,
    }


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
    if mode == "stream":
        return _measure_stream(
            detector,
            image_size=image_size,
            batch_size=batch_size,
            device=torch.device(device),
            warmup=warmup,
            iters=iters,
            seed=seed,
        )
    if mode != "window":
        raise ValueError(
            f"{type(aggregator).__name__} has mode={mode!r}; measure() knows 'window' and 'stream'"
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
    names = _part_names(flop_recorder, recorder)
    parts = _parts(names, part_seconds, flops_per_part, calls_per_part, parents)
    frame_stats = _statistics(frame_seconds)
    return {
        "mode": "window",
        "frame": {
            "seconds": frame_stats,
            "samples": frame_seconds,
            "unscoped_seconds": _statistics(_unscoped(frame_seconds, part_seconds, names, parents)),
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
        **_environment(device),
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


def _part_names(*recorders: _Recorder) -> list[str]:
    """Every scope the recorders saw: :data:`KNOWN_PARTS` first, then the others as they occurred."""
    seen = list(dict.fromkeys(name for recorder in recorders for name in recorder.order))
    return [p for p in KNOWN_PARTS if p in seen] + [p for p in seen if p not in KNOWN_PARTS]


def _parts(
    names: list[str],
    part_seconds: list[dict[str, float]],
    flops: dict[str, int],
    calls: dict[str, int],
    parents: dict[str, str | None],
) -> dict[str, dict[str, Any]]:
    """The ``parts`` entry of a measurement: per name, statistics over ``part_seconds`` (one dict per
    sample; a sample without the part counts 0 s), FLOPs, calls, parent scope, samples with it."""
    parts: dict[str, dict[str, Any]] = {}
    for name in names:
        samples = [sample.get(name, 0.0) for sample in part_seconds]
        parts[name] = {
            "seconds": _statistics(samples),
            "samples": samples,
            "flops": flops.get(name),
            "calls": calls.get(name),
            "parent": parents[name],
            "frames": sum(name in sample for sample in part_seconds),
        }
    return parts


def _unscoped(
    frame_seconds: list[float], part_seconds: list[dict[str, float]], names: list[str], parents: dict
) -> list[float]:
    """Per sample: time outside every top-level scope (glue code)."""
    top_level = [name for name in names if parents[name] is None]
    return [
        total - sum(sample.get(name, 0.0) for name in top_level)
        for total, sample in zip(frame_seconds, part_seconds, strict=True)
    ]


def _measure_stream(
    detector: Any,
    *,
    image_size: int,
    batch_size: int,
    device: torch.device,
    warmup: int,
    iters: int,
    seed: int,
) -> dict[str, Any]:
    """:func:`measure` for a stream aggregator (see the module docstring, "Stream mode")."""
    from harness.infer import stream_features

    aggregator = detector.aggregator
    interval = int(aggregator.keyframe_interval)
    detector.eval().to(device)
    generator = torch.Generator().manual_seed(seed)
    pool_size = min(iters * interval, 16)  # distinct synthetic frames, cycled (content barely matters)
    pool = torch.randint(
        0, 256, (pool_size, batch_size, 3, image_size, image_size), generator=generator, dtype=torch.uint8
    ).to(device)  # (P, B, 3, S, S)

    def new_stream() -> list[Any]:
        return [aggregator.init_state() for _ in range(batch_size)]

    def run_frame(position: int, states: list[Any]) -> None:
        agg_out = stream_features(
            detector,
            pool[position % pool_size],
            positions=[position] * batch_size,
            frame_ids=[position] * batch_size,
            states=states,
        )
        detector.detect(agg_out, image_size)

    # FLOPs: a steady-state keyframe (the first after position 0, so it has a memory to update) and
    # the first non-keyframe, each after the frames before it in the same stream
    horizon = range(1, 2 * interval + 2)
    kinds = {"keyframe": next(p for p in horizon if aggregator.is_keyframe(p))}
    non_key = next((p for p in horizon if not aggregator.is_keyframe(p)), None)
    if non_key is not None:
        kinds["non_keyframe"] = non_key
    counted: dict[str, _Recorder] = {}
    counted_flops: dict[str, int] = {}
    for kind, position in kinds.items():
        states = new_stream()
        for earlier in range(position):
            run_frame(earlier, states)
        with FlopCounterMode(display=False) as counter:
            counted[kind] = _Recorder(device, flop_counter=counter)
            with _recording(counted[kind]):
                run_frame(position, states)
        counted_flops[kind] = int(counter.get_total_flops())

    # warm-up: the first frames of the stream (at least its first keyframe), untimed; the timed frames
    # continue the stream from the next keyframe on, in steady state
    states = new_stream()
    start = next(
        p for p in range(max(warmup, 1), max(warmup, 1) + 2 * interval + 1) if aggregator.is_keyframe(p)
    )
    for position in range(start):
        run_frame(position, states)
    recorder = _Recorder(device)
    frame_seconds: list[float] = []
    part_seconds: list[dict[str, float]] = []
    part_calls: list[dict[str, int]] = []
    is_key: list[bool] = []
    with _recording(recorder):
        for position in range(start, start + iters * interval):
            recorder.new_frame()
            _synchronize(device)
            tic = time.perf_counter()
            run_frame(position, states)
            _synchronize(device)
            frame_seconds.append((time.perf_counter() - tic) / batch_size)
            part_seconds.append(
                {name: entry["seconds"] / batch_size for name, entry in recorder.frame.items()}
            )
            part_calls.append({name: int(entry["calls"]) for name, entry in recorder.frame.items()})
            is_key.append(bool(aggregator.is_keyframe(position)))

    parents = {**recorder.parents}
    for kind_recorder in counted.values():
        parents = {**kind_recorder.parents, **parents}
    names = _part_names(*counted.values(), recorder)
    key_fraction = sum(is_key) / len(is_key)
    weight = {"keyframe": key_fraction, "non_keyframe": 1.0 - key_fraction}

    def flops_of(name: str) -> int | None:
        values = {k: r.frame[name]["flops"] for k, r in counted.items() if name in r.frame}
        if not values:
            return None
        return int(round(sum(weight[k] * values.get(k, 0) for k in counted)))

    by_kind: dict[str, Any] = {}
    for kind, wanted in (("keyframe", True), ("non_keyframe", False)):
        rows = [i for i, key in enumerate(is_key) if key == wanted]
        if not rows:
            by_kind[kind] = None
            continue
        seconds = [frame_seconds[i] for i in rows]
        samples = [part_seconds[i] for i in rows]
        kind_recorder = counted.get(kind)
        kind_flops = {n: int(e["flops"]) for n, e in kind_recorder.frame.items()} if kind_recorder else {}
        kind_calls = {n: int(e["calls"]) for n, e in kind_recorder.frame.items()} if kind_recorder else {}
        by_kind[kind] = {
            "seconds": _statistics(seconds),
            "samples": seconds,
            "unscoped_seconds": _statistics(_unscoped(seconds, samples, names, parents)),
            "flops": counted_flops.get(kind),
            "frames": len(rows),
            "parts": _parts(
                [n for n in names if any(n in sample for sample in samples)],
                samples,
                kind_flops,
                kind_calls,
                parents,
            ),
        }

    # amortised: each keyframe interval's mean frame is one sample
    chunks = [range(start, start + interval) for start in range(0, len(frame_seconds), interval)]
    chunk_seconds = [float(np.mean([frame_seconds[i] for i in chunk])) for chunk in chunks]
    chunk_parts = [
        {n: float(np.mean([part_seconds[i].get(n, 0.0) for i in chunk])) for n in names} for chunk in chunks
    ]
    amortised_flops = {n: f for n in names if (f := flops_of(n)) is not None}
    parts = _parts(names, chunk_parts, amortised_flops, {}, parents)
    for name, part in parts.items():  # mean calls per frame and frames with the part, over the stream
        part["calls"] = float(np.mean([calls.get(name, 0) for calls in part_calls]))
        part["frames"] = sum(name in sample for sample in part_seconds)
    frame_stats = _statistics(chunk_seconds)
    frame_flops = int(round(sum(weight[k] * counted_flops[k] for k in counted_flops)))
    return {
        "mode": "stream",
        "frame": {
            "seconds": frame_stats,
            "samples": chunk_seconds,
            "unscoped_seconds": _statistics(_unscoped(chunk_seconds, chunk_parts, names, parents)),
            "flops": frame_flops,
        },
        "fps": 1.0 / frame_stats["median"],
        "parts": parts,
        "keyframe": by_kind["keyframe"],
        "non_keyframe": by_kind["non_keyframe"],
        "keyframe_interval": interval,
        "key_fraction": key_fraction,
        "first_timed_position": start,
        "params": count_parameters(detector),
        "image_size": image_size,
        "num_supports": 0,
        "offsets": [],
        "batch_size": batch_size,
        "iters": iters,
        "warmup": warmup,
        **_environment(device),
        "timed": (
            f"stream engine at batch {batch_size} (videos in lockstep): {iters} keyframe intervals of "
            f"{interval} frames ({iters * interval} timed frames from position {start} of a stream whose "
            f"first {start} frames were the untimed warm-up): forward_low on uint8 {image_size}x{image_size} "
            "frames, forward_high on keyframes, the method's step, head with post-processing (NMS); "
            "keyframe and non_keyframe: statistics over those frames; frame and parts (amortised): "
            "statistics over the intervals of each interval's mean frame; time.perf_counter"
            + (" between torch.cuda.synchronize() calls" if device.type == "cuda" else " on CPU")
            + f" with {torch.get_num_threads()} torch threads; per frame = per batch / {batch_size}; "
            "frame decoding not included"
        ),
        "flops_note": (
            "FLOPs from torch.utils.flop_counter.FlopCounterMode (matmul/conv, 2 per multiply-add) on "
            "one steady-state keyframe (the stream's second) and one non-keyframe (per batch of "
            f"{batch_size}), per part as the counter's increase inside the part's scope; amortised "
            f"= key_fraction ({key_fraction:.3f}) x keyframe + the rest x non-keyframe; custom ops "
            "are counted by their torch decomposition only; elementwise ops are not counted"
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
    A stream measurement's whole-frame and part columns are amortised; :func:`_stream_columns` adds
    the keyframe and non-keyframe ones.
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
    if measurement.get("mode") == "stream":
        row.update(_stream_columns(measurement))
    return row


def _stream_columns(measurement: dict[str, Any]) -> dict[str, float]:
    """A stream measurement's extra columns: ``keyframe_interval``, ``key_fraction``, and per frame
    kind (``keyframe``, ``non_keyframe``; absent when the stream had none)
    ``seconds_per_<kind>`` (median) with ``_mean`` and ``_iqr``, ``flops_<kind>_total``, and per part
    ``seconds_<kind>_<part>`` (median) and ``flops_<kind>_<part>``."""
    row = {
        "keyframe_interval": float(measurement["keyframe_interval"]),
        "key_fraction": float(measurement["key_fraction"]),
    }
    for kind in ("keyframe", "non_keyframe"):
        entry = measurement.get(kind)
        if entry is None:
            continue
        row[f"seconds_per_{kind}"] = float(entry["seconds"]["median"])
        row[f"seconds_per_{kind}_mean"] = float(entry["seconds"]["mean"])
        row[f"seconds_per_{kind}_iqr"] = float(entry["seconds"]["iqr"])
        if entry["flops"] is not None:
            row[f"flops_{kind}_total"] = float(entry["flops"])
        for name, part in entry["parts"].items():
            row[f"seconds_{kind}_{name}"] = float(part["seconds"]["median"])
            if part["flops"] is not None:
                row[f"flops_{kind}_{name}"] = float(part["flops"])
    return row
