"""MoE routers in the engine: find them, freeze them for RL, record their choices, balance their load.

SPEC.md: during RL the router is frozen while the auxiliary-loss-free expert-bias balancing keeps
updating (``bias += rate * sign(mean_count - count)``). The bias only affects which experts are chosen,
never the gate weights, so balancing does not fight the frozen router.
"""

from __future__ import annotations

import torch
from torch import nn


def find_routers(model: nn.Module) -> list[nn.Module]:
    """Top-k routers with a selection-only correction bias (NemotronH, DeepSeek-V3 style), in layer order."""
    return [m for m in model.modules() if hasattr(m, "e_score_correction_bias") and hasattr(m, "top_k") and hasattr(m, "weight")]


def freeze_routers(model: nn.Module) -> int:
    """Stop gradients to router weights; returns how many routers were frozen."""
    routers = find_routers(model)
    for router in routers:
        router.weight.requires_grad_(False)
    return len(routers)


def _routing_of(args, output) -> tuple[torch.Size, torch.Tensor]:
    hidden = args[0]
    indices = output[2]
    return hidden.shape[:-1], indices


class RoutingRecorder:
    """Context manager recording the chosen experts of every router for every forward call.

    ``per_sequence`` stitches the calls of a ``generate`` (prefill, then one token at a time) into one
    ``[tokens, layers, k]`` tensor per sequence, dropping left padding.
    """

    def __init__(self, model: nn.Module):
        self.routers = find_routers(model)
        self.calls: list[list[torch.Tensor]] = [[] for _ in self.routers]
        self.handles = []

    def __enter__(self):
        for layer, router in enumerate(self.routers):
            self.handles.append(router.register_forward_hook(self._hook(layer)))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        return False

    def _hook(self, layer: int):
        def record(module, args, output):
            shape, indices = _routing_of(args, output)
            self.calls[layer].append(indices.detach().view(*shape, -1).to(torch.int16))

        return record

    def per_sequence(self, prompt_width: int, attention_mask: torch.Tensor) -> list[torch.Tensor] | None:
        if not self.routers or not self.calls[0]:
            return None
        layers = [torch.cat(calls, dim=1) for calls in self.calls]  # each [B, T, k]
        stacked = torch.stack(layers, dim=2)  # [B, T, layers, k]
        pads = (attention_mask == 0).sum(dim=1).tolist()
        return [stacked[i, pads[i]:] for i in range(stacked.shape[0])]


class ExpertBalancer:
    """Counts expert choices of real (unmasked) tokens during training forwards and nudges the biases."""

    def __init__(self, model: nn.Module, rate: float = 1e-3):
        self.routers = find_routers(model)
        self.rate = rate
        self.counts = [torch.zeros(r.e_score_correction_bias.numel()) for r in self.routers]
        self.token_mask: torch.Tensor | None = None
        self.handles = [r.register_forward_hook(self._hook(i)) for i, r in enumerate(self.routers)]

    def _hook(self, layer: int):
        def count(module, args, output):
            if not module.training:
                return
            _, indices = _routing_of(args, output)
            indices = indices.detach().reshape(-1, indices.shape[-1])
            if self.token_mask is not None and self.token_mask.numel() == indices.shape[0]:
                indices = indices[self.token_mask.reshape(-1).bool()]
            self.counts[layer] += torch.bincount(indices.reshape(-1), minlength=self.counts[layer].numel()).float()

        return count

    @torch.no_grad()
    def update(self) -> dict[str, float]:
        """Apply one bias update from the counts since the last one; returns load-balance metrics."""
        imbalance = []
        for router, counts in zip(self.routers, self.counts):
            if counts.sum() == 0:
                continue
            router.e_score_correction_bias += self.rate * torch.sign(counts.mean() - counts)
            imbalance.append((counts.max() / counts.mean()).item())
            counts.zero_()
        return {"moe_max_over_mean_load": max(imbalance)} if imbalance else {}

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
