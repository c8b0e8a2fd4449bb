"""HTML integrity checks shared by the report tests: every image exists, every table row is whole."""

from __future__ import annotations

from pathlib import Path

import lxml.html


def check_html(path: Path) -> list[str]:
    """Parse ``path``; assert that every ``<img>`` resolves to a non-empty file next to it and that every
    table's rows have as many cells as its header. Returns the image sources in page order."""
    tree = lxml.html.parse(str(path))
    sources = []
    for img in tree.iter("img"):
        src = img.get("src")
        assert src, f"{path}: an <img> without src"
        assert img.get("alt") is not None, f"{path}: <img src={src!r}> without alt text"
        target = path.parent / src
        assert target.is_file() and target.stat().st_size > 0, f"{path}: image {src!r} is missing"
        sources.append(src)
    tables = list(tree.iter("table"))
    for number, table in enumerate(tables):
        header = table.xpath("./thead/tr[1]/th")
        assert header, f"{path}: table {number} has no header row"
        for r, row in enumerate(table.xpath("./tbody/tr")):
            cells = row.xpath("./td|./th")
            assert len(cells) == len(header), (
                f"{path}: table {number} row {r} has {len(cells)} cells, header has {len(header)}"
            )
    return sources
