"""cascade.kernels: MoE routing (gating, dispatch, combine, balance, replay) and the sorted-dispatch MoE forward.

Torch path against straightforward per-token reference loops and transformers' eager NemotronH / Qwen3-MoE
routers and experts; the CUDA sources are compile-checked with nvcc when it is installed; the CuPy-vs-torch
comparisons need a CUDA GPU and are skipped (with the reason shown by -ra) without one.
"""

import shutil
import subprocess

import pytest
import torch

from cascade.kernels import (
    balance,
    combine,
    cupy_backend,
    dispatch,
    experts_forward,
    moe_forward,
    permute,
    replay,
    topk_gating,
)
from cascade.kernels.dispatch import padded_buffer_size

torch.set_num_threads(1)
HAS_GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU on this machine: CuPy kernels cannot run")


# ---------------------------------------------------------------- reference implementations (slow, obvious)
def ref_gating(logits, k, score, bias, n_group, topk_group, normalize, scaling):
    t, e = logits.shape
    x = logits.double().float()
    sc = torch.sigmoid(x) if score == "sigmoid" else torch.softmax(x, -1)
    ids, ws = [], []
    for r in range(t):
        if bias is not None:
            ch = (sc[r] + bias).tolist()
        elif score == "softmax":
            ch = x[r].tolist()
        else:
            ch = sc[r].tolist()
        allowed = set(range(e))
        if n_group > 1:
            g = e // n_group
            gs = [sum(sorted(ch[i * g:(i + 1) * g], reverse=True)[:2]) for i in range(n_group)]
            keep = sorted(range(n_group), key=lambda i: (-gs[i], i))[:topk_group]
            allowed = {j for i in keep for j in range(i * g, (i + 1) * g)}
        pick = sorted(allowed, key=lambda j: (-ch[j], j))[:k]
        w = [sc[r, j].item() for j in pick]
        if normalize:
            s = sum(w) + 1e-20
            w = [v / s for v in w]
        ids.append(pick)
        ws.append([v * scaling for v in w])
    return torch.tensor(ws), torch.tensor(ids)


def ref_dispatch(ids, e):
    flat = ids.reshape(-1).tolist()
    order = [f for ex in range(e) for f in range(len(flat)) if flat[f] == ex]
    order += [f for f in range(len(flat)) if flat[f] < 0]
    return order, [sum(1 for v in flat if v == ex) for ex in range(e)]


