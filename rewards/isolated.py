"""Run a picklable function in persistent child processes with a hard wall-clock timeout.

Verifiers run on untrusted model output: sympy can spin for minutes on a crafted
expression, C extensions can segfault, code can call `os._exit`. `IsolatedWorker` keeps
that away from the trainer:

* each call runs in the *main thread* of a long-lived child process (so code that relies
  on `signal.alarm`, like math-verify, keeps working);
* a call that overruns its timeout gets its child SIGKILLed, together with the child's
  whole process group (anything it spawned), and a fresh child takes its place;
* a child that dies mid-call is reported as "crashed" and replaced;
* children are started with "forkserver" (or "spawn"), never "fork": the trainer holds
  torch / OpenMP threads, and forking a threaded process can deadlock the child.

    with IsolatedWorker(processes=2) as worker:
        outcomes = worker.map(score_one, items, timeout=5.0)
        scores = [o.value if o.ok else 0.0 for o in outcomes]

`map` never hangs: every wait is bounded by a per-call deadline or the start timeout.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import ForkingPickler
from typing import Any, Literal

Status = Literal["ok", "timeout", "error", "crashed"]


@dataclass(frozen=True)
class Outcome:
    """What happened to one call: its status, its return value (when ok) or error text."""

    status: Status
    value: Any = None
    error: str | None = None
    seconds: float = 0.0  # wall-clock time from hand-off to the child until the answer

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class WorkerStartError(RuntimeError):
    """A child process failed to start: its initializer raised, it died, or it never got ready."""


# --------------------------------------------------------------------------------------
# Child side
# --------------------------------------------------------------------------------------

_ORPHAN_POLL_SECONDS = 1.0


def _describe(exc: BaseException) -> str:
    """One line: exception type, message and where it was raised."""
    text = f"{type(exc).__name__}: {exc}"
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        code = tb.tb_frame.f_code
        text += f" (in {code.co_name}, {os.path.basename(code.co_filename)}:{tb.tb_lineno})"
    return text


def _exit_when_orphaned(parent_pid: int) -> None:
    """Daemon thread: if the parent process disappears without closing us, exit.

    Closing the pipe already ends an idle child; this covers a child that is busy in a
    long call when the parent is killed. (It cannot help while the call holds the GIL
    inside C code; the parent's kill on timeout is the main defence.)
    """
    first_ppid = os.getppid()  # the forkserver (or the parent, under "spawn")
    while True:
        time.sleep(_ORPHAN_POLL_SECONDS)
        if os.getppid() != first_ppid or not _pid_alive(parent_pid):
            os._exit(0)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _child_main(
    conn: Connection,
    parent_pid: int,
    initializer: Callable[..., Any] | None,
    initargs: tuple,
) -> None:
    """Serve calls forever: receive (fn, item), run fn(item), send back (status, payload)."""
    # Lead a new process group so the parent can kill us and everything we spawned at once.
    os.setpgrp()
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()

    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:  # noqa: BLE001 - report any failure, then stop
            conn.send(("init_error", _describe(exc)))
            return
    conn.send(("ready", None))

    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return  # parent closed the pipe or went away
        except BaseException as exc:  # noqa: BLE001 - e.g. the function's module fails to import
            conn.send(("error", f"could not unpickle the task: {_describe(exc)}"))
            continue
        if task is None:
            return  # orderly shutdown

        fn, item = task
        try:
            reply = ("ok", fn(item))
        except BaseException as exc:  # noqa: BLE001 - SystemExit and friends are results too
            reply = ("error", _describe(exc))
        try:
            conn.send(reply)
        except Exception as exc:  # noqa: BLE001 - an unpicklable return value
            conn.send(("error", f"could not send the result back: {_describe(exc)}"))


# --------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------


class _Child:
    """One child process, the parent's end of its pipe, and the call it is running."""

    def __init__(self, ctx: Any, initializer: Callable[..., Any] | None, initargs: tuple,
                 start_timeout: float) -> None:
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_child_main,
            args=(child_conn, os.getpid(), initializer, initargs),
            name="cascade-isolated-worker",
            daemon=True,  # multiprocessing's exit handler also reaps it
        )
        self.process.start()
        child_conn.close()  # keep only the child's copy, so its death shows up as EOF here
        self.conn = parent_conn
        self.pid: int = self.process.pid
        self.ready = False
        self.dead = False  # set once killed; a dead child is dropped and replaced
        self.start_deadline = time.monotonic() + start_timeout
        self.task: int | None = None  # index of the item being computed
        self.sent_at = 0.0
        self.deadline = 0.0

    def send_task(self, index: int, fn: Callable[[Any], Any], item: Any, timeout: float) -> None:
        self.conn.send((fn, item))
        self.task = index
        self.sent_at = time.monotonic()
        self.deadline = self.sent_at + timeout

    def exit_description(self) -> str:
        self.process.join(timeout=1.0)
        code = self.process.exitcode
        if code is None:
            return "child process stopped answering"
        if code < 0:
            try:
                return f"child process killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"child process killed by signal {-code}"
        return f"child process exited with code {code}"

    def kill(self) -> None:
        """SIGKILL the child's process group (child and anything it spawned), then reap."""
        _kill_process_group(self.pid)
        if self.process.is_alive():  # it may not have made its own group yet
            self.process.kill()
        self.process.join(timeout=5.0)
        self.conn.close()
        self.dead = True

    def stop(self, grace: float = 1.0) -> None:
        """Ask the child to exit, give it `grace` seconds, then kill whatever is left."""
        if self.task is None and self.ready:
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.process.join(timeout=grace)
        self.kill()


