"""A fast MoE layer forward in plain torch: routing -> sort-based dispatch -> one GEMM pair per expert segment.

`experts_forward` runs the routed experts for given routing (ids, weights); `moe_forward` adds the router
(`gating.topk_gating` or routing replay). `cascade_experts_forward` has transformers' experts-implementation
signature `(self, hidden_states, top_k_index, top_k_weights)`, so it can replace the eager loop of
`NemotronHExperts` (squared-ReLU, 3-D `up_proj` [E, I, H] / `down_proj` [E, H, I]) or of gated experts such
as `Qwen3MoeExperts` (`gate_up_proj` [E, 2I, H]); `register_experts_implementation()` adds it to
transformers' `ExpertsInterface` under the name "cascade".

Numerics (every path): expert GEMMs and the activation run in the weights' dtype (bf16 for Nemotron 3 Nano);
the fp32 gate weights multiply the expert outputs after the down projection, in fp32, and the per-token sum
accumulates in fp32 (the no-grad CPU path: fp64 for fp64 inputs), rounded to the hidden dtype once at the end --
what transformers' eager loop does too.

Why it is faster than the eager loop on CPU: one stable sort replaces a [T, k, E+1] one-hot and E scans of it;
each expert then reads one contiguous segment of the sort. The no-grad CPU path runs a fixed, short op
sequence per non-empty expert into small reused buffers (gather, GEMM, in-place activation, GEMM, weight
multiply, index_add_) -- no per-expert allocations, no host syncs besides one `counts.tolist()`. For bf16/fp16
(oneDNN AMX GEMMs) experts with fewer than 128 rows run transposed, `W @ x.T`: oneDNN packs ("reorders") the
right operand on every call, and that is then the n tokens instead of the [I, H] weight (GEMM pair ~1.4x
faster at <= 100 rows); the price is a strided transpose of the [H, n] output in the weight multiply, which
wins back the difference from ~100-200 rows (measured). fp32 (MKL) always uses `x @ W.T`. index_add_ on CPU
is sequential over rows, so every token's sum runs over its experts in ascending order, as in transformers'
eager loop (fp32: identical GEMM rows, so bit-identical for identical gate weights). With autograd, or on
CUDA (where index_add_ uses atomics), outputs are concatenated and `dispatch.combine` sums the k slots in
order.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .dispatch import Dispatch, combine, dispatch
from .gating import replay, topk_gating


# bf16/fp16 experts with fewer rows than this run their GEMMs transposed (module docstring). Measured break-even
# on the benchmark's CPU (AMX): ~96 rows at H=512/I=352, 96-192 rows at Nemotron 3 Nano's H=2688/I=1856.
_TRANSPOSED_BELOW = 128
# fp32/fp64 experts run as two batched GEMMs over a padded block (`_experts_forward_padded`) instead of a loop over
# experts when that block (experts x largest count) has at most this many rows and at most twice the real ones (a
# block mostly of padding, as with 128 experts and few tokens, computes more than the loop saves). Measured on the
# default model's experts (8, H=128, I=256, top-2), 2-core AMD EPYC: 0.77x the loop's time at 8 tokens, 0.72-0.80x
# at 64, 0.92-0.95x at 256, even at 384 (a padded block of ~800 rows).
_PADDED_BELOW = 768


def _act_name(act):
    """'relu2' / 'silu' for transformers' or torch's modules of those activations (in-place fast path)."""
    if isinstance(act, str):
        return act
    name = type(act).__name__
    if name == "ReLUSquaredActivation":
        return "relu2"
    if name in ("SiLU", "SiLUActivation") and not getattr(act, "inplace", False):
        return "silu"
    return act


def _act(x: torch.Tensor, act, inplace: bool) -> torch.Tensor:
    act = _act_name(act)
    if act == "relu2":  # squared ReLU (Nemotron-H experts)
        return x.relu_().square_() if inplace else F.relu(x).square()
    if act == "silu":
        return F.silu(x, inplace=inplace)
    return act(x)  # any callable, e.g. a transformers activation module


def experts_forward(
    hidden: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    act="relu2",
    gated: bool = False,
    d: Dispatch | None = None,
) -> torch.Tensor:
    """Routed experts: hidden [T, H], ids/weights [T, k] -> [T, H] in hidden's dtype.

    up_proj [E, I, H] (or [E, 2I, H] gate-then-up halves when gated: act(gate) * up), down_proj [E, H, I].
    Expert GEMMs run in the weights' dtype (e.g. bf16); the gate weights (fp32) multiply the expert outputs
    after the down projection, in fp32, and the sum over experts accumulates in fp32 (module docstring).
    Pass `d` to reuse a dispatch of the same ids.
    """
    e = up_proj.shape[0]
    if d is None:
        d = dispatch(ids, e)
    grad = torch.is_grad_enabled() and (
        hidden.requires_grad or weights.requires_grad or up_proj.requires_grad or down_proj.requires_grad
    )
    if not grad and hidden.device.type == "cpu":
        return _experts_forward_cpu(hidden, weights, up_proj, down_proj, act, gated, d)
    return _experts_forward_combine(hidden, weights, up_proj, down_proj, act, gated, d, grad)


def _experts_forward_cpu(hidden, weights, up_proj, down_proj, act, gated, d: Dispatch) -> torch.Tensor:
    """No-grad CPU path (module docstring): per non-empty expert, gather its rows, GEMM, activation in place,
    GEMM, times the fp32 gate weights, index_add_ into the fp32 [T, H] output -- all in preallocated buffers
    sized for the largest expert."""
    t, h = hidden.shape
    acc = torch.promote_types(hidden.dtype, torch.float32)
    counts = d.counts.tolist()  # the only host sync: segment sizes drive the loop
    nv = sum(counts)  # real pairs; padding slots sort after them
    if nv == 0:
        return hidden.new_zeros(t, h)
    name = _act_name(act)
    m = max(counts)
    padded = len(counts) * m
    if up_proj.dtype in (torch.float32, torch.float64) and padded <= _PADDED_BELOW and padded <= 2 * nv:
        return _experts_forward_padded(hidden, weights, up_proj, down_proj, name, gated, d, nv, m, acc)
    i2 = up_proj.shape[1]  # I, or 2I when gated
    inter = i2 // 2 if gated else i2
    out = torch.zeros(t, h, dtype=acc, device=hidden.device)
    # oneDNN (bf16/fp16) packs the GEMM's right operand on every call: for experts with few rows let that be the
    # tokens, W @ x.T (module docstring)
    trans_below = _TRANSPOSED_BELOW if up_proj.dtype in (torch.bfloat16, torch.float16) else 0
    tok = d.token_ids[:nv]
    w_sorted = weights.reshape(-1).to(acc).index_select(0, d.order[:nv]).unsqueeze(1)  # [nv, 1]
    xbuf = hidden.new_empty(m * h)
    abuf = hidden.new_empty(m * i2)
    ybuf = hidden.new_empty(m * h)
    convert = acc != hidden.dtype
    fbuf = torch.empty(m * h, dtype=acc, device=hidden.device) if convert else ybuf
    relu2 = name == "relu2" and not gated
    views: dict = {}  # rows -> (orientation, buffer views): per-expert Python work is visible at ~50 rows
    for n, tk, ws, w_up, w_down in zip(counts, tok.split(counts), w_sorted.split(counts), up_proj.unbind(0),
                                       down_proj.unbind(0)):
        if n == 0:
            continue
        v = views.get(n)
        if v is None:
            x = xbuf[: n * h].view(n, h)
            if n < trans_below:  # aT [I, n] = W_up @ x.T, yT [H, n] = W_down @ aT
                yout = ybuf[: n * h].view(h, n)
                v = (True, x, x.t(), abuf[: n * i2].view(i2, n), yout, yout.t(), fbuf[: n * h].view(n, h))
            else:  # a [n, I] = x @ W_up.T, y [n, H] = a @ W_down.T
                yout = ybuf[: n * h].view(n, h)
                v = (False, x, x, abuf[: n * i2].view(n, i2), yout, yout, fbuf[: n * h].view(n, h))
            views[n] = v
        trans, x, xin, aout, yout, y, fout = v
        torch.index_select(hidden, 0, tk, out=x)
        a = torch.mm(w_up, xin, out=aout) if trans else torch.mm(xin, w_up.t(), out=aout)
        if relu2:
            a.relu_().square_()
        else:
            if gated:  # gate and up halves: row blocks (transposed) or column blocks
                gate, upv = (a[:inter], a[inter:]) if trans else (a[:, :inter], a[:, inter:])
            else:
                gate, upv = a, None
            if isinstance(name, str):
                a = _act(gate, name, inplace=True)
                if gated:
                    a = a.mul_(upv)
            else:
                a = name(gate) * upv if gated else name(gate)
        if trans:
            torch.mm(w_down, a, out=yout)  # y = yout.t()
        else:
            torch.mm(a, w_down.t(), out=yout)  # y = yout
        # fp32 gate weights times the output (converted to fp32 first: a mixed-dtype mul would allocate a
        # temporary for that), fp32 sum
        out.index_add_(0, tk, (fout.copy_(y) if convert else y).mul_(ws))
    return out.to(hidden.dtype)


def _padded_layout(d: Dispatch, nv: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The padded block of `d`'s nv real pairs, [E * m] rows, expert e's pairs in order at rows e*m ...: the token
    each row reads (T, a zero row, for padding) and each sorted pair's row in the block."""
    experts = d.sorted_expert_ids[:nv]
    slot = experts * m + (torch.arange(nv, device=experts.device) - d.offsets[experts])
    rows = torch.full((d.num_experts * m,), d.num_tokens, dtype=torch.long, device=experts.device)
    rows[slot] = d.token_ids[:nv]
    return rows, slot


