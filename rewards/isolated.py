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
import sys
import threading
import time
import types
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
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
    """Serve the parent until it says stop or goes away.

    Messages in: ("load", fn) makes fn the function to call (unpickling it imports its
    module, which is not counted against any call's timeout); ("call", item) runs
    fn(item); None stops. Every message gets exactly one reply, ("ready", None),
    ("ok", value) or ("error", text); the parent knows which message it answers.
    """
    # Lead a new process group so the parent can kill us and everything we spawned at once.
    os.setpgrp()
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()

    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:  # noqa: BLE001 - report any failure, then stop
            conn.send(("error", _describe(exc)))
            return
    conn.send(("ready", None))

    fn: Callable[[Any], Any] | None = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # parent closed the pipe or went away
        except BaseException as exc:  # noqa: BLE001 - e.g. a module that fails to import
            conn.send(("error", f"could not unpickle the message: {_describe(exc)}"))
            continue
        if message is None:
            return  # orderly shutdown

        kind, payload = message
        if kind == "load":
            fn = payload
            conn.send(("ready", None))
            continue
        try:
            reply = ("ok", fn(payload))  # type: ignore[misc]  # the parent loads before calling
        except BaseException as exc:  # noqa: BLE001 - SystemExit and friends are results too
            reply = ("error", _describe(exc))
        try:
            conn.send(reply)
        except Exception as exc:  # noqa: BLE001 - an unpicklable return value
            conn.send(("error", f"could not send the result back: {_describe(exc)}"))


# --------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------

# What a child is doing, as the parent sees it. Every phase but "idle" has a deadline.
Phase = Literal["starting", "loading", "idle", "busy"]


_MAIN_SWAP_LOCK = threading.Lock()


@contextmanager
def _without_main_module() -> Iterator[None]:
    """Start children without telling them about the parent's `__main__`.

    "spawn" and "forkserver" children re-run the parent's main script (as `__mp_main__`)
    so that functions defined there can be unpickled; for a trainer that means importing
    torch and friends in every child, each time one is replaced. (Python 3.11's forkserver
    does not preload it either: it looks for a "main_path" key that is never set.) While a
    child starts, `sys.modules["__main__"]` is a bare stand-in, so the child skips that step.
    """
    with _MAIN_SWAP_LOCK:
        real_main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            sys.modules["__main__"] = real_main


