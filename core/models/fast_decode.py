"""Faster torch versions of NemotronH's Mamba-2 decode and chunk-scan functions (CPU, no `mamba_ssm`).

Without `mamba_ssm` / `causal_conv1d`, every decode step of every Mamba layer runs transformers' pure-torch
references of `mamba2_selective_state_update` and `causal_conv1d_update`. The state update is written for
generality, not speed: the mixer hands it dt, A, D and dt_bias already broadcast to (heads, head_dim[, state]),
and the function materialises all of them (plus B and C repeated per head) at the size of the recurrent state
(batch x heads x head_dim x state), takes batch*heads*head_dim*state `exp`s of identical numbers, then copies the
new state into the cache. In a GRPO rollout that was the largest single cost after the backward pass.

The versions here compute the same numbers with less work:

* `mamba2_selective_state_update`: dt, exp(dt * A), D and dt_bias once per head ([batch, heads]); B and C broadcast
  over the heads of their group instead of copied; the state updated in place; one bmm per (batch, group) for the
  output. Only taken when the per-head inputs really are broadcasts (stride 0 over head_dim/state, as the mixer
  passes them, and what the `mamba_ssm` kernel calls `tie_hdim`); anything else goes to transformers' function.
* `causal_conv1d_update`: shift the conv window in place (one shift of the state's flat memory) and take the
  depthwise dot product with the kernel as one matrix-vector product, instead of `cat` + a grouped `conv1d` over
  K+1 positions of which one output is kept (ops over a last dim of K = 4 are the slow ones on CPU: 0.4x the time).
* `mamba2_chunk_scan`, the SSD scan of a prefill and of GRPO's training forward (which continues each rollout
  from its prompt's cache, `cascade.engine.prefix_sharing`, so it runs forward and backward through this scan):
  `cascade.models.ssd.ssd_chunk_scan`, about a third less time forward + backward than transformers'; and
  `causal_conv1d_fn`, the conv before it, as `cascade.models.conv.causal_conv1d` (K multiply-adds instead of a
  grouped conv1d, about half the time forward + backward). Packed rows (`seq_idx`) go to the functions they
  replaced: `cascade.models.packing`'s (the same ones, with the samples' boundaries) when packing is enabled.

The arithmetic is the original's, in the same dtypes; results agree to float rounding, not bit for bit: the
state update is one `addcmul` (which may use a fused multiply-add), the reductions (bmm over the state, the K-term
conv sum, the scan's sums over positions and heads) are ordered differently, and torch's element-wise kernels
(softplus) can round the last bit differently on a tensor of batch*heads elements than on one of
batch*heads*head_dim. The scan's outputs, final states and input gradients are within 1e-5 of the largest entry
of transformers' (tests/test_fast_decode.py), both about 1e-6 from a float64 evaluation.

`enable_fast_decode()` installs them into `transformers.models.nemotron_h.modeling_nemotron_h` the way
`cascade.models.packing` installs its functions: module globals looked up at call time by the mixer, replaced only
where transformers' torch fallback would run (a real `mamba_ssm` / `causal_conv1d` kernel is left alone),
idempotent, undone by `disable_fast_decode()`. The rollout engine calls it when it is built, so a GRPO update
(which always follows a rollout) runs the scan here too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import transformers.models.nemotron_h.modeling_nemotron_h as _nemotron_h
from transformers.activations import ACT2FN

from cascade.models.conv import causal_conv1d
from cascade.models.fallbacks import FallbackPatch, replaced
from cascade.models.ssd import scan_options, ssd_chunk_scan

# name in modeling_nemotron_h -> (package, function) whose real kernel would replace the torch fallback
_KERNELS = {
    "mamba2_selective_state_update": ("mamba_ssm", "selective_state_update"),
    "causal_conv1d_update": ("causal_conv1d", "causal_conv1d_update"),
    "mamba2_chunk_scan": ("mamba_ssm", "mamba_chunk_scan_combined"),
    "causal_conv1d_fn": ("causal_conv1d", "causal_conv1d_fn"),
}
_PATCH = FallbackPatch(_nemotron_h, "__cascade_fast_decode_original__", _KERNELS)
_ORIGINAL = _PATCH.original


def _broadcast_over(t: torch.Tensor | None, dims: tuple[int, ...]) -> bool:
    """Whether `t` is constant along `dims` by construction (stride 0 from `expand`, or size 1)."""
    return t is None or all(t.shape[d] == 1 or t.stride(d) == 0 for d in dims)


def mamba2_selective_state_update(
    state, hidden_states, dt, A, B, C, D=None, dt_bias=None, dt_softplus=False, z=None, **kwargs
):
    """One recurrent step: state = exp(dt A) state + dt B x, out = C state + D x (times silu(z)); updates `state`.

    Shapes as transformers' torch fallback: state (b, h, p, n), hidden_states (b, h, p), dt (b, h, p), A (h, p, n),
    B and C (b, g, n), D and dt_bias (h, p)."""
    per_head = (
        state.is_contiguous() and hidden_states.dim() == 3 and dt.dim() == 3 and A.dim() == 3
        and (D is None or D.dim() == 2) and (dt_bias is None or dt_bias.dim() == 2)
        and _broadcast_over(dt, (-1,)) and _broadcast_over(A, (-2, -1))
        and _broadcast_over(D, (-1,)) and _broadcast_over(dt_bias, (-1,))
        and kwargs.get("seq_idx") is None and kwargs.get("cu_seqlens") is None
    )
    if not per_head:
        return _ORIGINAL["mamba2_selective_state_update"](
            state, hidden_states, dt, A, B, C, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus, z=z, **kwargs
        )
    batch, heads, head_dim = hidden_states.shape
    groups, state_size = B.shape[1], B.shape[-1]
    # (b, g, heads per group, p, n): the heads of a group share B and C, so those broadcast over dim 2
    grouped = (batch, groups, heads // groups)

    dt = dt[..., 0]  # (b, h)
    if dt_bias is not None:
        dt = dt + dt_bias[:, 0].to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    dA = torch.exp(dt.float() * A[:, 0, 0].float()).to(device=state.device)  # (b, h): one exp per head
    dA = dA.view(*grouped, 1, 1)
    dB = (dt.view(*grouped, 1, 1) * B.view(batch, groups, 1, 1, state_size)).to(device=state.device)  # (b,g,hg,1,n)
    x = hidden_states.view(*grouped, head_dim, 1).to(device=state.device)

    # state * dA + dB x, with dB x never materialised (addcmul; it may fuse the multiply-add: last-bit differences)
    view = state.view(*grouped, head_dim, state_size)
    new_dtype = torch.promote_types(torch.promote_types(state.dtype, dA.dtype), torch.promote_types(dB.dtype, x.dtype))
    if new_dtype == state.dtype:  # the usual fp32 state: update in place, no new tensor and no copy back
        ssm_states = view.mul_(dA).addcmul_(dB, x)
    else:  # keep the original's precision: the output uses the un-rounded new state
        ssm_states = torch.addcmul(view * dA, dB, x)
        view.copy_(ssm_states.to(state.dtype))

    # out[b, h, p] = sum_n state[b, h, p, n] C[b, g(h), n]: one bmm for all heads of a (batch, group), written as
    # C (1 x n) @ state^T (n x heads*p): BLAS runs that row-vector product about twice as fast as state @ C (n x 1)
    ssm_states = ssm_states.to(device=C.device, dtype=C.dtype).reshape(batch * groups, -1, state_size)
    out = torch.bmm(C.reshape(batch * groups, 1, state_size), ssm_states.transpose(1, 2)).view(batch, heads, head_dim)

    if D is not None:
        out = (out + hidden_states * D[:, :1]).to(out.dtype)
    if z is not None:
        out = out * F.silu(z)
    return out.to(hidden_states.dtype)


def causal_conv1d_update(hidden_states, conv_state, weight, bias=None, activation=None, **kwargs):
    """Depthwise causal conv for one new position: hidden_states (b, d, 1), conv_state (b, d, K) the last K inputs
    (updated in place), weight (d, K). Other shapes go to transformers' function."""
    kernel = weight.shape[-1]
    if (hidden_states.shape[-1] != 1 or conv_state.shape[-1] != kernel or not conv_state.is_contiguous()
            or conv_state.dtype != torch.promote_types(conv_state.dtype, hidden_states.dtype) or kwargs):
        return _ORIGINAL["causal_conv1d_update"](hidden_states, conv_state, weight, bias, activation, **kwargs)
    # The window after this step, in place: drop the oldest input, append the new one. Shifting the whole state one
    # element down its flat memory moves every channel's window along (the slot each channel's last input lands in is
    # then overwritten with the new input); ops over a last dim of size K (a cat, a sum) are ~10x slower on CPU.
    flat = conv_state.view(-1)
    flat[:-1].copy_(flat[1:].clone())
    conv_state[..., -1] = hidden_states[..., 0]
    products = conv_state.to(weight.dtype) * weight
    out = torch.mv(products.view(-1, kernel), products.new_ones(kernel)).view(*conv_state.shape[:2], 1)
    if bias is not None:
        out = out + bias[:, None]
    if activation is not None:
        out = ACT2FN[activation](out)
    return out.to(hidden_states.dtype)


