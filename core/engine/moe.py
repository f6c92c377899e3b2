"""MoE routers in the engine: our kernels in the policy, router freezing, recording, and bias balancing.

The model-facing pieces live in `cascade.kernels.integration` (router patch, routing replay, recorder, load
monitor); this module is what the engine calls. SPEC.md: during RL the router is frozen while the
auxiliary-loss-free expert-bias balancing keeps updating (``bias += rate * sign(mean_count - count)``). The bias
only affects which experts are chosen, never the gate weights, so balancing does not fight the frozen router.
"""

from __future__ import annotations

from torch import nn

from cascade.kernels import update_correction_bias
from cascade.kernels.integration import LoadMonitor, RoutingRecorder, find_routers, replay_routing, use_cascade_kernels


def prepare_moe(model: nn.Module) -> int:
    """Run a loaded policy's MoE layers on cascade's kernels (experts forward + routers, which routing replay
    needs). Returns the number of routers; a dense model (no routers) is left untouched and this returns 0."""
    return use_cascade_kernels(model)


def freeze_routers(model: nn.Module) -> int:
    """Stop gradients to router weights; returns how many routers were frozen."""
    routers = find_routers(model)
    for router in routers:
        router.weight.requires_grad_(False)
    return len(routers)


class ExpertBalancer(LoadMonitor):
    """Counts expert choices of real (``token_mask``) tokens in training forwards; :meth:`update` nudges the
    routers' correction biases and returns the load-balance metrics (`LoadMonitor.metrics`).

    """

    def __init__(self, model: nn.Module, rate: float = 1e-3):
        super().__init__(model)
        self.rate = rate

    def update(self) -> dict[str, float]:
        """Apply one bias update from the counts since the last one; returns load-balance metrics."""
        metrics = self.metrics()
        for router, counts, forwards in zip(self.routers, self.counts, self.forwards):
            if forwards and hasattr(router, "e_score_correction_bias"):  # softmax routers have no bias to balance
                update_correction_bias(router.e_score_correction_bias, counts, self.rate)
        self.reset()
        return metrics


__all__ = ["prepare_moe", "freeze_routers", "find_routers", "RoutingRecorder", "ExpertBalancer", "replay_routing"]
