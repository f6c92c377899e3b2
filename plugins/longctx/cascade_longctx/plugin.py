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
    question asks (one count, or a list to draw from); ``values``: the kinds of niah's values, drawn per item
    (``number``, five digits; ``word``, a lower-case name or thing); ``chains`` and ``hops`` of variable tracking;
    ``documents`` per multi-document question; ``demonstration_context_tokens``: the lengths SFT's
    demonstrations are generated at (one, or a list they are spread over evenly; default ``context_tokens``).
    Shorter contexts pack several demonstrations to a row and leave less filler between the question and its
    facts; below the facts' own length a context is the facts alone.
    """

    def __init__(self, context_tokens: int = 400, tasks: Sequence[str] = TASKS, keys: int = 4,
                 queries: int | Sequence[int] = 1, chains: int = 2, hops: int = 2, documents: int = 3,
                 demonstration_context_tokens: int | Sequence[int] | None = None, values: Sequence[str] = ("number",)):
        self.tasks = list(tasks)
        if not self.tasks or set(self.tasks) - set(TASKS):
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {list(tasks)}")
        self.options = {"context_tokens": int(context_tokens), "keys": int(keys),
                        "queries": [int(queries)] if isinstance(queries, int) else [int(q) for q in queries],
                        "chains": int(chains), "hops": int(hops), "documents": int(documents), "values": list(values)}
        lengths = context_tokens if demonstration_context_tokens is None else demonstration_context_tokens
        self.demonstration_lengths = [int(lengths)] if isinstance(lengths, int) else [int(x) for x in lengths]
        if not self.demonstration_lengths:
            raise ValueError("demonstration_context_tokens must name at least one length")
        for length in [self.options["context_tokens"], *self.demonstration_lengths]:  # now, not at the first sample
            check_options(**{**self.options, "context_tokens": length})

    def items(self, split: str, n: int, seed: int, context_tokens: int | None = None) -> list[LongContextTask]:
        options = self.options if context_tokens is None else {**self.options, "context_tokens": context_tokens}
        out: list[LongContextTask] = []
        for kind, count in zip(self.tasks, spread(n, self.tasks)):
            out += generate(kind, split, count, seed, **options)
        return out

    def samples(self, split, n, seed):
        return [
            Sample(id=t.id, domain=self.domain, messages=[{"role": "user", "content": t.prompt}],
                   answer={"values": list(t.values), "distractors": list(t.distractors)},
                   meta={"task": t.kind, "question": t.question, "depth": t.depth, "value": t.value_kind})
            for t in self.items(split, n, seed)
        ]

    def demonstrations(self, n, seed):
        return [[{"role": "user", "content": t.prompt}, {"role": "assistant", "content": NO_THINKING + t.answer}]
                for length, count in zip(self.demonstration_lengths, spread(n, self.demonstration_lengths))
                for t in self.items("train", count, seed + 1, context_tokens=length)]


@hookimpl
def cascade_environments():
    return {"longctx": LongContextEnvironment}


@hookimpl
def cascade_rewards():
    return {"longctx_match": LongContextMatchReward}


@hookimpl
def cascade_config_searchpaths():
    return ["pkg://cascade_longctx.conf"]
