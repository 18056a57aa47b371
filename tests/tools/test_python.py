"""PythonInterpreter runs real code in the real sandbox (bubblewrap, user namespaces)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from deepresearch.errors import ToolFailure
from deepresearch.tools.base import ToolContext
from deepresearch.tools.python import PythonInterpreterTool
from deepresearch.tools.sandbox import Sandbox, SandboxLimits, unprivileged_sandbox
from tests.support import ROOT

# The wall limit is far from what any test here needs: on a loaded machine the code
# may get a small share of a core (an endless loop once reached 3 s of wall time
# before its 1 s of CPU), and a test of the wall limit sets its own.
QUICK = SandboxLimits(cpu_seconds=1, memory_mb=256, wall_seconds=30, max_output_chars=1000)


def server_sandbox() -> Sandbox:
    """What a server running as this user gets (as root: code runs as nobody)."""
    return unprivileged_sandbox(allow_same_user=True)


async def run(code: str, limits: SandboxLimits = QUICK, sandbox: Sandbox | None = None) -> str:
    tool = PythonInterpreterTool(sandbox or server_sandbox(), limits)
    output = await tool.call({"code": code}, ToolContext(session_id="s"))
    return output.text


async def test_prints_what_the_code_prints() -> None:
    tool = PythonInterpreterTool(server_sandbox(), QUICK)
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


async def test_an_endless_loop_is_killed_by_the_cpu_limit() -> None:
    text = await run("while True:\n    pass")
    assert "[killed: CPU time limit of 1 s reached]" in text


async def test_sleeping_past_the_wall_limit_times_out_and_keeps_earlier_output() -> None:
    # Long enough for the sandbox and Python to start and print on a loaded machine.
    limits = SandboxLimits(wall_seconds=5)
    text = await run("import time\nprint('before', flush=True)\ntime.sleep(60)", limits)
    assert text == "stdout:\nbefore\n[timed out after 5 s]"


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
    # The sandbox has a loopback of its own, with nothing listening: refused (111); and
    # no route anywhere else (101).
    assert text == f"stdout:\n('127.0.0.1', {port}) 111\n('1.1.1.1', 53) 101"


async def test_long_output_is_truncated() -> None:
    text = await run("print('x' * 100_000)")
    assert text == "stdout:\n" + "x" * 1000 + "\n[output truncated to 1000 characters per stream]"


async def test_a_print_bomb_is_stopped() -> None:
    # A wall limit it cannot reach: the flood is what stops it, not the clock.
    limits = SandboxLimits(cpu_seconds=30, wall_seconds=60, max_output_chars=1000)
    text = await run("while True:\n    print('y' * 100_000)", limits)
    assert "timed out" not in text
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
    assert text == "stdout:\n['1', '2']"  # bwrap's init and the code


async def test_scratch_files_do_not_outlive_the_run() -> None:
    text = await run("import os\nopen('data.txt', 'w').write('x')\nprint(os.getcwd())")
    assert text == "stdout:\n/tmp"
    text = await run("import os\nprint(os.listdir('.'))")
    assert text == "stdout:\n['main.py']"


async def test_processes_left_behind_are_killed_with_the_run() -> None:
    # A detached grandchild keeps stdout open; if it survived, the run would wait for it.
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    time.sleep(60)\n"
        "print('parent done')\n"
    )
    text = await run(code)  # had it waited for the grandchild, it would say "timed out"
    assert text == "stdout:\nparent done"


async def test_a_cancelled_call_returns_promptly_and_cleans_up() -> None:
    task = asyncio.create_task(run("import time\ntime.sleep(60)"))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        # Had the child been left to run, this would wait for its 60 s sleep.
        await asyncio.wait_for(task, timeout=10)


async def test_without_bubblewrap_or_python_no_code_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    for sandbox in (Sandbox(bwrap="/nonexistent/bwrap"), Sandbox(python="/nonexistent/py")):
        with pytest.raises(ToolFailure, match="the Python sandbox is unavailable"):
            await run(f"open({str(marker)!r}, 'w')", sandbox=sandbox)
        assert not await sandbox.check()
        assert sandbox.reason
    assert not marker.exists()


async def test_a_server_not_running_as_root_runs_no_code_unless_allowed() -> None:
    refused = Sandbox(refused="the server runs as uid 1000")
    assert refused.available is False and not await refused.check()
    with pytest.raises(ToolFailure, match="unavailable"):
        await run("print(1)", sandbox=refused)
    if os.geteuid() != 0:
        assert unprivileged_sandbox().available is False
        assert "DEEPRESEARCH_PYTHON_SAME_USER" in unprivileged_sandbox().reason


FORK_BOMB = """
import os, time
children = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(60)
        children += 1
except OSError as exc:
    print(children, exc.strerror)
"""
THREAD_BOMB = """
import threading, time
threads = 0
try:
    while True:
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
        threads += 1
except RuntimeError as exc:
    print(threads, exc)
