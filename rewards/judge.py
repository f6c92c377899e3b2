"""Judges: any callable ``prompt -> reply text`` that grades model output (a local model's generate
function, an API client, a fake in tests). Rewards that ask a judge (proofs, RLHF, long-context answers)
load it the same way.

Config names a judge by import path (``judge: my_package.judges:grade``); with ``judge_options`` the
path names a factory that builds it (``judge: my_package.judges:Judge``, ``judge_options: {model: ...}``).
Nothing is downloaded here.
"""

from __future__ import annotations

import importlib
from typing import Callable

Judge = Callable[[str], str]


def load_judge(judge: Judge | str, judge_options: dict | None = None) -> Judge:
    """The judge callable: ``judge`` itself, or what its import path ``module:name`` names (called with
    ``judge_options`` to build it, when given)."""
    if isinstance(judge, str):
        module, _, name = judge.partition(":")
        if not module or not name:
            raise ValueError(f"judge must be a callable or an import path 'module:name', got {judge!r}")
        judge = getattr(importlib.import_module(module), name)
    if judge_options is not None:
        judge = judge(**judge_options)
    if not callable(judge):
        raise TypeError(f"the judge must be callable (prompt -> reply text), got {type(judge).__name__}")
    return judge