def _kill_process_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # already gone, or not (yet) a group leader


def _kill_all(children: list[_Child]) -> None:
    """Finalizer: used when an IsolatedWorker is garbage-collected or at interpreter exit."""
    for child in children:
        try:
            child.kill()
        except Exception:  # noqa: BLE001 - best effort during teardown
            pass
    children.clear()


class IsolatedWorker:
    """A small pool of persistent child processes that run calls with a hard timeout.

    Args:
        processes: number of child processes (calls of one `map` run in parallel on them).
        context: multiprocessing start method, "forkserver" (default, fast restarts) or
            "spawn". "fork" is refused: the parent holds threads.
        initializer: optional picklable function run once in every new child (for example
            to import heavy modules so restarts after a timeout are ready before the next call).
        initargs: arguments for `initializer`.
        start_timeout: seconds a new child may take to become ready.

    Not meant to be shared between threads: concurrent `map` calls are serialised.
    """

    def __init__(
        self,
        processes: int = 1,
        *,
        context: Literal["forkserver", "spawn"] = "forkserver",
        initializer: Callable[..., Any] | None = None,
        initargs: tuple = (),
        start_timeout: float = 60.0,
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        if context not in ("forkserver", "spawn"):
            raise ValueError(f"context must be 'forkserver' or 'spawn', got {context!r}")
        self.processes = processes
        self._ctx = get_context(context)
        self._initializer = initializer
        self._initargs = initargs
        self._start_timeout = start_timeout
        self._children: list[_Child] = []
        self._lock = threading.Lock()
        self._closed = False
        self._finalizer = weakref.finalize(self, _kill_all, self._children)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> IsolatedWorker:
        """Start the child processes now (otherwise the first `map` does it)."""
        if self._closed:
            raise RuntimeError("IsolatedWorker is closed")
        while len(self._children) < self.processes:
            self._children.append(self._new_child())
        return self

    def close(self) -> None:
        """Stop every child process (and its process group). Safe to call twice."""
        with self._lock:
            self._closed = True
            for child in self._children:
                child.stop()
            self._children.clear()
            self._finalizer.detach()

    def __enter__(self) -> IsolatedWorker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        """Process ids of the current children (they change when a child is replaced)."""
        return [child.pid for child in self._children]

    # -- calls -------------------------------------------------------------------------

    def call(self, fn: Callable[[Any], Any], item: Any, timeout: float) -> Outcome:
        """Run `fn(item)` in a child; see `map`."""
        return self.map(fn, [item], timeout)[0]

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], timeout: float) -> list[Outcome]:
        """Run `fn(item)` for every item in the children; outcomes come back in input order.

        `fn` must be picklable by reference (a module-level function or a
        `functools.partial` of one). `timeout` is the hard limit in seconds for each call,
        counted from the moment the call is handed to a ready child.
        """
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        try:
            ForkingPickler.dumps(fn)
        except Exception as exc:
            raise TypeError(f"fn must be picklable (a module-level function): {exc}") from exc
        items = list(items)
        with self._lock:
            self.start()
            try:
                return self._run(fn, items, timeout)
            except BaseException:
                # Never leave a call in flight: its late answer would be read by the next map.
                # Dropped children are replaced by start() at the next call.
                for child in self._children:
                    if child.task is not None and not child.dead:
                        child.kill()
                self._children[:] = [c for c in self._children if not c.dead]
                raise

    def _new_child(self) -> _Child:
        return _Child(self._ctx, self._initializer, self._initargs, self._start_timeout)

    def _run(self, fn: Callable[[Any], Any], items: list[Any], timeout: float) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(items)
        todo = deque(range(len(items)))
        unfinished = len(items)

        def finish(index: int, outcome: Outcome) -> None:
            nonlocal unfinished
            outcomes[index] = outcome
            unfinished -= 1

        while unfinished:
            # Hand the next items to every ready, idle child.
            for child in self._children:
                while child.ready and child.task is None and todo:
                    index = todo.popleft()
                    try:
                        child.send_task(index, fn, items[index], timeout)
                    except Exception as exc:  # noqa: BLE001 - e.g. the item is not picklable
                        finish(index, Outcome("error", error=f"could not send the call: {exc}"))

            # Sleep until a child answers, dies, or the nearest deadline passes.
            deadlines = [c.deadline if c.task is not None else c.start_deadline
                         for c in self._children if c.task is not None or not c.ready]
            # (Some child always has a deadline here; the 1 s fallback is only a safety net.)
            wait_for = max(0.0, min(deadlines) - time.monotonic()) if deadlines else 1.0
            handles = [c.conn for c in self._children] + [c.process.sentinel for c in self._children]
            signalled = set(wait(handles, timeout=wait_for))
            now = time.monotonic()

            for slot, child in enumerate(self._children):
                if child.conn in signalled:
                    self._read_reply(slot, child, finish)
                elif child.process.sentinel in signalled:
                    self._handle_death(slot, child, child.exit_description(), finish)
                elif child.task is not None and now >= child.deadline:
                    index = child.task
                    child.kill()
                    self._children[slot] = self._new_child()
                    finish(index, Outcome("timeout", error=f"no result within {timeout:g} s",
                                          seconds=now - child.sent_at))
                elif not child.ready and now >= child.start_deadline:
                    child.kill()
                    raise WorkerStartError(
                        f"child process not ready within {self._start_timeout:g} s")

        return outcomes  # type: ignore[return-value]  # every slot was filled by finish()

    def _read_reply(self, slot: int, child: _Child, finish: Callable[[int, Outcome], None]) -> None:
        try:
            kind, payload = child.conn.recv()
        except (EOFError, OSError):
            self._handle_death(slot, child, child.exit_description(), finish)
            return
        if kind == "ready":
            child.ready = True
        elif kind == "init_error":
            child.kill()
            raise WorkerStartError(f"worker initializer failed: {payload}")
        else:  # "ok" or "error", the answer to the call in flight
            index, child.task = child.task, None
            seconds = time.monotonic() - child.sent_at
            if kind == "ok":
                finish(index, Outcome("ok", value=payload, seconds=seconds))
            else:
                finish(index, Outcome("error", error=payload, seconds=seconds))

    def _handle_death(self, slot: int, child: _Child, reason: str,
                      finish: Callable[[int, Outcome], None]) -> None:
        index = child.task
        child.kill()
        if not child.ready:
            raise WorkerStartError(f"child process died while starting: {reason}")
        self._children[slot] = self._new_child()
        if index is not None:
            finish(index, Outcome("crashed", error=reason, seconds=time.monotonic() - child.sent_at))
