r"""Agentic SWE: the model works in a copy of the repository through tools, over several turns.

Tools (declared in the system prompt, called in the SPEC.md format of
:mod:`cascade.environments.tool_calls`): ``view(path)`` shows a file, ``search(query)`` lists the lines
holding a text, ``edit(path, search, replace)`` replaces the one occurrence of ``search`` in a source
file (the rules of :mod:`cascade_swe.edits`), ``run_tests()`` runs the visible tests in the sandbox and
answers with a one-line summary, ``submit()`` ends the episode. Results are short plain text, one
``tool`` message per call: the tiny model's rows hold ~512 tokens.

Like the workplace environment, :meth:`SweAgenticEnvironment.step` keeps no state: every turn it replays
the edits of all earlier turns on a fresh copy of the sample's repository, then answers the calls of
the last turn (only those run tests), so concurrent episodes cannot interfere. Malformed calls, unknown
tools, bad paths, edits of test files and SEARCH texts that match nowhere or more than once are
answered with ``error: ...`` and change nothing. The episode ends at ``submit``, at a turn without a
tool call, or at ``max_turns``; the reward grades the repository the episode's edits leave, submitted
or not.
"""

from __future__ import annotations

import posixpath
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from cascade import Environment, Message, Sample, StepResult
from cascade.environments import sandbox
from cascade.environments.generated import NO_THINKING
from cascade.environments.tool_calls import (
    ToolCall, assistant_turns, function_tool, has_tool_call, parameter_specs, parse_tool_calls, render_call,
    tools_system_prompt, typed_arguments)
from cascade_swe.edits import Edit, apply_edits, is_test_file
from cascade_swe.repos import BUG_KINDS, SweTask, swe_sample, tasks
from cascade_swe.testrun import read_report, suite_job

SYSTEM = "Fix the bug with the tools, then submit."
_TEXT = {"type": "string"}
TOOLS: list[dict] = [
    function_tool("view", "Show a file.", {"path": _TEXT}, ["path"]),
    function_tool("search", "Find a text.", {"query": _TEXT}, ["query"]),
    function_tool("edit", "Replace text in a file.",
                  {"path": _TEXT, "search": _TEXT, "replace": _TEXT}, ["path", "search", "replace"]),
    function_tool("run_tests", "Run tests.", {}, []),
    function_tool("submit", "Finish.", {}, []),
]
_SPECS = parameter_specs(TOOLS)
_MAX_HITS = 6
_CACHED_STATES = 4096

RunTests = Callable[[Mapping[str, str]], str]


@dataclass
class Replay:
    files: dict[str, str]
    """The repository after every edit of the episode that applied."""
    results: list[str] = field(default_factory=list)
    """The last turn's tool results, one per call."""
    submitted: bool = False


def _search(files: Mapping[str, str], query: str) -> str:
    hits = [f"{path}:{number}: {line.strip()}" for path in sorted(files)
            for number, line in enumerate(files[path].splitlines(), 1) if query in line]
    if not hits:
        return "no matches"
    more = f"\n({len(hits) - _MAX_HITS} more)" if len(hits) > _MAX_HITS else ""
    return "\n".join(hits[:_MAX_HITS]) + more


def execute(files: dict[str, str], call: ToolCall, run_tests: RunTests | None) -> tuple[dict[str, str], str]:
    """(the repository after ``call``, the tool's answer); ``run_tests`` None skips running tests."""
    if call.error:
        return files, f"error: {call.error}"
    try:
        args = typed_arguments(call, _SPECS)
        if call.name == "view":
            path = posixpath.normpath(args["path"])
            if path not in files:
                raise ValueError(f"no file {args['path']}; files: {', '.join(sorted(files))}")
            return files, files[path]
        if call.name == "search":
            return files, _search(files, args["query"])
        if call.name == "edit":
            path = args["path"]
            return apply_edits(files, [Edit(path, args["search"], args["replace"])]), f"edited {posixpath.normpath(path)}"
        if call.name == "run_tests":
            return files, run_tests(files) if run_tests else ""
        return files, "submitted"
    except ValueError as err:  # EditError included
        return files, f"error: {err}"


def replay(initial: Mapping[str, str], turns: Sequence[str], run_tests: RunTests | None = None) -> Replay:
    """Every call of ``turns`` on a copy of ``initial``; only the last turn's ``run_tests`` calls run."""
    state = Replay(dict(initial))
    for index, text in enumerate(turns):
        last = index == len(turns) - 1
        for call in parse_tool_calls(text):
            state.files, result = execute(state.files, call, run_tests if last else None)
            if last:
                state.results.append(result)
                state.submitted |= call.name == "submit" and not result.startswith("error")
    return state


