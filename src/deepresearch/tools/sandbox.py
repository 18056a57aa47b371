"""Runs untrusted Python in a throw-away bubblewrap sandbox that holds whoever runs the server.

The child is ``bwrap`` (Debian's ``bubblewrap``; ``make install`` installs it) with:

- every namespace new (user, mount, pid, network, ipc, uts, cgroup): no network at
  all (not even the server's ports on 127.0.0.1), only its own processes;
- a root of its own: ``/usr`` read-only (so Debian's ``/usr/bin/python3`` and its
  standard library), a fresh ``/proc`` and a minimal ``/dev``, and nothing else of
  the host: not the data dir, not the checkout or its virtualenv, not ``/etc`` (so
  no ``/etc/shadow``), not the host's ``/tmp``. Where the project lives does not
  matter, ``/tmp`` included;
- a private scratch ``/tmp``: a tmpfs limited in size and in number of files, so
  neither big files nor many small ones can fill memory or a disk;
- no capabilities: the bootstrap mounts the scratch space, then empties the
  capability bounding, inheritable and ambient sets before it runs the code, so
  the code cannot undo or add a mount, and an exec cannot give any back;
- rlimits: CPU seconds, address space, file size, processes (threads included),
  no core dumps; a wall-clock deadline after which the whole sandbox is killed
  (``--die-with-parent``: killing ``bwrap`` ends everything inside it);
- an empty environment but for PATH, HOME and LANG; stdin at end of file; its own
  session (``--new-session``: no reaching the server's terminal).

Who the code runs as, outside: a server running as root drops to ``nobody``
(``setpriv``) before ``bwrap``, so even a kernel bug in the namespace code meets an
unprivileged user. A server running as another user would run code as itself;
that is refused unless the operator opts in (``DEEPRESEARCH_PYTHON_SAME_USER``):
the sandbox still shows it none of the host's files, but its processes would count
against the server's own process limit and share its user's kernel-level identity.

Where anything is missing (``bwrap``, user namespaces, the interpreter) the start-up
check fails, the reason is logged and shown in ``/health``, and no code runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deepresearch.errors import ToolFailure

UNAVAILABLE = "the Python sandbox is unavailable on this server, so code is not run"
CHUNK = 65536
FLOOD_BYTES = 1_000_000  # drained past the cap so a trailing traceback still arrives; then kill
SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = "nobody"

# Runs inside bwrap as the namespace's root (which is nobody, or the server's user,
# outside): mounts the scratch space, drops every capability, sets the limits, then
# becomes the code. The code arrives on stdin.
BOOTSTRAP = """
import ctypes, os, resource, sys
cpu, mem, fsize, nproc, nfiles = (int(a) for a in sys.argv[1:6])
code = sys.stdin.buffer.read()
libc = ctypes.CDLL(None, use_errno=True)
opts = f"size={fsize}m,nr_inodes={nfiles},mode=1777".encode()
if libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 2 | 4, opts) != 0:  # nosuid, nodev
    raise OSError(ctypes.get_errno(), "sandbox: cannot mount the scratch space")
os.chdir("/tmp")
with open("main.py", "wb") as f:
    f.write(code)