def ref_align(ids, e, bs):
    """vLLM's golden torch_moe_align_block_size, written as a loop."""
    flat = ids.reshape(-1).tolist()
    n = len(flat)
    size = padded_buffer_size(n, e, bs)
    st, be, pos = [n] * size, [-1] * ((size + bs - 1) // bs), 0
    for ex in range(e):
        toks = [f for f in range(n) if flat[f] == ex]
        if not toks:
            continue
        padded = (len(toks) + bs - 1) // bs * bs
        st[pos:pos + len(toks)] = toks
        for b in range(pos // bs, (pos + padded) // bs):
            be[b] = ex
        pos += padded
    return st, be, pos


def ref_moe(hidden, ids, weights, up, down):
    out = torch.zeros(hidden.shape, dtype=torch.float64)
    for t in range(hidden.shape[0]):
        for s in range(ids.shape[1]):
            ex = int(ids[t, s])
            if ex < 0:
                continue
            a = torch.relu(hidden[t].double() @ up[ex].double().T) ** 2
            out[t] += float(weights[t, s]) * (a @ down[ex].double().T)
    return out


def random_ids(t, e, k, gen, pad_frac=0.0):
    ids = torch.stack([torch.randperm(e, generator=gen)[:k] for _ in range(t)])
    if pad_frac:
        ids[torch.rand(t, k, generator=gen) < pad_frac] = -1
    return ids


# ---------------------------------------------------------------- gating
GATING_CASES = [
    # t, e, k, score, bias, n_group, topk_group, normalize, scaling, ties
    (37, 16, 4, "sigmoid", True, 1, 1, True, 2.5, False),
    (50, 32, 6, "sigmoid", True, 4, 2, True, 2.5, True),
    (20, 8, 1, "sigmoid", False, 1, 1, False, 1.0, True),
    (33, 24, 3, "softmax", False, 1, 1, True, 1.0, True),
    (25, 12, 2, "softmax", True, 3, 1, False, 1.0, False),
    (1, 128, 6, "sigmoid", True, 8, 4, True, 2.5, True),
]


@pytest.mark.parametrize("t,e,k,score,use_bias,n_group,topk_group,normalize,scaling,ties", GATING_CASES)
def test_topk_gating_matches_reference_loop(t, e, k, score, use_bias, n_group, topk_group, normalize, scaling, ties):
    g = torch.Generator().manual_seed(t * e + k)
    logits = torch.randn(t, e, generator=g)
    if ties:  # coarse quantisation: many exactly equal scores, inside and across groups
        logits = (logits * 2).round() / 2
    bias = (torch.randint(-2, 3, (e,), generator=g) * 0.25) if use_bias else None
    w, ids = topk_gating(logits, k, score, bias, n_group, topk_group, normalize, scaling)
    rw, rids = ref_gating(logits, k, score, bias, n_group, topk_group, normalize, scaling)
    assert ids.dtype == torch.long and w.dtype == torch.float32 and ids.shape == (t, k)
    assert torch.equal(ids, rids)
    torch.testing.assert_close(w, rw, rtol=1e-6, atol=1e-7)


def test_ties_go_to_the_lower_expert_index():
    logits = torch.zeros(3, 10)
    logits[1, [7, 2, 5]] = 1.0  # three-way tie at the top
    logits[2] = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 0, 0], dtype=torch.float)
    _, ids = topk_gating(logits, 4)
    assert ids.tolist() == [[0, 1, 2, 3], [2, 5, 7, 0], [1, 2, 4, 7]]
    _, again = topk_gating(logits, 4)
    assert torch.equal(ids, again)


def test_nemotron_h_router_matches_transformers():
    from transformers import NemotronHConfig
    from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHTopkRouter

    for n_group, topk_group in [(1, 1), (4, 2)]:
        cfg = NemotronHConfig(hidden_size=64, n_routed_experts=32, num_experts_per_tok=6, n_group=n_group,
                              topk_group=topk_group, norm_topk_prob=True, routed_scaling_factor=2.5)
        router = NemotronHTopkRouter(cfg)
        g = torch.Generator().manual_seed(n_group)
        with torch.no_grad():
            router.weight.normal_(0, 0.3, generator=g)
            router.e_score_correction_bias.normal_(0, 0.05, generator=g)
        h = torch.randn(200, 64, generator=g)
        logits, hf_w, hf_ids = router(h)
        w, ids = topk_gating(logits, 6, "sigmoid", router.e_score_correction_bias, n_group, topk_group, True, 2.5)
        # HF returns the chosen set unsorted (topk sorted=False): compare per token, ordered by expert id
        hs, hp = hf_ids.sort(-1)
        os_, op = ids.sort(-1)
        assert torch.equal(hs, os_)
        torch.testing.assert_close(w.gather(1, op), hf_w.gather(1, hp), rtol=1e-6, atol=1e-7)


def _qwen3_block(e=16, k=4, h=48, i=32, seed=0):
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    cfg = Qwen3MoeConfig(hidden_size=h, num_experts=e, num_experts_per_tok=k, moe_intermediate_size=i,
                         norm_topk_prob=True, hidden_act="silu")
    cfg._experts_implementation = "eager"
    block = Qwen3MoeSparseMoeBlock(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.1, generator=g)
    return block, g


def test_qwen3_moe_router_and_experts_match_transformers():
    from cascade.kernels import cascade_experts_forward

    block, g = _qwen3_block()
    x = torch.randn(2, 40, 48, generator=g)
    flat = x.view(-1, 48)
    with torch.no_grad():
        ref = block(x)
        logits, hf_w, hf_ids = block.gate(flat)
        w, ids = topk_gating(logits, 4, "softmax", normalize=True)
        assert torch.equal(ids, hf_ids)  # HF topk is sorted (descending); no ties in random data
        torch.testing.assert_close(w, hf_w, rtol=1e-6, atol=1e-7)
        ours = cascade_experts_forward(block.experts, flat, ids, w)
    torch.testing.assert_close(ours.view_as(ref), ref, rtol=1e-5, atol=1e-6)


