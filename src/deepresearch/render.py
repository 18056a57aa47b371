"""Rendering a session's events in a terminal (``deepresearch ask``)."""

from __future__ import annotations

from rich.console import Console
from rich.markdown import Markdown
from rich.panel import Panel
from rich.style import Style
from rich.text import Text

from deepresearch.events import (
    Cancelled,
    Completed,
    Error,
    Event,
    FinalAnswer,
    Init,
    NoAnswer,
    Queued,
    RoundStart,
    SessionStart,
    Thinking,
    Timeout,
    ToolCallStart,
    ToolError,
    ToolResult,
)

PREVIEW_CHARS = 160


class TerminalRenderer:
    """Prints each event as it arrives: rounds, reasoning, tool calls, the answer."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._in_thought = False

    @property
    def console(self) -> Console:
        return self._console

    def _end_thought(self) -> None:
        if self._in_thought:
            self._console.print()
            self._in_thought = False

    def show(self, event: Event) -> None:
        out = self._console
        if isinstance(event, Thinking):
            out.print(Text(event.delta, style="dim italic"), end="")
            self._in_thought = True
            return
        self._end_thought()
        if isinstance(event, SessionStart):
            out.print(f"[bold]Session[/] {event.session_id}")
        elif isinstance(event, Queued):
            out.print(f"[yellow]waiting for a slot: position {event.position}[/]")
        elif isinstance(event, Init):
            out.print("[green]slot acquired[/]")
        elif isinstance(event, RoundStart):
            out.rule(f"round {event.round}", style="blue")
        elif isinstance(event, ToolCallStart):
            out.print(Text.assemble(("→ ", "cyan"), (event.content, "bold cyan")))
        elif isinstance(event, ToolResult):
            out.print(Text(f"  ✓ {event.content}", style="green"))
        elif isinstance(event, ToolError):
            out.print(Text(f"  ✗ {event.content}", style="red"))
        elif isinstance(event, FinalAnswer):
            self._answer(event)
        elif isinstance(event, Completed):
            out.print(f"[bold green]✓ {event.content or 'completed'}[/]")
        elif isinstance(event, Error | Timeout | NoAnswer | Cancelled):
            out.print(Text(f"✗ {event.type}: {event.content}", style="bold red"))

    def _answer(self, event: FinalAnswer) -> None:
        out = self._console
        out.print(Panel(Markdown(event.answer_data.answer), title="Answer", border_style="green"))
        if not event.answer_data.citations:
            return
        out.print("[bold]Sources[/]")
        for citation in event.answer_data.citations:
            preview = " ".join(citation.preview.split())
            if len(preview) > PREVIEW_CHARS:
                preview = preview[:PREVIEW_CHARS] + "…"
            out.print(
                Text.assemble(
                    (f"[{citation.id}] ", "bold"),
                    (citation.title or citation.source_id, "bold cyan"),
                    (f"  {citation.source_id}" if citation.title else "", "dim"),
                )
            )
            out.print(Text(f"    {preview}", style="dim"))
            if citation.url:
                out.print(Text("    ") + link(citation.url), overflow="fold")


def link(url: str) -> Text:
    """``url`` as a terminal hyperlink: wrapped over several lines, every piece still opens
    the whole address (OSC 8), where a plain long URL would be cut into dead halves."""
    return Text(url, style=Style(color="blue", underline=True, link=url))
