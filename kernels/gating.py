"""Top-k gating: router logits -> (gate weights, expert ids), the first step of every MoE layer.

The algorithm (Nemotron-H / DeepSeek-V3 router, with Qwen3/Mixtral softmax routers as a special case):

1. scores = sigmoid(logits) or softmax(logits), always in fp32;
2. choice = scores + correction_bias -- the bias steers *which* experts are picked (auxiliary-loss-free load
   balancing, see `balance.update_correction_bias`) but never the weights;
3. optional group-limited selection: experts are split into `n_group` equal groups, a group's score is the sum of
   its two largest `choice` values, only the best `topk_group` groups stay eligible;
4. ids = the k largest eligible `choice` values, in descending order, ties broken toward the LOWER expert index;
5. weights = the UNBIASED scores at those ids, optionally normalised to sum 1, times `scaling`.

Determinism: `torch.topk` does not specify which index wins a tie (and differs between CPU and CUDA), so the
selection is defined as k rounds of `argmax`, which is documented to return the first (lowest-index) maximum
(`topk_lowest_index_argmax`). `topk_lowest_index` gets the same ids faster: one topk of k+1 values, trusted
only on rows whose k+1 top values are strictly decreasing (then the answer is unique), argmax rounds on the
rest. The CuPy kernel uses the same (value desc, index asc) order, so both backends return identical ids.

Softmax without a bias selects on the fp32 logits instead of the probabilities: softmax is monotone, so the
order is the same, but it is free of the rounding of exp/sum (which differs between backends and could turn two
distinct logits into tied probabilities). Weights always come from the probabilities.

`replay` is routing replay for RL: the rollout engine's expert ids are forced, the weights are recomputed from
the trainer's current scores, so gradients still reach the router logits.
"""

from __future__ import annotations

import torch

SCORES = ("sigmoid", "softmax")
_NORM_EPS = 1e-20  # same epsilon as transformers' NemotronHTopkRouter


def router_scores(logits: torch.Tensor, score: str = "sigmoid") -> torch.Tensor:
    """fp32 routing scores [T, E] from router logits (any float dtype)."""
    logits = logits.float()
    if score == "sigmoid":
        return torch.sigmoid(logits)
    if score == "softmax":
        return torch.softmax(logits, dim=-1)
    raise ValueError(f"score must be one of {SCORES}, got {score!r}")


