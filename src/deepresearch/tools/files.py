"""``parse_file``: the text of files the user uploaded, and nothing outside that folder."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import docx
import pypdf
import trafilatura
from docx.table import Table

from deepresearch.errors import ToolFailure
from deepresearch.tools.base import Source, ToolContext, ToolOutput
from deepresearch.tools.pages import strip_tags

MAX_FILES = 10
CSV_ROWS = 1000
SNIPPET_CHARS = 300

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "files": {
            "type": "array",
            "items": {"type": "string"},
            "description": "The file names of the user uploaded local files to be parsed.",
        }
    },
    "required": ["files"],
}


class ParseFileTool:
    """Reads uploads by name; each file becomes a numbered, citable source."""

    name = "parse_file"
    description = (
        "Parse files the user uploaded (PDF, Word .docx, HTML, text, Markdown, CSV) and "
        "return their text. Each file is numbered so it can be cited as [n]."
    )
    parameters = PARAMETERS

    def __init__(self, uploads: Path, *, max_chars: int = 50_000, max_bytes: int = 50_000_000):
        self._uploads = uploads
        self._max_chars = max_chars
        self._max_bytes = max_bytes

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        names = arguments.get("files")
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ToolFailure('parse_file needs {"files": ["name", ...]}: a list of file names')
        names = [n.strip() for n in names if n.strip()][:MAX_FILES]
        if not names:
            raise ToolFailure("parse_file needs at least one file name")
        sections: list[str] = []
        sources: list[Source] = []
        errors: list[str] = []
        for name in names:
            try:
                # Parsing is CPU and disk work: keep it off the event loop.
                key, text = await anyio.to_thread.run_sync(self._read, name)
            except ToolFailure as exc:
                errors.append(str(exc))
                sections.append(f"Error: {exc}")
                continue
            source = Source(
                source_id=f"file:{key}", title=key, url="", text=text, snippet=text[:SNIPPET_CHARS]
            )
            number = context.citations.number(source)
            sources.append(source)
            sections.append(f"[{number}] {key}\n{text}")
        if not sources:
            raise ToolFailure("; ".join(errors))
        summary = f"parsed {len(sources)} file" + ("s" if len(sources) != 1 else "")
        if errors:
            summary += f", {len(errors)} failed"
        return ToolOutput(text="\n\n".join(sections), summary=summary, sources=tuple(sources))

    def _read(self, name: str) -> tuple[str, str]:
        """The file's name inside the uploads folder and its text, at most ``max_chars``."""
        path, key = self._locate(name)
        parser = PARSERS.get(path.suffix.lower())
        if parser is None:
            raise ToolFailure(f"{name}: unsupported file type (use PDF, DOCX, HTML, TXT, MD, CSV)")
        try:
            text = parser(path, self._max_chars).strip()
        # Uploads are untrusted input; whatever a parser trips over is this file's error.
        except Exception as exc:
            raise ToolFailure(f"{name} could not be parsed: {exc}") from exc
        if not text:
            raise ToolFailure(f"{name}: no text found (a scanned document, perhaps)")
        if len(text) > self._max_chars:
            text = text[: self._max_chars] + f"\n[truncated at {self._max_chars} characters]"
        return key, text

    def _locate(self, name: str) -> tuple[Path, str]:
        """Refuses anything that does not resolve to a regular file inside the uploads."""
        try:
            return self._check(name)
        except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long, ...
            # The OS's message would show the server's absolute paths: name only the file.
            raise ToolFailure(f"{name} cannot be read") from exc

    def _check(self, name: str) -> tuple[Path, str]:
        root = self._uploads.resolve()
        outside = ToolFailure(f"{name} is not an uploaded file; only uploads can be read")
        if "\x00" in name or Path(name).is_absolute():
            raise outside
        # resolve() follows every symlink and "..", so the check sees the real target.
        path = (root / name).resolve()
        if path == root or not path.is_relative_to(root):
            raise outside
        if not path.exists():
            raise ToolFailure(f"no uploaded file is named {name}")
        if not path.is_file():  # directories, and FIFOs or devices that would block a read
            raise ToolFailure(f"{name} is not a file")
        if path.stat().st_size > self._max_bytes:
            raise ToolFailure(f"{name} is larger than {self._max_bytes} bytes")
        return path, path.relative_to(root).as_posix()


def _pdf(path: Path, limit: int) -> str:
    reader = pypdf.PdfReader(path)
    if reader.is_encrypted:
        reader.decrypt("")  # many "protected" PDFs only restrict printing or copying
    pages: list[str] = []
    for page in reader.pages:
        pages.append(page.extract_text() or "")
        if sum(map(len, pages)) > limit:  # later pages would be cut anyway
            break
    return "\n\n".join(pages)


def _docx(path: Path, limit: int) -> str:
    blocks: list[str] = []
    for block in docx.Document(str(path)).iter_inner_content():
        if isinstance(block, Table):
            blocks.extend(" | ".join(cell.text for cell in row.cells) for row in block.rows)
        elif block.text:
            blocks.append(block.text)
    return "\n".join(blocks)


def _html(path: Path, limit: int) -> str:
    markup = path.read_bytes().decode("utf-8", errors="replace")
    extracted = trafilatura.extract(markup, include_tables=True)
    if extracted:
        return extracted
    # trafilatura finds no main content in short or odd pages: keep every visible word.
    return strip_tags(markup)


def _plain(path: Path, limit: int) -> str:
    with path.open("rb") as f:
        return f.read(limit * 4 + 4).decode("utf-8", errors="replace")  # 4 bytes per char at most


def _csv(path: Path, limit: int) -> str:
    lines: list[str] = []
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        for number, row in enumerate(csv.reader(f)):
            if number == CSV_ROWS:
                lines.append(f"[only the first {CSV_ROWS} rows are shown]")
                break
            lines.append(" | ".join(row))
    return "\n".join(lines)


PARSERS: dict[str, Callable[[Path, int], str]] = {
    ".pdf": _pdf,
    ".docx": _docx,
    ".html": _html,
    ".htm": _html,
    ".txt": _plain,
    ".md": _plain,
    ".csv": _csv,
}
