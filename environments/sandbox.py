"""Run untrusted Python (model-written code, its tests) in a disposable jail, one process tree per job.

Code RL and SWE RL score a rollout by running what the model wrote. That code may loop forever, eat memory,
fork-bomb, print gigabytes, read secrets, open sockets, kill its parent or leave daemons behind; none of it may
reach the trainer. Each job runs as ``python -I -S <script> args...`` (isolated mode: no PYTHON* variables, no user or
site packages, and the script's directory is NOT on ``sys.path``: a harness that imports a sibling module does
``sys.path.insert(0, "")`` first) with its ``files`` in a fresh private working directory, a scrubbed environment
and resource limits, under a wall clock that kills the whole process tree.

Layers, strongest first (the probe picks the first that runs a real job on this machine, once per process, and
every result names in ``isolation`` only what its launcher verified):

* **namespaces** (root and ``unshare``): fresh net (loopback only, down), pid, mount and IPC namespaces; a private
  root holding read-only system directories, the interpreter and a size-capped writable ``/tmp`` and ``/job`` (the
  host's /tmp, /root, /home, the repo... are simply not there); a fresh unprivileged uid per job, so RLIMIT_NPROC
  binds and the job can neither signal nor trace anything else; when the job ends, its pid namespace dies with it,
  taking every background or ``setsid`` process along.
* **plain + uid** (root without namespaces): a host temporary directory, the fresh uid, every process of that uid
  killed at the end.
* **plain** (not root): a host temporary directory and a new session; leftovers are killed by process group only,
  and RLIMIT_NPROC counts all of the user's processes.

``SANDBOX_MODE=plain`` in the environment skips the namespaces (e.g. where ``unshare`` misbehaves).

    result = run(Job({"main.py": "print(input()[::-1])"}, stdin="abc"))
    result.status, result.stdout      # ("passed", "cba\\n")
    with SandboxPool(max_workers=2) as pool:
        results = pool.map(jobs)      # in job order; at most 2 jobs at a time

The job-side work (jail, identity, limits, reaping, reading ``collect`` files back) happens in the trusted launcher
``_sandbox_launcher.py``; this module feeds it, enforces the wall clock and the output caps, and classifies.
"""

from __future__ import annotations

import ast
import functools
import marshal
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


Status = Literal["passed", "failed", "timeout", "crashed", "sandbox_error"]
LAUNCHER = str(Path(__file__).with_name("_sandbox_launcher.py"))
JOB_PATH = "/usr/local/bin:/usr/bin:/bin"
_UIDS = (1 << 20, 1 << 30)  # fresh uids come from here: far from any real account's
_GRACE_SECONDS = 2.0  # after the launcher reports, how long leftovers may hold the output pipes (plain modes)


@dataclass(frozen=True)
class Limits:
    """What one job may use. CPU, memory, file size and open files are per process (RLIMIT_*).

    Output past ``output_bytes`` on stdout or stderr is not kept, and the job is killed and fails on the spot: a
    flood must neither fill the trainer's memory nor pass with its answer cut off.
    """

    cpu_seconds: int = 5          # RLIMIT_CPU
    wall_seconds: float = 10.0    # wall clock; on expiry the whole process tree is killed
    memory_mb: int = 512          # RLIMIT_AS
    processes: int = 32           # max processes/threads of the sandboxed uid
    file_size_mb: int = 16        # RLIMIT_FSIZE (and, with namespaces, the size of the private tmpfs)
    open_files: int = 64          # RLIMIT_NOFILE
    output_bytes: int = 1 << 20   # stdout and stderr each kept up to this many bytes; more fails the job

    def __post_init__(self):
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"Limits.{name} must be a positive number, got {value!r}")
            if name != "wall_seconds" and not isinstance(value, int):
                raise ValueError(f"Limits.{name} must be an integer, got {value!r}")


def _check_relative(path, what: str) -> None:
    if not isinstance(path, str) or not path or "\0" in path:
        raise ValueError(f"{what}: expected a non-empty path string, got {path!r}")
    if path.startswith("/") or any(part in ("", ".", "..") for part in path.split("/")):
        raise ValueError(f"{what}: {path!r} must be a plain relative path inside the job directory (no leading '/', "
                         f"no '.', '..' or empty parts)")


