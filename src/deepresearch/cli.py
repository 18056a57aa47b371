"""The ``deepresearch`` command: serve, ask, index, worker."""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from deepresearch.config import Settings, load_settings
from deepresearch.errors import ConfigurationError, DeepResearchError
from deepresearch.events import parse_event

if TYPE_CHECKING:
    from deepresearch.render import TerminalRenderer

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepresearch",
        description="A deep-research server for medical-evidence questions.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", help="address to listen on (DEEPRESEARCH_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (DEEPRESEARCH_PORT)")

    ask = commands.add_parser("ask", help="research one question here and print the answer")
    ask.add_argument("question", help="the question, in quotes")
    ask.add_argument("--temperature", type=float, help="sampling temperature (0 to 2)")
    ask.add_argument("--top-p", type=float, help="nucleus sampling (0 to 1)")
    ask.add_argument("--max-tokens", type=int, help="tokens per model reply")

    worker = commands.add_parser(
        "worker",
        help="run sessions from the cluster's queue (distributed mode: DEEPRESEARCH_REDIS_URL)",
    )
    for command in (serve, worker):
        command.add_argument(
            "--log-file",
            type=Path,
            help="write logs to this file (DEEPRESEARCH_LOG_FILE; else stdout)",
        )

    index = commands.add_parser("index", help="build or update the local evidence index")
    index.add_argument("paths", nargs="+", type=Path, help="JSONL(.gz) files or folders")
    return parser


def _settings(**overrides: object) -> Settings:
    chosen = {key: value for key, value in overrides.items() if value is not None}
    return load_settings(**chosen)


def _configure_logging(settings: Settings) -> None:
    """Every log line (ours, uvicorn's, the access log) to stdout or ``--log-file``."""
    handler: logging.Handler
    if settings.log_file is None:
        handler = logging.StreamHandler(sys.stdout)
    else:
        try:
            # Reopens the file when logrotate has moved it away.
            handler = logging.handlers.WatchedFileHandler(settings.log_file, encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(
                f"DEEPRESEARCH_LOG_FILE (--log-file): cannot write {settings.log_file}: "
                f"{exc.strerror or exc}"
            ) from exc
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=settings.log_level, handlers=[handler])
    # httpx logs every request's full URL at INFO, credentials included; ours name backends
    # without them.
    logging.getLogger("httpx").setLevel(
        max(logging.WARNING, logging.getLevelName(settings.log_level))
    )


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from deepresearch.server import create_app
    from deepresearch.server.limits import server_options
    from deepresearch.server.startup import check_data_dir

    settings = _settings(host=args.host, port=args.port, log_file=args.log_file)
    _configure_logging(settings)
    check_data_dir(settings)
    mode = "offline evidence mode (no LLM configured)" if settings.offline else "LLM mode"
    logging.getLogger("deepresearch").info(
        "starting on http://%s:%d in %s", settings.host, settings.port, mode
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's loggers reach the handler set up above
        timeout_graceful_shutdown=5,
        **server_options(settings.header_timeout),
    )
    return 0


async def _ask(settings: Settings, question: str, generation: dict[str, float | int | None]) -> int:
    from deepresearch.render import TerminalRenderer

    console = Console()
    renderer = TerminalRenderer(console)
    # A session store of its own: `ask` shares the evidence index with a server on
    # the same data dir, but must not touch (or be locked out of) its sessions.
    with tempfile.TemporaryDirectory(prefix="deepresearch-ask-") as scratch:
        return await _ask_with(settings, question, generation, renderer, Path(scratch))


async def _ask_with(
    settings: Settings,
    question: str,
    generation: dict[str, float | int | None],
    renderer: TerminalRenderer,
    scratch: Path,
) -> int:
    from deepresearch.runtime.manager import SessionRequest
    from deepresearch.services import open_services

    await _bring_index_up_to_date(settings, renderer.console)
    async with open_services(settings, index_in_background=False, store_dir=scratch) as services:
        session_id = await services.manager.start(
            SessionRequest(question=question, generation=generation, on_disconnect="continue")
        )
        last = None
        async for stored in services.manager.follow(session_id):
            if stored is None:
                continue
            event = parse_event(stored.data)
            renderer.show(event)
            last = event.type
    return 0 if last == "completed" else 1


async def _bring_index_up_to_date(settings: Settings, console: Console) -> None:
    """Build what the index lacks of the corpus before asking, showing progress when there
    is work to do (a first run reads the whole corpus); unchanged files take no time."""
    from deepresearch.search import EvidenceIndex

    paths = [path for path in settings.corpus if path.exists()]
    if not paths:
        return
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    index = EvidenceIndex(settings.index_path)
    progress = _index_progress(console, "indexing the corpus (only when it changed)")
    task = progress.add_task("indexing", total=None)

    def advance(records: int) -> None:
        if not progress.live.is_started:
            progress.start()
        progress.update(task, completed=records)

    try:
        stats = await index.build(paths, advance)
    finally:
        progress.stop()
        index.close()
    if stats.added:
        console.print(
            f"[green]index ready[/]: {stats.documents:,} documents "
            f"({stats.added:,} added) in {stats.seconds:.1f} s"
        )


def _index_progress(console: Console, description: str) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn(description),
        TextColumn("{task.completed:,} records"),
        TimeElapsedColumn(),
        console=console,
    )


def ask(args: argparse.Namespace) -> int:
    settings = _settings(log_level="WARNING")
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, stream=sys.stderr)
    question = args.question.strip()
    if not question:
        raise ConfigurationError("QUESTION: the question is empty")
    generation = {
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_tokens": args.max_tokens,
    }
    try:
        settings.agent_template().for_request(**generation)
    except ValidationError as exc:
        flags = ", ".join(
            f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigurationError(flags) from exc
    return asyncio.run(_ask(settings, question, generation))


async def _index(settings: Settings, paths: list[Path]) -> int:
    from deepresearch.search import EvidenceIndex

    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise ConfigurationError(f"PATH: no such file or folder: {', '.join(missing)}")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    index = EvidenceIndex(settings.index_path)
    console = Console()
    try:
        with _index_progress(console, "indexing") as progress:
            task = progress.add_task("indexing", total=None)
            stats = await index.build(paths, lambda n: progress.update(task, completed=n))
    finally:
        index.close()
    console.print(
        f"[bold green]index ready[/]: {stats.documents:,} documents "
        f"({stats.added:,} added, {stats.skipped_files} unchanged files skipped, "
        f"{stats.bad_records} bad records, {stats.duplicate_ids} repeated ids renamed) "
        f"in {stats.seconds:.1f} s; "
        f"{stats.size_bytes / 1e6:.1f} MB at {settings.index_path}"
    )
    return 0


def index(args: argparse.Namespace) -> int:
    return asyncio.run(_index(_settings(), list(args.paths)))


def worker(args: argparse.Namespace) -> int:
    from deepresearch.runtime.worker import run_worker

    settings = _settings(log_file=args.log_file)
    _configure_logging(settings)
    return asyncio.run(run_worker(settings))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"serve": serve, "ask": ask, "index": index, "worker": worker}
    try:
        return commands[args.command](args)
    except ConfigurationError as exc:
        print(f"deepresearch: {exc}", file=sys.stderr)
        return 2
    except DeepResearchError as exc:
        print(f"deepresearch: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