null = os.open("/dev/null", os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
for cap in range(64):
    libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP: no exec can grant it again
libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL
header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
empty = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable: none
if libc.capset(header, empty) != 0:
    raise OSError(ctypes.get_errno(), "sandbox: cannot drop capabilities")
limits = {resource.RLIMIT_CPU: (cpu, cpu + 1), resource.RLIMIT_AS: (mem * 2**20,) * 2,
          resource.RLIMIT_FSIZE: (fsize * 2**20,) * 2, resource.RLIMIT_NPROC: (nproc, nproc),
          resource.RLIMIT_CORE: (0, 0)}
for limit, values in limits.items():
    resource.setrlimit(limit, values)
os.execv(sys.executable, [sys.executable, "-I", "-u", "main.py"])
"""


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int = 10  # CPU time; the kernel sends SIGXCPU at this limit
    memory_mb: int = 512  # address space per process; allocations past it raise MemoryError
    wall_seconds: float = 30.0  # real time before the whole sandbox is killed
    max_output_chars: int = 10_000  # per stream (stdout, stderr) kept for the model
    max_processes: int = 32  # processes and threads of the user the code runs as
    max_file_mb: int = 16  # largest file, and the size of the scratch space
    max_files: int = 256  # files and folders in the scratch space


@dataclass(frozen=True)
class RunResult:
    stdout: str
    stderr: str
    exit_code: int  # 128 + n: killed by signal n (SIGXCPU: the CPU limit); negative: by us
    timed_out: bool
    truncated: bool


class _Capture:
    """Keeps the first ``cap`` bytes of a stream; stops the child if it floods."""

    def __init__(self, cap: int, on_flood: Callable[[], None]) -> None:
        self.cap = cap
        self.on_flood = on_flood
        self.kept = bytearray()
        self.seen = 0

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(CHUNK):
            self.seen += len(chunk)
            room = self.cap - len(self.kept)
            if room > 0:
                self.kept += chunk[:room]
            if self.seen > self.cap + FLOOD_BYTES:
                self.on_flood()  # a print bomb: stop the sandbox
                # Read what is left to the end: a pipe nobody reads is never seen to
                # close, and the run would then wait for its wall limit.
                while await stream.read(CHUNK):
                    pass
                return

    def text(self, max_chars: int) -> tuple[str, bool]:
        text = self.kept.decode("utf-8", errors="replace")
        return text[:max_chars], self.seen > self.cap or len(text) > max_chars


def unprivileged_sandbox(*, allow_same_user: bool = False) -> Sandbox:
    """The sandbox a server should use: as root, code runs as ``nobody``; as anyone
    else, as that user only if the operator allowed it."""
    if os.geteuid() == 0:
        try:
            nobody = pwd.getpwnam(NOBODY)
        except KeyError:
            return Sandbox(refused="there is no 'nobody' user to run code as")
        return Sandbox(run_as=(nobody.pw_uid, nobody.pw_gid))
    if not allow_same_user:
        return Sandbox(
            refused=f"the server runs as uid {os.geteuid()}, not root, so code would run as "
            "the server's own user; set DEEPRESEARCH_PYTHON_SAME_USER=true to allow that"
        )
    return Sandbox()


class Sandbox:
    """Runs code in the child described above; refuses to run it if that is impossible."""

    def __init__(
        self,
        *,
        bwrap: str = "bwrap",
        python: str = SYSTEM_PYTHON,
        run_as: tuple[int, int] | None = None,  # (uid, gid) to drop to first; needs root
        refused: str = "",  # why code must not run here at all
    ) -> None:
        self._bwrap = bwrap
        self._python = python
        self._run_as = run_as
        self.scratch_root: Path | None = None  # nothing on the host to clean up
        self._available: bool | None = False if refused else None
        self._lock = asyncio.Lock()
        self.reason = refused  # why the check failed, for the operator's log and /health

    @property
    def available(self) -> bool | None:
        """Whether code can run here: ``None`` until ``check`` has run."""
        return self._available

    def describe(self) -> str:
        who = "the server's own user" if self._run_as is None else f"uid {self._run_as[0]}"
        return f"code runs in a bubblewrap sandbox as {who}"

    async def check(self) -> bool:
        """Runs a trivial program the real way once; the answer is kept for this instance."""
        async with self._lock:
            if self._available is None:
                try:
                    result = await self._run("print('ok')", SandboxLimits(wall_seconds=20))
                except Exception as exc:  # whatever fails here, no code may run
                    self._available, self.reason = False, f"{type(exc).__name__}: {exc}"
                else:
                    self._available = result.exit_code == 0 and result.stdout == "ok\n"
                    self.reason = "" if self._available else _why(result)
            return self._available

    async def run_python(self, code: str, limits: SandboxLimits) -> RunResult:
        if not await self.check():
            raise ToolFailure(UNAVAILABLE)
        return await self._run(code, limits)

    def command(self, limits: SandboxLimits) -> list[str]:
        bwrap = shutil.which(self._bwrap)
        if bwrap is None:
            raise FileNotFoundError(
                f"{self._bwrap} not found (Debian's bubblewrap; `make install` installs it)"
            )
        if not Path(self._python).exists():
            raise FileNotFoundError(f"{self._python} not found")
        drop: list[str] = []
        if self._run_as is not None:
            uid, gid = self._run_as
            drop = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
        numbers = (
            limits.cpu_seconds,
            limits.memory_mb,
            limits.max_file_mb,
            limits.max_processes,
            limits.max_files,
        )
        return [
            *drop, bwrap,
            "--unshare-all", "--uid", "0", "--gid", "0", "--hostname", "sandbox",
            "--die-with-parent", "--new-session",
            # For the bootstrap alone: it mounts the scratch space, then drops them all.
            "--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SETPCAP",
            "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
            "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
            "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
            "--ro-bind-try", "/etc/localtime", "/etc/localtime",
            "--proc", "/proc", "--dev", "/dev", "--dir", "/tmp", "--chdir", "/",
            "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
            "--setenv", "TMPDIR", "/tmp", "--setenv", "LANG", "C.UTF-8",
            self._python, "-I", "-S", "-c", BOOTSTRAP, *map(str, numbers),
        ]  # fmt: skip

    async def _run(self, code: str, limits: SandboxLimits) -> RunResult:
        command = self.command(limits)
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            start_new_session=True,  # its own process group, killed as one
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        cap = limits.max_output_chars * 4  # bytes enough for that many UTF-8 characters
        out, err = _Capture(cap, lambda: _kill(proc)), _Capture(cap, lambda: _kill(proc))
        timed_out = False

        async def feed(stdin: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                stdin.write(code.encode("utf-8", "surrogatepass"))
                await stdin.drain()
                stdin.close()
                await stdin.wait_closed()

        reading = asyncio.gather(
            feed(proc.stdin), out.drain(proc.stdout), err.drain(proc.stderr), proc.wait()
        )
        try:
            await asyncio.wait_for(reading, limits.wall_seconds)
        except TimeoutError:
            timed_out = True
        finally:
            _kill(proc)  # also when the caller is cancelled: never leave a child behind
            await proc.wait()
            if reading.done() and not reading.cancelled():
                reading.exception()  # seen here, so asyncio does not log it as lost
        stdout, out_cut = out.text(limits.max_output_chars)
        stderr, err_cut = err.text(limits.max_output_chars)
        code_ = proc.returncode if proc.returncode is not None else -signal.SIGKILL
        return RunResult(stdout, stderr, code_, timed_out, out_cut or err_cut)


def _why(result: RunResult) -> str:
    text = (result.stderr.strip() or result.stdout.strip())[-500:]
    return text or f"the sandbox's trial run exited with code {result.exit_code}"


def _kill(proc: asyncio.subprocess.Process) -> None:
    # Only while unreaped: afterwards the group id may belong to someone else.
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