def mamba2_chunk_scan(hidden_states, dt, A, B, C, chunk_size, **kwargs):
    """The SSD chunked scan of a prefill or training forward (transformers' signature), as
    `cascade.models.ssd.ssd_chunk_scan`. Packed rows (`seq_idx`, `cu_seqlens`) go to transformers' function."""
    if kwargs.get("seq_idx") is not None or kwargs.get("cu_seqlens") is not None:
        return _ORIGINAL["mamba2_chunk_scan"](hidden_states, dt, A, B, C, chunk_size, **kwargs)
    return ssd_chunk_scan(hidden_states, dt, A, B, C, chunk_size, **scan_options(kwargs))


def causal_conv1d_fn(hidden_states, weight, bias=None, activation=None, **kwargs):
    """The depthwise causal conv of a prefill or training forward (transformers' signature), as
    `cascade.models.conv.causal_conv1d`. Packed rows (`seq_idx`, `cu_seqlens`) go to transformers' function."""
    if kwargs.get("seq_idx") is not None or kwargs.get("cu_seqlens") is not None:
        return _ORIGINAL["causal_conv1d_fn"](hidden_states, weight, bias, activation, **kwargs)
    return causal_conv1d(hidden_states, weight, bias, activation)


_REPLACEMENT = {
    "mamba2_selective_state_update": mamba2_selective_state_update,
    "causal_conv1d_update": causal_conv1d_update,
    "mamba2_chunk_scan": mamba2_chunk_scan,
    "causal_conv1d_fn": causal_conv1d_fn,
}
_UNPACKED_ONLY = {"mamba2_chunk_scan": mamba2_chunk_scan, "causal_conv1d_fn": causal_conv1d_fn}
"""Ours for unpacked rows only: packed calls go to what they replaced (`cascade.models.packing`'s, if it is below)."""


