"""Long-context RL: RULER-style generated tasks at a configurable context length, string-match reward.

Registered through the ``cascade`` entry-point group like any third-party plugin; provides the
``longctx`` environment (:mod:`cascade_longctx.tasks`), the ``longctx_match`` reward
(:mod:`cascade_longctx.reward`) and the config presets ``domain=longctx`` and ``stage=longctx_rl``.
"""

from __future__ import annotations

from typing import Sequence

from cascade import Environment, Sample, hookimpl
from cascade.environments.generated import NO_THINKING, spread
from cascade_longctx.reward import LongContextMatchReward
from cascade_longctx.tasks import TASKS, LongContextTask, check_options, generate


class LongContextEnvironment(Environment):
    """Single-turn: a long context, a question, a short answer (``Answer: 48213``; demonstrations name what they
    look up first: ``Answer: amber-falcon is 48213``, :mod:`cascade_longctx.tasks`).

    ``context_tokens``: approximate length of the prompt (:func:`cascade_longctx.tasks.approx_tokens`);
    ``tasks``: which kinds to mix, evenly; ``keys`` needles per haystack, ``queries`` how many of them one
    question asks (one count, or a list to draw from); ``chains`` and ``hops`` of variable tracking;
    ``documents`` per multi-document question.
    """

    def __init__(self, context_tokens: int = 400, tasks: Sequence[str] = TASKS, keys: int = 4,
                 queries: int | Sequence[int] = 1, chains: int = 2, hops: int = 2, documents: int = 3):
        self.tasks = list(tasks)
        if not self.tasks or set(self.tasks) - set(TASKS):
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {list(tasks)}")
        self.options = {"context_tokens": int(context_tokens), "keys": int(keys),
                        "queries": [int(queries)] if isinstance(queries, int) else [int(q) for q in queries],
                        "chains": int(chains), "hops": int(hops), "documents": int(documents)}
        check_options(**self.options)  # now, not at the first sample

    def items(self, split: str, n: int, seed: int) -> list[LongContextTask]:
        out: list[LongContextTask] = []
        for kind, count in zip(self.tasks, spread(n, self.tasks)):
            out += generate(kind, split, count, seed, **self.options)
        return out

    def samples(self, split, n, seed):
        return [
            Sample(id=t.id, domain=self.domain, messages=[{"role": "user", "content": t.prompt}],
                   answer={"values": list(t.values), "distractors": list(t.distractors)},
                   meta={"task": t.kind, "question": t.question, "depth": t.depth})
            for t in self.items(split, n, seed)
        ]

    def demonstrations(self, n, seed):
        return [[{"role": "user", "content": t.prompt}, {"role": "assistant", "content": NO_THINKING + t.answer}]
                for t in self.items("train", n, seed + 1)]


@hookimpl
def cascade_environments():
    return {"longctx": LongContextEnvironment}


@hookimpl
def cascade_rewards():
    return {"longctx_match": LongContextMatchReward}


@hookimpl
def cascade_config_searchpaths():
    return ["pkg://cascade_longctx.conf"]