def topk_lowest_index(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [T, k] of the k largest values per row, descending, ties -> lower index (deterministic).

    Fast path: one `torch.topk` of k+1 values. Where those k+1 values are strictly decreasing, no value among
    the top k occurs twice in the row and the k-th beats the rest, so the top-k ids and their order are unique
    and topk's (unspecified) tie rule never matters. Rows with any equality among them (a tie, +-0, NaN) are
    redone by `topk_lowest_index_argmax`. Bit-identical to the argmax rounds on every input. CPU only (the
    fallback needs a host sync, which other devices should not pay); elsewhere the argmax rounds run.
    """
    t, e = values.shape
    if k >= e or t == 0 or values.device.type != "cpu":
        return topk_lowest_index_argmax(values, k)
    top = values.detach().topk(k + 1, dim=-1)
    ids = top.indices[:, :k].contiguous()
    v = top.values
    ambiguous = ~(v[:, :-1] > v[:, 1:]).all(dim=-1)
    rows = ambiguous.nonzero().squeeze(1)
    if rows.numel():
        ids[rows] = topk_lowest_index_argmax(values.detach()[rows], k)
    return ids


def topk_lowest_index_argmax(values: torch.Tensor, k: int) -> torch.Tensor:
    """Reference for `topk_lowest_index`: k rounds of argmax (documented to return the first maximum) over a
    working copy; each round masks the winner with -inf. Rows need at least k values above -inf for the
    answer to be unique."""
    work = values.detach().clone()
    ids = torch.empty(values.shape[0], k, dtype=torch.long, device=values.device)
    for j in range(k):
        best = work.argmax(dim=-1)
        ids[:, j] = best
        work.scatter_(1, best.unsqueeze(1), float("-inf"))
    return ids


def _group_mask(choice: torch.Tensor, n_group: int, topk_group: int) -> torch.Tensor:
    """Bool [T, E]: experts in the `topk_group` best groups (group score = sum of its top-2 choice values)."""
    t, e = choice.shape
    grouped = choice.view(t, n_group, e // n_group)
    # topk *values* are deterministic whatever index wins a tie, so plain topk is fine here
    top = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values
    group_scores = top.sum(dim=-1)
    keep = torch.zeros(t, n_group, dtype=torch.bool, device=choice.device)
    keep.scatter_(1, topk_lowest_index(group_scores, topk_group), True)
    return keep.unsqueeze(-1).expand(t, n_group, e // n_group).reshape(t, e)


def _check(e: int, k: int, score: str, n_group: int, topk_group: int) -> None:
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if e % n_group or not 1 <= topk_group <= n_group:
        raise ValueError(f"bad grouping: {e} experts, n_group={n_group}, topk_group={topk_group}")
    if not 1 <= k <= topk_group * (e // n_group):
        raise ValueError(f"k={k} must be in [1, {topk_group * (e // n_group)}] (eligible experts)")


def weights_from_scores(scores: torch.Tensor, ids: torch.Tensor, normalize: bool, scaling: float) -> torch.Tensor:
    """Gate weights: unbiased scores at `ids` ([T, k], -1 = padding -> weight 0), normalised, scaled."""
    valid = ids >= 0
    w = scores.gather(1, ids.clamp(min=0).long())
    w = torch.where(valid, w, torch.zeros((), dtype=w.dtype, device=w.device))
    if normalize:
        w = w / (w.sum(dim=-1, keepdim=True) + _NORM_EPS)
    return w * scaling


def topk_gating_torch(
    logits: torch.Tensor,
    k: int,
    score: str = "sigmoid",
    correction_bias: torch.Tensor | None = None,
    n_group: int = 1,
    topk_group: int = 1,
    normalize: bool = True,
    scaling: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference/CPU implementation of `topk_gating` (works on any device; differentiable in the weights)."""
    t, e = logits.shape
    _check(e, k, score, n_group, topk_group)
    scores = router_scores(logits, score)
    with torch.no_grad():
        if correction_bias is not None:
            choice = scores + correction_bias.float()
        elif score == "softmax":
            choice = logits.float()  # same order as the probabilities, no rounding ties (module docstring)
        else:
            choice = scores
        if n_group > 1:
            choice = choice.masked_fill(~_group_mask(choice, n_group, topk_group), float("-inf"))
        ids = topk_lowest_index(choice, k)
    return weights_from_scores(scores, ids, normalize, scaling), ids


def topk_gating(
    logits: torch.Tensor,
    k: int,
    score: str = "sigmoid",
    correction_bias: torch.Tensor | None = None,
    n_group: int = 1,
    topk_group: int = 1,
    normalize: bool = True,
    scaling: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Route tokens: logits [T, E] -> (weights fp32 [T, k], ids int64 [T, k]); see the module docstring.

    Dispatches on the device: CUDA tensors use the CuPy kernel when CuPy is importable (ids are computed by
    the kernel; if the logits need a gradient the weights are re-gathered in torch so autograd sees them),
    everything else uses `topk_gating_torch`. Nemotron 3 Nano: score="sigmoid", bias=e_score_correction_bias,
    normalize=True, scaling=2.5. Qwen3-MoE: score="softmax", normalize=norm_topk_prob.
    """
    from . import cupy_backend  # local import: CuPy is optional

    if logits.is_cuda and cupy_backend.usable(logits.shape[-1]):
        _check(logits.shape[-1], k, score, n_group, topk_group)
        weights, ids = cupy_backend.topk_gating(
            logits, k, score, correction_bias, n_group, topk_group, normalize, scaling
        )
        if torch.is_grad_enabled() and logits.requires_grad:
            weights = weights_from_scores(router_scores(logits, score), ids, normalize, scaling)
        return weights, ids
    return topk_gating_torch(logits, k, score, correction_bias, n_group, topk_group, normalize, scaling)


def replay(
    logits: torch.Tensor,
    forced_ids: torch.Tensor,
    score: str = "sigmoid",
    normalize: bool = True,
    scaling: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Routing replay: keep the recorded expert ids [T, k] (-1 = padding), recompute their gate weights.

    The weights are the current unbiased scores at the forced ids (the correction bias only ever affects the
    choice, which is fixed here), normalised over the valid slots and scaled, so d(loss)/d(logits) flows
    exactly as in ordinary routing. Returns (weights fp32 [T, k], ids int64 [T, k]).
    """
    if forced_ids.shape[0] != logits.shape[0]:
        raise ValueError(f"forced ids cover {forced_ids.shape[0]} tokens, logits {logits.shape[0]}")
    ids = forced_ids.to(device=logits.device, dtype=torch.long)
    if bool((ids >= logits.shape[-1]).any()):
        raise ValueError("forced expert id out of range")
    return weights_from_scores(router_scores(logits, score), ids, normalize, scaling), ids


__all__ = ["SCORES", "router_scores", "topk_lowest_index", "topk_lowest_index_argmax", "topk_gating",
           "topk_gating_torch", "replay", "weights_from_scores"]