class _Child:
    """One child process, the parent's end of its pipe, and what it is doing."""

    def __init__(self, ctx: Any, initializer: Callable[..., Any] | None, initargs: tuple,
                 start_timeout: float, inherit_main: bool) -> None:
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_child_main,
            args=(child_conn, os.getpid(), initializer, initargs),
            name="cascade-isolated-worker",
            daemon=True,  # multiprocessing's exit handler also reaps it
        )
        with nullcontext() if inherit_main else _without_main_module():
            self.process.start()
        child_conn.close()  # keep only the child's copy, so its death shows up as EOF here
        self.conn = parent_conn
        self.pid: int = self.process.pid
        self.phase: Phase = "starting"
        self.deadline = time.monotonic() + start_timeout
        self.loaded_fn: bytes | None = None  # pickled function the child will call
        self.loading_fn: bytes | None = None
        self.task: int | None = None  # index of the item being computed
        self.sent_at = 0.0
        self.dead = False  # set once killed; a dead child is dropped and replaced

    def load(self, fn: Callable[[Any], Any], fn_key: bytes, timeout: float) -> None:
        self.conn.send(("load", fn))
        self.phase, self.loading_fn = "loading", fn_key
        self.deadline = time.monotonic() + timeout

    def send_task(self, index: int, item: Any, timeout: float) -> None:
        self.conn.send(("call", item))
        self.phase, self.task = "busy", index
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
        if self.phase == "idle":
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
        start_timeout: seconds a new child may take to become ready, and to load (import)
            the function of a `map`; neither counts against the per-call timeout.
        inherit_main: let children re-run the parent's main script, which is needed only
            for functions defined in it. Off by default: see `_without_main_module`.

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
        inherit_main: bool = False,
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
        self._inherit_main = inherit_main
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
        counted from the moment the item is handed to a child that has `fn` loaded.
        Raises WorkerStartError if a child cannot start or cannot load `fn`.
        """
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        try:
            fn_key = bytes(ForkingPickler.dumps(fn))
        except Exception as exc:
            raise TypeError(f"fn must be picklable (a module-level function): {exc}") from exc
        if getattr(getattr(fn, "func", fn), "__module__", None) == "__main__" and not self._inherit_main:
            raise TypeError("fn is defined in __main__, which children do not import; "
                            "move it into a module or pass inherit_main=True")
        items = list(items)
        with self._lock:
            self.start()
            try:
                return self._run(fn, fn_key, items, timeout)
            except BaseException:
                # Never leave a call in flight: its late answer would be read by the next map.
                # Dropped children are replaced by start() at the next call.
                for child in self._children:
                    if child.phase != "idle" and not child.dead:
                        child.kill()
                self._children[:] = [c for c in self._children if not c.dead]
                raise

    def _new_child(self) -> _Child:
        return _Child(self._ctx, self._initializer, self._initargs, self._start_timeout,
                      self._inherit_main)

    def _run(self, fn: Callable[[Any], Any], fn_key: bytes, items: list[Any],
             timeout: float) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(items)
        todo = deque(range(len(items)))
        unfinished = len(items)

        def finish(index: int, outcome: Outcome) -> None:
            nonlocal unfinished
            outcomes[index] = outcome
            unfinished -= 1

        while unfinished:
            # Give every idle child the function if it lacks it, else the next item.
            for child in self._children:
                while child.phase == "idle" and todo:
                    index = todo.popleft()
                    try:
                        if child.loaded_fn != fn_key:
                            todo.appendleft(index)
                            child.load(fn, fn_key, self._start_timeout)
                            break
                        child.send_task(index, items[index], timeout)
                    except OSError:
                        # The idle child died; wait() below sees it go and replaces it.
                        if index not in todo:
                            todo.appendleft(index)
                        break
                    except Exception as exc:  # noqa: BLE001 - the item is not picklable
                        finish(index, Outcome("error", error=f"could not send the call: {exc}"))

            # Sleep until a child answers, dies, or the nearest deadline passes.
            deadlines = [c.deadline for c in self._children if c.phase != "idle"]
            # (Some child is always busy here; the 1 s fallback is only a safety net.)
            wait_for = max(0.0, min(deadlines) - time.monotonic()) if deadlines else 1.0
            handles = [c.conn for c in self._children] + [c.process.sentinel for c in self._children]
            signalled = set(wait(handles, timeout=wait_for))
            now = time.monotonic()

            for slot, child in enumerate(self._children):
                if child.conn in signalled:
                    self._read_reply(slot, child, finish)
                elif child.process.sentinel in signalled:
                    self._handle_death(slot, child, child.exit_description(), finish)
                elif child.phase != "idle" and now >= child.deadline:
                    self._handle_overrun(slot, child, timeout, now, finish)

        return outcomes  # type: ignore[return-value]  # every slot was filled by finish()

    def _read_reply(self, slot: int, child: _Child, finish: Callable[[int, Outcome], None]) -> None:
        try:
            kind, payload = child.conn.recv()
        except (EOFError, OSError):
            self._handle_death(slot, child, child.exit_description(), finish)
            return
        if child.phase == "busy":  # the answer to the call in flight
            index, child.task, child.phase = child.task, None, "idle"
            seconds = time.monotonic() - child.sent_at
            if kind == "ok":
                finish(index, Outcome("ok", value=payload, seconds=seconds))
            else:
                finish(index, Outcome("error", error=payload, seconds=seconds))
        elif kind == "ready":  # started, or loaded the function
            if child.phase == "loading":
                child.loaded_fn = child.loading_fn
            child.phase = "idle"
        else:
            what = "worker initializer" if child.phase == "starting" else "loading the function"
            child.kill()
            raise WorkerStartError(f"{what} failed in the child: {payload}")

    def _handle_death(self, slot: int, child: _Child, reason: str,
                      finish: Callable[[int, Outcome], None]) -> None:
        phase, index = child.phase, child.task
        child.kill()
        if phase in ("starting", "loading"):
            raise WorkerStartError(f"child process died while {phase}: {reason}")
        self._children[slot] = self._new_child()
        if index is not None:
            finish(index, Outcome("crashed", error=reason, seconds=time.monotonic() - child.sent_at))

    def _handle_overrun(self, slot: int, child: _Child, timeout: float, now: float,
                        finish: Callable[[int, Outcome], None]) -> None:
        phase, index = child.phase, child.task
        child.kill()
        if phase != "busy":
            raise WorkerStartError(
                f"child process still {phase} after {self._start_timeout:g} s")
        self._children[slot] = self._new_child()
        finish(index, Outcome("timeout", error=f"no result within {timeout:g} s",  # type: ignore[arg-type]
                              seconds=now - child.sent_at))
