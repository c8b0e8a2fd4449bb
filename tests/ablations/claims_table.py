"""Read the verdicts back from a rendered report's claims table (for the quick-ablation tests)."""

from __future__ import annotations


def verdicts(markdown: str) -> dict[str, str]:
    """``{claim text: verdict}`` from the table under the report's ``## Claims`` heading."""
    lines = markdown.split("\n## Claims", 1)[1].splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| claim"))
    out = {}
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        out[cells[0]] = cells[1]
    return out
