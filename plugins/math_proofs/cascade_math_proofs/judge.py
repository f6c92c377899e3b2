"""A reward that asks a judge model, for proofs outside the checkable format (the paper judges
natural-language proofs with a model).

The judge is loaded as :mod:`cascade.rewards.judge` describes (a callable ``prompt -> reply text``, or
its import path).

The judge sees :data:`PROOF_RUBRIC` filled with the problem (the sample's last user message) and the
final answer (``<think>`` sections removed), and must end its reply with ``Score: N``; the reward is
``N / max_score``. A reply without a score, or with one above ``max_score``, scores 0 (``no_score``); a
judge that raises scores 0 (``error``). Judges that compare the rollouts of a group (pairwise) override
:meth:`JudgeReward.score`, which sees the whole group.
"""

from __future__ import annotations

from typing import Sequence

from cascade import Episode, Reward, RewardResult
from cascade.environments.generated import strip_think
from cascade.rewards.judge import Judge, load_judge, parse_score, user_request

PROOF_RUBRIC = """Grade the proof below.
Problem:
{problem}
Proof:
{response}
Give {max_score} for a complete and rigorous proof of exactly the claim, partial credit for a proof
with gaps, 0 for a wrong proof, a proof of something else, or no proof. End with "Score: N"."""

class JudgeReward(Reward):
    """Each rollout graded by a judge model against a rubric; see the module docstring."""

    def __init__(self, judge: Judge | str, judge_options: dict | None = None, rubric: str = PROOF_RUBRIC,
                 max_score: float = 10):
        self.judge = load_judge(judge, judge_options)
        self.rubric = rubric
        self.max_score = max_score

    def prompt(self, episode: Episode) -> str:
        problem = user_request(episode)
        response = strip_think(episode.messages[-1]["content"]).strip()
        return self.rubric.format(problem=problem, response=response, max_score=self.max_score)

    def score(self, episodes_G: Sequence[Episode]) -> list[RewardResult]:
        results = []
        for episode in episodes_G:
            try:
                reply = self.judge(self.prompt(episode))
            except Exception as exc:  # noqa: BLE001 - a failing judge scores 0, never stops training
                results.append(RewardResult(0.0, info={"status": "error", "detail": f"{type(exc).__name__}: {exc}"}))
                continue
            value = parse_score(reply, self.max_score)
            status = "no_score" if value is None else "ok"
            results.append(RewardResult(value or 0.0, info={"status": status}))
        return results
