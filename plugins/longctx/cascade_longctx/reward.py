"""String-match scoring of long-context answers, RULER-style, with an optional judge for free-form answers.

The answer is the last assistant message with ``<think>`` sections removed. A value *appears* in it when
it occurs as a whole token: not preceded or followed by a letter or digit, whitespace inside it matched
loosely, case-sensitive (values are copied from the context, and a variable may be called ``AND``). So
``123456`` does not contain the value ``2345`` and ``QXTA`` does not contain ``QXT``, while ``48213.`` and
``"48213"`` contain ``48213``.

Let ``hits`` be the expected values that appear and ``extras`` the sample's distractors (the other values of
the same kind its context holds) that appear too. Then

- ``part`` = ``hits / max(expected, hits + extras)``: the fraction of expected values found, diluted by
  every distractor named alongside them, so copying every number of the context earns
  ``expected / all`` at best, not 1;
- ``all`` = 1 if ``part`` is 1 (every expected value, no distractor), else 0.

The order of several values is not checked (RULER does not either), nor are values that appear nowhere in
the context (they earn nothing).

**Judge.** With ``judge`` set (a callable ``prompt -> reply text`` or its import path, loaded by
:func:`cascade.rewards.judge.load_judge`), answers that string match does not give full credit -- free-form
ones like "forty-eight thousand two hundred and thirteen" -- are graded by the judge instead, against
:data:`JUDGE_RUBRIC` filled with the question, the expected values and the answer; its reply must end with
``Score: N`` (0..10) and the reward is ``N / 10``. A reply without a valid score scores 0 (``no_score``),
a judge that raises scores 0 (``error``): neither stops training. Answers that match exactly are never
sent to the judge.
"""

from __future__ import annotations

import re
from typing import Sequence

from cascade import Episode, Reward, RewardResult
from cascade.environments.generated import strip_think
from cascade.rewards.judge import Judge, load_judge, parse_score

METRICS = ("all", "part")
MAX_SCORE = 10

JUDGE_RUBRIC = """Grade the answer to a question about a long document.
Question: {question}
Expected: {expected}
Answer: {response}
Give 10 if the answer states every expected value (any wording or number format), a proportional part if it
states some of them, and 0 if it states none. Take 2 off for every value it gives that was not asked for.
End with "Score: N" (N from 0 to 10)."""

def appears(value: str, text: str) -> bool:
    """``value`` occurs in ``text`` as a whole token (module docstring)."""
    pattern = r"\s+".join(re.escape(word) for word in value.split())
    return re.search(rf"(?<![A-Za-z0-9]){pattern}(?![A-Za-z0-9])", text) is not None


def match(answer: str, values: Sequence[str], distractors: Sequence[str] = ()) -> tuple[float, int, int]:
    """``(part, hits, extras)`` of ``answer`` (thinking already removed) against the expected ``values``."""
    hits = sum(appears(v, answer) for v in values)
    extras = sum(appears(d, answer) for d in set(distractors) - set(values))
    return hits / max(len(values), hits + extras), hits, extras


class LongContextMatchReward(Reward):
    """``all`` or ``part`` string match of the expected values (module docstring); with ``judge``, the judge
    grades what string match does not fully credit. ``info``: status, hits, expected, extras, part."""

    def __init__(self, metric: str = "all", judge: Judge | str | None = None, judge_options: dict | None = None,
                 rubric: str = JUDGE_RUBRIC):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.metric = metric
        self.judge = load_judge(judge, judge_options) if judge is not None else None
        self.rubric = rubric

    def score(self, episodes_G: Sequence[Episode]) -> list[RewardResult]:
        return [self.score_one(episode) for episode in episodes_G]

    def score_one(self, episode: Episode) -> RewardResult:
        try:
            values, distractors = episode.sample.answer["values"], episode.sample.answer["distractors"]
            answer = strip_think(episode.response)
            part, hits, extras = match(answer, values, distractors)
        except Exception as error:  # noqa: BLE001 - a malformed sample scores 0, never stops training
            return RewardResult(0.0, info={"status": "error", "detail": f"{type(error).__name__}: {error}"})
        info = {"status": "ok", "hits": hits, "expected": len(values), "extras": extras, "part": part}
        value = part if self.metric == "part" else float(part == 1.0)
        if self.judge is None or part == 1.0:
            return RewardResult(value, info=info)
        prompt = self.rubric.format(question=episode.sample.meta.get("question", ""), expected=", ".join(values),
                                    response=answer.strip())
        try:
            judged = parse_score(self.judge(prompt), MAX_SCORE)
        except Exception as error:  # noqa: BLE001 - a failing judge scores 0, never stops training
            return RewardResult(0.0, info={**info, "status": "error", "detail": f"{type(error).__name__}: {error}"})
        return RewardResult(judged or 0.0, info={**info, "status": "judged" if judged is not None else "no_score"})
