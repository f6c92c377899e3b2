"""Sequence packing for NemotronH on CPU: several samples in one row, no information flow between them.

Why this exists
---------------
SFT packs short samples into one row to avoid padding. In a NemotronH model the tokens of a row meet in two places:

* the attention ("full_attention") layers. transformers handles these itself: when `attention_mask is None`,
  `past_key_values is None` (so pass `use_cache=False`: the config default `use_cache=True` makes the model build
  a cache even in training, and then packing is not detected) and `position_ids` restart at 0 at each sample,
  `masking_utils.create_causal_mask` detects the packed format (`find_packed_sequence_indices`: a new sample
  wherever the position does not go up by 1) and builds a block-diagonal causal mask (checked for 5.20.2).
* the Mamba-2 ("linear_attention") layers: the depthwise causal conv and the SSD chunk scan. transformers'
  mixer forwards the model's `**kwargs` (so a `seq_idx=` given to `model(...)`) to the module-level functions
  `causal_conv1d_fn`, `mamba2_chunk_scan` and, in training, `mamba2_split_conv1d_scan_combined`. With the
  `causal_conv1d` / `mamba_ssm` CUDA kernels installed, `seq_idx` is honoured natively. Without them (any CPU),
  `transformers.integrations.hub_kernels.use_kernel_func_from_hub_with_fallback` routes the calls to a
  pure-torch reference that knows nothing about packing, and refuses (`ValueError`) as soon as `seq_idx` or
  `cu_seqlens` is passed. (Without `seq_idx` the torch path silently lets the Mamba state and the conv window
  run from one sample into the next.)

This module supplies exact torch versions that honour `seq_idx` the way the `mamba_ssm` / `causal_conv1d`
kernels do, and `enable_packed_sequences()` puts them into `transformers.models.nemotron_h.modeling_nemotron_h`
where (and only where) the torch fallback would otherwise run. With `seq_idx=None` every installed function calls
the function it replaced with the original arguments, so the unpacked path is bit-identical to what ran before:
transformers' function, or `cascade.models.fast_decode`'s faster chunk scan if that was enabled first (enabled
later, it wraps ours and hands the packed calls on to it).

How the replacement reaches the mixer: `NemotronHMamba2Mixer.forward` calls these functions by their module-global
names, looked up at call time, so rebinding the module attributes is enough. The `@use_kernelized_func([...])`
class decorator is a no-op unless the `kernels` package is installed; with it, it only records the *original*
function objects on each mixer instance for `kernelize` (`use_kernels=True`, GPU hub kernels), it does not change
what `forward` calls. (A model kernelized with hub kernels is outside what this module handles.)

Usage::

    from cascade.models.packing import enable_packed_sequences, packed_inputs

    enable_packed_sequences()                      # once, idempotent
    packed = packed_inputs([[5, 37, 20], [16, 40]], seq_len=72)   # rows of sample lengths, rest is padding
    out = model(input_ids, **packed.model_kwargs())  # position_ids, seq_idx, use_cache=False; no attention_mask

The model's own `labels=` loss shifts across the whole row, so the last token of a sample would be trained to
predict the first token of the next one: mask those targets (or compute the loss per sample).

Semantics of `seq_idx`: (batch, seq_len) integers; a new sample starts wherever the value changes from one position
to the next (ids are normalised internally, so they need not be increasing). Padding should be a sample of its own.
`initial_states`, when given, belongs to the first sample of each row; the returned final state is that of the last
sample. The chunk scan is `cascade.models.ssd`'s, which masks at the boundaries as `mamba_ssm`'s kernels do.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
import transformers.models.nemotron_h.modeling_nemotron_h as _nemotron_h

from cascade.models.conv import causal_conv1d
from cascade.models.fallbacks import FallbackPatch, replaced
from cascade.models.ssd import scan_options, ssd_chunk_scan

# name in modeling_nemotron_h -> (package, function) whose real kernel would replace the torch fallback
_PATCH = FallbackPatch(_nemotron_h, "__cascade_packed_original__", {
    "causal_conv1d_fn": ("causal_conv1d", "causal_conv1d_fn"),
    "mamba2_chunk_scan": ("mamba_ssm", "mamba_chunk_scan_combined"),
    "mamba2_split_conv1d_scan_combined": ("mamba_ssm", "mamba_split_conv1d_scan_combined"),
})
_ORIGINAL = _PATCH.original


# ----------------------------------------------------------------------------------------------------------------
# Building packed inputs
# ----------------------------------------------------------------------------------------------------------------


class PackedInputs(NamedTuple):
    position_ids: torch.Tensor  # (batch, seq_len) long, restarting at 0 at every sample (and at the padding)
    seq_idx: torch.Tensor  # (batch, seq_len) int32, 0, 1, 2, ... per row; the padding is one more sample

    def model_kwargs(self) -> dict:
        """What to pass to `model(input_ids, ...)` (and no attention_mask): packing is detected only without a cache."""
        return {"position_ids": self.position_ids, "seq_idx": self.seq_idx, "use_cache": False}


def packed_inputs(lengths: list[list[int]], seq_len: int | None = None, device=None) -> PackedInputs:
    """position_ids and seq_idx for rows of packed samples.

    `lengths[r]` lists the sample lengths of row r in order; positions after them (up to `seq_len`, default the
    longest row) are padding, which gets position_ids 0, 1, ... and its own seq_idx so that it is a separate
    "sample" for both the attention mask and the Mamba layers.
    """
    totals = [sum(row) for row in lengths]
    if any(n <= 0 for row in lengths for n in row):
        raise ValueError(f"sample lengths must be positive: {lengths}")
    if seq_len is None:
        seq_len = max(totals, default=0)
    if any(total > seq_len for total in totals):
        raise ValueError(f"a row is longer than seq_len={seq_len}: {totals}")
    position_ids = torch.zeros(len(lengths), seq_len, dtype=torch.long)
    seq_idx = torch.zeros(len(lengths), seq_len, dtype=torch.int32)
    for r, row in enumerate(lengths):
        start = 0
        for i, n in enumerate([*row, seq_len - totals[r]]):
            position_ids[r, start : start + n] = torch.arange(n)
            seq_idx[r, start : start + n] = i
            start += n
    return PackedInputs(position_ids.to(device), seq_idx.to(device))


def seq_idx_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """int32 seq_idx under transformers' own rule (masking_utils.find_packed_sequence_indices): a new sample starts
    wherever the position does not increase by exactly 1. Keeps the Mamba layers and the attention mask in step."""
    diff = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1)
    return (diff != 1).cumsum(-1).to(torch.int32)


def _segments(seq_idx, cu_seqlens, batch: int, seq_len: int, device) -> torch.Tensor:
    """(batch, seq_len) long: 0, 1, 2, ... per row, +1 wherever seq_idx changes (so ids need not be sorted)."""
    if seq_idx is None:  # cu_seqlens: 1-D cumulative boundaries [0, n1, n1+n2, ...] of a single packed row
        if batch != 1:
            raise ValueError("cu_seqlens describes a single packed row (batch size 1); pass seq_idx for batches")
        cu = torch.as_tensor(cu_seqlens, device=device).long().flatten()
        seq_idx = torch.bucketize(torch.arange(seq_len, device=device), cu[1:-1], right=True)[None]
    seq_idx = torch.as_tensor(seq_idx, device=device)
    if seq_idx.dim() == 1:
        seq_idx = seq_idx[None]
    seq_idx = seq_idx.expand(batch, seq_len)
    change = seq_idx[:, 1:] != seq_idx[:, :-1]
    return F.pad(change.long().cumsum(-1), (1, 0))


# ----------------------------------------------------------------------------------------------------------------
# The torch implementations
# ----------------------------------------------------------------------------------------------------------------


def causal_conv1d_fn(hidden_states, weight, bias=None, activation=None, **kwargs):
    """Depthwise causal conv (hidden_states (batch, dim, seq_len), weight (dim, K)) that does not reach across
    `seq_idx` boundaries: the output at t uses only inputs t-K+1..t of t's own sample, as `causal_conv1d` does.
    Without `seq_idx` (and `cu_seqlens`) it is transformers' function, called unchanged."""
    seq_idx, cu_seqlens = kwargs.pop("seq_idx", None), kwargs.pop("cu_seqlens", None)
    if seq_idx is None and cu_seqlens is None:
        return _ORIGINAL["causal_conv1d_fn"](hidden_states, weight, bias, activation, **kwargs)
    batch, _, seq_len = hidden_states.shape
    segments = _segments(seq_idx, cu_seqlens, batch, seq_len, hidden_states.device)
    return causal_conv1d(hidden_states, weight, bias, activation, segments=segments)


