"""Load balance for MoE routers: counts, the auxiliary-loss-free bias update, auxiliary losses, and a
routing-agreement metric.

How the recipe uses them (Nemotron 3 Nano, SPEC "The base model's MoE"): after each optimizer step,
`update_correction_bias` nudges every expert's selection bias toward the mean load (rate 1e-3); this keeps
running during RL while the router weights are frozen. A small sequence-level `switch_aux_loss` (coef 1e-4)
is added to the training loss; `router_z_loss` is optional (ST-MoE). `routing_agreement` compares the
rollout engine's routing with the trainer's (how much routing replay matters).
"""

from __future__ import annotations

import torch


def expert_counts(ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Tokens per expert (long [E]) from ids [..., k]; -1 padding is ignored."""
    flat = ids.reshape(-1).long()
    return torch.bincount(flat[flat >= 0], minlength=num_experts)


@torch.no_grad()
def update_correction_bias(bias: torch.Tensor, counts: torch.Tensor, rate: float = 1e-3) -> torch.Tensor:
    """Auxiliary-loss-free balancing, in place: bias += rate * sign(mean_count - count). Returns bias.

    Overloaded experts (count above the mean) get a lower bias, so they are chosen less; the bias never enters
    the gate weights, so this changes routing without a gradient through the loss.
    """
    c = counts.to(device=bias.device, dtype=torch.float32)
    bias.add_(torch.sign(c.mean() - c).to(bias.dtype), alpha=rate)
    return bias


def _probs(logits: torch.Tensor, score: str) -> torch.Tensor:
    logits = logits.float()
    if score == "softmax":
        return torch.softmax(logits, dim=-1)
    if score == "sigmoid":  # DeepSeek-V3 style: scores normalised per token
        s = torch.sigmoid(logits)
        return s / s.sum(dim=-1, keepdim=True)
    raise ValueError(score)


def switch_aux_loss(logits: torch.Tensor, ids: torch.Tensor, num_experts: int, score: str = "softmax") -> torch.Tensor:
    """Switch-Transformer load-balancing loss E * sum_e f_e * P_e (1.0 when perfectly balanced).

    f_e: fraction of the T*k routing choices that went to expert e; P_e: mean routing probability of e.
    logits [T, E] with ids [T, k] (batch-level), or [B, S, E] with ids [B, S, k]: computed per sequence and
    averaged (the sequence-level loss of DeepSeek-V3 / Nemotron). transformers' Mixtral
    `load_balancing_loss_func` equals k times this value (its f_e sums to k).
    """
    if logits.dim() == 2:
        logits, ids = logits.unsqueeze(0), ids.unsqueeze(0)
    b, s, e = logits.shape
    p = _probs(logits, score).mean(dim=1)  # [B, E]
    flat = ids.reshape(b, -1).long()
    valid = flat >= 0
    f = torch.zeros(b, e, device=logits.device).scatter_add_(1, flat.clamp(min=0), valid.float())
    f = f / valid.sum(dim=1, keepdim=True).clamp(min=1)
    return (num_experts * (f * p).sum(dim=-1)).mean()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss: mean over tokens of logsumexp(logits)^2 (keeps logits small)."""
    return torch.logsumexp(logits.float(), dim=-1).square().mean()


def routing_agreement(ids_a: torch.Tensor, ids_b: torch.Tensor) -> float:
    """Fraction of the (token, expert) choices of routing a that routing b also made (1.0 = identical sets).

    Order within a token does not matter; -1 padding is ignored. ids [T, k] (k may differ between a and b).
    """
    a, b = ids_a.long(), ids_b.long().to(ids_a.device)
    hit = ((a.unsqueeze(-1) == b.unsqueeze(-2)) & (b.unsqueeze(-2) >= 0)).any(dim=-1) & (a >= 0)
    total = int((a >= 0).sum())
    return float(hit.sum()) / total if total else 1.0


__all__ = ["expert_counts", "update_correction_bias", "switch_aux_loss", "router_z_loss", "routing_agreement"]
