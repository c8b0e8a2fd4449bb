"""A tiny document model rendered to both Markdown and HTML.

A report is a list of blocks (headings, paragraphs, tables, figures). The same list renders to
``report.md`` and ``report.html`` so the two never drift apart.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

LONG_CELL = 40  # a column with a longer cell is prose: it wraps in the HTML (number columns never do)


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    """A bulleted list; each item is inline text (``code`` spans allowed, as in a paragraph)."""

    items: list[str]


@dataclass
class Table:
    frame: pd.DataFrame
    caption: str = ""
    float_format: str = "{:.1f}"


@dataclass
class Figure:
    path: Path  # PNG, relative paths are resolved against the report folder
    caption: str = ""


@dataclass
class Document:
    title: str
    blocks: list = field(default_factory=list)

    def add(self, block) -> None:
        self.blocks.append(block)

    # --- Markdown ----------------------------------------------------------------------------
    def to_markdown(self, folder: Path) -> str:
        lines = [f"# {self.title}", ""]
        for block in self.blocks:
            if isinstance(block, Heading):
                lines += ["#" * block.level + " " + block.text, ""]
            elif isinstance(block, Paragraph):
                lines += [block.text, ""]
            elif isinstance(block, Bullets):
                lines += [f"- {item}" for item in block.items] + [""]
            elif isinstance(block, Table):
                if block.caption:
                    lines += [f"*{block.caption}*", ""]
                cells = _format(block).map(lambda v: v.replace("|", "\\|") if isinstance(v, str) else v)
                cells.columns = [str(c).replace("|", "\\|") for c in cells.columns]
                lines += [cells.to_markdown(index=False, disable_numparse=True), ""]
            elif isinstance(block, Figure):
                rel = _relative(block.path, folder)
                lines += [f"![{block.caption}]({rel})", "", f"*{block.caption}*" if block.caption else "", ""]
        return "\n".join(lines)

    # --- HTML --------------------------------------------------------------------------------
    def to_html(self, folder: Path) -> str:
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>{html.escape(self.title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1280px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
            "text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}"
            "td{white-space:nowrap}.table-wrap{overflow-x:auto}"
            "td.wrap{white-space:normal;min-width:14em}.wrap,.text{text-align:left}"
            "img{max-width:100%}.caption{color:#555;font-style:italic}</style></head><body>",
            f"<h1>{html.escape(self.title)}</h1>",
        ]
        for block in self.blocks:
            if isinstance(block, Heading):
                parts.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
            elif isinstance(block, Paragraph):
                parts.append(f"<p>{_inline_html(block.text)}</p>")
            elif isinstance(block, Bullets):
                items = "".join(f"<li>{_inline_html(item)}</li>" for item in block.items)
                parts.append(f"<ul>{items}</ul>")
            elif isinstance(block, Table):
                if block.caption:
                    parts.append(f"<p class='caption'>{_inline_html(block.caption)}</p>")
                parts.append(f"<div class='table-wrap'>{_table_html(_format(block))}</div>")
            elif isinstance(block, Figure):
                rel = _relative(block.path, folder)
                parts.append(
                    f"<figure><img src='{html.escape(str(rel))}' alt='{html.escape(block.caption)}'>"
                    f"<figcaption class='caption'>{_inline_html(block.caption)}</figcaption></figure>"
                )
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, folder: Path, stem: str = "report") -> tuple[Path, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        md, htm = folder / f"{stem}.md", folder / f"{stem}.html"
        md.write_text(self.to_markdown(folder))
        htm.write_text(self.to_html(folder))
        return md, htm


def _format(table: Table) -> pd.DataFrame:
    """Floats formatted for display; NaN shown as empty. The Markdown keeps every cell as formatted
    here (no re-parsing of "+0.0" into "0")."""
    out = table.frame.copy()
    for column in out.columns:
        if pd.api.types.is_float_dtype(out[column]):
            out[column] = out[column].map(lambda v: "" if pd.isna(v) else table.float_format.format(v))
    return out


# cells that read as numbers: "59.1 ± 1.9", "+0.8", "[-9.3, +10.8]", "+2.4, +3.7, -3.9", "n<50", "not run"
_NUMERIC = re.compile(r"[-+\d.,\[\]±\s%]+( \(same arch\.\))?|n<\d+( \(\d+\))?|not run|n/a.*")


def _table_html(frame: pd.DataFrame) -> str:
    """A header row and one row per record, every cell escaped; NaN is an empty cell. Columns holding a
    cell longer than ``LONG_CELL`` characters wrap, the others stay on one line."""

    def text(value) -> str:
        return "" if isinstance(value, float) and pd.isna(value) else str(value)

    kind = {}
    for c in frame.columns:
        values = [text(v) for v in frame[c] if text(v)]
        if any(len(v) > LONG_CELL for v in values):
            kind[c] = " class='wrap'"  # prose: wraps, left-aligned
        elif all(_NUMERIC.fullmatch(v) for v in values):
            kind[c] = ""  # numbers: right-aligned, one line
        else:
            kind[c] = " class='text'"  # short text: left-aligned, one line
    head = "".join(f"<th{kind[c]}>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for record in frame.itertuples(index=False):
        cells = "".join(
            f"<td{kind[c]}>{html.escape(text(v))}</td>" for c, v in zip(frame.columns, record, strict=True)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _relative(path: Path, folder: Path) -> Path:
    path = Path(path)
    try:
        return path.resolve().relative_to(folder.resolve())
    except ValueError:
        return path


_CODE = re.compile(r"(`+)(.+?)\1")


def _inline_html(text: str) -> str:
    """Escape, then render Markdown's code spans (the only inline markup the reports use): a span
    opens with a run of backticks and closes with a run of the same length, so ````a`b```` and
    ```a``` both work as in CommonMark."""
    out, last = [], 0
    for match in _CODE.finditer(text):
        out.append(html.escape(text[last : match.start()]))
        out.append(f"<code>{html.escape(match.group(2).strip())}</code>")
        last = match.end()
    out.append(html.escape(text[last:]))
    return "".join(out)
