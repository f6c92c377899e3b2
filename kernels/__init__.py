"""MoE routing kernels (`cascade.kernels`): gating, dispatch, load balance, and a sorted-dispatch MoE forward.

One API, dispatched on the tensor's device: torch code for CPU (and any device), CuPy CUDA kernels
(`kernels/cuda/routing.cu`) for CUDA tensors when CuPy is installed. See kernels/NOTES.md for measurements.

    weights, ids = topk_gating(logits, k=6, score="sigmoid", correction_bias=bias, scaling=2.5)
    d = dispatch(ids, num_experts=128)            # sort by expert; counts, offsets, permutation, inverse
    y = combine(run_experts(permute(hidden, d)), weights, d)

    use_cascade_kernels(hf_model)                 # transformers MoE: our experts forward + routers (integration.py)
    with replay_routing(hf_model, routed_experts): ...   # force the rollout's experts in the training forward
"""

from .balance import expert_counts, router_z_loss, routing_agreement, switch_aux_loss, update_correction_bias
from .dispatch import Dispatch, combine, dispatch, padded_buffer_size, permute
from .gating import replay, router_scores, topk_gating, topk_gating_torch
from .moe_layer import MoEOutput, cascade_experts_forward, experts_forward, moe_forward, register_experts_implementation
from .integration import LoadMonitor, RoutingRecorder, find_routers, replay_routing, use_cascade_kernels

__all__ = [
    "topk_gating", "topk_gating_torch", "router_scores", "replay",
    "Dispatch", "dispatch", "permute", "combine", "padded_buffer_size",
    "expert_counts", "update_correction_bias", "switch_aux_loss", "router_z_loss", "routing_agreement",
    "experts_forward", "moe_forward", "MoEOutput", "cascade_experts_forward", "register_experts_implementation",
    "use_cascade_kernels", "replay_routing", "find_routers", "RoutingRecorder", "LoadMonitor",
]
