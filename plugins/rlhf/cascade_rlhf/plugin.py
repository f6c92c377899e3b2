"""RLHF: generated chat requests scored by a hidden gold rubric; RL trains on a reward model learnt from pairs.

Registered through the ``cascade`` entry-point group like any third-party plugin; provides

* the ``chat`` environment (:mod:`cascade_rlhf.chat`: prompts, SFT demonstrations, gold-labelled preference pairs),
* the ``reward_model`` stage type (a Bradley-Terry reward model, :mod:`cascade_rlhf.reward_model`),
* the rewards ``rlhf_gold`` (the gold rubric: the domain's reward, so held-out evaluation uses it),
  ``reward_model`` (the learnt reward model: what the rlhf stage trains on) and ``pairwise_judge``
  (a generative judge over all pairs of a group, :mod:`cascade_rlhf.pairwise`),
* the presets ``domain=rlhf``, ``stage=reward_model`` and ``stage=rlhf``.
"""

from __future__ import annotations

import random
from typing import Sequence

from cascade import Environment, Episode, Reward, RewardResult, Sample, hookimpl
from cascade.environments.generated import NO_THINKING, item_id
from cascade_rlhf.chat import STYLE_FLAWS, PreferencePair, gold_score, good_answer, preference_pairs, prompts, rubric


class ChatEnvironment(Environment):
    """Single-turn short chat requests (greet, thank, add, name a color, list items).

    Like real SFT data, the demonstrations are of mixed quality: a ``flawed_demonstrations`` share of them has
    one of the ``demonstration_flaws`` (rude, too long or repeated: :data:`cascade_rlhf.chat.STYLE_FLAWS`), never
    a wrong answer. The SFT policy copies those habits; the gold rubric marks them down, and RLHF has
    something a reward model can learn to remove.
    """

    def __init__(self, flawed_demonstrations: float = 0.5, demonstration_flaws: Sequence[str] = tuple(STYLE_FLAWS)):
        if not 0.0 <= flawed_demonstrations <= 1.0:
            raise ValueError(f"flawed_demonstrations must be within [0, 1], got {flawed_demonstrations!r}")
        unknown = sorted(set(demonstration_flaws) - set(STYLE_FLAWS))
        if unknown or not demonstration_flaws:
            raise ValueError(f"demonstration_flaws must be a non-empty subset of {sorted(STYLE_FLAWS)}, got {list(demonstration_flaws)}")
        self.flawed_demonstrations = flawed_demonstrations
        self.demonstration_flaws = sorted(demonstration_flaws)

    def samples(self, split, n, seed):
        return [Sample(id=item_id("rlhf", p.text), domain=self.domain, messages=[{"role": "user", "content": p.text}],
                       answer=p.answer, meta={"kind": p.kind})
                for p in prompts(split, n, seed)]

    def demonstrations(self, n, seed):
        rng = random.Random(f"rlhf-demos/{seed}")
        return [[{"role": "user", "content": p.text}, {"role": "assistant", "content": NO_THINKING + self.demonstration(p.answer, rng)}]
                for p in prompts("train", n, seed + 1)]

    def demonstration(self, answer: dict, rng: random.Random) -> str:
        text = good_answer(answer, rng)
        if rng.random() < self.flawed_demonstrations:
            text = STYLE_FLAWS[rng.choice(self.demonstration_flaws)](text, answer, rng)
        return text

    def preference_pairs(self, split: str, n: int, seed: int) -> list[PreferencePair]:
        """``n`` (chosen, rejected) pairs over ``split``'s prompts, labelled by the gold rubric."""
        return preference_pairs(split, n, seed)


class GoldRubricReward(Reward):
    """The hidden gold preference (:func:`cascade_rlhf.chat.gold_score`); ``info["rules"]`` has each rule's verdict."""

    def score(self, episodes_G: Sequence[Episode]) -> list[RewardResult]:
        results = []
        for episode in episodes_G:
            response = episode.response
            try:
                results.append(RewardResult(gold_score(response, episode.sample.answer),
                                            info={"status": "ok", "rules": rubric(response, episode.sample.answer)}))
            except Exception as error:  # a malformed sample must not stall training
                results.append(RewardResult(0.0, info={"status": "error", "detail": f"{type(error).__name__}: {error}"}))
        return results


@hookimpl
def cascade_environments():
    return {"chat": ChatEnvironment}


@hookimpl
def cascade_rewards():
    from cascade_rlhf.pairwise import PairwiseJudgeReward
    from cascade_rlhf.reward_model import RewardModelReward

    return {"rlhf_gold": GoldRubricReward, "reward_model": RewardModelReward, "pairwise_judge": PairwiseJudgeReward}


@hookimpl
def cascade_stage_types():
    from cascade_rlhf.reward_model import RewardModelStage

    return {"reward_model": RewardModelStage}


@hookimpl
def cascade_config_searchpaths():
    return ["pkg://cascade_rlhf.conf"]
