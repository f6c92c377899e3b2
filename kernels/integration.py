"""Plug `cascade.kernels` into transformers MoE models: experts implementation, router patch, routing replay.

`use_cascade_kernels(model)` does two things, both local to that model (other models in the process are untouched):

* selects our sorted-dispatch experts forward through transformers' experts interface
  (`register_experts_implementation` + `model.set_experts_implementation("cascade")`; the choice lives in the
  non-serialised `config._experts_implementation`, so a saved checkpoint does not depend on cascade);
* replaces the `forward` of each router *instance* with one that routes through `topk_gating`, with the model's
  own settings (`gating_of`), returning what the original returns: `(router_logits, weights, ids)`.

Why patch the router and not just the MoE block: the router is the one place where the choice is made, it has the
same contract in every transformers MoE, and recording/counting hooks (`RoutingRecorder`, `LoadMonitor`) and
freezing see it unchanged. The patched router adds one thing, routing replay:

    with replay_routing(model, routed_experts) as replay:   # [B, T, moe_layers, k], -1 = not recorded
        out = model(input_ids=ids)                           # ids [B, T]
    replay.agreement                                         # trainer's own top-k vs the forced one

Inside the context each router uses the forced ids (weights recomputed from its current scores by `replay`, so
gradients reach the router) and falls back to its own choice for tokens whose ids contain -1.

Router semantics (transformers 5.x), and what differs from `topk_gating`:
* NemotronH / DeepSeek-V3 (`e_score_correction_bias`): sigmoid of fp32 logits, bias for selection only, group-
  limited top-k, weights = unbiased scores / (sum + 1e-20) * routed_scaling_factor. Same maths; transformers uses
  `torch.topk(sorted=False)`, so its id *order* (and tie-breaking) differs from ours (score desc, index asc).
* Qwen3-MoE: logits in the model dtype, softmax in fp32, top-k; weights renormalised only if `norm_topk_prob`
  (no epsilon in transformers, 1e-20 here) and cast back to the logits dtype.
* Mixtral: like Qwen3 but always renormalised and the weights stay fp32.
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .balance import expert_counts, routing_agreement, switch_aux_loss
from .gating import replay, topk_gating
from .moe_layer import register_experts_implementation

EXPERTS_IMPLEMENTATION = "cascade"


@dataclass(frozen=True)
class Gating:
    """One router's settings, in `topk_gating`'s terms, plus the two dtype conventions that differ by model."""

    k: int
    num_experts: int
    score: str
    normalize: bool
    scaling: float = 1.0
    n_group: int = 1
    topk_group: int = 1
    fp32_logits: bool = True
    """NemotronH/DeepSeek compute the logits in fp32; Qwen3/Mixtral in the model's dtype."""
    weights_like_logits: bool = False
    """Qwen3 casts the gate weights back to the logits' dtype; the others return fp32."""


SIGMOID_ROUTERS = ("NemotronHTopkRouter", "DeepseekV3TopkRouter")
"""Routers patched by exact class name, each checked against transformers' code: many other models have an
`e_score_correction_bias` router with other maths (softmax scores, a different return value), so no duck typing."""


def gating_of(module: nn.Module) -> Gating | None:
    """The routing settings of a transformers top-k router, or None if `module` is not one we know."""
    name = type(module).__name__
    e = module.weight.shape[0] if isinstance(getattr(module, "weight", None), torch.Tensor) else 0
    if name in SIGMOID_ROUTERS:
        return Gating(module.top_k, e, "sigmoid", bool(module.norm_topk_prob), float(module.routed_scaling_factor),
                      module.num_group, module.topk_group)
    if name == "Qwen3MoeTopKRouter":
        return Gating(module.top_k, e, "softmax", bool(module.norm_topk_prob), fp32_logits=False,
                      weights_like_logits=True)
    if name == "MixtralTopKRouter":
        return Gating(module.top_k, e, "softmax", True, fp32_logits=False)
    return None


def find_routers(model: nn.Module) -> list[nn.Module]:
    """Every top-k router `gating_of` understands, in module (= layer) order."""
    return [m for m in model.modules() if gating_of(m) is not None]


# ---- the router patch --------------------------------------------------------------------------------------


def _router_forward(self, hidden_states: torch.Tensor):
    """Drop-in router forward: `topk_gating` with the router's settings, or routing replay inside `replay_routing`."""
    g: Gating = self._cascade_gating
    x = hidden_states.reshape(-1, self.weight.shape[-1])
    logits = F.linear(x.float(), self.weight.float()) if g.fp32_logits else F.linear(x, self.weight)
    bias = getattr(self, "e_score_correction_bias", None)
    weights, ids = topk_gating(logits, g.k, g.score, bias, g.n_group, g.topk_group, g.normalize, g.scaling)
    ctx = self._cascade_replay
    if ctx is not None:
        weights, ids = ctx.route(self._cascade_layer, logits, ids, g)
    if g.weights_like_logits:
        weights = weights.to(logits.dtype)
    return logits, weights, ids