def _experts_forward_padded(hidden, weights, up_proj, down_proj, act, gated, d: Dispatch, nv: int, m: int, acc):
    """No-grad CPU path for small batches (a decode step): every expert's rows gathered into one [E, m, H] block
    (m = the largest expert's count, zero rows after an expert's own), two batched GEMMs for all experts, then the
    same fp32 weight multiply and index_add_ as the per-expert loop, in the same row order (expert-major), so each
    token's sum still runs over its experts in ascending order. A fixed, short op sequence whatever the number of
    experts, where the loop costs ~8 small ops per expert (measured: `_PADDED_BELOW`)."""
    t, h = hidden.shape
    e = up_proj.shape[0]
    rows, slot = _padded_layout(d, nv, m)
    gate_w = torch.zeros(e * m, 1, dtype=acc, device=hidden.device)
    gate_w[slot, 0] = weights.reshape(-1).to(acc).index_select(0, d.order[:nv])
    x = torch.cat([hidden, hidden.new_zeros(1, h)]).index_select(0, rows).view(e, m, h)
    a = torch.bmm(x, up_proj.transpose(1, 2))
    if gated:
        gate, up = a.chunk(2, dim=-1)
        a = _act(gate, act, inplace=True).mul_(up) if isinstance(act, str) else act(gate) * up
    else:
        a = _act(a, act, inplace=True) if isinstance(act, str) else act(a)
    y = torch.bmm(a, down_proj.transpose(1, 2)).view(e * m, h).to(acc).mul_(gate_w)
    out = torch.zeros(t + 1, h, dtype=acc, device=hidden.device).index_add_(0, rows, y)  # padding rows add to row t
    return out[:t].to(hidden.dtype)


