"""One-time preparations a method's weights start from, shared under ``<runs_root>/prepared/``.

A row asks for one in its aggregation config (``AggregationConfig.pretrained``)::

    pretrained={"flownet_weights": {"kind": "flownet", "steps": 400, "batch_size": 8, "lr": 2e-3,
                                    "seed": 0, "max_offset": 9, "width": 8}}

:func:`resolve_pretrained` trains each one at most once per dataset and settings (keyed by
:func:`preparation_identity`: the settings and the dataset's identity, never an output path), under a
lock so that parallel runs wait for one another, and returns the aggregation config with the
artifact's path filled into the named keyword (of the alignment for ``aggregator="window"``, else of
the aggregator). Like FGFA's FlowNet pretrained on Flying Chairs, a preparation is an input shared by
every seed and every study: the seeds vary the detector's phase 2 built on it.

Known kinds are listed in :data:`PREPARATIONS` (a plain mapping: preparations are harness code, not
method parts). Later methods add theirs here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.config import AggregationConfig, DataConfig, to_dict
from harness.files import atomic_path
from harness.runs import data_identity, digest, made_once, write_json


def _flownet(data: DataConfig, settings: dict[str, Any], folder: Path, progress: bool) -> Path:
    """A ``FlowNetC`` pretrained on the training split's ground-truth flow (``harness.flow_pretraining``)."""
    import torch

    from harness.data.dataset import load_split
    from harness.flow_pretraining import pretrain_flownet

    expected = {"steps", "batch_size", "lr", "seed", "max_offset", "width"}
    if set(settings) != expected:
        raise ValueError(f"flownet preparation takes exactly {sorted(expected)}, got {sorted(settings)}")
    result = pretrain_flownet(
        load_split(data, data.train_split),
        image_size=data.image_size,
        progress=progress,
        **settings,
    )
    weights = folder / "weights.pt"
    with atomic_path(weights) as tmp:
        torch.save(result, tmp)
    write_json(folder / "metrics.json", result["metrics"])
    return weights


# kind -> (data config, settings, output folder, progress) -> artifact path
PREPARATIONS: dict[str, Callable[[DataConfig, dict[str, Any], Path, bool], Path]] = {"flownet": _flownet}
ARTIFACT_NAMES = {"flownet": "weights.pt"}


def preparation_identity(data: DataConfig, spec: dict[str, Any]) -> dict[str, Any]:
    """What a preparation depends on: its settings and the training data (not the test section,
    not the row, not where results are written)."""
    kind = spec.get("kind")
    if kind not in PREPARATIONS:
        raise KeyError(f"unknown preparation kind {kind!r}; known: {', '.join(sorted(PREPARATIONS))}")
    data_fields = {k: v for k, v in to_dict(data).items() if k not in ("train_support", "still_fraction")}
    return {"preparation": dict(spec), "data": data_fields, **data_identity(data)}


def preparation_dir(runs_root: Path | str, data: DataConfig, spec: dict[str, Any]) -> Path:
    """``<runs_root>/prepared/<kind>-<hash>`` (not created)."""
    return Path(runs_root) / "prepared" / f"{spec['kind']}-{digest(preparation_identity(data, spec))}"


def prepare(runs_root: Path | str, data: DataConfig, spec: dict[str, Any], *, progress: bool = True) -> Path:
    """The artifact of ``spec`` on ``data``, made now unless a finished one exists."""
    identity = preparation_identity(data, spec)
    folder = preparation_dir(runs_root, data, spec)
    settings = {k: v for k, v in spec.items() if k != "kind"}

    def make() -> Path:
        return PREPARATIONS[spec["kind"]](data, settings, folder, progress)

    return made_once(folder, identity, folder / ARTIFACT_NAMES[spec["kind"]], make, what="preparation")


def resolve_pretrained(
    aggregation: AggregationConfig, data: DataConfig, *, runs_root: Path | str, progress: bool = True
) -> AggregationConfig:
    """``aggregation`` with each ``pretrained`` entry made (or reused) and its path set as a keyword."""
    if not aggregation.pretrained:
        return aggregation
    paths = {
        kwarg: str(prepare(runs_root, data, spec, progress=progress))
        for kwarg, spec in aggregation.pretrained.items()
    }
    if aggregation.aggregator == "window":
        return dataclasses.replace(aggregation, alignment_kwargs={**aggregation.alignment_kwargs, **paths})
    return dataclasses.replace(aggregation, aggregator_kwargs={**aggregation.aggregator_kwargs, **paths})
