"""A generative pairwise judge, as in the paper's RLHF: a language model compares two responses to the prompt,
for every pair of a group's rollouts, and each rollout's reward is its win rate.

The judge is any callable ``prompt -> reply text`` loaded by :func:`cascade.rewards.judge.load_judge` (a local
causal LM: ``judge: cascade.rewards.judge:HFJudge`` with ``judge_options: {path: DIR}``). It sees
:data:`PAIRWISE_TEMPLATE` filled with the prompt and responses A and B, and may answer with scores
(``A: 7, B: 4``), a verdict (``Better: A``, ``Winner: B``, ``[[A]]``, ``tie``) or both (the verdict wins).

Every ordered pair (i, j), i != j, is judged once with i as A and once with i as B, which cancels a judge's
position bias: G rollouts cost G(G-1) judge calls. A win counts 1, a tie 0.5, a loss 0; a rollout's reward is
its points over its 2(G-1) comparisons. A reply that cannot be parsed is a tie (``unparsable``), a judge that
raises is a tie too (``error``): neither stops training. ``info`` counts both per rollout.
"""

from __future__ import annotations

import re
from typing import Sequence

from cascade import Episode, Reward, RewardResult
from cascade.environments.generated import strip_think
from cascade.rewards.judge import Judge, load_judge, user_request

PAIRWISE_TEMPLATE = """Compare two responses to the user's request.
Request:
{prompt}
Response A:
{a}
Response B:
{b}
Which response is better: helpful, correct, polite and concise? Give each a score from 0 to {max_score} as
"A: N, B: N", then end with "Better: A", "Better: B" or "Better: tie"."""

_VERDICT = re.compile(r"(?:better|winner|verdict)\s*(?:is|:|=)?\s*(?:response\s+)?\[*\s*(a|b|tie)\b|\[\[\s*(a|b|tie)\s*\]\]",
                      re.IGNORECASE)
_SCORE = r"(?<![a-z]){side}\s*[:=]\s*(\d+(?:\.\d+)?)"


def parse_preference(reply: str) -> str | None:
    """``"A"``, ``"B"``, ``"tie"``, or None when the reply says neither (the last verdict, else the last scores)."""
    text = strip_think(reply)
    verdicts = _VERDICT.findall(text)
    if verdicts:
        last = next(v for v in verdicts[-1] if v)
        return "tie" if last.lower() == "tie" else last.upper()
    a = re.findall(_SCORE.format(side="a"), text, re.IGNORECASE)
    b = re.findall(_SCORE.format(side="b"), text, re.IGNORECASE)
    if not a or not b:
        return None
    score_a, score_b = float(a[-1]), float(b[-1])
    return "A" if score_a > score_b else "B" if score_b > score_a else "tie"


class PairwiseJudgeReward(Reward):
    """Win rates of a group's rollouts under a pairwise judge; see the module docstring."""

    def __init__(self, judge: Judge | str, judge_options: dict | None = None, template: str = PAIRWISE_TEMPLATE,
                 max_score: int = 10):
        self.judge = load_judge(judge, judge_options)
        self.template = template
        self.max_score = max_score

    def prompt(self, episode: Episode, a: str, b: str) -> str:
        request = user_request(episode)
        return self.template.format(prompt=request, a=a, b=b, max_score=self.max_score)

    def judge_pair(self, episode: Episode, a: str, b: str) -> tuple[float, str]:
        """A's points (1 win, 0.5 tie, 0 loss) and the judgement's status."""
        try:
            verdict = parse_preference(self.judge(self.prompt(episode, a, b)))
        except Exception:  # noqa: BLE001 - a failing judge is a tie, never stops training
            return 0.5, "error"
        if verdict is None:
            return 0.5, "unparsable"
        return {"A": 1.0, "B": 0.0, "tie": 0.5}[verdict], "ok"

    def score(self, episodes_G: Sequence[Episode]) -> list[RewardResult]:
        responses = [strip_think(e.messages[-1]["content"]).strip() for e in episodes_G]
        n = len(episodes_G)
        points = [0.0] * n
        counts = [{"ok": 0, "unparsable": 0, "error": 0} for _ in range(n)]
        for i in range(n):
            for j in range(n):
                if i == j:
                    continue
                won, status = self.judge_pair(episodes_G[i], responses[i], responses[j])
                points[i] += won
                points[j] += 1.0 - won
                counts[i][status] += 1
                counts[j][status] += 1
        comparisons = 2 * (n - 1)
        results = []
        for i in range(n):
            status = "error" if counts[i]["error"] else "unparsable" if counts[i]["unparsable"] else "ok"
            value = points[i] / comparisons if comparisons else 0.5
            results.append(RewardResult(value, info={"status": status, "win_rate": value, **counts[i]}))
        return results