def _experts_forward_combine(hidden, weights, up_proj, down_proj, act, gated, d: Dispatch, grad: bool):
    """Autograd / non-CPU path: per-expert GEMMs on the sorted rows, outputs concatenated in sorted order, then
    `dispatch.combine` (fixed slot order, fp32, no atomics)."""
    h = hidden.shape[1]
    counts = d.counts.tolist()
    nv = sum(counts)
    x = hidden.index_select(0, d.token_ids[:nv])
    pieces = []
    # unbind, not up_proj[ex]: the backward of each index allocates a zero gradient of the whole [E, I, H] weight
    # (quadratic in the experts: 128 experts took 10x the time of everything else)
    for xe, n, w_up, w_down in zip(x.split(counts), counts, up_proj.unbind(0), down_proj.unbind(0)):
        if n == 0:
            continue
        a = torch.mm(xe, w_up.t())
        if gated:
            gate, up = a.chunk(2, dim=-1)
            a = _act(gate, act, inplace=not grad) * up
        else:
            a = _act(a, act, inplace=not grad)
        pieces.append(torch.mm(a, w_down.t()))
    ys = torch.cat(pieces) if pieces else hidden.new_zeros(0, h)
    if nv < d.order.numel():  # padding slots: rows that combine ignores
        ys = torch.cat([ys, ys.new_zeros(d.order.numel() - nv, h)])
    # combine multiplies by the fp32 gate weights and sums the k slots in order, in fp32
    return combine(ys, weights, d, out_dtype=hidden.dtype)