def patch_routers(model: nn.Module) -> list[nn.Module]:
    """Route every known router of `model` through `topk_gating` (idempotent, instance-level). Returns them."""
    routers = find_routers(model)
    for layer, router in enumerate(routers):
        router._cascade_gating = gating_of(router)
        router._cascade_layer = layer
        if "forward" not in router.__dict__:
            router._cascade_replay = None
            router.forward = types.MethodType(_router_forward, router)
    return routers


def unpatch_routers(model: nn.Module) -> None:
    """Give every patched router its class's forward back."""
    for router in find_routers(model):
        if "forward" in router.__dict__:
            del router.forward


def use_cascade_kernels(model: nn.Module, experts: bool = True) -> int:
    """Our experts forward (where the model's experts use transformers' experts interface) and our routers.

    Returns the number of routers patched; a model without known routers (a dense LM) is left exactly as it is.
    """
    routers = patch_routers(model)
    if routers and experts and _uses_experts_interface(model):
        register_experts_implementation(EXPERTS_IMPLEMENTATION)
        model.set_experts_implementation(EXPERTS_IMPLEMENTATION)
    return len(routers)


def _uses_experts_interface(model: nn.Module) -> bool:
    """True when every experts module is one `cascade_experts_forward` can run (3-D weights, no bias, not
    transposed) and the model can switch implementation."""
    experts = [m for m in model.modules() if hasattr(m, "has_gate") and hasattr(m, "down_proj")]
    return (bool(experts) and hasattr(model, "set_experts_implementation")
            and not any(getattr(m, "has_bias", False) or getattr(m, "is_transposed", False) for m in experts))


# ---- routing replay ----------------------------------------------------------------------------------------


class RoutingReplay:
    """State of one `replay_routing` context: the forced ids and how often the router agreed with them."""

    def __init__(self, routed_experts: torch.Tensor | None):
        self.routed_experts = routed_experts
        self.hits = 0.0
        self.total = 0

    @property
    def agreement(self) -> float | None:
        """Fraction of the forced (recorded) choices the router's own top-k also made; None if nothing forced."""
        return self.hits / self.total if self.total else None

    def route(self, layer: int, logits: torch.Tensor, own_ids: torch.Tensor, g: Gating):
        forced = self.routed_experts[:, :, layer].reshape(-1, self.routed_experts.shape[-1])
        if forced.shape != own_ids.shape:
            raise ValueError(f"routing replay: router {layer} routes {tuple(own_ids.shape)} (tokens, k) but the "
                             f"replayed ids give {tuple(forced.shape)}; routed_experts must be [B, T, layers, k] "
                             f"aligned with the forward's input_ids")
        forced = forced.to(device=own_ids.device, dtype=torch.long)
        valid = (forced >= 0).all(dim=-1)
        if valid.any():
            n = int(valid.sum()) * forced.shape[-1]
            self.hits += routing_agreement(forced[valid], own_ids[valid]) * n
            self.total += n
        ids = torch.where(valid.unsqueeze(-1), forced, own_ids)
        return replay(logits, ids, g.score, g.normalize, g.scaling)


@contextmanager
def replay_routing(model: nn.Module, routed_experts: torch.Tensor | None):
    """Force the experts of every router in `model` for the forwards inside the context (see module docstring).

    `routed_experts`: [B, T, moe_layers, k] integer ids (-1 = fall back to the router's own choice), aligned with
    the input_ids of each forward. None: nothing is replayed (yields a `RoutingReplay` with agreement None).
    """
    state = RoutingReplay(routed_experts)
    routers = patch_routers(model) if routed_experts is not None else []
    if routers and routed_experts.shape[2] != len(routers):
        raise ValueError(f"routed_experts has {routed_experts.shape[2]} layers, the model {len(routers)} routers")
    for router in routers:
        router._cascade_replay = state
    try:
        yield state
    finally:
        for router in routers:
            router._cascade_replay = None


# ---- observing routers: recording and load balance -------------------------------------------------------


class _BatchShape:
    """Remembers the [B, T] of the model's current forward, for routers that see flattened [B*T, H] tokens."""

    def __init__(self, model: nn.Module):
        self.shape = None
        self.handle = model.register_forward_pre_hook(self._grab, with_kwargs=True)

    def _grab(self, module, args, kwargs):
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds")
            x = x[..., 0] if x is not None else (args[0] if args else None)
        self.shape = tuple(x.shape[:2]) if x is not None else None

    def of(self, hidden: torch.Tensor) -> tuple[int, ...]:
        return tuple(hidden.shape[:-1]) if hidden.dim() == 3 or self.shape is None else self.shape

    def remove(self) -> None:
        self.handle.remove()