def test_topk_lowest_index_fast_path_is_bit_exact_vs_argmax_rounds():
    from cascade.kernels.gating import topk_lowest_index, topk_lowest_index_argmax

    g = torch.Generator().manual_seed(11)
    for trial in range(60):
        t, e = int(torch.randint(1, 80, (1,), generator=g)), int(torch.randint(1, 140, (1,), generator=g))
        k = int(torch.randint(1, e + 1, (1,), generator=g))
        v = torch.randn(t, e, generator=g)
        kind = trial % 5
        if kind == 1:  # many exact ties
            v = (v * 2).round() / 2
        elif kind == 2:  # +0.0 and -0.0 only: equal values with different bits
            v = torch.where(torch.rand(t, e, generator=g) < 0.5, 0.0, -0.0)
        elif kind == 3:  # group-masked style -inf, fewer finite values than k in some rows
            v = (v * 3).round()
            v[torch.rand(t, e, generator=g) < 0.4] = float("-inf")
        elif kind == 4:  # NaN / inf / saturated sigmoid (exactly 1.0)
            v = torch.sigmoid(v * 20)
            v[torch.rand(t, e, generator=g) < 0.05] = float("nan")
            v[torch.rand(t, e, generator=g) < 0.05] = float("inf")
        for vv in (v, v.double(), v.bfloat16()):
            assert torch.equal(topk_lowest_index(vv, k), topk_lowest_index_argmax(vv, k)), (trial, t, e, k)


@pytest.mark.parametrize("transposed_below", [0, 10**9])  # bf16 GEMMs as x @ W.T / as W @ x.T for every expert
def test_qwen3_experts_bf16_match_transformers_eager(monkeypatch, transposed_below):
    from cascade.kernels import cascade_experts_forward, moe_layer

    monkeypatch.setattr(moe_layer, "_TRANSPOSED_BELOW", transposed_below)
    block, g = _qwen3_block(i=32)
    block.to(torch.bfloat16)
    for tokens in (20, 200):  # ~5 and ~50 rows per expert
        x = torch.randn(tokens, 48, generator=g).bfloat16()
        with torch.no_grad():
            _, w, ids = block.gate(x)
            ref = block.experts(x, ids, w)
            ours = cascade_experts_forward(block.experts, x, ids, w)
        assert ours.dtype == torch.bfloat16
        torch.testing.assert_close(ours.float(), ref.float(), rtol=2e-2, atol=2e-2 * ref.float().abs().max().item())


# ---------------------------------------------------------------- dispatch / permute / combine
DISPATCH_CASES = [  # t, e, k, pad_frac, block_size
    (50, 16, 4, 0.0, None),
    (64, 32, 6, 0.0, 16),
    (7, 64, 2, 0.0, 8),  # N < E: most experts empty, vLLM's small-buffer rule
    (40, 8, 1, 0.0, 4),
    (30, 12, 3, 0.3, 4),  # padding slots (-1)
    (0, 8, 2, 0.0, 4),  # no tokens at all
]


