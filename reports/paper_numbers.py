"""The papers' reported numbers (``harness/paper_numbers.yaml``, a copy of shared/paper_numbers.yaml)."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml


@cache
def paper_numbers() -> dict[str, Any]:
    text = resources.files("harness").joinpath("paper_numbers.yaml").read_text()
    return yaml.safe_load(text)


def paper(name: str) -> dict[str, Any]:
    numbers = paper_numbers()
    if name not in numbers:
        raise KeyError(f"no paper {name!r} in paper_numbers.yaml; known: {sorted(numbers)}")
    return numbers[name]
