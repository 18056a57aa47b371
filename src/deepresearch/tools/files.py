"""``parse_file``: the text of files the user uploaded, and nothing outside that folder.

Uploads are untrusted: a DOCX is a zip that may expand to gigabytes, a PDF's
streams may be compression bombs, a parser may loop. So each file is parsed in a
child process with limits on memory (address space), CPU time, wall time and
(for zip-based formats) the total decompressed size, and it may write no file.
A file that trips a limit is that file's error; the server process never holds
the parsed document. With client keys on, each key has its own uploads folder
(``UPLOADS/<owner>``): a session reads only its own key's files.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import signal
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from deepresearch.errors import ToolFailure
from deepresearch.tools.base import Source, ToolContext, ToolOutput
from deepresearch.tools.pages import strip_tags

MAX_FILES = 10
CSV_ROWS = 1000
SNIPPET_CHARS = 300


@dataclass(frozen=True)
class ParseLimits:
    memory_mb: int = 1024  # address space of the parsing child
    cpu_seconds: int = 20
    wall_seconds: float = 30.0
    unzipped_mb: int = 200  # total decompressed size of a DOCX's parts


# The child: limits first, then the parser; its answer is one JSON line on stdout.
CHILD = """
import json, resource, sys
memory, cpu, path, limit, unzipped = sys.argv[1:6]
resource.setrlimit(resource.RLIMIT_AS, (int(memory) * 2**20,) * 2)
resource.setrlimit(resource.RLIMIT_CPU, (int(cpu), int(cpu) + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
from deepresearch.tools.files import parse_here
try:
    print(json.dumps({"text": parse_here(path, int(limit), int(unzipped))}))
except MemoryError:
    print(json.dumps({"error": "it needs more memory than a file may use"}))
except Exception as exc:
    print(json.dumps({"error": str(exc) or type(exc).__name__}))
"""

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

    def __init__(
        self,
        uploads: Path,
        *,
        max_chars: int = 50_000,
        max_bytes: int = 50_000_000,
        limits: ParseLimits = ParseLimits(),
        owner_of: Callable[[str], str | None] = lambda session_id: None,
    ):
        self._uploads = uploads
        self._max_chars = max_chars
        self._max_bytes = max_bytes
        self._limits = limits
        self._owner_of = owner_of  # a session's key owner: its uploads are UPLOADS/<owner>

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
        owner = self._owner_of(context.session_id)
        uploads = self._uploads / owner if owner else self._uploads
        for name in names:
            try:
                key, text = await self._read(uploads, name)
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

    async def _read(self, uploads: Path, name: str) -> tuple[str, str]:
        """The file's name inside the uploads folder and its text, at most ``max_chars``."""
        path, key = await anyio.to_thread.run_sync(self._locate, uploads, name)
        if path.suffix.lower() not in PARSERS:
            raise ToolFailure(f"{name}: unsupported file type (use PDF, DOCX, HTML, TXT, MD, CSV)")
        text = (await self._parse_in_child(path, name)).strip()
        if not text:
            raise ToolFailure(f"{name}: no text found (a scanned document, perhaps)")
        return key, text

    async def _parse_in_child(self, path: Path, name: str) -> str:
        limits = self._limits
        numbers = (limits.memory_mb, limits.cpu_seconds, path, self._max_chars, limits.unzipped_mb)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-c", CHILD, *map(str, numbers),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            start_new_session=True,
        )  # fmt: skip
        try:
            async with asyncio.timeout(limits.wall_seconds):
                out, _ = await proc.communicate()
        except TimeoutError:
            raise ToolFailure(
                f"{name} could not be parsed: it took longer than {limits.wall_seconds:g} s"
            ) from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        try:
            answer = json.loads(out.decode("utf-8", "replace").strip().splitlines()[-1])
        except (ValueError, IndexError):
            # Killed by a limit before it could answer (SIGXCPU, SIGKILL, ...).
            raise ToolFailure(f"{name} could not be parsed within the limits") from None
        if "error" in answer:
            raise ToolFailure(f"{name} could not be parsed: {answer['error']}")
        return str(answer["text"])

    def _locate(self, uploads: Path, name: str) -> tuple[Path, str]:
        """Refuses anything that does not resolve to a regular file inside the uploads."""
        try:
            return self._check(uploads, name)
        except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long, ...
            # The OS's message would show the server's absolute paths: name only the file.
            raise ToolFailure(f"{name} cannot be read") from exc

    def _check(self, uploads: Path, name: str) -> tuple[Path, str]:
        root = uploads.resolve()
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


def parse_here(path: str, limit: int, unzipped_mb: int) -> str:
    """In the child: the file's text, at most ``limit`` characters (and a note)."""
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix == ".docx":
        with zipfile.ZipFile(file) as archive:
            total = sum(info.file_size for info in archive.infolist())
        if total > unzipped_mb * 2**20:
            raise ValueError(f"it expands to more than {unzipped_mb} MB")
    text = PARSERS[suffix](file, limit).strip()
    if len(text) > limit:
        text = text[:limit] + f"\n[truncated at {limit} characters]"
    return text


def _pdf(path: Path, limit: int) -> str:
    import pypdf

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
    import docx
    from docx.table import Table

    blocks: list[str] = []
    for block in docx.Document(str(path)).iter_inner_content():
        if isinstance(block, Table):
            blocks.extend(" | ".join(cell.text for cell in row.cells) for row in block.rows)
        elif block.text:
            blocks.append(block.text)
    return "\n".join(blocks)


def _html(path: Path, limit: int) -> str:
    import trafilatura

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
