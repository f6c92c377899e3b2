"""The Mamba-2 SSD chunk scan in torch, for rows of one sample or of several packed samples.

One implementation serves both callers: `cascade.models.fast_decode` (a rollout's prefill, GRPO's training
forward) and `cascade.models.packing` (SFT's packed rows, where no state or intra-chunk term may cross a sample
boundary). Compared with transformers' torch fallback it computes C Bᵀ once per B/C group instead of once per head
on copies of B and C (the tiny model: 16 heads, 1 group), likewise each chunk's end state (x Bᵀ) and the entering
state's output (C state) as one matmul per group with the group's heads side by side (0.84-0.93x the time of
per-head matmuls forward + backward on GRPO's shapes), the intra-chunk decay sums as one matmul (its backward
too) instead of a masked cumsum, and passes states from chunk to chunk one after the other (as `mamba_ssm` does)
instead of through an einsum over a (chunks+1) x (chunks+1) decay matrix.

Sample boundaries (``segments``) are four masks, as `mamba_ssm`'s kernels apply them: (i) the intra-chunk scores
to same-sample pairs, (ii) each chunk's end state to the positions of the chunk-end sample, (iii) the passing of a
state into the next chunk to chunks whose end belongs to the state's sample, (iv) the state-to-output term to the
positions of the state's sample. Masked entries are set to exactly 0 after `exp` (no gradient flows through them
either), not approximated by large negative numbers; the decays are exp of sums of dt * A <= 0, so they are finite.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

SCAN_BLOCK = 16
"""The largest chunk the scan computes with. The SSD scan is exact for any chunk length (chunks only split the
work between a part quadratic in the chunk length and a recurrence across chunks), so the model's ``chunk_size``, a
GPU kernel's tile, need not be the CPU's. 16 took 0.47-0.64x the time of the default model's 64 on its prefill,
GRPO and packed SFT shapes, and 0.82-1.04x that of 32 (``benchmarks/mamba_scan.py``); outputs agree to 6e-7."""


def scan_block(chunk_size: int) -> int:
    return min(int(chunk_size), SCAN_BLOCK)


def pad_sequence_end(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-pad dim 1 (the sequence) at the end."""
    return F.pad(x, (0, 0) * (x.dim() - 2) + (0, pad)) if pad else x


def discretization_step(dt, dt_bias, dt_softplus: bool, dt_limit) -> torch.Tensor:
    """The scan's step size as transformers computes it: bias, softplus, clamp to ``dt_limit``."""
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    return torch.clamp(dt, min=dt_limit[0], max=dt_limit[1])


@functools.lru_cache(maxsize=8)
def _window_sum_matrix(size: int, device: torch.device) -> torch.Tensor:
    """(size, size * size) 0/1 matrix W with (a @ W)[l * size + s] = sum_{k=s+1..l} a[k] (0 for s >= l): the sums of
    transformers' `segment_sum` as one matmul. A sum of the same terms, all <= 0 here (log decays), so as exact as
    its masked cumsum, and not a difference of cumsums (which loses precision far into a chunk). Its backward is
    one matmul too, where a cumsum's is flip + cumsum + flip over the (heads x chunk x chunk) tensor."""
    k = torch.arange(size, device=device)
    l, s = k[:, None, None], k[None, :, None]
    return ((s < k) & (k <= l)).to(torch.float32).reshape(size * size, size).T.contiguous()


SCAN_OPTIONS = ("D", "dt_bias", "initial_states", "dt_softplus", "dt_limit", "return_final_states")
"""The keyword arguments of transformers' `mamba2_chunk_scan` that the scan takes; the mixer also passes `z=None`
and the model's forward kwargs, which the scan has no use for."""


def scan_options(kwargs: dict) -> dict:
    return {key: kwargs[key] for key in SCAN_OPTIONS if key in kwargs}


