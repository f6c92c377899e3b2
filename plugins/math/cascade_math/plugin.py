r"""Math with final answers: generated problems, answers in \boxed{}, verified by math-verify.

Registered through the ``cascade`` entry-point group like any third-party plugin; provides the
``math`` environment, the ``math_verify`` reward, and the config presets ``domain=math`` and
``stage=math_grpo``.
"""

from __future__ import annotations

from typing import Sequence

from cascade import Environment, Episode, Reward, RewardResult, Sample, hookimpl
from cascade.environments.generated import NO_THINKING, spread
from cascade_math.problems import KINDS, generate, solution

INSTRUCTION = "Put the final answer in \\boxed{}."


class MathEnvironment(Environment):
    """Single-turn: the question, the model's worked answer. ``difficulties`` mixes levels 1..5."""

    def __init__(self, difficulties: Sequence[int] = (1, 2), kinds: Sequence[str] = KINDS):
        self.difficulties = list(difficulties)
        self.kinds = list(kinds)

    def problems(self, split: str, n: int, seed: int):
        """Up to ``n`` problems: the easy levels hold only a few hundred distinct questions."""
        per_level = spread(n, self.difficulties)
        problems = []
        for level, count in zip(self.difficulties, per_level):
            problems += generate(split, count, seed, level, self.kinds, at_most=True)
        return problems

    def samples(self, split, n, seed):
        return [
            Sample(id=p.id, domain=self.domain, messages=[{"role": "user", "content": f"{p.question}\n{INSTRUCTION}"}],
                   answer=p.answer, meta={"kind": p.kind, "difficulty": p.difficulty})
            for p in self.problems(split, n, seed)
        ]

    def demonstrations(self, n, seed):
        return [
            [{"role": "user", "content": f"{p.question}\n{INSTRUCTION}"},
             {"role": "assistant", "content": NO_THINKING + solution(p)}]
            for p in self.problems("train", n, seed + 1)
        ]


class MathVerifyReward(Reward):
    """1 if the last ``\\boxed{}`` of the final answer equals the ground truth (math-verify), else 0.

    Checks run in a killable child process with a hard timeout: math-verify can hang on adversarial
    input, and a hang is scored 0 with ``info["status"] == "timeout"``.
    """

    def __init__(self, timeout: float = 5.0, processes: int = 1):
        from cascade.rewards.math import MathVerifier

        # require_number: math-verify would evaluate \boxed{12+7*3} and accept the question copied back
        self.verifier = MathVerifier(timeout=timeout, processes=processes, require_number=True)

    def score(self, episodes_G: Sequence[Episode]) -> list[RewardResult]:
        result = self.verifier.score([(e.messages[-1]["content"], str(e.sample.answer)) for e in episodes_G])
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