def mamba2_chunk_scan(hidden_states, dt, A, B, C, chunk_size, **kwargs):
    """The SSD chunked scan (transformers' `mamba2_chunk_scan` signature) with `seq_idx` honoured exactly: no state
    or intra-chunk term crosses a sample boundary (`cascade.models.ssd.ssd_chunk_scan` with the samples as its
    segments). Without `seq_idx` (and `cu_seqlens`) it is transformers' function, called unchanged."""
    seq_idx, cu_seqlens = kwargs.pop("seq_idx", None), kwargs.pop("cu_seqlens", None)
    if seq_idx is None and cu_seqlens is None:
        return _ORIGINAL["mamba2_chunk_scan"](hidden_states, dt, A, B, C, chunk_size, **kwargs)
    batch, seq_len = hidden_states.shape[:2]
    segments = _segments(seq_idx, cu_seqlens, batch, seq_len, hidden_states.device)
    return ssd_chunk_scan(hidden_states, dt, A, B, C, chunk_size, **scan_options(kwargs), segments=segments)


def mamba2_split_conv1d_scan_combined(*args, **kwargs):
    """transformers' fused training path. Its torch fallback only returns None (meaning: take the unfused path) but
    refuses `seq_idx`; with packing we return None ourselves, so the unfused path runs the functions above."""
    if kwargs.get("seq_idx") is None and kwargs.get("cu_seqlens") is None:
        return _ORIGINAL["mamba2_split_conv1d_scan_combined"](*args, **kwargs)
    return None