@dataclass(frozen=True)
class Job:
    """One program run: files written into a fresh private directory, then ``python -I -S *command`` there."""

    files: Mapping[str, str]                  # relative path -> text
    command: Sequence[str] = ("main.py",)     # script (relative to the job directory) and its arguments
    stdin: str = ""
    limits: Limits = Limits()
    collect: Sequence[str] = ()               # relative paths read back after the run (regular files only, whole)

    def __post_init__(self):
        if not isinstance(self.files, Mapping):
            raise ValueError(f"Job.files must map relative paths to text, got {type(self.files).__name__}")
        for path, text in self.files.items():
            _check_relative(path, "Job.files")
            if not isinstance(text, str):
                raise ValueError(f"Job.files[{path!r}] must be text, got {type(text).__name__}")
            parents = [path.rsplit("/", n)[0] for n in range(1, path.count("/") + 1)]
            if clash := next((p for p in parents if p in self.files), None):
                raise ValueError(f"Job.files: {clash!r} cannot be both a file and the directory of {path!r}")
        if isinstance(self.command, str) or not self.command or not all(isinstance(a, str) for a in self.command):
            raise ValueError(f"Job.command must be a non-empty sequence of strings, got {self.command!r}")
        if not isinstance(self.stdin, str):
            raise ValueError(f"Job.stdin must be text, got {type(self.stdin).__name__}")
        if not isinstance(self.limits, Limits):
            raise ValueError(f"Job.limits must be a Limits, got {type(self.limits).__name__}")
        if isinstance(self.collect, str):
            raise ValueError(f"Job.collect must be a sequence of paths, not the string {self.collect!r}")
        for path in self.collect:
            _check_relative(path, "Job.collect")


@dataclass(frozen=True)
class ExecResult:
    """How one job ended. Only ``passed`` may earn a reward.

    passed: exit status 0 within every limit; failed: non-zero exit (exception, assertion, ``sys.exit(n)``,
    MemoryError, a file over RLIMIT_FSIZE) or output over ``Limits.output_bytes``; timeout: the wall clock or the CPU
    limit; crashed: killed by any other signal (SIGSEGV, SIGABRT, SIGKILL...); sandbox_error: the sandbox itself
    could not run the job (the program's output is then empty).
    """

    status: Status
    returncode: int | None        # exit status, or -N when killed by signal N, or None (wall clock, sandbox error)
    stdout: str
    stderr: str
    seconds: float
    isolation: tuple[str, ...]
    files: dict[str, str] = field(default_factory=dict)
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# ---- choosing the isolation, once per process ---------------------------------------------------------------


@dataclass(frozen=True)
class _Mode:
    """One way of starting the launcher (see the module docstring for the three)."""

    name: str
    prefix: tuple[str, ...]  # the command in front of the launcher (``unshare ...`` or nothing)
    namespaces: bool
    drop_uid: bool


_UNSHARE_FLAGS = ("--net", "--pid", "--mount", "--ipc", "--fork", "--kill-child")
_mode_lock = threading.Lock()
_mode: _Mode | None = None


def _candidate_modes() -> list[_Mode]:
    """The modes worth probing here, strongest first."""
    plain = _Mode("plain", (), False, False)
    if os.geteuid() != 0:
        return [plain]
    modes = [_Mode("plain+uid", (), False, True), plain]
    unshare = shutil.which("unshare")
    if unshare and os.environ.get("SANDBOX_MODE") != "plain":
        modes.insert(0, _Mode("namespaces", (unshare, *_UNSHARE_FLAGS, "--"), True, True))
    return modes


def _current_mode() -> _Mode:
    """The strongest mode that runs a trivial job correctly here (decided once; about 50 ms per mode tried)."""
    global _mode
    with _mode_lock:
        if _mode is None:
            probe = Job({"main.py": "print(input())"}, stdin="ok", limits=Limits(wall_seconds=20))
            candidates = _candidate_modes()
            _mode = next((m for m in candidates if _works(_execute(probe, m))), candidates[-1])
        return _mode


def _works(result: ExecResult) -> bool:
    return result.passed and result.stdout == "ok\n"


def isolation_mode() -> str:
    """Which layer ``run`` uses in this process: "namespaces", "plain+uid" or "plain"."""
    return _current_mode().name


# ---- one run --------------------------------------------------------------------------------------------------


@functools.cache
def _parent_namespaces() -> dict[str, int]:
    """Our namespaces' inode numbers: the launcher counts a namespace as active only if its own differs."""
    return {name: os.stat(f"/proc/self/ns/{name}").st_ino for name in ("net", "pid", "mnt", "ipc")}


