r"""A ``python`` tool any domain can enable: notebook cells run in the hardened sandbox (tool-integrated reasoning).

The tool is declared in the system prompt in the SPEC.md ``<tools>`` format (:func:`with_python_tool`) and called
as ``<tool_call><function=python><parameter=code>print(17*23 - 5)</parameter></function></tool_call>``. A domain's
environment hands its :meth:`Environment.step` to :meth:`PythonTool.step`, which answers every call of the model's
last turn with one ``tool`` message and ends the episode at a turn without a call. It never raises on the model's
text: a malformed call, an unknown tool or a missing parameter is answered with an error, and so are the calls past
``max_calls`` and the calls once ``total_seconds`` of tool time are spent ("give your final answer now").

**Notebook semantics by replay.** What earlier cells defined (variables, imports, functions, files in the working
directory) is visible to later ones, as in Jupyter, yet nothing is kept between calls: ``step`` receives the whole
conversation, so each call runs, in one fresh sandbox job, every earlier cell of the episode that ran to its end
(with or without an exception) -- their output thrown away, their exceptions swallowed, so the namespace keeps what
a failing cell defined before its error -- and then the new cell, whose output alone is shown. Concurrent episodes
cannot leak into each other and a trainer restart loses nothing. What it implies: earlier cells' side effects and
randomness run again on every call (``random.random()`` gives a new value each time unless seeded, a counter file
is written again, the time a cell takes is paid again on every later call); a cell that timed out or was killed is
not replayed, so what it defined is lost (its message says so). The sandbox runs ``python -I -S``: the standard
library only (``fractions``, ``math``, ``itertools``...; no numpy or sympy).

**Display.** stdout and stderr, interleaved as written; if the cell's last statement is an expression its ``repr``
is shown (unless it is None), as Jupyter does. An exception is shown as its last traceback line(s)
(``NameError: name 'x' is not defined``; a SyntaxError adds the offending line), never a frame of the harness.
Output past ``output_chars`` characters is cut with a marker saying how much was left out.

**Accounting.** Each tool message carries two keys besides ``role`` and ``content`` that the chat template does not
render: ``tool_status`` (``ok``, ``error``: the cell raised, ``timeout``, ``killed``: stopped otherwise, or
``rejected``: not run) and ``tool_seconds`` (the call's sandbox time, its replay included: what the call cost).
``step`` reads them back from the conversation to know which cells to replay and how much time is spent. A call
starts only while the episode's total is under ``total_seconds`` (so one call may overshoot it by its own limit).
``limits.wall_seconds`` and ``limits.cpu_seconds`` are the new cell's: the job gets the replayed cells' recorded
seconds on top. The step's metrics are the episode's totals so far (the rollout loop keeps the last step's):
``tool_calls``, ``tool_errors`` (every call not ``ok``), ``tool_timeouts`` and ``tool_seconds``.

    tool = PythonTool(max_calls=3, limits={"wall_seconds": 5.0})
    prompt = with_python_tool([{"role": "user", "content": question}])  # a sample's messages
    return tool.step(sample, messages)                                   # in the environment's step()
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from cascade.environments import sandbox
from cascade.environments.sandbox import ExecResult, Job, Limits
from cascade.environments.tool_calls import (
    ToolCall, assistant_turns, function_tool, parameter_specs, parse_tool_calls, tools_system_prompt, typed_arguments)
from cascade.types import Message, Metrics, Sample, StepResult

SYSTEM = "You may run Python with the python tool; each call sees what earlier calls defined."
TOOLS: list[dict] = [function_tool(
    "python", "Run a notebook cell; shows its output and its last expression's value.",
    {"code": {"type": "string"}}, ["code"])]
_SPECS = parameter_specs(TOOLS)

OK, ERROR, TIMEOUT, KILLED, REJECTED = "ok", "error", "timeout", "killed", "rejected"
_REPLAYED = (OK, ERROR)  # the cells that ran to their end: later calls run them again
DEFAULT_LIMITS = Limits(cpu_seconds=5, wall_seconds=5.0, memory_mb=512, processes=16, file_size_mb=16, open_files=64,
                        output_bytes=64 << 10)
NO_OUTPUT = "(no output)"

# Runs in the sandbox as main.py; reads {"history": [earlier cells], "cell": code} from stdin. The new cell's stdout
# and stderr go to the job's stdout; the harness's verdict, {"outcome": "ok"|"error", "error": text}, goes alone to
# the job's stderr: missing, the process ended (or was killed) before the cell did.
_HARNESS = r'''
import ast, json, os, sys, traceback, types

PID = os.getpid()


def run_cell(code, namespace):
    """exec the cell; a last statement that is an expression is evaluated and its repr printed, as Jupyter shows it."""
    tree = ast.parse(code, "<cell>")
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<cell>", "exec"), namespace)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)
        if value is not None:
            print(repr(value))


def stop_if_forked():
    """A process the cell forked goes on through this harness after the cell: it stops here, quietly."""
    if os.getpid() != PID:
        sys.stdout.flush()
        os._exit(0)


def replay(cells, namespace):
    for code in cells:
        try:
            run_cell(code, namespace)
        except BaseException:
            pass
        stop_if_forked()
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__  # a cell may have swapped them
    sys.stdout.flush()
    sys.stderr.flush()


def main():
    request = json.loads(sys.stdin.read())
    os.remove(__file__)  # the cells see an empty working directory
    verdict, output = os.dup(2), os.dup(1)
    main_module = types.ModuleType("__main__")  # the cells' own __main__: `import __main__` sees their names
    sys.modules["__main__"] = main_module
    silent = os.open(os.devnull, os.O_WRONLY)
    os.dup2(silent, 1)  # at the file-descriptor level: subprocesses of replayed cells are silenced too
    os.dup2(silent, 2)
    replay(request["history"], main_module.__dict__)
    os.dup2(output, 1)
    os.dup2(output, 2)
    sys.stdout.reconfigure(line_buffering=True)  # so that print and stderr interleave as written
    outcome, error = "ok", ""
    try:
        run_cell(request["cell"], main_module.__dict__)
    except BaseException as exc:
        outcome, error = "error", "".join(traceback.format_exception_only(exc))
    stop_if_forked()
    sys.stdout.flush()
    os.write(verdict, json.dumps({"outcome": outcome, "error": error}).encode())


main()
'''


def with_python_tool(messages: Sequence[Message], system: str = SYSTEM) -> list[Message]:
    """The prompt with the ``python`` tool declared in its system turn (``system`` when it has none)."""
    if messages and messages[0].get("role") == "system":
        first, rest = messages[0], list(messages[1:])
        return [{**first, "content": tools_system_prompt(first["content"], TOOLS)}, *rest]
    return [{"role": "system", "content": tools_system_prompt(system, TOOLS)}, *messages]


def tool_message(content: str, status: str, seconds: float = 0.0) -> Message:
    """One ``tool`` turn; the chat template renders ``role`` and ``content`` only."""
    return {"role": "tool", "content": content, "tool_status": status, "tool_seconds": seconds}


@dataclass
class _Episode:
    """What the episode's tool calls so far add up to, read back from its tool messages."""

    cells: list[str] = field(default_factory=list)
    """The cells that ran to their end, in order: each call replays them."""
    replay_seconds: float = 0.0
    calls: int = 0
    errors: int = 0
    timeouts: int = 0
    seconds: float = 0.0

    def record(self, call: ToolCall, message: Message) -> None:
        status, seconds = message.get("tool_status"), float(message.get("tool_seconds", 0.0))
        self.calls += 1
        self.errors += status != OK
        self.timeouts += status == TIMEOUT
        self.seconds += seconds
        if status in _REPLAYED:
            self.cells.append(call.arguments.get("code", ""))
            self.replay_seconds += seconds

    def metrics(self) -> Metrics:
        return {"tool_calls": float(self.calls), "tool_errors": float(self.errors),
                "tool_timeouts": float(self.timeouts), "tool_seconds": self.seconds}


