"""``PythonInterpreter``: runs the model's code in the sandbox and shows it what came out."""

from __future__ import annotations

import signal
from typing import Any

from deepresearch.errors import ToolFailure
from deepresearch.tools.base import ToolContext, ToolOutput
from deepresearch.tools.sandbox import RunResult, Sandbox, SandboxLimits

# Worded like the prompt Tongyi DeepResearch was trained with, so the model keeps the format.
DESCRIPTION = """Executes Python code in a sandboxed environment. To use this tool, you must \
follow this format:
1. The JSON of the tool call names the tool: {"name": "PythonInterpreter", "arguments": {}}.
2. The Python code to run is placed right after the JSON, inside <code> and </code> tags.

IMPORTANT:
- All code must be written inside the <code></code> tags.
- Use print() to see results; only printed output (and errors) is returned.
- The sandbox has no network access and no files from earlier calls; each call starts afresh.
- Only the standard library is guaranteed to be available.

Example of a correct call:
<tool_call>
{"name": "PythonInterpreter", "arguments": {}}
<code>
import statistics
print(statistics.mean([1, 2, 3]))
</code>
</tool_call>"""

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"code": {"type": "string", "description": "The python code to run."}},
    "required": ["code"],
}


class PythonInterpreterTool:
    """A failed or timed-out program is output, not a ``ToolFailure``: the model reads it."""

    name = "PythonInterpreter"
    description = DESCRIPTION
    parameters = PARAMETERS

    def __init__(self, sandbox: Sandbox, limits: SandboxLimits) -> None:
        self._sandbox = sandbox
        self._limits = limits

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        code = arguments.get("code")
        if not isinstance(code, str) or not code.strip():
            raise ToolFailure("PythonInterpreter needs Python code inside <code></code> tags")
        # Raises ToolFailure, without running anything, where the sandbox cannot be built.
        result = await self._sandbox.run_python(code, self._limits)
        return ToolOutput(text=render(result, self._limits), summary=summarize(result))


def render(result: RunResult, limits: SandboxLimits) -> str:
    parts = []
    if result.stdout:
        parts.append(f"stdout:\n{result.stdout}")
    if result.stderr:
        parts.append(f"stderr:\n{result.stderr}")
    if not parts:
        parts.append("(no output; use print() to see results)")
    if result.timed_out:
        parts.append(f"[timed out after {limits.wall_seconds:g} s]")
    if result.truncated:
        parts.append(f"[output truncated to {limits.max_output_chars} characters per stream]")
    killed_by = _signal_name(result.exit_code - 128)
    if result.exit_code == 128 + signal.SIGXCPU:
        parts.append(f"[killed: CPU time limit of {limits.cpu_seconds} s reached]")
    elif result.exit_code > 128 and killed_by:
        parts.append(f"[killed by {killed_by}]")
    elif result.exit_code < 0 and not result.timed_out:
        # Only the server kills the sandbox from outside, and only for flooding output.
        parts.append("[stopped for printing too much]")
    elif result.exit_code > 0:
        parts.append(f"[exit code {result.exit_code}]")
    return "\n".join(part.rstrip("\n") for part in parts)


def summarize(result: RunResult) -> str:
    if result.timed_out:
        return "timed out"
    if result.exit_code == 128 + signal.SIGXCPU:
        return "killed (CPU time limit)"
    return f"ran (exit {result.exit_code})"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return ""