@functools.cache
def _interpreter_dirs() -> list[str]:
    """The interpreter's own directories, bound read-only into the private root."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
            os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))}
    return sorted(os.path.realpath(d) for d in dirs)


def _spec(job: Job, mode: _Mode, uid: int | None, workdir: str | None) -> bytes:
    """The launcher's job spec, framed for its stdin: a decimal byte count, a newline, the marshalled dict."""
    home = "/job" if mode.namespaces else workdir
    spec = {
        "python": sys.executable, "command": list(job.command), "files": dict(job.files), "collect": list(job.collect),
        "limits": vars(job.limits), "namespaces": mode.namespaces, "workdir": workdir,
        "uid": uid,
        "parent_ns": _parent_namespaces(), "interpreter_dirs": _interpreter_dirs(),
        "env": {"PATH": JOB_PATH, "HOME": home, "TMPDIR": "/tmp", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"},
    }
    data = marshal.dumps(spec)
    return str(len(data)).encode() + b"\n" + data


class _Streams:
    """Feeds the launcher's stdin and drains its stdout, stderr (each capped) and status pipe."""

    def __init__(self, proc: subprocess.Popen, status_fd: int, stdin: bytes, cap: int):
        self.proc, self.cap, self.status_fd = proc, cap, status_fd
        self.selector = selectors.DefaultSelector()
        self.buffers = {proc.stdout.fileno(): ("stdout", bytearray()), proc.stderr.fileno(): ("stderr", bytearray()),
                        status_fd: ("status", bytearray())}
        self.overflow: str | None = None
        self.pending = memoryview(stdin)
        os.set_blocking(proc.stdin.fileno(), False)
        self.selector.register(proc.stdin.fileno(), selectors.EVENT_WRITE)
        for fd in self.buffers:
            self.selector.register(fd, selectors.EVENT_READ)

    def pump(self, until: float, stop_at_status_eof: bool = False) -> bool:
        """Move bytes until the outputs (or, with ``stop_at_status_eof``, the status pipe) close: True; or until
        the deadline passes or an output overflows its cap: False."""
        while True:
            readers = [fd for fd in self.selector.get_map() if fd in self.buffers]
            if not readers or (stop_at_status_eof and self.status_fd not in readers):
                return True
            remaining = until - time.monotonic()
            if remaining <= 0:
                return False
            for key, _ in self.selector.select(remaining):
                if key.fd in self.buffers:
                    if not self._read(key.fd):
                        return False
                else:
                    self._write()

    def _read(self, fd: int) -> bool:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            self.selector.unregister(fd)
            return True
        name, buf = self.buffers[fd]
        if name != "status" and len(buf) + len(chunk) > self.cap:
            buf += chunk[: self.cap - len(buf)]
            self.overflow = name
            return False
        buf += chunk
        return True

    def _write(self) -> None:
        try:
            self.pending = self.pending[os.write(self.proc.stdin.fileno(), self.pending[: 1 << 16]):]
        except BlockingIOError:
            return
        except BrokenPipeError:  # nobody reads stdin any more: drop the rest
            self.pending = self.pending[:0]
        if not self.pending:
            self.selector.unregister(self.proc.stdin.fileno())
            self.proc.stdin.close()

    def text(self, name: str) -> str:
        return next(buf for n, buf in self.buffers.values() if n == name).decode("utf-8", "replace")

    def events(self) -> list[dict]:
        """The launcher's reports (a line cut short when the launcher was killed mid-write is dropped)."""
        events = []
        for line in self.text("status").splitlines():
            try:
                events.append(ast.literal_eval(line))
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                pass
        return events

    def close(self) -> None:
        self.selector.close()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            pipe.close()
        os.close(self.status_fd)


def _kill_tree(proc: subprocess.Popen, uid: int | None) -> None:
    """SIGKILL the launcher's process group (with namespaces: the whole pid namespace dies with its init) and, when
    the job had a uid of its own, every process still running under it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if uid is not None:
        _kill_uid(uid)


def _kill_uid(uid: int) -> None:
    """SIGKILL every process running as ``uid`` (a job's own), until none is left."""
    for _ in range(20):
        found = False
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    if entry.stat().st_uid == uid:
                        found = True
                        os.kill(int(entry.name), signal.SIGKILL)
                except (FileNotFoundError, ProcessLookupError):
                    pass
        if not found:
            return
        time.sleep(0.005)  # SIGKILL is asynchronous: give the killed a moment to leave


def _classify(job: Job, events: list[dict], timed_out: bool, overflow: str | None, launcher_err: str) -> dict:
    """status, returncode and detail from what the launcher reported and what the parent saw."""
    by_kind = {e["event"]: e for e in events}
    limits = job.limits
    if "error" in by_kind:
        return {"status": "sandbox_error", "returncode": None, "detail": by_kind["error"]["detail"]}
    if timed_out:
        return {"status": "timeout", "returncode": None, "detail": f"wall-clock timeout after {limits.wall_seconds}s"}
    if overflow:
        return {"status": "failed", "returncode": None,
                "detail": f"{overflow} over the {limits.output_bytes}-byte output limit; killed"}
    if "ready" not in by_kind:
        return {"status": "sandbox_error", "returncode": None,
                "detail": f"the sandbox did not start: {launcher_err.strip()[-500:] or 'no report'}"}
    if "exit" not in by_kind:
        return {"status": "crashed", "returncode": None, "detail": "the sandbox supervisor died during the run"}
    end = by_kind["exit"]
    if "signal" in end:
        sig, name = end["signal"], signal.Signals(end["signal"]).name
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and end["cpu_seconds"] >= limits.cpu_seconds):
            return {"status": "timeout", "returncode": -sig, "detail": f"CPU limit of {limits.cpu_seconds}s hit ({name})"}
        return {"status": "crashed", "returncode": -sig, "detail": f"killed by {name}"}
    code = end["returncode"]
    return {"status": "passed" if code == 0 else "failed", "returncode": code,
            "detail": "" if code == 0 else f"exit status {code}"}


def _execute(job: Job, mode: _Mode) -> ExecResult:
    """Start the launcher in ``mode``, feed it, watch the clock and the output caps, then classify."""
    started = time.monotonic()
    deadline = started + job.limits.wall_seconds
    uid = secrets.randbelow(_UIDS[1] - _UIDS[0]) + _UIDS[0] if mode.drop_uid else None
    workdir = None if mode.namespaces else tempfile.mkdtemp(prefix="cascade-sandbox-")  # with namespaces: a tmpfs
    status_r, status_w = os.pipe()
    try:
        proc = subprocess.Popen([*mode.prefix, sys.executable, "-I", "-S", LAUNCHER, str(status_w)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=(status_w,), env={"PATH": JOB_PATH}, start_new_session=True, cwd="/")
    except OSError as exc:
        os.close(status_r)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        return ExecResult("sandbox_error", None, "", "", time.monotonic() - started, (), {}, f"could not start: {exc}")
    finally:
        os.close(status_w)
    streams = _Streams(proc, status_r, _spec(job, mode, uid, workdir) + job.stdin.encode(), job.limits.output_bytes)
    try:
        finished = streams.pump(deadline, stop_at_status_eof=True)
        if finished:  # the launcher is done; leftovers it could not reach may still hold the pipes open
            streams.pump(min(deadline, time.monotonic() + _GRACE_SECONDS))
        timed_out = not finished and streams.overflow is None
        _kill_tree(proc, uid)  # with namespaces too: the pid namespace dies whole, but not at once
        proc.wait()
        streams.pump(time.monotonic() + _GRACE_SECONDS)  # everything is dead now: take what is left in the pipes
    finally:
        streams.close()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    events = streams.events()
    ready = next((e for e in events if e["event"] == "ready"), None)
    end = next((e for e in events if e["event"] == "exit"), {})
    outcome = _classify(job, events, timed_out, streams.overflow, streams.text("stderr"))
    return ExecResult(stdout=streams.text("stdout") if ready else "", stderr=streams.text("stderr") if ready else "",
                      seconds=time.monotonic() - started, isolation=tuple(ready["isolation"]) if ready else (),
                      files=end.get("files", {}), **outcome)


def run(job: Job) -> ExecResult:
    """Run one job in the strongest jail this machine allows. Raises only for a malformed ``job`` (not a Job)."""
    if not isinstance(job, Job):
        raise TypeError(f"run() takes a Job, got {type(job).__name__}")
    try:
        return _execute(job, _current_mode())
    except Exception as exc:  # noqa: BLE001 - a broken sandbox must cost one reward, never the training run
        return ExecResult("sandbox_error", None, "", "", 0.0, (), {}, f"{type(exc).__name__}: {exc}")


class SandboxPool:
    """Runs jobs in parallel, at most ``max_workers`` at a time (each job is its own process tree)."""

    def __init__(self, max_workers: int = 2):
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be a positive integer, got {max_workers!r}")
        self.max_workers = max_workers
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="sandbox")

    def map(self, jobs: Sequence[Job]) -> list[ExecResult]:
        """Run every job; the results come back in job order."""
        jobs = list(jobs)
        for job in jobs:
            if not isinstance(job, Job):
                raise TypeError(f"SandboxPool.map takes Jobs, got {type(job).__name__}")
        return list(self._executor.map(run, jobs))

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
