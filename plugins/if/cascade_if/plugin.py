"""Instruction following (IF-RL): generated prompts with IFEval-style constraints, rule-based reward.

Registered through the ``cascade`` entry-point group like any third-party plugin; provides the
``if`` environment, the ``if_verify`` reward, and the config presets ``domain=if`` and
``stage=if_rl``. The verifiers themselves live in :mod:`cascade.rewards.ifeval`.
"""

from __future__ import annotations

from typing import Sequence

from cascade import Environment, Episode, Reward, RewardResult, Sample, hookimpl
from cascade.environments.generated import NO_THINKING, spread
from cascade.rewards.ifeval import MODES, score_response
from cascade_if.prompts import LEVELS, generate


class IFEnvironment(Environment):
    """Single-turn: a short task with 1–3 constraints. ``difficulties`` mixes levels 1..3;
    ``instruction_ids`` restricts the constraint vocabulary (default: every IFEval instruction,
    the easy subset at level 1)."""

    def __init__(self, difficulties: Sequence[int] = (1, 2), instruction_ids: Sequence[str] | None = None):
        self.difficulties = [int(d) for d in difficulties]
        if not self.difficulties or set(self.difficulties) - set(LEVELS):
            raise ValueError(f"difficulties must be a non-empty subset of {LEVELS}, got {list(difficulties)}")
        self.instruction_ids = list(instruction_ids) if instruction_ids is not None else None

    def prompts(self, split: str, n: int, seed: int):
        per_level = spread(n, self.difficulties)
        prompts = []
        for level, count in zip(self.difficulties, per_level):
            prompts += generate(split, count, seed, level, self.instruction_ids, at_most=True)
        return prompts

    def samples(self, split, n, seed):
        return [
            Sample(id=p.id, domain=self.domain, messages=[{"role": "user", "content": p.prompt}],
                   answer=p.constraints,
                   meta={"difficulty": p.difficulty, "instructions": list(p.instruction_id_list)})
            for p in self.prompts(split, n, seed)
        ]

    def demonstrations(self, n, seed):
        return [
            [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": NO_THINKING + p.answer}]
            for p in self.prompts("train", n, seed + 1)
        ]


class IFVerifyReward(Reward):
    """1 if the final answer (thinking removed) follows every constraint of the sample, else 0.

    ``fractional: true`` gives the fraction of constraints followed instead; ``mode: loose`` uses
    IFEval's loose checking. ``info`` holds the per-constraint verdicts.
    """

    def __init__(self, fractional: bool = False, mode: str = "strict"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.fractional = bool(fractional)
        self.mode = mode

    def score(self, episodes_G: Sequence[Episode]) -> list[RewardResult]:
        results = []
        for episode in episodes_G:
            try:
                value, follow = score_response(episode.response, episode.sample.answer,
                                               fractional=self.fractional, mode=self.mode)
            except Exception as error:  # a malformed sample must not stall training
                results.append(RewardResult(0.0, info={"status": f"error: {type(error).__name__}: {error}"}))
                continue
            results.append(RewardResult(value, info={
                "status": "ok", "follow_all": follow.follow_all, "fraction": follow.fraction,
                "follow": dict(zip(follow.instruction_id_list, follow.follow_list))}))
        return results


@hookimpl
def cascade_environments():
    return {"if": IFEnvironment}


@hookimpl
def cascade_rewards():
    return {"if_verify": IFVerifyReward}


@hookimpl
def cascade_config_searchpaths():
    return ["pkg://cascade_if.conf"]