def enable_fast_decode() -> dict[str, bool]:
    """Install the fast decode functions into modeling_nemotron_h where the torch fallback would run.

    Idempotent. Returns {function name: whether ours is installed}; False means a real kernel is in place and was
    left alone. Ours delegate to the original for the cases they do not cover; packed rows (`seq_idx`) in the
    chunk scan and the conv go to the function each replaced, which is `cascade.models.packing`'s if that was
    enabled first (if it is enabled later, it wraps ours and takes the packed rows before they get here)."""

    def bind(name):
        if name not in _UNPACKED_ONLY:
            return _REPLACEMENT[name]
        ours = _UNPACKED_ONLY[name]

        def unpacked_ours(*args, **kwargs):
            if kwargs.get("seq_idx") is None and kwargs.get("cu_seqlens") is None:
                return ours(*args, **kwargs)
            return replaced(unpacked_ours)(*args, **kwargs)

        unpacked_ours.__doc__ = ours.__doc__
        return unpacked_ours

    return _PATCH.enable(bind)


def disable_fast_decode() -> None:
    """Put transformers' own functions back (undo enable_fast_decode)."""
    _PATCH.disable()


def fast_decode_enabled() -> bool:
    return _PATCH.enabled()


__all__ = [
    "mamba2_selective_state_update",
    "causal_conv1d_update",
    "mamba2_chunk_scan",
    "causal_conv1d_fn",
    "enable_fast_decode",
    "disable_fast_decode",
    "fast_decode_enabled",
]