@pytest.mark.parametrize("t,e,k,pad_frac,bs", DISPATCH_CASES)
def test_dispatch_matches_reference_and_invariants(t, e, k, pad_frac, bs):
    g = torch.Generator().manual_seed(t + e + k)
    ids = random_ids(t, e, k, g, pad_frac) if t else torch.empty(0, k, dtype=torch.long)
    d = dispatch(ids, e, block_size=bs)
    order, counts = ref_dispatch(ids, e)
    n = t * k
    assert d.order.tolist() == order and d.counts.tolist() == counts
    valid = int((ids >= 0).sum())
    assert int(d.counts.sum()) == valid == int(d.offsets[-1])
    if pad_frac == 0:
        assert valid == n  # counts sum to T*k
    assert bool((d.offsets[1:] >= d.offsets[:-1]).all()) and int(d.offsets[0]) == 0
    assert sorted(d.order.tolist()) == list(range(n))  # a permutation
    assert torch.equal(d.inverse[d.order], torch.arange(n)) and torch.equal(d.order[d.inverse], torch.arange(n))
    assert torch.equal(d.token_ids, d.order // k)
    assert torch.equal(d.sorted_expert_ids, ids.reshape(-1)[d.order])
    if bs is not None:
        st, be, post = ref_align(ids, e, bs)
        assert d.sorted_token_ids.dtype == torch.int32 and d.sorted_token_ids.tolist() == st
        assert d.block_expert_ids.tolist() == be and d.num_tokens_post_padded.tolist() == [post]
        assert post % bs == 0


def test_empty_experts_have_empty_segments():
    ids = torch.tensor([[5, 1], [5, 3], [1, 5]])
    d = dispatch(ids, 8, block_size=2)
    assert d.counts.tolist() == [0, 2, 0, 1, 0, 3, 0, 0]
    assert d.offsets.tolist() == [0, 0, 2, 2, 3, 3, 6, 6, 6]
    assert d.order.tolist() == [1, 4, 3, 0, 2, 5]  # stable: ascending flat index within an expert
    assert d.block_expert_ids.tolist()[:4] == [1, 3, 5, 5] and d.num_tokens_post_padded.item() == 8


def test_permute_combine_identity_with_k1_unit_weights():
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(33, 20, generator=g)
    ids = torch.randint(0, 5, (33, 1), generator=g)
    d = dispatch(ids, 5)
    p = permute(hidden, d)
    assert torch.equal(p, hidden[d.token_ids])
    assert torch.equal(combine(p, torch.ones(33, 1), d), hidden)


def test_combine_fixed_order_fp32_and_padding():
    g = torch.Generator().manual_seed(4)
    t, e, k, h = 25, 6, 3, 8
    ids = random_ids(t, e, k, g, pad_frac=0.25)
    w = torch.rand(t, k, generator=g)
    d = dispatch(ids, e)
    rows = torch.randn(t * k, h, generator=g).to(torch.bfloat16)
    rows[int(d.offsets[-1]):] = float("nan")  # padding rows must not leak
    out = combine(rows, w, d, out_dtype=torch.float32)
    ref = torch.zeros(t, h)
    for tt in range(t):
        for s in range(k):  # same order, same fp32 arithmetic
            if ids[tt, s] >= 0:
                ref[tt] = ref[tt] + rows[d.inverse[tt * k + s]].float() * w[tt, s]
    assert torch.equal(out, ref)
    assert torch.equal(combine(rows, w, d, torch.float32), out)  # deterministic


# ---------------------------------------------------------------- replay
def test_replay_honours_ids_and_gradient_reaches_logits():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(12, 16, generator=g, requires_grad=True)
    forced = random_ids(12, 16, 4, g)
    forced[0, 3] = -1
    forced[1, 2:] = -1
    w, ids = replay(logits, forced, "sigmoid", True, 2.5)
    assert torch.equal(ids, forced)
    assert (w[0, 3] == 0) and (w[1, 2:] == 0).all()
    torch.testing.assert_close(w.sum(-1), torch.full((12,), 2.5))
    (w * torch.randn(12, 4, generator=g)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert logits.grad[2, forced[2]].abs().min() > 0  # every forced expert gets a gradient
    # replaying the router's own choice reproduces its weights
    w2, ids2 = topk_gating(logits.detach(), 4, "sigmoid", None, 1, 1, True, 2.5)
    torch.testing.assert_close(replay(logits.detach(), ids2, "sigmoid", True, 2.5)[0], w2)


def test_topk_gating_weights_are_differentiable():
    logits = torch.randn(6, 8, requires_grad=True)
    w, _ = topk_gating(logits, 2, "sigmoid", torch.zeros(8), 1, 1, True, 2.5)
    w[:, 0].sum().backward()
    assert logits.grad.abs().sum() > 0


# ---------------------------------------------------------------- load balance
def test_load_balance_helpers():
    ids = torch.tensor([[0, 1], [0, 2], [0, -1]])
    c = balance.expert_counts(ids, 4)
    assert c.tolist() == [3, 1, 1, 0]
    bias = torch.zeros(4)
    balance.update_correction_bias(bias, c, rate=1e-3)  # mean 1.25
    assert bias.tolist() == pytest.approx([-1e-3, 1e-3, 1e-3, 1e-3])
    # balance at the uniform optimum is 1; Mixtral's HF loss is k times ours
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    g = torch.Generator().manual_seed(6)
    logits = torch.randn(64, 8, generator=g)
    _, top = torch.topk(torch.softmax(logits, -1), 2, dim=-1)
    ours = balance.switch_aux_loss(logits, top, 8)
    torch.testing.assert_close(ours * 2, load_balancing_loss_func((logits,), 8, 2), rtol=1e-5, atol=1e-6)
    uniform = balance.switch_aux_loss(torch.zeros(8, 8), torch.arange(8).view(8, 1), 8)
    assert uniform.item() == pytest.approx(1.0)
    seq = balance.switch_aux_loss(logits.view(4, 16, 8), top.view(4, 16, 2), 8, score="sigmoid")
    assert seq.dim() == 0 and seq.item() > 0
    z = balance.router_z_loss(logits)
    assert z.item() == pytest.approx(torch.logsumexp(logits, -1).pow(2).mean().item(), rel=1e-6)
    a = torch.tensor([[0, 1], [2, 3], [4, -1]])
    b = torch.tensor([[1, 0], [2, 5], [6, 7]])
    assert balance.routing_agreement(a, b) == pytest.approx(3 / 5)
    assert balance.routing_agreement(a, a) == 1.0


# ---------------------------------------------------------------- MoE layer
def _nemotron_experts(e=16, h=32, i=24, seed=0):
    from transformers import NemotronHConfig
    from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHExperts

    cfg = NemotronHConfig(hidden_size=h, n_routed_experts=e, moe_intermediate_size=i, num_experts_per_tok=4,
                          mlp_hidden_act="relu2")
    cfg._experts_implementation = "eager"
    ex = NemotronHExperts(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ex.up_proj.normal_(0, 0.2, generator=g)
        ex.down_proj.normal_(0, 0.2, generator=g)
    return ex, g


def test_experts_forward_matches_nemotron_eager_and_reference():
    ex, g = _nemotron_experts()
    x = torch.randn(45, 32, generator=g)
    ids = random_ids(45, 16, 4, g)
    ids[:5] = torch.tensor([0, 1, 2, 3])  # some experts get many tokens, others none
    w = torch.rand(45, 4, generator=g)
    with torch.no_grad():
        ref = ex(x, ids, w)
        ours = experts_forward(x, ids, w, ex.up_proj, ex.down_proj)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.double(), ref_moe(x, ids, w, ex.up_proj, ex.down_proj), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("padded", [True, False])
def test_fp32_experts_padded_block_and_per_expert_loop_match_eager(monkeypatch, padded):
    """Both no-grad fp32 CPU paths, Nemotron's squared-ReLU experts and Qwen3's gated ones, with padding slots."""
    from cascade.kernels import cascade_experts_forward, moe_layer

    taken = []
    padded_forward = moe_layer._experts_forward_padded
    monkeypatch.setattr(moe_layer, "_experts_forward_padded", lambda *a: taken.append(1) or padded_forward(*a))
    monkeypatch.setattr(moe_layer, "_PADDED_BELOW", 10**9 if padded else 0)
    ex, g = _nemotron_experts()
    block, _ = _qwen3_block()
    for tokens in (4, 16):
        # every expert chosen equally often (the padded block has no spare rows: the 2x rule lets it run), but some
        # tokens have fewer experts (routing replay's -1)
        ids = torch.stack([torch.arange(4) * 4 + (t % 4) for t in range(tokens)])
        ids[1, 2] = -1
        w = torch.rand(tokens, 4, generator=g)
        x = torch.randn(tokens, 32, generator=g)
        xq = torch.randn(tokens, 48, generator=g)
        with torch.no_grad():
            torch.testing.assert_close(experts_forward(x, ids, w, ex.up_proj, ex.down_proj),
                                       ref_moe(x, ids, w, ex.up_proj, ex.down_proj).float(), rtol=1e-4, atol=1e-5)
            ids_q = ids.clamp(min=0)  # transformers' eager experts take no -1
            torch.testing.assert_close(cascade_experts_forward(block.experts, xq, ids_q, w),
                                       block.experts(xq, ids_q, w), rtol=1e-5, atol=1e-6)
    assert len(taken) == (4 if padded else 0)


@pytest.mark.parametrize("tokens", [12, 200])  # ~3 and ~50 rows per expert
@pytest.mark.parametrize("transposed_below", [0, 10**9])  # bf16 GEMMs as x @ W.T / as W @ x.T for every expert
def test_experts_forward_bf16_matches_eager_with_fp32_weights_and_sum(monkeypatch, tokens, transposed_below):
    from cascade.kernels import moe_layer

    monkeypatch.setattr(moe_layer, "_TRANSPOSED_BELOW", transposed_below)
    ex, g = _nemotron_experts(i=24)
    ex.to(torch.bfloat16)
    x = torch.randn(tokens, 32, generator=g).bfloat16()
    ids = random_ids(tokens, 16, 4, g)
    w = torch.rand(tokens, 4, generator=g)  # fp32 gate weights, as the router returns them
    with torch.no_grad():
        ref = ex(x, ids, w)  # transformers eager: bf16 GEMMs, fp32 weights and index_add_
        ours = experts_forward(x, ids, w, ex.up_proj, ex.down_proj)
        exact = ref_moe(x, ids, w, ex.up_proj, ex.down_proj)  # fp64 on the bf16 values
    assert ours.dtype == torch.bfloat16
    scale = exact.abs().max().item()
    torch.testing.assert_close(ours.float(), ref.float(), rtol=2e-2, atol=2e-2 * scale)
    # no worse than eager against the exact result (fp32 weights/accumulation, one final rounding)
    err_ours = (ours.double() - exact).abs().max().item()
    err_ref = (ref.double() - exact).abs().max().item()
    assert err_ours <= 1.5 * err_ref + 1e-3 * scale


def test_registered_experts_implementation_and_gradients():
    from cascade.kernels import register_experts_implementation

    ex, g = _nemotron_experts(seed=1)
    x = torch.randn(30, 32, generator=g, requires_grad=True)
    ids = random_ids(30, 16, 4, g)
    w = torch.rand(30, 4, generator=g, requires_grad=True)
    ref = ex(x, ids, w)
    (gx, gw, gu) = torch.autograd.grad(ref.square().sum(), (x, w, ex.up_proj))
    ex.config._experts_implementation = register_experts_implementation()
    ours = ex(x, ids, w)  # goes through transformers' ExpertsInterface
    (ox, ow, ou) = torch.autograd.grad(ours.square().sum(), (x, w, ex.up_proj))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    for a, b in ((ox, gx), (ow, gw), (ou, gu)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_moe_forward_matches_nemotron_h_moe_and_replay():
    from transformers import NemotronHConfig
    from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHMoE

    cfg = NemotronHConfig(hidden_size=32, n_routed_experts=16, moe_intermediate_size=24, num_experts_per_tok=4,
                          mlp_hidden_act="relu2", n_group=1, topk_group=1, norm_topk_prob=True,
                          routed_scaling_factor=2.5, moe_shared_expert_intermediate_size=16)
    cfg._experts_implementation = "eager"
    moe = NemotronHMoE(cfg)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.2, generator=g)
        moe.gate.e_score_correction_bias.normal_(0, 0.1, generator=g)
    x = torch.randn(2, 20, 32, generator=g)
    with torch.no_grad():
        ref = moe(x) - moe.shared_experts(x)
        out = moe_forward(x, moe.gate.weight, moe.gate.e_score_correction_bias, moe.experts.up_proj,
                          moe.experts.down_proj, k=4, scaling=2.5)
        torch.testing.assert_close(out.output, ref, rtol=1e-5, atol=1e-5)
        # replaying its own routing gives the same output; forcing other experts changes it
        again = moe_forward(x, moe.gate.weight, None, moe.experts.up_proj, moe.experts.down_proj, k=4,
                            scaling=2.5, replay_ids=out.ids)
        torch.testing.assert_close(again.output, out.output)
        other = moe_forward(x, moe.gate.weight, None, moe.experts.up_proj, moe.experts.down_proj, k=4,
                            scaling=2.5, replay_ids=(out.ids + 1) % 16)
        assert torch.equal(other.ids, (out.ids + 1) % 16)
        assert not torch.allclose(other.output, out.output)


# ---------------------------------------------------------------- CUDA sources
def test_cuda_sources_compile_with_nvcc(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not installed")
    sources = sorted(cupy_backend.CUDA_SOURCE.parent.glob("*.cu"))
    assert sources
    for src in sources:
        r = subprocess.run([nvcc, "-arch=sm_90", "--ptx", "-o", str(tmp_path / (src.stem + ".ptx")), str(src)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        ptx = (tmp_path / (src.stem + ".ptx")).read_text()
        for name in ("topk_gating", "dispatch_count", "dispatch_scan", "dispatch_scatter"):
            assert f".entry {name}(" in ptx


@needs_gpu
@pytest.mark.skipif(not cupy_backend.available(), reason="CuPy is not installed")
@pytest.mark.parametrize("t,e,k,score,use_bias,n_group,topk_group,normalize,scaling,ties", GATING_CASES)
def test_cupy_gating_bit_exact_vs_torch(t, e, k, score, use_bias, n_group, topk_group, normalize, scaling, ties):
    from cascade.kernels.gating import topk_gating_torch

    g = torch.Generator().manual_seed(t * e + k + 1)
    logits = torch.randn(t, e, generator=g)
    if ties:
        logits = (logits * 2).round() / 2
    bias = (torch.randint(-2, 3, (e,), generator=g) * 0.25).cuda() if use_bias else None
    logits = logits.cuda()
    w, ids = topk_gating(logits, k, score, bias, n_group, topk_group, normalize, scaling)
    rw, rids = topk_gating_torch(logits, k, score, bias, n_group, topk_group, normalize, scaling)
    assert torch.equal(ids, rids)
    torch.testing.assert_close(w, rw, rtol=1e-5, atol=1e-6)


@needs_gpu
@pytest.mark.skipif(not cupy_backend.available(), reason="CuPy is not installed")
@pytest.mark.parametrize("t,e,k,pad_frac,bs", DISPATCH_CASES + [(8192, 128, 6, 0.0, 64), (3000, 256, 8, 0.1, 16)])
def test_cupy_dispatch_bit_exact_vs_torch(t, e, k, pad_frac, bs):
    from cascade.kernels.dispatch import dispatch_torch

    g = torch.Generator().manual_seed(t + e)
    ids = (random_ids(t, e, k, g, pad_frac) if t else torch.empty(0, k, dtype=torch.long)).cuda()
    d, r = dispatch(ids, e, block_size=bs), dispatch_torch(ids, e, block_size=bs)
    for name in ("order", "inverse", "token_ids", "sorted_expert_ids", "counts", "offsets", "valid",
                 "sorted_token_ids", "block_expert_ids", "num_tokens_post_padded"):
        a, b = getattr(d, name), getattr(r, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.equal(a, b), name


@needs_gpu
def test_moe_forward_on_cuda_matches_cpu():
    ex, g = _nemotron_experts(seed=2)
    x = torch.randn(64, 32, generator=g)
    rw = torch.randn(16, 32, generator=g)
    cpu = moe_forward(x, rw, None, ex.up_proj.detach(), ex.down_proj.detach(), k=4, scaling=2.5)
    gpu = moe_forward(x.cuda(), rw.cuda(), None, ex.up_proj.detach().cuda(), ex.down_proj.detach().cuda(), k=4,
                      scaling=2.5)
    assert torch.equal(gpu.ids.cpu(), cpu.ids)
    torch.testing.assert_close(gpu.output.cpu(), cpu.output, rtol=1e-4, atol=1e-5)
