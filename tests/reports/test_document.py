import pandas as pd

from reports.document import Document, Figure, Heading, Paragraph, Table


def test_markdown_and_html_carry_the_same_content(tmp_path):
    doc = Document("T")
    doc.add(Heading("Results"))
    doc.add(Paragraph("uses `devkit` mAP"))
    doc.add(Table(pd.DataFrame({"variant": ["a", "b"], "map": [1.234, float("nan")]}), caption="cap"))
    (tmp_path / "f.png").write_bytes(b"png")
    doc.add(Figure(tmp_path / "f.png", "a figure"))
    md_path, html_path = doc.write(tmp_path)
    md, html = md_path.read_text(), html_path.read_text()
    assert "## Results" in md and "<h2>Results</h2>" in html
    assert "1.2" in md and "1.2" in html and "nan" not in md.lower() and "nan" not in html.lower()
    assert "![a figure](f.png)" in md and "src='f.png'" in html
    assert "<code>devkit</code>" in html


def test_markdown_keeps_cells_as_formatted(tmp_path):
    doc = Document("T")
    doc.add(Table(pd.DataFrame({"claim": ["a", "b"], "a - b": ["+0.0", "+14.0"], "map": [1.0, 2.25]})))
    md = doc.write(tmp_path)[0].read_text()
    assert "+0.0" in md and "+14.0" in md and "2.2" in md
