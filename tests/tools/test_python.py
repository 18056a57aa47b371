"""PythonInterpreter runs real code in the real sandbox: these tests need ``unshare -rn``."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest

from deepresearch.errors import ToolFailure
from deepresearch.tools.base import ToolContext
from deepresearch.tools.python import PythonInterpreterTool
from deepresearch.tools.sandbox import Sandbox, SandboxLimits
from tests.support import ROOT

QUICK = SandboxLimits(cpu_seconds=1, memory_mb=256, wall_seconds=3, max_output_chars=1000)


async def run(code: str, limits: SandboxLimits = QUICK, sandbox: Sandbox | None = None) -> str:
    tool = PythonInterpreterTool(sandbox or Sandbox(), limits)
    output = await tool.call({"code": code}, ToolContext(session_id="s"))
    return output.text


def scratch_dirs() -> set[str]:
    return {str(path) for path in Path(tempfile.gettempdir()).glob("deepresearch-python-*")}


async def test_prints_what_the_code_prints() -> None:
    tool = PythonInterpreterTool(Sandbox(), QUICK)
    output = await tool.call({"code": "print(6*7)"}, ToolContext(session_id="s"))
    assert output.text == "stdout:\n42"
    assert output.summary == "ran (exit 0)"


async def test_a_syntax_error_is_output_for_the_model_not_a_failure() -> None:
    text = await run("def f(:\n    pass")
    assert text.startswith("stderr:\n")
    assert "SyntaxError" in text
    assert text.endswith("[exit code 1]")


async def test_empty_code_is_a_tool_failure() -> None:
    with pytest.raises(ToolFailure, match="<code>"):
        await run("   ")


async def test_an_endless_loop_is_killed_within_the_wall_limit() -> None:
    started = time.monotonic()
    text = await run("while True:\n    pass")
    assert time.monotonic() - started < QUICK.wall_seconds + 1
    assert "[killed: CPU time limit of 1 s reached]" in text


async def test_sleeping_past_the_wall_limit_times_out_and_keeps_earlier_output() -> None:
    limits = SandboxLimits(wall_seconds=1)
    started = time.monotonic()
    text = await run("import time\nprint('before', flush=True)\ntime.sleep(60)", limits)
    assert time.monotonic() - started < 2
    assert text == "stdout:\nbefore\n[timed out after 1 s]"


async def test_a_memory_bomb_raises_memory_error() -> None:
    text = await run("x = bytearray(2 * 1024**3)")
    assert "MemoryError" in text
    text = await run("x = 'a' * 10**10")
    assert "MemoryError" in text


async def test_writes_are_capped_by_the_file_size_limit() -> None:
    text = await run("open('big', 'wb').write(b'x' * 20 * 2**20)")  # max_file_mb is 16
    assert "No space left on device" in text or "File too large" in text


async def test_the_network_is_unreachable_even_on_loopback() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        # 1.1.1.1 is tried only inside the sandbox, whose namespace has no interfaces up.
        code = (
            "import socket\n"
            f"for address in [('127.0.0.1', {port}), ('1.1.1.1', 53)]:\n"
            "    try:\n"
            "        socket.create_connection(address, timeout=2)\n"
            "        print(address, 'connected')\n"
            "    except OSError as exc:\n"
            "        print(address, exc.errno)\n"
        )
        text = await run(code)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody came
        # The listener works: a connection from here is seen, so the check above can fail.
        with socket.create_connection(("127.0.0.1", port)):
            await asyncio.sleep(0.05)
            listener.accept()[0].close()
    unreachable = 101  # ENETUNREACH
    assert text == f"stdout:\n('127.0.0.1', {port}) {unreachable}\n('1.1.1.1', 53) {unreachable}"


async def test_long_output_is_truncated() -> None:
    text = await run("print('x' * 100_000)")
    assert text == "stdout:\n" + "x" * 1000 + "\n[output truncated to 1000 characters per stream]"


async def test_a_print_bomb_is_stopped() -> None:
    started = time.monotonic()
    text = await run("while True:\n    print('y' * 100_000)")
    assert time.monotonic() - started < 2
    assert "[output truncated" in text
    assert "[stopped for printing too much]" in text


async def test_the_child_sees_none_of_the_servers_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEEPRESEARCH_SECRET", "hunter2")
    text = await run("import os\nprint(os.environ.get('DEEPRESEARCH_SECRET'))\nprint(os.environ)")
    assert text.startswith("stdout:\nNone\n")
    assert "hunter2" not in text
    # Nor the server's processes (whose /proc/<pid>/environ would hold it).
    text = await run("import os\nprint(sorted(p for p in os.listdir('/proc') if p.isdigit()))")
    assert text == "stdout:\n['1', '2']"  # the bootstrap and the code


async def test_the_scratch_dir_is_removed_afterwards() -> None:
    text = await run("import os\nopen('data.txt', 'w').write('x')\nprint(os.getcwd())")
    scratch = text.removeprefix("stdout:\n")
    assert Path(scratch).name.startswith("deepresearch-python-")
    assert scratch not in scratch_dirs()


async def test_processes_left_behind_are_killed_with_the_run() -> None:
    # A detached grandchild keeps stdout open; if it survived, the run would wait for it.
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    time.sleep(60)\n"
        "print('parent done')\n"
    )
    started = time.monotonic()
    text = await run(code)
    assert time.monotonic() - started < 2
    assert text == "stdout:\nparent done"


async def test_a_cancelled_call_returns_promptly_and_cleans_up() -> None:
    before = scratch_dirs()
    task = asyncio.create_task(run("import time\ntime.sleep(60)"))
    await asyncio.sleep(0.5)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1
    assert scratch_dirs() == before


async def test_a_fork_bomb_is_held_to_the_process_limit() -> None:
    # The kernel exempts real root from RLIMIT_NPROC, so as root drop to nobody.
    sandbox = Sandbox(python="/usr/bin/python3", run_as=(65534, 65534))
    if os.geteuid() != 0:
        sandbox = Sandbox()
    if not await sandbox.check():
        pytest.skip(f"no interpreter usable by an unprivileged user: {sandbox.reason}")
    code = (
        "import os, time\n"
        "children = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "        children += 1\n"
        "except OSError as exc:\n"
        "    print(children, exc.strerror)\n"
    )
    limits = SandboxLimits(cpu_seconds=2, wall_seconds=5, max_processes=8)
    text = await run(code, limits, sandbox)
    children, error = text.removeprefix("stdout:\n").split(" ", 1)
    assert error == "Resource temporarily unavailable"
    assert int(children) < 8  # unshare and the bootstrap count too


async def test_without_unshare_no_code_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    for sandbox in (Sandbox(unshare="/nonexistent/unshare"), Sandbox(python="/nonexistent/py")):
        with pytest.raises(ToolFailure, match="the Python sandbox is unavailable"):
            await run(f"open({str(marker)!r}, 'w')", sandbox=sandbox)
        assert not await sandbox.check()
        assert sandbox.reason
    assert not marker.exists()


async def test_code_cannot_touch_the_server_even_after_undoing_its_mounts(
    tmp_path: Path,
) -> None:
    from deepresearch.tools.sandbox import unprivileged_sandbox

    private = tmp_path / "data"
    private.mkdir(mode=0o700)
    (private / "sessions.sqlite").write_text("secret")
    target = ROOT / "SANDBOX_ESCAPED"
    sandbox = unprivileged_sandbox()
    assert await sandbox.check(), sandbox.reason
    code = f"""
import ctypes, os
ctypes.CDLL(None).umount2(b"/tmp", 2)  # the namespace's root may undo its own mounts
for name, attempt in [
    ("write repo", lambda: open({str(target)!r}, "w")),
    ("read data", lambda: open({str(private / "sessions.sqlite")!r}).read()),
    ("list scratch", lambda: os.listdir({str(sandbox.scratch_root)!r})),
]:
    try:
        attempt()
        print(name, "ALLOWED")
    except PermissionError:
        print(name, "refused")
"""
    try:
        result = await sandbox.run_python(code, SandboxLimits(wall_seconds=20))
    finally:
        if sandbox.scratch_root is not None:
            shutil.rmtree(sandbox.scratch_root, ignore_errors=True)
    if os.geteuid() == 0:
        # A root server runs code as nobody: all three are refused.
        assert result.stdout.split("\n")[:3] == [
            "write repo refused",
            "read data refused",
            "list scratch refused",
        ], result.stdout + result.stderr
    else:
        # Not root: code runs as the server's own user, which is the documented limit.
        assert sandbox.scratch_root is None and "write repo" in result.stdout
    assert not target.exists()