def _answered_calls(sample: Sample, messages: Sequence[Message]) -> list[tuple[ToolCall, Message]]:
    """(call, its tool message) for every call of the turns before the last, in order."""
    pairs, pending = [], []
    for message in messages[len(sample.messages):-1]:
        if message.get("role") == "assistant":
            pending = parse_tool_calls(message.get("content") or "")
        elif message.get("role") == "tool" and pending:
            pairs.append((pending.pop(0), message))
    return pairs


@dataclass
class PythonTool:
    """The ``python`` tool of one domain: its limits, and the ``step`` that answers the model's calls.

    ``limits`` (a :class:`Limits`, or a mapping overriding some of :data:`DEFAULT_LIMITS`, as a YAML config gives
    it) are one call's: ``wall_seconds`` is the per-call timeout.
    """

    max_calls: int = 4
    """Tool calls per episode; later ones are answered "give your final answer now" and not run."""
    total_seconds: float = 20.0
    """Sandbox seconds per episode; once spent, calls are answered like those past ``max_calls``."""
    output_chars: int = 1000
    """Characters of a cell's output shown to the model; the rest is cut with a marker."""
    limits: Limits = DEFAULT_LIMITS

    def __post_init__(self):
        if isinstance(self.limits, Mapping):
            self.limits = Limits(**{**vars(DEFAULT_LIMITS), **self.limits})
        if not isinstance(self.limits, Limits):
            raise ValueError(f"PythonTool.limits must be a Limits or a mapping of its fields, got {self.limits!r}")
        for name in ("max_calls", "total_seconds", "output_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"PythonTool.{name} must be a positive number, got {value!r}")
        if not isinstance(self.max_calls, int) or not isinstance(self.output_chars, int):
            raise ValueError("PythonTool.max_calls and PythonTool.output_chars must be integers")

    def step(self, sample: Sample, messages: Sequence[Message]) -> StepResult:
        """Answer the calls of the model's last turn (``messages[-1]``); done at a turn without one."""
        turns = assistant_turns(sample, messages)
        calls = parse_tool_calls(turns[-1]) if turns else []
        if not calls:
            return StepResult(done=True)
        episode = _Episode()
        for call, message in _answered_calls(sample, messages):
            episode.record(call, message)
        replies = []
        for call in calls:
            replies.append(self._answer(call, episode))
            episode.record(call, replies[-1])
        return StepResult(messages=replies, done=False, metrics=episode.metrics())

    def _answer(self, call: ToolCall, episode: _Episode) -> Message:
        """The tool message for one call: an error if it may not or cannot run, else the cell's result."""
        if episode.calls >= self.max_calls:
            return tool_message(f"Error: the limit of {self.max_calls} python calls is reached; "
                                "give your final answer now.", REJECTED)
        if episode.seconds >= self.total_seconds:
            return tool_message(f"Error: the {self.total_seconds:g} s of python time are used up; "
                                "give your final answer now.", REJECTED)
        if call.error:
            return tool_message(f"Error: {call.error}", REJECTED)
        try:
            code = typed_arguments(call, _SPECS)["code"]
        except ValueError as err:
            return tool_message(f"Error: {err}", REJECTED)
        return self.run(episode.cells, code, episode.replay_seconds)

    def run(self, history: Sequence[str], code: str, replay_seconds: float = 0.0) -> Message:
        """Run ``code`` after replaying ``history`` (cells that took ``replay_seconds``), in one sandbox job."""
        limits = replace(self.limits, wall_seconds=self.limits.wall_seconds + replay_seconds,
                         cpu_seconds=self.limits.cpu_seconds + math.ceil(replay_seconds))
        job = Job({"main.py": _HARNESS}, stdin=json.dumps({"history": list(history), "cell": code}), limits=limits)
        result = sandbox.run(job)
        status, error = self._verdict(result)
        return tool_message(self.shown(result.stdout, error), status, result.seconds)

    def _verdict(self, result: ExecResult) -> tuple[str, str]:
        """(status, the error line shown after the output) of a finished job."""
        verdict = _harness_verdict(result)
        if verdict is not None:
            return verdict["outcome"], verdict["error"]
        lost = "; what the cell defined is lost"
        if result.status == "timeout":
            limit = f"{self.limits.wall_seconds:g} s, {self.limits.cpu_seconds} s of CPU"
            return TIMEOUT, f"TimeoutError: the cell ran past its time limit ({limit}) and was stopped{lost}"
        if result.status == "sandbox_error":  # its detail speaks of the sandbox's internals: not for the model
            return KILLED, "Error: the sandbox could not run the cell"
        detail = result.detail or "the Python process exited"
        return KILLED, f"Error: the cell was stopped ({detail}){lost}"

    def shown(self, output: str, error: str = "") -> str:
        """What the model reads for a cell: its output (cut to ``output_chars``), then its error, if any."""
        parts = [self._clip(output.removesuffix("\n")), self._clip(error.removesuffix("\n"))]
        return "\n".join(p for p in parts if p) or NO_OUTPUT

    def _clip(self, text: str) -> str:
        if len(text) <= self.output_chars:
            return text
        return text[: self.output_chars] + f"\n[... {len(text) - self.output_chars} more characters not shown]"


def _harness_verdict(result: ExecResult) -> dict | None:
    """The harness's report of how the cell ended; None when the job ended before the harness could tell."""
    if not result.passed:
        return None
    try:
        verdict = json.loads(result.stderr)
    except ValueError:
        return None
    if not isinstance(verdict, dict) or verdict.get("outcome") not in _REPLAYED or not isinstance(verdict.get("error"), str):
        return None
    return verdict
