"""Judges: any callable ``prompt -> reply text`` that grades model output (a local model's generate
function, an API client, a fake in tests). Rewards that ask a judge (proofs, RLHF, long-context answers)
load it the same way.

Config names a judge by import path (``judge: my_package.judges:grade``); with ``judge_options`` the
path names a factory that builds it (``judge: my_package.judges:Judge``, ``judge_options: {model: ...}``).
A local causal LM becomes a judge with :class:`HFJudge`. Nothing is downloaded here.
"""

from __future__ import annotations

import importlib
import re
from typing import Callable

Judge = Callable[[str], str]

_SCORE = re.compile(r"score\s*:\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


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


def parse_score(reply: str, max_score: float) -> float | None:
    """The last ``Score: N`` of a judge's ``reply`` over ``max_score``, or None if there is none or it is too high."""
    matches = _SCORE.findall(reply)
    if not matches or float(matches[-1]) > max_score:
        return None
    return float(matches[-1]) / max_score


def user_request(episode) -> str:
    """The sample's last user message: the request a judge is told the response answers."""
    return next((m["content"] for m in reversed(episode.sample.messages) if m["role"] == "user"), "")


class HFJudge:
    """A local Hugging Face causal LM as a judge: the prompt (in the tokenizer's chat template, when it has one)
    answered greedily, the new text returned. ``judge: cascade.rewards.judge:HFJudge, judge_options: {path: DIR}``."""

    def __init__(self, path: str, max_new_tokens: int = 64):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path).eval()
        self.max_new_tokens = max_new_tokens

    def __call__(self, prompt: str) -> str:
        import torch

        if getattr(self.tokenizer, "chat_template", None):
            prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                        add_generation_prompt=True)
        ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=self.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
