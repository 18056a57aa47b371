"""parse_file reads real files of each format, and nothing outside the uploads folder."""

from __future__ import annotations

import re
from pathlib import Path

import docx
import pytest

from deepresearch.errors import ToolFailure
from deepresearch.tools.base import Source, ToolContext
from deepresearch.tools.files import ParseFileTool


def minimal_pdf(text: str) -> bytes:
    """One page showing ``text`` in Helvetica, with a correct cross-reference table."""
    stream = b"BT /F1 12 Tf 72 712 Td (" + text.encode() + b") Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


@pytest.fixture
def uploads(tmp_path: Path) -> Path:
    folder = tmp_path / "uploads"
    folder.mkdir()
    (tmp_path / "secret.txt").write_text("the server's secret")
    (folder / "notes.txt").write_text("Aspirin lowers fever.\nSecond line é.")
    (folder / "readme.md").write_text("# Title\n\nSome *markdown*.")
    (folder / "trial.csv").write_text("arm,n,events\ntreatment,120,7\nplacebo,118,15\n")
    (folder / "page.html").write_text(
        "<html><head><title>T</title><script>var hidden = 1;</script></head>"
        "<body><p>Statins reduce LDL cholesterol &amp; events.</p></body></html>"
    )
    (folder / "paper.pdf").write_bytes(minimal_pdf("Hello PDF"))
    document = docx.Document()
    document.add_paragraph("Metformin is first-line therapy.")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "HbA1c"
    table.rows[0].cells[1].text = "7.0%"
    document.save(str(folder / "report.docx"))
    (folder / "data.xyz").write_text("?")
    (folder / "sub").mkdir()
    (folder / "link.txt").symlink_to(tmp_path / "secret.txt")
    return folder


async def parse(uploads: Path, *files: str, context: ToolContext | None = None) -> str:
    tool = ParseFileTool(uploads)
    output = await tool.call({"files": list(files)}, context or ToolContext(session_id="s"))
    return output.text


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("notes.txt", "Aspirin lowers fever.\nSecond line é."),
        ("readme.md", "# Title\n\nSome *markdown*."),
        ("trial.csv", "arm | n | events\ntreatment | 120 | 7\nplacebo | 118 | 15"),
        ("report.docx", "Metformin is first-line therapy.\nHbA1c | 7.0%"),
        ("paper.pdf", "Hello PDF"),
    ],
)
async def test_each_format_becomes_a_numbered_source(
    uploads: Path, name: str, expected: str
) -> None:
    context = ToolContext(session_id="s")
    output = await ParseFileTool(uploads).call({"files": [name]}, context)
    assert output.text == f"[1] {name}\n{expected}"
    assert output.summary == "parsed 1 file"
    (source,) = output.sources
    assert (source.source_id, source.title, source.url, source.text) == (
        f"file:{name}",
        name,
        "",
        expected,
    )
    assert context.citations.get(1) == source


async def test_html_keeps_the_text_and_drops_scripts(uploads: Path) -> None:
    text = await parse(uploads, "page.html")
    assert text.startswith("[1] page.html\n")
    assert "Statins reduce LDL cholesterol & events." in text
    assert "hidden" not in text


async def test_numbers_continue_the_sessions_citations(uploads: Path) -> None:
    context = ToolContext(session_id="s")
    context.citations.number(Source(source_id="pmid:1", title="Earlier", url="", text=""))
    text = await parse(uploads, "notes.txt", "paper.pdf", context=context)
    assert text.startswith("[2] notes.txt\n")
    assert "\n\n[3] paper.pdf\nHello PDF" in text
    again = await parse(uploads, "paper.pdf", context=context)
    assert again == "[3] paper.pdf\nHello PDF"  # the same file keeps its number


@pytest.mark.parametrize(
    "name", ["../secret.txt", "/etc/passwd", "link.txt", "sub/../../secret.txt"]
)
async def test_nothing_outside_the_uploads_is_read(uploads: Path, name: str) -> None:
    with pytest.raises(ToolFailure, match="only uploads can be read") as failure:
        await parse(uploads, name)
    assert str(uploads.parent) not in str(failure.value)  # no server paths leak


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.pdf", "no uploaded file is named missing.pdf"),
        ("data.xyz", "data.xyz: unsupported file type"),
        ("sub", "sub is not a file"),
        (".", "only uploads can be read"),
    ],
)
async def test_unreadable_names_fail_clearly(uploads: Path, name: str, message: str) -> None:
    with pytest.raises(ToolFailure, match=re.escape(message)):
        await parse(uploads, name)


async def test_one_bad_file_does_not_sink_the_others(uploads: Path) -> None:
    output = await ParseFileTool(uploads).call(
        {"files": ["missing.txt", "notes.txt"]}, ToolContext(session_id="s")
    )
    assert output.text.startswith("Error: no uploaded file is named missing.txt\n\n[1] notes.txt")
    assert output.summary == "parsed 1 file, 1 failed"


async def test_long_text_is_cut_and_big_files_refused(uploads: Path) -> None:
    (uploads / "long.txt").write_text("a" * 500)
    output = await ParseFileTool(uploads, max_chars=100).call(
        {"files": ["long.txt"]}, ToolContext(session_id="s")
    )
    assert output.text == "[1] long.txt\n" + "a" * 100 + "\n[truncated at 100 characters]"
    with pytest.raises(ToolFailure, match="larger than 100 bytes"):
        await ParseFileTool(uploads, max_bytes=100).call(
            {"files": ["long.txt"]}, ToolContext(session_id="s")
        )


async def test_a_corrupt_file_is_a_per_file_error(uploads: Path) -> None:
    (uploads / "broken.docx").write_bytes(b"not a zip")
    with pytest.raises(ToolFailure, match=re.escape("broken.docx could not be parsed")):
        await parse(uploads, "broken.docx")


async def test_arguments_must_name_files(uploads: Path) -> None:
    with pytest.raises(ToolFailure, match="list of file names"):
        await ParseFileTool(uploads).call({"files": [1]}, ToolContext(session_id="s"))
    with pytest.raises(ToolFailure, match="at least one"):
        await ParseFileTool(uploads).call({"files": [" "]}, ToolContext(session_id="s"))
