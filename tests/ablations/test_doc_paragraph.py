"""Report prose taken from an ablation module's docstring states the numbers the code used."""

from __future__ import annotations

import pytest

from ablations import stsn
from ablations.base import doc_paragraph

TEXT = """Title line.

Question: does it
help?

Deviations: tested with T = ``TABLE_T`` on ``TABLE_VIDEOS`` videos,
not ``UNKNOWN``."""


def test_paragraph_by_index_joins_lines():
    assert doc_paragraph(TEXT, 1) == "Question: does it help?"


def test_paragraph_by_prefix_substitutes_known_constants_only():
    text = doc_paragraph(TEXT, "Deviations", {"TABLE_T": 7, "TABLE_VIDEOS": None})
    assert text == "Deviations: tested with T = 7 on all videos, not ``UNKNOWN``."


def test_missing_paragraph_is_named():
    with pytest.raises(KeyError, match="Nothing"):
        doc_paragraph(TEXT, "Nothing")


def test_stsn_deviations_name_no_constant():
    sizes = {"TABLE_T": stsn.TABLE_T, "TABLE_VIDEOS": stsn.TABLE_VIDEOS, "SWEEP_VIDEOS": stsn.SWEEP_VIDEOS}
    text = doc_paragraph(stsn.__doc__, "Deviations", sizes)
    assert "``" not in text and f"T = {stsn.TABLE_T}" in text
