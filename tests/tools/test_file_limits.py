"""parse_file parses in a child with limits: zip bombs, slow or greedy parses are the
file's error, never the server's; each key reads only its own uploads."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from deepresearch.errors import ToolFailure
from deepresearch.tools.base import ToolContext
from deepresearch.tools.files import ParseFileTool, ParseLimits


def docx_bomb(path: Path, megabytes: int) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", b"\0" * (megabytes * 2**20))


async def parse(tool: ParseFileTool, *names: str, session: str = "s") -> str:
    output = await tool.call({"files": list(names)}, ToolContext(session_id=session))
    return output.text


async def test_a_docx_that_expands_too_far_is_refused_unparsed(tmp_path: Path) -> None:
    docx_bomb(tmp_path / "bomb.docx", 50)
    assert (tmp_path / "bomb.docx").stat().st_size < 200_000
    tool = ParseFileTool(tmp_path, limits=ParseLimits(unzipped_mb=10))
    with pytest.raises(ToolFailure, match="expands to more than 10 MB"):
        await parse(tool, "bomb.docx")


async def test_a_parse_past_its_memory_or_time_is_this_files_error(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("word " * 2_000_000)
    greedy = ParseFileTool(tmp_path, max_chars=5_000_000, limits=ParseLimits(memory_mb=40))
    with pytest.raises(ToolFailure, match=r"big\.txt could not be parsed"):
        await parse(greedy, "big.txt")
    slow = ParseFileTool(tmp_path, limits=ParseLimits(wall_seconds=0.001))
    with pytest.raises(ToolFailure, match="took longer than"):
        await parse(slow, "big.txt")
    # The same file within ordinary limits parses.
    assert "word word" in await parse(ParseFileTool(tmp_path), "big.txt")


async def test_each_key_reads_only_its_own_uploads(tmp_path: Path) -> None:
    for owner, text in (("ann", "ann's notes"), ("bob", "bob's notes")):
        (tmp_path / owner).mkdir()
        (tmp_path / owner / "notes.txt").write_text(text)
    (tmp_path / "shared.txt").write_text("top level")
    owners = {"s-ann": "ann", "s-bob": "bob"}
    tool = ParseFileTool(tmp_path, owner_of=owners.get)
    assert "ann's notes" in await parse(tool, "notes.txt", session="s-ann")
    assert "bob's notes" in await parse(tool, "notes.txt", session="s-bob")
    for name in ("../bob/notes.txt", "../shared.txt"):
        with pytest.raises(ToolFailure, match="not an uploaded file"):
            await parse(tool, name, session="s-ann")