"""


@pytest.mark.parametrize("bomb", [FORK_BOMB, THREAD_BOMB], ids=["fork", "thread"])
async def test_fork_and_thread_bombs_are_held_to_the_process_limit(bomb: str) -> None:
    limits = SandboxLimits(cpu_seconds=2, wall_seconds=10, max_processes=8)
    text = await run(bomb, limits)
    count, error = text.removeprefix("stdout:\n").split(" ", 1)
    assert int(count) < 8, text
    assert "Resource temporarily unavailable" in error or "can't start new thread" in error


# Each attempt prints "<name> refused" or "<name> ALLOWED".
ATTACKS = """
import ctypes, os, signal, socket
libc = ctypes.CDLL(None, use_errno=True)
def attempt(name, action):
    try:
        result = action()
    except (OSError, RuntimeError):
        print(name, "refused")
        return
    print(name, "refused" if result is False else "ALLOWED")
attempt("undo scratch mount", lambda: libc.umount2(b"/tmp", 2) == 0)
attempt("mount over usr", lambda: libc.mount(b"tmpfs", b"/usr", b"tmpfs", 0, None) == 0)
attempt("remount usr writable", lambda: libc.mount(b"none", b"/usr", None, 32 | 4096, None) == 0)
attempt("write usr", lambda: open("/usr/escaped", "w"))
attempt("read data dir", lambda: open(DATA).read())
attempt("read shadow", lambda: open("/etc/shadow").read())
attempt("write repo", lambda: open(REPO, "w"))
attempt("write venv", lambda: open(VENV, "w"))
attempt("connect to host", lambda: socket.create_connection(("127.0.0.1", PORT), timeout=2))
attempt("kill parent", lambda: os.kill(os.getppid(), signal.SIGKILL) or os.getppid() != 1)
def many_files():
    for n in range(100_000):
        open(f"/tmp/f{n}", "w").close()
attempt("many files", many_files)
def big_file():
    with open("/tmp/big", "wb") as f:
        for _ in range(100):
            f.write(b"x" * 2**20)
attempt("fill scratch", big_file)
"""
ATTACK_NAMES = [
    "undo scratch mount",
    "mount over usr",
    "remount usr writable",
    "write usr",
    "read data dir",
    "read shadow",
    "write repo",
    "write venv",
    "connect to host",
    "kill parent",
    "many files",
    "fill scratch",
]


def attack_code(data: Path, port: int) -> str:
    venv = Path(sys.prefix) / "ESCAPED"
    values = {"DATA": str(data), "REPO": str(ROOT / "ESCAPED"), "VENV": str(venv), "PORT": port}
    header = "".join(f"{name} = {value!r}\n" for name, value in values.items())
    return header + ATTACKS


def assert_all_refused(stdout: str) -> None:
    lines = stdout.strip().splitlines()
    assert lines == [f"{name} refused" for name in ATTACK_NAMES], stdout


@pytest.fixture
def secret_data(tmp_path: Path) -> Path:
    """A data dir with a session store in it, as the server keeps it."""
    private = tmp_path / "data"
    private.mkdir(mode=0o700)
    (private / "sessions.sqlite").write_text("secret")
    return private / "sessions.sqlite"


async def test_attacks_fail_for_the_user_a_server_runs_as(secret_data: Path) -> None:
    """As root (code runs as nobody) or as any other user that allowed it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        code = attack_code(secret_data, listener.getsockname()[1])
        sandbox = server_sandbox()
        assert await sandbox.check(), sandbox.reason
        result = await sandbox.run_python(code, SandboxLimits(cpu_seconds=5, wall_seconds=30))
    assert_all_refused(result.stdout)
    assert not (ROOT / "ESCAPED").exists() and not (Path(sys.prefix) / "ESCAPED").exists()


def test_attacks_fail_for_an_unprivileged_server_too(secret_data: Path) -> None:
    """A server that is not root (a laptop's ``make serve``), started from under /tmp:
    here the test, if it is root, runs a server-like process as ``nobody``."""
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        run_unprivileged(secret_data, Path(folder))


def run_unprivileged(secret_data: Path, tmp_path: Path) -> None:
    script = tmp_path / "attack.py"
    script.write_text(
        "import asyncio, sys\n"
        "from deepresearch.tools.sandbox import SandboxLimits, unprivileged_sandbox\n"
        "async def main():\n"
        "    box = unprivileged_sandbox(allow_same_user=True)\n"
        "    assert await box.check(), box.reason\n"
        "    code = open(sys.argv[1]).read()\n"
        "    result = await box.run_python(code, SandboxLimits(cpu_seconds=5, wall_seconds=30))\n"
        "    print(result.stdout, end='')\n"
        "asyncio.run(main())\n"
    )
    code = tmp_path / "code.py"
    code.write_text(attack_code(secret_data, 9))
    # The sandbox needs only the standard library and ``errors``: the unprivileged
    # "server" runs a copy of those two modules, so the test does not depend on whether
    # the checkout and its venv (perhaps in a 0700 folder) are readable by nobody.
    package = tmp_path / "lib" / "deepresearch"
    (package / "tools").mkdir(parents=True)
    for name in ("__init__.py", "tools/__init__.py"):
        (package / name).write_text("")
    for name in ("errors.py", "tools/sandbox.py"):
        shutil.copy(ROOT / "src" / "deepresearch" / name, package / name)
    for path in [tmp_path, *tmp_path.rglob("*")]:
        path.chmod(0o755)
    interpreter = os.path.realpath(sys.executable)  # not through the venv's folder
    command = [interpreter, str(script), str(code)]
    if os.geteuid() == 0:
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", *command]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "lib")}
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert_all_refused(done.stdout)
