"""Runs untrusted Python in a throw-away child: no network, bounded CPU, memory and disk.

The child is ``unshare -rnmp --fork --kill-child --mount-proc python -I -c BOOTSTRAP``:

- network namespace: only a loopback interface that is down, so nothing is reachable,
  not even the server's own ports on 127.0.0.1;
- pid namespace with a fresh /proc: the code sees only its own processes (not the
  server's environment in /proc/<pid>/environ), and killing ``unshare`` kills them all,
  even ones that left our process group;
- mount namespace: small tmpfs mounts over /tmp, /var/tmp, /dev/shm and the scratch
  working directory, so writes there cannot fill the server's disk and vanish afterwards;
- rlimits set by the bootstrap (pid 1) in the child it execs the code in: CPU seconds,
  address space, file size, process count, no core dumps. The code cannot raise the hard
  limits (a user namespace grants no CAP_SYS_RESOURCE over the host);
- a minimal environment (nothing of the server's), ``-I`` isolated mode, stdin closed,
  and a wall-clock deadline after which the whole group is killed.

What it cannot prevent: reading files the server's user can read (run the server as an
unprivileged user, or pass ``run_as`` when it runs as root); writing where that user may
write outside the tmpfs mounts; using ``cpu_seconds`` of CPU and ``memory_mb`` of memory
per process, for up to ``max_processes`` processes. RLIMIT_NPROC does not bind real root
(the kernel exempts uid 0), so as root a fork bomb is only ended by the CPU and wall
limits unless ``run_as`` drops to another user, whose interpreter must be readable by
that user (``/usr/bin/python3``, say, when the venv lives under /root).

The venv's site-packages stay importable (``-I`` without ``-S``): handy for math, and
nothing in them gives the code more than it already has.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio

from deepresearch.errors import ToolFailure

UNAVAILABLE = (
    "the Python sandbox is unavailable on this server (unshare -rn failed), so code is not run"
)
CHUNK = 65536
FLOOD_BYTES = 1_000_000  # drained past the cap so a trailing traceback still arrives; then kill

# Runs as pid 1 inside the namespaces: makes the mounts, then runs the code under rlimits.
BOOTSTRAP = """
import ctypes, os, resource, sys
cpu, mem, fsize, nproc = (int(a) for a in sys.argv[1:5])
cwd = os.getcwd()
with open("main.py", "rb") as f:
    code = f.read()
libc = ctypes.CDLL(None, use_errno=True)
def tmpfs(target):
    opts = f"size={fsize}m,mode=1777".encode()
    if libc.mount(b"tmpfs", target.encode(), b"tmpfs", 2 | 4, opts) != 0:  # nosuid, nodev
        raise OSError(ctypes.get_errno(), "sandbox: cannot mount tmpfs on " + target)
for target in ("/tmp", "/var/tmp", "/dev/shm"):
    if os.path.isdir(target):
        tmpfs(target)
if os.path.isdir(cwd):
    tmpfs(cwd)
else:
    os.makedirs(cwd)  # it was under /tmp, now inside the new tmpfs
os.chdir(cwd)
with open("main.py", "wb") as f:
    f.write(code)
limits = {resource.RLIMIT_CPU: (cpu, cpu + 1), resource.RLIMIT_AS: (mem * 2**20,) * 2,
          resource.RLIMIT_FSIZE: (fsize * 2**20,) * 2, resource.RLIMIT_NPROC: (nproc, nproc),
          resource.RLIMIT_CORE: (0, 0)}
