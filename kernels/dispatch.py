"""Dispatch: group the (token, slot) routing choices by expert, then permute hidden states in and combine out.

An MoE layer routes T tokens to k experts each, i.e. N = T*k (token, slot) pairs, flat index f = token*k + slot.
`dispatch` stably sorts those pairs by expert id, so every expert's pairs are one contiguous segment
(`offsets[e]:offsets[e+1]`), in ascending flat index inside the segment. The experts then run as one matmul per
segment (grouped GEMM), and `combine` undoes the permutation and sums each token's k expert outputs times their
gate weights, slot 0 first, in fp32 -- a fixed order, so the result is bitwise reproducible (no atomics).

Padding slots (id -1, e.g. from routing replay with fewer than k recorded experts) sort after every real
expert; they are excluded from `counts`, never reach an expert and contribute exactly 0 in `combine`.

With `block_size`, the dispatch also carries vLLM's `moe_align_block_size` layout for block-tiled fused-MoE
kernels: each expert's segment padded to a multiple of block_size, `sorted_token_ids` (int32 flat indices,
padding = sentinel N), `block_expert_ids` (int32 expert per block, -1 for unused blocks) and
`num_tokens_post_padded` (int32 [1]). Buffer sizes follow vLLM: N + E*(block_size-1) slots (N*block_size when
N < E). Unlike vLLM's CUDA kernel the order inside an expert is guaranteed ascending.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Dispatch:
    """Result of `dispatch`; all index tensors live on the ids' device. Long tensors unless noted."""

    num_tokens: int
    top_k: int
    num_experts: int
    order: torch.Tensor  # [N] sorted position -> flat pair index (the permutation)
    inverse: torch.Tensor  # [N] flat pair index -> sorted position (its inverse)
    token_ids: torch.Tensor  # [N] token of each sorted position (order // k): rows to gather
    sorted_expert_ids: torch.Tensor  # [N] expert of each sorted position, -1 for padding slots (at the tail)
    counts: torch.Tensor  # [E] pairs per expert
    offsets: torch.Tensor  # [E+1] exclusive cumsum of counts; offsets[E] = number of real pairs
    valid: torch.Tensor  # bool [T, k]: slot holds a real expert
    block_size: int | None = None
    sorted_token_ids: torch.Tensor | None = None  # int32 [max_padded], vLLM layout
    block_expert_ids: torch.Tensor | None = None  # int32 [max_padded / block_size]
    num_tokens_post_padded: torch.Tensor | None = None  # int32 [1]


def padded_buffer_size(num_pairs: int, num_experts: int, block_size: int) -> int:
    """vLLM's `max_num_tokens_padded` for moe_align_block_size."""
    if num_pairs < num_experts:
        return num_pairs * block_size
    return num_pairs + num_experts * (block_size - 1)


def dispatch(ids: torch.Tensor, num_experts: int, block_size: int | None = None) -> Dispatch:
    """Sort the routing choices `ids` [T, k] (int, -1 = padding) by expert; see the module docstring.

    CUDA tensors use the CuPy kernels when available (same outputs bit for bit), else this torch code.
    """
    from . import cupy_backend

    if ids.is_cuda and cupy_backend.usable(num_experts):
        return cupy_backend.dispatch(ids, num_experts, block_size)
    return dispatch_torch(ids, num_experts, block_size)


def dispatch_torch(ids: torch.Tensor, num_experts: int, block_size: int | None = None) -> Dispatch:
    t, k = ids.shape
    n = t * k
    dev = ids.device
    flat = ids.reshape(-1).long()
    valid = flat >= 0
    # padding -> bucket E, which sorts after every real expert
    key = torch.where(valid, flat, torch.full((), num_experts, dtype=torch.long, device=dev))
    sorted_key, order = torch.sort(key, stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n, device=dev)
    counts = torch.bincount(key, minlength=num_experts + 1)[:num_experts]
    offsets = torch.zeros(num_experts + 1, dtype=torch.long, device=dev)
    torch.cumsum(counts, 0, out=offsets[1:])
    d = Dispatch(
        num_tokens=t,
        top_k=k,
        num_experts=num_experts,
        order=order,
        inverse=inverse,
        token_ids=order // k,
        sorted_expert_ids=torch.where(sorted_key == num_experts, -1, sorted_key),
        counts=counts,
        offsets=offsets,
        valid=valid.view(t, k),
    )
    if block_size is not None:
        _align_blocks(d, sorted_key, block_size)
    return d


def _align_blocks(d: Dispatch, sorted_key: torch.Tensor, bs: int) -> None:
    """Fill the vLLM moe_align_block_size layout from an already sorted dispatch."""
    e, n, dev = d.num_experts, d.order.numel(), d.order.device
    padded = (d.counts + bs - 1) // bs * bs
    poffs = torch.zeros(e + 1, dtype=torch.long, device=dev)
    torch.cumsum(padded, 0, out=poffs[1:])
    size = padded_buffer_size(n, e, bs)
    sorted_token_ids = torch.full((size,), n, dtype=torch.int32, device=dev)
    real = sorted_key < e
    pos = torch.arange(n, device=dev)[real]
    ek = sorted_key[real]
    sorted_token_ids[poffs[ek] + pos - d.offsets[ek]] = d.order[real].to(torch.int32)
    nblocks = (size + bs - 1) // bs
    block_expert_ids = torch.full((nblocks,), -1, dtype=torch.int32, device=dev)
    per_expert = torch.repeat_interleave(torch.arange(e, device=dev, dtype=torch.int32), padded // bs)
    block_expert_ids[: per_expert.numel()] = per_expert
    d.block_size = bs
    d.sorted_token_ids = sorted_token_ids
    d.block_expert_ids = block_expert_ids
    d.num_tokens_post_padded = poffs[e:].to(torch.int32)


def permute(hidden: torch.Tensor, d: Dispatch) -> torch.Tensor:
    """Hidden states [T, H] -> expert order [N, H]: row i is the token of sorted position i.

    Rows past `offsets[E]` belong to padding slots; experts skip them and `combine` ignores them.
    """
    return hidden.index_select(0, d.token_ids)


def combine(expert_out: torch.Tensor, weights: torch.Tensor, d: Dispatch, out_dtype=None) -> torch.Tensor:
    """Expert outputs in sorted order [N, H] -> per-token outputs [T, H], gate-weighted.

    out[t] = sum over slots s = 0..k-1 (in that order) of weights[t, s] * expert_out[inverse[t*k+s]], in fp32;
    padding slots add nothing (even if their rows hold NaN). Returns `out_dtype` (default expert_out's dtype).
    """
    t, k = d.num_tokens, d.top_k
    rows = expert_out.index_select(0, d.inverse).view(t, k, -1)
    w = weights.float().masked_fill(~d.valid, 0.0)
    out = None
    for s in range(k):  # explicit slot loop: the summation order is part of the contract
        term = torch.where(d.valid[:, s, None], rows[:, s].float() * w[:, s, None], 0.0)
        out = term if out is None else out.add_(term)
    return out.to(out_dtype or expert_out.dtype)


__all__ = ["Dispatch", "dispatch", "dispatch_torch", "permute", "combine", "padded_buffer_size"]
