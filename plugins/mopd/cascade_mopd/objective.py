"""MOPD's objective, exactly as SPEC.md writes it. For a rollout y of a prompt x from domain d:

    a_t = log pi_teacher(d)(y_t | s_t) - log pi_train(y_t | s_t)            (reverse-KL signal, -> 0 at the teacher)
    r_t = pi_train(y_t | s_t) / pi_rollout(y_t | s_t)
    w_t = sg(r_t) * 1[lo <= r_t <= hi]                                       (truncated importance weight, hard mask)
    L   = - mean over sequences ( 1/|V(y)| * sum_{t in V(y)} w_t * sg(a_t) * log pi_train(y_t | s_t) )

V(y) are the response tokens the window keeps. ``alpha`` blends in the reward advantage: a_t + alpha * A.
"""

from __future__ import annotations

import time
from typing import Mapping

import torch

from cascade.engine.grpo import Batch
from cascade.types import Teacher


class DistillationObjective:
    filters_uniform_groups = False  # a group all right or all wrong still carries the teacher's signal

    def __init__(self, teachers: Mapping[str, Teacher], alpha: float = 0.0, ratio_bounds: tuple[float, float] = (0.5, 2.0)):
        self.teachers = dict(teachers)
        self.alpha = alpha
        self.low, self.high = ratio_bounds

    def prepare(self, batch: Batch, context) -> dict[str, float]:
        """Score every sequence under its domain's teacher; each teacher sees all its sequences in one call."""
        started = time.perf_counter()
        teacher_logprobs = torch.zeros_like(batch.rollout_logprobs)
        by_teacher: dict[int, list[int]] = {}
        for row, domain in enumerate(batch.domains):
            by_teacher.setdefault(id(self.teachers[domain]), []).append(row)
        for rows in by_teacher.values():
            teacher = self.teachers[batch.domains[rows[0]]]
            sequences = [batch.input_ids[r][batch.attention_mask[r].bool()].tolist() for r in rows]
            for r, logprobs in zip(rows, teacher.logprobs(sequences)):
                teacher_logprobs[r, : len(logprobs) - 1] = torch.tensor(logprobs[1:])
        batch.teacher_logprobs = teacher_logprobs
        return {"teacher_seconds": time.perf_counter() - started}

    def loss(self, logprobs: torch.Tensor, old_logprobs: torch.Tensor, micro: Batch, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        current = logprobs.detach()
        ratio = torch.exp(current - micro.rollout_logprobs)
        keep = micro.mask * ((ratio >= self.low) & (ratio <= self.high)).float()
        weight = ratio * keep
        advantage = micro.teacher_logprobs - current
        if self.alpha:
            advantage = advantage + self.alpha * micro.advantages.unsqueeze(-1)
        per_sequence = (weight * advantage * logprobs).sum(-1) / keep.sum(-1).clamp(min=1)
        loss = -per_sequence.sum() / batch.input_ids.shape[0]
        stats = {"masked_tokens": (micro.mask - keep).sum().item()}
        reverse_kl = (current - micro.teacher_logprobs) * micro.mask  # per-token estimate of KL(student || teacher)
        for row, domain in enumerate(micro.domains):
            stats[f"rkl_sum/{domain}"] = stats.get(f"rkl_sum/{domain}", 0.0) + reverse_kl[row].sum().item()
            stats[f"rkl_tokens/{domain}"] = stats.get(f"rkl_tokens/{domain}", 0.0) + micro.mask[row].sum().item()
        return loss, stats

    def summarize(self, sums: dict[str, float], batch: Batch, updates: int) -> dict[str, float]:
        metrics = {"masked_fraction": sums.get("masked_tokens", 0.0) / (batch.mask.sum().item() * updates)}
        for key, total in sums.items():
            if key.startswith("rkl_sum/"):
                domain = key.split("/", 1)[1]
                metrics[f"reverse_kl/{domain}"] = total / max(1.0, sums[f"rkl_tokens/{domain}"])
        return metrics
