"""Bad-input handling shared by the readers: one error type and a report of what was skipped.

Readers take ``on_bad_input="raise"`` (default: the first problem raises :class:`DataError` whose
message names the file and the problem) or ``"skip"`` (the bad frame, box or video is left out and
counted in a :class:`SkipReport`). A wrong label is never produced silently.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

logger = logging.getLogger(__name__)

OnBadInput = Literal["raise", "skip"]

# The reason a frame missing from the middle (or start) of a video is counted under: frames are
# numbered 0..n-1, as FGFA's lists and loaders assume.
GAP_IN_FRAME_NUMBERS = "missing from its video (gap in the frame numbers)"


class DataError(ValueError):
    """Malformed or inconsistent input data; the message names the file and the problem."""


@dataclass
class SkipReport:
    """What a reader skipped with ``on_bad_input="skip"``.

    Attributes:
        counts: number of skipped items per ``"<kind>: <reason>"`` key, kind being frame, box or video.
        examples: the first ``max_examples`` full messages (file and problem).
    """

    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 10

    def add(self, kind: str, reason: str, message: str, count: int = 1) -> None:
        self.counts[f"{kind}: {reason}"] += count
        if len(self.examples) < self.max_examples:
            self.examples.append(message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def count(self, kind: str) -> int:
        """Number of skipped items of one kind (``"frame"``, ``"box"`` or ``"video"``)."""
        return sum(n for key, n in self.counts.items() if key.startswith(f"{kind}:"))

    def summary(self) -> str:
        if not self.total:
            return "nothing skipped"
        lines = [f"skipped {self.total} item(s):"]
        lines += [f"  {n:6d}  {key}" for key, n in sorted(self.counts.items())]
        lines += ["first examples:"] + [f"  {example}" for example in self.examples]
        return "\n".join(lines)


class BadInputPolicy:
    """Raise or record a problem, as chosen by ``on_bad_input``."""

    def __init__(self, on_bad_input: OnBadInput, report: SkipReport | None = None):
        if on_bad_input not in ("raise", "skip"):
            raise ValueError(f"on_bad_input must be 'raise' or 'skip', got {on_bad_input!r}")
        self.on_bad_input = on_bad_input
        self.report = report if report is not None else SkipReport()

    def problem(self, kind: str, reason: str, source: str, detail: str = "", *, count: int = 1) -> None:
        """Handle one problem with ``source`` (a file path): raise, or count it as ``count`` skipped
        ``kind`` items (one problem can leave out several, e.g. the frames missing from a video)."""
        message = f"{source}: {reason}" + (f" ({detail})" if detail else "")
        if self.on_bad_input == "raise":
            raise DataError(message)
        self.report.add(kind, reason, message, count)

    def log_summary(self, what: str) -> None:
        if self.report.total:
            logger.warning("%s: %s", what, self.report.summary())


def first_few(items: list, limit: int = 5) -> str:
    """``"a, b, c"``, or ``"a, b, c, ... (12 in all)"`` when there are more than ``limit``."""
    shown = ", ".join(str(item) for item in items[:limit])
    return shown if len(items) <= limit else f"{shown}, ... ({len(items)} in all)"