def visible_tests(files: Mapping[str, str]) -> list[str]:
    return sorted(p for p in files if is_test_file(p))


class SweAgenticEnvironment(Environment):
    """Multi-turn repository work through tools (see the module docstring)."""

    def __init__(self, difficulties: Sequence[int] = (1,), max_turns: int = 6, cpu_seconds: int = 2, wall_seconds: float = 5.0,
                 distractors: int = 2, bug_kinds: Sequence[str] = BUG_KINDS, held_out: str = "sites", parallel_steps: int = 2):
        if isinstance(parallel_steps, bool) or not isinstance(parallel_steps, int) or parallel_steps < 1:
            raise ValueError(f"parallel_steps must be a positive integer, got {parallel_steps!r}")
        self.parallel_steps = parallel_steps  # rollouts whose tool calls run at once (run_tests waits on the sandbox)
        self.difficulties = list(difficulties)
        self.distractors = distractors
        self.bug_kinds = list(bug_kinds)
        self.held_out = held_out
        self.max_turns = max_turns
        self.limits = sandbox.Limits(cpu_seconds=cpu_seconds, wall_seconds=wall_seconds)
        self._summaries: dict[tuple, str] = {}  # repository state -> run_tests summary, oldest first
        self._summaries_lock = threading.Lock()  # steps run in threads (parallel_steps)

    def run_tests(self, files: Mapping[str, str]) -> str:
        """The visible tests' summary; a repository state seen before answers from the cache (the generated tests
        are deterministic, and the rollouts of a group often reach the same state)."""
        key = tuple(sorted(files.items()))
        with self._summaries_lock:
            if key in self._summaries:
                return self._summaries[key]
        pending = suite_job(files, visible_tests(files), self.limits)
        result = sandbox.run(pending.job)
        summary = read_report(result, pending.nonce).summary()
        if result.status in ("passed", "failed"):  # not a timeout a loaded machine might not repeat
            with self._summaries_lock:
                if len(self._summaries) >= _CACHED_STATES:
                    self._summaries.pop(next(iter(self._summaries)))
                self._summaries[key] = summary
        return summary

    @staticmethod
    def prompt(task: SweTask) -> list[Message]:
        return [{"role": "system", "content": tools_system_prompt(SYSTEM, TOOLS)},
                {"role": "user", "content": f"Issue: {task.issue}\nFiles: {', '.join(sorted(task.files))}"}]

    def samples(self, split, n, seed):
        return [swe_sample(t, self.domain, self.prompt(t), "agentic") for t in tasks(self.difficulties, split, n, seed, self.distractors, self.bug_kinds, self.held_out)]

    def step(self, sample: Sample, messages: list[Message]) -> StepResult:
        try:
            turns = assistant_turns(sample, messages)
            if not turns or not has_tool_call(turns[-1]):
                return StepResult(done=True)
            state = replay(sample.answer["files"], turns, self.run_tests)
            metrics = {"tool_calls": float(len(state.results)),
                       "tool_errors": float(sum(r.startswith("error") for r in state.results))}
            return StepResult(messages=[{"role": "tool", "content": r} for r in state.results],
                              done=state.submitted or len(turns) >= self.max_turns, metrics=metrics)
        except Exception as err:  # noqa: BLE001 - never crash a rollout on the model's output
            return StepResult(messages=[{"role": "tool", "content": f"error: environment: {err}"}], done=True)

    @staticmethod
    def solution_turns(task: SweTask) -> list[str]:
        """View the files down to the buggy one, edit its line, run the tests, submit."""
        views = task.sources[: task.sources.index(task.bug_file) + 1]
        calls = [render_call("view", path=p) for p in views] + [
            render_call("edit", path=task.bug_file, search=task.buggy_line.strip(), replace=task.fixed_line.strip()),
            render_call("run_tests"), render_call("submit")]
        return [NO_THINKING + call for call in calls]

    def demonstrations(self, n, seed):
        """The solution conversations, with the real tool answers; ``parallel_steps`` tasks at a time (each one's
        ``run_tests`` waits on the sandbox)."""
        train = tasks(self.difficulties, "train", n, seed + 1, self.distractors, self.bug_kinds, self.held_out)
        with ThreadPoolExecutor(max_workers=self.parallel_steps, thread_name_prefix="swe-demo") as pool:
            return list(pool.map(self.demonstration, train))

    def demonstration(self, task: SweTask) -> list[Message]:
        conversation = self.prompt(task)
        sample = swe_sample(task, self.domain, list(conversation), "agentic")
        for text in self.solution_turns(task):
            conversation.append({"role": "assistant", "content": text})
            step = self.step(sample, conversation)
            if not step.done:
                conversation += step.messages
        return conversation