# The code runs in a child: pid 1 ignores signals it has no handler for (SIGXCPU too),
# and its death ends every process it left behind.
pid = os.fork()
if pid == 0:
    for limit, values in limits.items():
        resource.setrlimit(limit, values)
    os.execv(sys.executable, [sys.executable, "-I", "-u", "main.py"])
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
os._exit(128 - code if code < 0 else code)  # a death by signal n exits 128 + n, as in a shell
"""


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int = 10  # CPU time; the kernel sends SIGXCPU at this limit
    memory_mb: int = 512  # address space per process; allocations past it raise MemoryError
    wall_seconds: float = 30.0  # real time before the whole namespace is killed
    max_output_chars: int = 10_000  # per stream (stdout, stderr) kept for the model
    max_processes: int = 32  # processes and threads (not enforced for real root)
    max_file_mb: int = 16  # largest file, and the size of each tmpfs the code may write to


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
                self.on_flood()  # a print bomb: reading on would only burn our CPU
                return

    def text(self, max_chars: int) -> tuple[str, bool]:
        text = self.kept.decode("utf-8", errors="replace")
        return text[:max_chars], self.seen > self.cap or len(text) > max_chars


def unprivileged_sandbox(scratch_parent: Path | None = None) -> Sandbox:
    """The sandbox a server should use: as root, code runs as ``nobody``.

    Inside ``unshare -r`` the code is root of its namespace and can undo the
    namespace's mounts (e.g. the tmpfs over /tmp), so what really bounds it is
    the real user it runs as: ``nobody`` cannot write the server's code, read the
    data dir (kept 0700), or list the other runs' scratch folders, which live
    under a root-owned folder it may traverse but not read (0711) with random
    names. Debian's /usr/bin/python3 is used because the venv's interpreter may
    sit under /root, which nobody cannot read.
    """
    if os.geteuid() != 0:
        return Sandbox()
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        return Sandbox()
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    root = Path(tempfile.mkdtemp(prefix="deepresearch-sandbox-", dir=scratch_parent))
    root.chmod(0o711)
    return Sandbox(python=python, run_as=(nobody.pw_uid, nobody.pw_gid), scratch_root=root)


class Sandbox:
    """Runs code in the child described above; refuses to run it if that is impossible."""

    def __init__(
        self,
        *,
        unshare: str = "unshare",
        python: str = sys.executable,
        run_as: tuple[int, int] | None = None,  # (uid, gid) to drop to; needs root
        scratch_root: Path | None = None,  # where scratch folders go; default the temp dir
    ) -> None:
        self._unshare = unshare
        self._python = python
        self._run_as = run_as
        self.scratch_root = scratch_root
        self._available: bool | None = None
        self._lock = asyncio.Lock()
        self.reason = ""  # why the check failed, for the operator's log

    @property
    def available(self) -> bool | None:
        """Whether code can run here: ``None`` until ``check`` has run."""
        return self._available

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
                    self.reason = "" if self._available else result.stderr.strip()[-500:]
            return self._available

    async def run_python(self, code: str, limits: SandboxLimits) -> RunResult:
        if not await self.check():
            raise ToolFailure(UNAVAILABLE)
        return await self._run(code, limits)

    async def _run(self, code: str, limits: SandboxLimits) -> RunResult:
        unshare = shutil.which(self._unshare)
        if unshare is None:
            raise FileNotFoundError(f"{self._unshare} not found")
        scratch = Path(await anyio.to_thread.run_sync(self._make_scratch, code))
        try:
            return await self._spawn(unshare, scratch, limits)
        finally:
            await anyio.to_thread.run_sync(shutil.rmtree, scratch, True)

    def _make_scratch(self, code: str) -> str:
        scratch = tempfile.mkdtemp(prefix="deepresearch-python-", dir=self.scratch_root)
        # The bootstrap reads the code by this name.
        (Path(scratch) / "main.py").write_text(code, encoding="utf-8")
        if self._run_as is not None:
            os.chown(scratch, *self._run_as)
        return scratch

    async def _spawn(self, unshare: str, scratch: Path, limits: SandboxLimits) -> RunResult:
        numbers = (limits.cpu_seconds, limits.memory_mb, limits.max_file_mb, limits.max_processes)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(scratch), "TMPDIR": str(scratch)}
        env |= {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        # setpriv rather than the user= / group= arguments of subprocess: uvloop's
        # subprocess support (uvicorn's loop) does not take them.
        drop: list[str] = []
        if self._run_as is not None:
            uid, gid = self._run_as
            drop = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
        proc = await asyncio.create_subprocess_exec(
            *drop, unshare, "-rnmp", "--fork", "--kill-child", "--mount-proc",
            self._python, "-I", "-c", BOOTSTRAP, *map(str, numbers),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=scratch,
            env=env,
            start_new_session=True,  # its own process group, killed as one
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        cap = limits.max_output_chars * 4  # bytes enough for that many UTF-8 characters
        out, err = _Capture(cap, lambda: _kill(proc)), _Capture(cap, lambda: _kill(proc))
        timed_out = False
        reading = asyncio.gather(out.drain(proc.stdout), err.drain(proc.stderr), proc.wait())
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
        code = proc.returncode if proc.returncode is not None else -signal.SIGKILL
        return RunResult(stdout, stderr, code, timed_out, out_cut or err_cut)


def _kill(proc: asyncio.subprocess.Process) -> None:
    # Only while unreaped: afterwards the group id may belong to someone else.
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