_REPLACEMENT = {
    "causal_conv1d_fn": causal_conv1d_fn,
    "mamba2_chunk_scan": mamba2_chunk_scan,
    "mamba2_split_conv1d_scan_combined": mamba2_split_conv1d_scan_combined,
}


def enable_packed_sequences() -> dict[str, bool]:
    """Install the seq_idx-aware torch functions into modeling_nemotron_h where the torch fallback would run.

    Idempotent. A packed forward (seq_idx given) with a cache (`use_cache` left at the config's True) raises
    ValueError instead of letting the attention layers mix the samples. Returns {function name: whether ours is
    installed}; False means a real kernel (which supports seq_idx natively) is in place and was left alone.
    """

    def bind(name):
        replacement = _REPLACEMENT[name]

        def bound(*args, **kwargs):
            if kwargs.get("seq_idx") is None and kwargs.get("cu_seqlens") is None:
                return replaced(bound)(*args, **kwargs)  # the unpacked call, to what it would have reached
            if name == "mamba2_chunk_scan" and (kwargs.get("return_final_states") or kwargs.get("initial_states") is not None):
                # the mixer asks for final states only when it has a cache, and with a cache transformers
                # does not build the packed (block-diagonal) attention mask: attention would leak silently
                raise ValueError("packed sequences (seq_idx) need `use_cache=False` and no attention_mask: with a "
                                 "cache the attention layers do not keep the samples apart")
            return replacement(*args, **kwargs)

        bound.__doc__ = replacement.__doc__
        return bound

    return _PATCH.enable(bind)


def disable_packed_sequences() -> None:
    """Put transformers' own functions back (undo enable_packed_sequences)."""
    _PATCH.disable()


def packed_sequences_enabled() -> bool:
    return _PATCH.enabled()


__all__ = [
    "PackedInputs",
    "packed_inputs",
    "seq_idx_from_position_ids",
    "causal_conv1d_fn",
    "mamba2_chunk_scan",
    "mamba2_split_conv1d_scan_combined",
    "enable_packed_sequences",
    "disable_packed_sequences",
    "packed_sequences_enabled",
]