class RoutingRecorder:
    """Context manager recording the chosen experts of every router for every forward call.

    ``calls[layer]`` holds one int16 ``[B, T, k]`` tensor per forward; ``per_sequence`` stitches the calls of a
    generation (prefill, then one token at a time) into one ``[tokens, layers, k]`` tensor per sequence, dropping
    left padding. Inside `replay_routing` it records the ids actually used (the forced ones).
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.routers = find_routers(model)
        self.calls: list[list[torch.Tensor]] = [[] for _ in self.routers]
        self.handles = []

    def __enter__(self):
        if self.routers:
            self.handles.append(_BatchShape(self.model))
            shape = self.handles[0]
            for layer, router in enumerate(self.routers):
                self.handles.append(router.register_forward_hook(self._hook(layer, shape)))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        return False

    def _hook(self, layer: int, shape: _BatchShape):
        def record(module, args, output):
            ids = output[2].detach()
            self.calls[layer].append(ids.reshape(*shape.of(args[0]), ids.shape[-1]).to(torch.int16))

        return record

    def per_sequence(self, prompt_width: int, attention_mask: torch.Tensor) -> list[torch.Tensor] | None:
        if not self.routers or not self.calls[0]:
            return None
        layers = [torch.cat(calls, dim=1) for calls in self.calls]  # each [B, T, k]
        stacked = torch.stack(layers, dim=2)  # [B, T, layers, k]
        pads = (attention_mask == 0).sum(dim=1).tolist()
        return [stacked[i, pads[i]:] for i in range(stacked.shape[0])]


class LoadMonitor:
    """Per-router expert load and auxiliary-loss value over the training forwards since the last `reset`.

    Only forwards in training mode count (rollouts run in eval mode); set ``token_mask`` (e.g. the batch's
    attention mask) so padding tokens are not counted. The aux loss is `switch_aux_loss` over the forward's
    real tokens (batch level), a value for loggers: it is not added to any loss here.
    """

    def __init__(self, model: nn.Module):
        self.routers = find_routers(model)
        self.gatings = [gating_of(r) for r in self.routers]
        self.counts = [torch.zeros(g.num_experts, dtype=torch.long) for g in self.gatings]
        self.aux = [0.0 for _ in self.routers]
        self.forwards = [0 for _ in self.routers]
        self.token_mask: torch.Tensor | None = None
        self.handles = [r.register_forward_hook(self._hook(i)) for i, r in enumerate(self.routers)]

    def _hook(self, layer: int):
        def count(module, args, output):
            if not module.training:
                return
            logits, _, ids = output
            logits, ids = logits.detach().reshape(-1, logits.shape[-1]), ids.detach().reshape(-1, ids.shape[-1])
            if self.token_mask is not None and self.token_mask.numel() == ids.shape[0]:
                keep = self.token_mask.reshape(-1).bool().to(ids.device)
                logits, ids = logits[keep], ids[keep]
            if ids.shape[0] == 0:
                return
            g = self.gatings[layer]
            self.counts[layer] += expert_counts(ids, g.num_experts).cpu()
            self.aux[layer] += float(switch_aux_loss(logits, ids, g.num_experts, g.score))
            self.forwards[layer] += 1

        return count

    def metrics(self) -> dict[str, float]:
        """``moe_max_over_mean_load`` (worst layer) and per layer, ``moe_aux_loss`` (mean over layers)."""
        out, worst, aux = {}, [], []
        for layer, (counts, n) in enumerate(zip(self.counts, self.forwards)):
            if n == 0:
                continue
            load = (counts.max() / counts.float().mean()).item()
            out[f"moe_max_over_mean_load_layer{layer}"] = load
            worst.append(load)
            aux.append(self.aux[layer] / n)
        if worst:
            out["moe_max_over_mean_load"] = max(worst)
            out["moe_aux_loss"] = sum(aux) / len(aux)
        return out

    def reset(self) -> None:
        for counts in self.counts:
            counts.zero_()
        self.aux = [0.0 for _ in self.routers]
        self.forwards = [0 for _ in self.routers]

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


__all__ = ["EXPERTS_IMPLEMENTATION", "SIGMOID_ROUTERS", "Gating", "gating_of", "find_routers", "patch_routers", "unpatch_routers",
           "use_cascade_kernels", "RoutingReplay", "replay_routing", "RoutingRecorder", "LoadMonitor"]
