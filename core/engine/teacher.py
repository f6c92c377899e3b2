"""The in-process teacher: a checkpoint loaded once, scoring batches of sequences without gradients."""

from __future__ import annotations

from typing import Sequence

import torch

from cascade.engine.policy import load_policy
from cascade.engine.trainer import attention_mask, right_pad, token_logprobs
from cascade.types import Checkpoint, Teacher


class HFTeacher(Teacher):
    """Per-token log-probs under a Hugging Face checkpoint; a remote teacher implements the same method."""

    def __init__(self, checkpoint: Checkpoint, batch_size: int = 32, dtype: str = "float32"):
        self.checkpoint = checkpoint
        self.policy = load_policy(checkpoint.path, dtype)
        self.policy.model.eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def logprobs(self, token_ids_B: Sequence[Sequence[int]]) -> list[list[float]]:
        out: list[list[float]] = []
        pad = self.policy.pad_id
        for start in range(0, len(token_ids_B), self.batch_size):
            chunk = [list(ids) for ids in token_ids_B[start:start + self.batch_size]]
            logprobs, _ = token_logprobs(self.policy.model, right_pad(chunk, pad), attention_mask(chunk))
            out += [[0.0] + logprobs[i, : len(s) - 1].tolist() for i, s in enumerate(chunk)]
        return out
