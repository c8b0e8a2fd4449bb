"""The papers' reported numbers (``harness/paper_numbers.yaml``, a copy of shared/paper_numbers.yaml).

Each paper carries ``protocol``: which mAP its numbers use (``devkit`` = ILSVRC devkit / FGFA
size-dependent IoU threshold, ``coco`` = a COCO evaluator). A report puts the paper's number beside
the harness's figure of the same protocol (:data:`PROTOCOL_COLUMN`).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml

# protocol -> the results-table column measured the same way as the paper's mAP@0.5
PROTOCOL_COLUMN = {"devkit": "devkit_map", "coco": "coco_ap50"}


@cache
def paper_numbers() -> dict[str, Any]:
    text = resources.files("harness").joinpath("paper_numbers.yaml").read_text()
    return yaml.safe_load(text)


def paper(name: str) -> dict[str, Any]:
    numbers = paper_numbers()
    if name not in numbers:
        raise KeyError(f"no paper {name!r} in paper_numbers.yaml; known: {sorted(numbers)}")
    return numbers[name]


def protocol(name: str) -> str:
    """The evaluation protocol of paper ``name``'s numbers: a key of :data:`PROTOCOL_COLUMN`."""
    value = paper(name).get("protocol")
    if value not in PROTOCOL_COLUMN:
        raise KeyError(
            f"paper {name!r} has protocol {value!r} in paper_numbers.yaml; "
            f"expected one of {sorted(PROTOCOL_COLUMN)}"
        )
    return value