def ssd_chunk_scan(
    hidden_states,
    dt,
    A,
    B,
    C,
    chunk_size,
    D=None,
    dt_bias=None,
    initial_states=None,
    dt_softplus=False,
    dt_limit=(0.0, float("inf")),
    return_final_states=False,
    segments: torch.Tensor | None = None,
):
    """The SSD chunked scan (transformers' `mamba2_chunk_scan` signature: hidden_states (b, l, h, p), dt (b, l, h),
    A (h,), B and C (b, l, g, n)).

    ``segments``: (b, l) sample ids, non-decreasing along each row (a new sample wherever the id goes up); None is
    one sample per row. ``initial_states`` belongs to the first sample of each row; the final state returned is
    that of the last sample."""
    batch, seq_len, heads, head_dim = hidden_states.shape
    groups, state_size = B.shape[2], B.shape[3]
    chunk_size = scan_block(chunk_size)
    per_group = heads // groups
    heads_p = per_group * head_dim  # a group's heads side by side

    dt = discretization_step(dt, dt_bias, dt_softplus, dt_limit).float()

    x = hidden_states.float()
    pad = (chunk_size - seq_len % chunk_size) % chunk_size
    n_chunks = (seq_len + pad) // chunk_size

    grouped = (batch, n_chunks, groups)

    def chunked(t: torch.Tensor) -> torch.Tensor:  # (b, seq_len, ...) -> (b, c, chunk, ...), zero padded
        return pad_sequence_end(t, pad).reshape(batch, n_chunks, chunk_size, *t.shape[2:])

    # Layout: b batch, c chunk, g group, h head in the group, l and s positions in the chunk, p head_dim, n state.
    # Padded positions have x = 0 and A = 0 (no input, no decay), and belong to the row's last sample, so the final
    # state is untouched by them.
    x_dt = chunked(x * dt[..., None]).view(batch, n_chunks, chunk_size, groups, per_group, head_dim)
    x_dt = x_dt.permute(0, 1, 3, 4, 2, 5)  # (b, c, g, h, l, p)
    B = chunked(B.float()).permute(0, 1, 3, 2, 4)  # (b, c, g, l, n): shared by the group's heads
    C = chunked(C.float()).permute(0, 1, 3, 2, 4)
    A_dt = chunked(A.float() * dt).view(batch, n_chunks, chunk_size, groups, per_group).permute(0, 1, 3, 4, 2)
    A_cumsum = A_dt.cumsum(-1)  # (b, c, g, h, l)
    if segments is not None:
        seg = torch.cat([segments, segments[:, -1:].expand(batch, pad)], dim=1).view(batch, n_chunks, chunk_size)
        # the sample that owns the state entering each chunk: the first position's for chunk 0, else the previous
        # chunk's last position's
        owner = torch.cat([seg[:, :1, 0], seg[:, :-1, -1]], dim=1)  # (b, c)

    def per_position(mask: torch.Tensor) -> torch.Tensor:  # (b, c, l[, s]) -> broadcastable over (g, h)
        return mask[:, :, None, None]

    # 1. within each chunk: y_l = sum_{s <= l} (C_l . B_s) exp(A_{s+1} + ... + A_l) dt_s x_s. The causal (and
    # same-sample) mask goes on the per-group C Bᵀ, so the per-head decays need none (above the diagonal they are
    # exp(0) times a masked 0).
    keep = torch.ones(chunk_size, chunk_size, device=x.device, dtype=torch.bool).tril()
    if segments is not None:
        keep = per_position((seg[..., :, None] == seg[..., None, :]) & keep)  # (b, c, 1, 1, l, s)
    scores = (C @ B.transpose(-1, -2)).unsqueeze(3).masked_fill(~keep, 0)  # (b, c, g, 1, l, s)
    window_sums = (A_dt @ _window_sum_matrix(chunk_size, x.device)).unflatten(-1, (chunk_size, chunk_size))
    Y = (scores * torch.exp(window_sums)) @ x_dt  # (b, c, g, h, l, p)

    # 2. each chunk's own end state: sum_l exp(A_{l+1} + ... + A_end) dt_l x_l B_lᵀ, over the chunk-end sample
    decay_to_end = torch.exp(A_cumsum[..., -1:] - A_cumsum)
    if segments is not None:
        decay_to_end = decay_to_end.masked_fill(~per_position(seg == seg[..., -1:]), 0)
    # one matmul per (batch, chunk, group) with the group's heads side by side, (h p) x l times l x n: B is shared by
    # the heads, and a per-head matmul against B broadcast over them copies B per head, forward and backward
    weighted = (x_dt * decay_to_end[..., None]).permute(0, 1, 2, 4, 3, 5).reshape(*grouped, chunk_size, heads_p)
    states = (weighted.transpose(-1, -2) @ B).view(*grouped, per_group, head_dim, state_size)

    # 3. across chunks, sequentially as mamba_ssm's state passing: state entering chunk c + 1 = the one entering c,
    # decayed over chunk c, plus chunk c's own end state. One step per chunk (a few per row in our workloads).
    # Across a boundary the entering state is dropped: samples are contiguous, so if chunk c ends in another
    # sample than the one owning its entering state, that sample is over.
    if initial_states is not None:
        # a copy: the caller's cache is updated in place after the scan, and autograd keeps this state
        state = initial_states.to(dtype=states.dtype, device=states.device, copy=True)
        state = state.view(batch, groups, per_group, head_dim, state_size)
    else:
        state = torch.zeros_like(states[:, 0])
    chunk_decay = torch.exp(A_cumsum[..., -1])[..., None, None]  # (b, c, g, h, 1, 1)
    if segments is not None:
        carried = owner == seg[:, :, -1]  # (b, c)
        chunk_decay = chunk_decay.masked_fill(~carried[:, :, None, None, None, None], 0)
    entering = []
    # unbind, not states[:, c]: the backward of an index fills a zero tensor of the full size per chunk
    for decay, own in zip(chunk_decay.unbind(1), states.unbind(1)):
        entering.append(state)
        state = state * decay + own
    states, final_state = torch.stack(entering, dim=1), state

    # 4. the entering state's contribution, to its own sample's positions: C_l state exp(A_1 + ... + A_l)
    decay_from_start = torch.exp(A_cumsum)
    if segments is not None:
        decay_from_start = decay_from_start.masked_fill(~per_position(seg == owner[..., None]), 0)
    from_state = (C @ states.reshape(*grouped, heads_p, state_size).transpose(-1, -2))  # (b, c, g, l, (h p))
    Y = Y + from_state.view(*grouped, chunk_size, per_group, head_dim).transpose(3, 4) * decay_from_start[..., None]

    output = Y.permute(0, 1, 4, 2, 3, 5).reshape(batch, n_chunks * chunk_size, heads, head_dim)[:, :seq_len]
    if D is not None:
        output = output + D[..., None] * x
    if return_final_states:
        return output, final_state.reshape(batch, heads, head_dim, state_size)
    return output


__all__ = ["SCAN_BLOCK", "scan_block", "scan_options", "pad_sequence_end", "discretization_step", "ssd_chunk_scan"]
