r"""Math with final answers: generated problems, answers in \boxed{}, verified by math-verify.

Registered through the ``cascade`` entry-point group like any third-party plugin; provides the
``math`` environment, the ``math_verify`` reward, and the config presets ``domain=math``,
``domain=math_tool`` (the same problems with a Python tool) and ``stage=math_grpo``.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Mapping, Sequence

from cascade import Environment, Episode, Message, Reward, RewardResult, Sample, StepResult, hookimpl
from cascade.environments.generated import NO_THINKING, spread
from cascade.environments.python_tool import OK, PythonTool, tool_message, with_python_tool
from cascade.environments.tool_calls import render_call
from cascade_math.problems import KINDS, MathProblem, generate, solution

INSTRUCTION = "Put the final answer in \\boxed{}."


def printed(code: str) -> str:
    """What a demonstration's program prints: run here, not in the sandbox, since the code is ours, not the model's."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(code, {})
    return output.getvalue()


class MathEnvironment(Environment):
    """The question, the model's worked answer. ``difficulties`` mixes levels 1..5.

    Single-turn, unless ``python_tool``: then the prompt declares the ``python`` tool of
    :mod:`cascade.environments.python_tool` (``tool_options`` are its :class:`PythonTool` fields), the model may
    run up to ``max_calls`` cells before its answer (``max_turns`` = ``max_calls`` + 1), and the demonstrations
    are tool-integrated: one cell computing the answer from the question's numbers, its output, the boxed answer.
    ``parallel_steps``: the cells of that many rollouts run in the sandbox at once.
    """

    def __init__(self, difficulties: Sequence[int] = (1, 2), kinds: Sequence[str] = KINDS,
                 python_tool: bool = False, tool_options: Mapping[str, Any] | None = None, parallel_steps: int = 2):
        if tool_options and not python_tool:
            raise ValueError("tool_options are given but python_tool is false: set python_tool: true to use them")
        if isinstance(parallel_steps, bool) or not isinstance(parallel_steps, int) or parallel_steps < 1:
            raise ValueError(f"parallel_steps must be a positive integer, got {parallel_steps!r}")
        self.parallel_steps = parallel_steps
        self.difficulties = list(difficulties)
        self.kinds = list(kinds)
        self.tool = PythonTool(**(tool_options or {})) if python_tool else None
        if self.tool:
            self.max_turns = self.tool.max_calls + 1

    def problems(self, split: str, n: int, seed: int):
        """Up to ``n`` problems: the easy levels hold only a few hundred distinct questions."""
        per_level = spread(n, self.difficulties)
        problems = []
        for level, count in zip(self.difficulties, per_level):
            problems += generate(split, count, seed, level, self.kinds, at_most=True)
        return problems

    def prompt(self, problem: MathProblem) -> list[Message]:
        messages = [{"role": "user", "content": f"{problem.question}\n{INSTRUCTION}"}]
        return with_python_tool(messages) if self.tool else messages

    def samples(self, split, n, seed):
        return [
            Sample(id=p.id, domain=self.domain, messages=self.prompt(p),
                   answer=p.answer, meta={"kind": p.kind, "difficulty": p.difficulty})
            for p in self.problems(split, n, seed)
        ]

    def step(self, sample: Sample, messages: list[Message]) -> StepResult:
        return self.tool.step(sample, messages) if self.tool else StepResult(done=True)

    def demonstrations(self, n, seed):
        demo = self.tool_demonstration if self.tool else self.demonstration
        return [demo(p) for p in self.problems("train", n, seed + 1)]

    def demonstration(self, problem: MathProblem) -> list[Message]:
        return [*self.prompt(problem), {"role": "assistant", "content": NO_THINKING + solution(problem)}]

    def tool_demonstration(self, problem: MathProblem) -> list[Message]:
        """Question, a cell computing the answer, the output the tool would show, the boxed answer."""
        return [
            *self.prompt(problem),
            {"role": "assistant", "content": NO_THINKING + render_call("python", code=problem.code)},
            tool_message(self.tool.shown(printed(problem.code)), OK),
            {"role": "assistant", "content": NO_THINKING + f"\\boxed{{{problem.answer}}}"},
        ]


class MathVerifyReward(Reward):
    """1 if the last ``\\boxed{}`` of the final answer (the model's last turn, ``Episode.response``) equals the
    ground truth (math-verify), else 0.

    Checks run in a killable child process with a hard timeout: math-verify can hang on adversarial
    input, and a hang is scored 0 with ``info["status"] == "timeout"``.
    """

    def __init__(self, timeout: float = 5.0, processes: int = 1):
        from cascade.rewards.math import MathVerifier

        # require_number: math-verify would evaluate \boxed{12+7*3} and accept the question copied back
        self.verifier = MathVerifier(timeout=timeout, processes=processes, require_number=True)

    def score(self, episodes_G: Sequence[Episode]) -> list[RewardResult]:
        result = self.verifier.score([(e.response, str(e.sample.answer)) for e in episodes_G])
        return [RewardResult(score, info={"status": status}) for score, status in zip(result.scores, result.statuses)]

    def close(self) -> None:
        """Stop the worker processes (the runner calls this when the run ends)."""
        self.verifier.close()


@hookimpl
def cascade_environments():
    return {"math": MathEnvironment}


@hookimpl
def cascade_rewards():
    return {"math_verify": MathVerifyReward}


@hookimpl
def cascade_config_searchpaths():
    return ["pkg://cascade_math.conf"]