class MoEOutput(NamedTuple):
    output: torch.Tensor  # [T, H] routed-experts output (no shared expert)
    weights: torch.Tensor  # [T, k] fp32 gate weights
    ids: torch.Tensor  # [T, k] int64 expert ids
    router_logits: torch.Tensor  # [T, E] fp32


def moe_forward(
    hidden: torch.Tensor,
    router_weight: torch.Tensor,
    correction_bias: torch.Tensor | None,
    experts_up: torch.Tensor,
    experts_down: torch.Tensor,
    k: int,
    score: str = "sigmoid",
    n_group: int = 1,
    topk_group: int = 1,
    normalize: bool = True,
    scaling: float = 1.0,
    act="relu2",
    replay_ids: torch.Tensor | None = None,
) -> MoEOutput:
    """Whole routed-MoE forward: logits = hidden @ router_weight.T in fp32, top-k gating (or routing replay of
    `replay_ids` [T, k], -1 padding), sorted dispatch, grouped expert GEMMs, fixed-order combine.

    Nemotron 3 Nano: score="sigmoid", correction_bias=gate.e_score_correction_bias, normalize=True,
    scaling=2.5, act="relu2". hidden may be [..., H]; the output has the same shape.
    """
    shape = hidden.shape
    x = hidden.reshape(-1, shape[-1])
    logits = F.linear(x.float(), router_weight.float())
    if replay_ids is not None:
        weights, ids = replay(logits, replay_ids.reshape(-1, replay_ids.shape[-1]), score, normalize, scaling)
    else:
        weights, ids = topk_gating(logits, k, score, correction_bias, n_group, topk_group, normalize, scaling)
    y = experts_forward(x, ids, weights, experts_up, experts_down, act=act)
    return MoEOutput(y.view(shape), weights, ids, logits)


def cascade_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """transformers experts-interface function (see module docstring); `self` is the experts module."""
    gated = getattr(self, "has_gate", hasattr(self, "gate_up_proj"))
    if getattr(self, "has_bias", False) or getattr(self, "is_transposed", False):
        raise NotImplementedError("cascade experts: biased or transposed expert weights are not supported")
    up = self.gate_up_proj if gated else self.up_proj
    out = experts_forward(hidden_states, top_k_index, top_k_weights, up, self.down_proj, act=self.act_fn,
                          gated=gated)
    return out


def register_experts_implementation(name: str = "cascade") -> str:
    """Register `cascade_experts_forward` in transformers' ExpertsInterface; use it with
    `config._experts_implementation = name` (or `experts_implementation=name` at load time)."""
    from transformers.integrations.moe import ExpertsInterface

    ExpertsInterface.register(name, cascade_experts_forward)
    return name


__all__ = ["experts_forward", "moe_forward", "MoEOutput", "cascade_experts_forward",
           "register_experts_implementation"]
