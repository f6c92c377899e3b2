"""The fast Mamba decode functions and the rollout engine's own decode loop, against transformers' originals."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import transformers.models.nemotron_h.modeling_nemotron_h as nemotron_h
from transformers.cache_utils import DynamicLayer
from transformers.generation.logits_process import TopPLogitsWarper
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from cascade.engine.moe import RoutingRecorder, find_routers
from cascade.engine.policy import Policy
from cascade.models import fallbacks
from cascade.engine import prefill as prefill_module
from cascade.engine import rollout
from cascade.engine.prefill import shared_prefix_length
from cascade.engine.rollout import HFRolloutEngine, _DecodeKVLayer, _next_token, _top_p, grouped_decode_attention
from cascade.models import fast_decode, packing
from cascade.models.tiny_nemotron_h import build_model, tiny_nemotron_h_config
from cascade.types import SamplingParams

ORIGINAL = fast_decode._ORIGINAL
EOS, PAD = 2, 0


def _decode_inputs(batch, heads, head_dim, state, groups, seed=0):
    """Random inputs shaped and strided as NemotronHMamba2Mixer passes them (per-head values expanded)."""
    g = torch.Generator().manual_seed(seed)
    return dict(
        state=torch.randn(batch, heads, head_dim, state, generator=g),
        hidden_states=torch.randn(batch, heads, head_dim, generator=g),
        dt=torch.randn(batch, 1, heads, generator=g).transpose(1, 2).expand(-1, -1, head_dim),
        A=-torch.rand(heads, generator=g)[:, None, None].expand(-1, head_dim, state) * 4,
        B=torch.randn(batch, groups, state, generator=g),
        C=torch.randn(batch, groups, state, generator=g),
        D=torch.randn(heads, generator=g)[:, None].expand(-1, head_dim),
        dt_bias=torch.randn(heads, generator=g)[:, None].expand(-1, head_dim),
    )


def _state_update(fn, inputs, **extra):
    state = inputs["state"].clone()
    rest = {k: v for k, v in inputs.items() if k != "state"}
    return fn(state, **rest, dt_softplus=True, **extra), state


@pytest.mark.parametrize("shape", [(64, 8, 32, 32, 1), (3, 8, 4, 6, 2), (5, 4, 3, 2, 4)])
def test_selective_state_update_matches_the_original(shape):
    inputs = _decode_inputs(*shape)
    expected, expected_state = _state_update(ORIGINAL["mamba2_selective_state_update"], inputs)
    out, state = _state_update(fast_decode.mamba2_selective_state_update, inputs)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, expected_state, atol=1e-5, rtol=1e-5)
    z = torch.randn_like(inputs["hidden_states"])
    out, _ = _state_update(fast_decode.mamba2_selective_state_update, inputs, z=z)
    torch.testing.assert_close(out, _state_update(ORIGINAL["mamba2_selective_state_update"], inputs, z=z)[0], atol=1e-5, rtol=1e-5)


def test_selective_state_update_keeps_a_low_precision_state_like_the_original():
    inputs = _decode_inputs(4, 4, 8, 16, 2)
    inputs["state"] = inputs["state"].bfloat16()  # the update is computed in fp32, then rounded into the cache
    expected, expected_state = _state_update(ORIGINAL["mamba2_selective_state_update"], inputs)
    out, state = _state_update(fast_decode.mamba2_selective_state_update, inputs)
    assert state.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, expected_state, atol=0.0, rtol=1e-2)


def test_selective_state_update_without_broadcast_inputs_is_the_original():
    inputs = _decode_inputs(3, 4, 5, 6, 1)
    inputs["dt"] = inputs["dt"].contiguous() + torch.randn(3, 4, 5)  # dt varies over head_dim: not per head
    expected, expected_state = _state_update(ORIGINAL["mamba2_selective_state_update"], inputs)
    out, state = _state_update(fast_decode.mamba2_selective_state_update, inputs)
    assert torch.equal(out, expected) and torch.equal(state, expected_state)


def test_causal_conv1d_update_matches_the_original():
    g = torch.Generator().manual_seed(0)
    x, conv_state = torch.randn(6, 40, 1, generator=g), torch.randn(6, 40, 4, generator=g)
    weight, bias = torch.randn(40, 4, generator=g), torch.randn(40, generator=g)
    for activation in ("silu", None):
        for b in (bias, None):
            expected_state, state = conv_state.clone(), conv_state.clone()
            expected = ORIGINAL["causal_conv1d_update"](x, expected_state, weight, b, activation)
            out = fast_decode.causal_conv1d_update(x, state, weight, b, activation)
            torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
            assert torch.equal(state, expected_state)


@pytest.mark.parametrize("seq_len", [1, 3, 37])  # shorter than, and longer than, the kernel
def test_causal_conv1d_fn_matches_the_original_forward_and_backward(seq_len):
    g = torch.Generator().manual_seed(seq_len)
    for activation in ("silu", None):
        for with_bias in (True, False):
            # the mixer's argument: a (batch, dim, seq_len) transposed view of its (batch, seq_len, dim) projection
            x = torch.randn(3, seq_len, 24, generator=g).requires_grad_(True)
            weight = torch.randn(24, 4, generator=g).requires_grad_(True)
            bias = torch.randn(24, generator=g).requires_grad_(True) if with_bias else None
            leaves = [t for t in (x, weight, bias) if t is not None]
            outs, grads = [], []
            for fn in (ORIGINAL["causal_conv1d_fn"], fast_decode.causal_conv1d_fn):
                out = fn(x.transpose(1, 2), weight, bias, activation)
                (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
                outs.append(out)
                grads.append([t.grad.clone() for t in leaves])
                for t in leaves:
                    t.grad = None
            assert outs[1].shape == outs[0].shape
            torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
            for ours, theirs in zip(*grads[::-1]):
                torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def _scan_inputs(batch, seq_len, heads, groups, head_dim, state, initial_state, seed=0):
    """Leaf tensors for a chunk scan, as the mixer passes them (dt before dt_bias and softplus, A = -exp(A_log))."""
    g = torch.Generator().manual_seed(seed)
    leaves = dict(
        hidden_states=torch.randn(batch, seq_len, heads, head_dim, generator=g),
        dt=torch.randn(batch, seq_len, heads, generator=g),
        A=-torch.rand(heads, generator=g) * 8,  # per-token decays from ~1 to exp(-10), as at initialisation
        B=torch.randn(batch, seq_len, groups, state, generator=g),
        C=torch.randn(batch, seq_len, groups, state, generator=g),
        D=torch.randn(heads, generator=g),
        dt_bias=torch.randn(heads, generator=g),
    )
    if initial_state:
        leaves["initial_states"] = torch.randn(batch, heads, head_dim, state, generator=g)
    return {name: t.requires_grad_() for name, t in leaves.items()}


def _scan_with_grads(fn, leaves, chunk_size, return_final_states):
    """Output (and final state) of `fn`, and the gradients of every input under a fixed random loss."""
    for t in leaves.values():
        t.grad = None
    result = fn(**leaves, chunk_size=chunk_size, dt_softplus=True, dt_limit=(0.0, float("inf")),
                return_final_states=return_final_states)
    outputs = result if return_final_states else (result,)
    g = torch.Generator().manual_seed(1)
    sum(((o * torch.randn(o.shape, generator=g)).sum() for o in outputs)).backward()
    return [o.detach() for o in outputs], {name: t.grad.clone() for name, t in leaves.items()}


@pytest.mark.parametrize(
    "batch, seq_len, heads, groups, chunk_size, initial_state, return_final_states",
    [
        (32, 64, 8, 1, 64, True, True),  # a GRPO response micro-batch continuing from its prompt's cache
        (4, 41, 8, 1, 64, False, True),  # a prefill: one chunk, padded
        (3, 150, 8, 1, 64, True, True),  # several chunks, the last padded
        (2, 45, 4, 2, 8, True, False),  # two B/C groups
        (5, 33, 8, 4, 16, False, False),
    ],
)
def test_chunk_scan_matches_the_original(batch, seq_len, heads, groups, chunk_size, initial_state, return_final_states):
    head_dim = state = 32 if heads == 8 else 3  # the tiny model's sizes, or small odd ones
    leaves = _scan_inputs(batch, seq_len, heads, groups, head_dim, state, initial_state)
    expected, expected_grads = _scan_with_grads(ORIGINAL["mamba2_chunk_scan"], leaves, chunk_size, return_final_states)
    ours, grads = _scan_with_grads(fast_decode.mamba2_chunk_scan, leaves, chunk_size, return_final_states)
    # within 1e-5 of each tensor's largest entry: the gradients of A, D and dt_bias sum tens of thousands of terms,
    # in another order than transformers (elementwise rtol fails on its small entries; both are ~1e-6 from float64)
    pairs = [*zip(("output", "final state"), ours, expected), *((n, grads[n], g) for n, g in expected_grads.items())]
    for name, out, ref in pairs:
        assert out.shape == ref.shape
        assert (out - ref).abs().max() <= 1e-5 * ref.abs().max(), name


def test_chunk_scan_survives_the_cache_updating_its_initial_state_in_place():
    """transformers' cache copies the final state into the tensor the scan started from (its static address);
    the backward must not need that tensor's old value."""
    leaves = _scan_inputs(2, 100, 8, 1, 32, 32, initial_state=True)  # two chunks: the second starts from the first
    cache_state = leaves["initial_states"].detach().clone().requires_grad_()
    start = cache_state * 1.0  # a non-leaf, as in a model: the prompt forward's state
    out, final = fast_decode.mamba2_chunk_scan(**{**leaves, "initial_states": start}, chunk_size=64, dt_softplus=True,
                                               return_final_states=True)
    with torch.no_grad():
        start.copy_(final)  # DynamicCache.update_recurrent_state
    out.sum().backward()
    assert cache_state.grad is not None and torch.isfinite(cache_state.grad).all()


@pytest.mark.parametrize("packing_first", [True, False])
def test_chunk_scan_leaves_packed_rows_to_the_packing_scan(packing_first):
    leaves = {name: t.detach() for name, t in _scan_inputs(2, 40, 4, 2, 3, 5, False).items()}
    seq_idx = torch.tensor([[0] * 10 + [1] * 30, [0] * 25 + [1] * 15], dtype=torch.int32)
    kw = dict(chunk_size=16, dt_softplus=True)
    was_enabled = packing.packed_sequences_enabled()
    fast_decode.disable_fast_decode()
    packing.disable_packed_sequences()
    try:
        for enable in (packing.enable_packed_sequences, fast_decode.enable_fast_decode)[:: 1 if packing_first else -1]:
            enable()
        packed = nemotron_h.mamba2_chunk_scan(**leaves, **kw, seq_idx=seq_idx)
        assert torch.equal(packed, packing.mamba2_chunk_scan(**leaves, **kw, seq_idx=seq_idx))
        assert torch.equal(nemotron_h.mamba2_chunk_scan(**leaves, **kw), fast_decode.mamba2_chunk_scan(**leaves, **kw))
        packing.disable_packed_sequences()
        fast_decode.disable_fast_decode()
        packing.disable_packed_sequences()  # the outermost first: a patch only comes off while it is on top
        with pytest.raises(ValueError):  # without cascade's packing, transformers' torch scan refuses seq_idx
            nemotron_h.mamba2_chunk_scan(**leaves, **kw, seq_idx=seq_idx)
    finally:
        fast_decode.enable_fast_decode()
        if was_enabled:
            packing.enable_packed_sequences()


def test_enable_is_idempotent_and_leaves_real_kernels_alone(monkeypatch):
    names = tuple(fast_decode._PATCH.kernels)
    packing_was_enabled = packing.packed_sequences_enabled()
    packing.disable_packed_sequences()  # it would wrap our chunk scan, or sit under it
    fast_decode.disable_fast_decode()
    assert [getattr(nemotron_h, n) for n in names] == [ORIGINAL[n] for n in names]
    assert fast_decode.enable_fast_decode() == dict.fromkeys(names, True)
    installed = [getattr(nemotron_h, n) for n in names]
    assert fast_decode.enable_fast_decode() == dict.fromkeys(names, True)
    assert [getattr(nemotron_h, n) for n in names] == installed  # not wrapped twice
    fast_decode.disable_fast_decode()
    assert not fast_decode.fast_decode_enabled()
    monkeypatch.setattr(fallbacks, "is_torch_fallback", lambda fn, package, function: False)  # as with mamba_ssm installed
    assert fast_decode.enable_fast_decode() == dict.fromkeys(names, False)
    assert [getattr(nemotron_h, n) for n in names] == [ORIGINAL[n] for n in names]
    monkeypatch.undo()
    fast_decode.enable_fast_decode()
    if packing_was_enabled:
        packing.enable_packed_sequences()


# ---- the tiny model: generate with and without, and the engine's loop against generate ------------------------


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_nemotron_h_config(vocab_size=300)).eval()


def _prompts(lengths=(7, 12, 4), seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(10, 300, (n,), generator=g).tolist() for n in lengths]


def _hf_generate(model, prompts, n, eos=EOS, **sampling):
    """What the engine did before: every completion its own row, left padded, one generate call."""
    flat = [p for p in prompts for _ in range(n)]
    width = max(len(p) for p in flat)
    input_ids = torch.tensor([[PAD] * (width - len(p)) + p for p in flat])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in flat])
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, eos_token_id=eos, pad_token_id=PAD,
                         return_dict_in_generate=True, output_logits=True, **sampling)
    return out.sequences[:, width:], torch.stack(out.logits, dim=1)


def _cut(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos) + 1] if eos in row else row


def test_greedy_generate_is_the_same_with_fast_decode(model):
    prompts = _prompts()
    fast_decode.disable_fast_decode()
    try:
        slow, slow_logits = _hf_generate(model, prompts, 1, max_new_tokens=20, do_sample=False)
    finally:
        fast_decode.enable_fast_decode()
    fast, fast_logits = _hf_generate(model, prompts, 1, max_new_tokens=20, do_sample=False)
    assert torch.equal(slow, fast)
    torch.testing.assert_close(fast_logits, slow_logits, atol=1e-5, rtol=1e-5)


def _engine(model, eos=EOS, **kwargs):
    return HFRolloutEngine(Policy(model, SimpleNamespace(pad_token_id=PAD, eos_token_id=eos)), **kwargs)


def test_engine_greedy_equals_generate_token_for_token(model):
    prompts = _prompts()
    fast_decode.disable_fast_decode()  # the reference: stock generate, stock Mamba decode
    try:
        expected, logits = _hf_generate(model, prompts, 2, max_new_tokens=24, do_sample=False)
        # an eos that one row emits mid-way (a random model rarely picks token 2): rows must stop independently
        eos = expected[2, 5].item()
        expected_eos, _ = _hf_generate(model, prompts, 2, eos=eos, max_new_tokens=24, do_sample=False)
    finally:
        fast_decode.enable_fast_decode()
    groups = _engine(model).generate(prompts, SamplingParams(max_new_tokens=24, temperature=0.0, n=2))
    flat = [g for group in groups for g in group]
    assert [g.token_ids for g in flat] == [_cut(row, EOS) for row in expected.tolist()]
    expected_logprobs = torch.log_softmax(logits, dim=-1).gather(-1, expected[..., None])[..., 0]
    for g, row in zip(flat, expected_logprobs):
        torch.testing.assert_close(torch.tensor(g.logprobs), row[: len(g.logprobs)], atol=1e-5, rtol=1e-5)

    flat = [g for group in _engine(model, eos=eos).generate(prompts, SamplingParams(24, 0.0, n=2)) for g in group]
    assert [g.token_ids for g in flat] == [_cut(row, eos) for row in expected_eos.tolist()]
    assert flat[2].finish_reason == "stop" and flat[2].token_ids[-1] == eos and len(flat[2].token_ids) <= 6
    assert all(g.finish_reason == ("stop" if eos in g.token_ids else "length") for g in flat)


def test_engine_sampled_logprobs_are_those_of_a_full_forward(model):
    """Each completion, fed whole through the model without a cache, gives the log-probs the engine reported:
    the copied (expanded) prefill cache is each completion's own."""
    prompts = _prompts((9, 5, 9))
    groups = _engine(model).generate(prompts, SamplingParams(16, temperature=0.7, top_p=0.9, n=3, seed=5))
    for prompt, group in zip(prompts, groups):
        for gen in group:
            logits = model(input_ids=torch.tensor([prompt + gen.token_ids]), use_cache=False).logits[0, len(prompt) - 1:-1]
            expected = torch.log_softmax(logits / 0.7, dim=-1).gather(-1, torch.tensor(gen.token_ids)[:, None])[:, 0]
            torch.testing.assert_close(torch.tensor(gen.logprobs), expected, atol=1e-5, rtol=1e-5)


def test_sampling_follows_the_temperature_and_top_p_distribution():
    logits = torch.randn(1, 12, generator=torch.Generator().manual_seed(0)) * 2
    draws = 200_000
    params = SamplingParams(temperature=0.7, top_p=0.8)
    token, logprob = _next_token(logits.expand(draws, -1), params, torch.Generator().manual_seed(1))
    scaled = logits[0] / 0.7
    expected = torch.softmax(_top_p(scaled[None], 0.8)[0], dim=-1)
    frequency = torch.bincount(token, minlength=12) / draws
    assert (frequency[expected == 0] == 0).all() and (expected == 0).any()  # top-p cut something, never sampled
    assert ((frequency - expected).abs() <= 5 * (expected * (1 - expected) / draws).sqrt() + 1e-9).all()
    torch.testing.assert_close(logprob, torch.log_softmax(scaled, dim=-1)[token])  # of the un-cut distribution


def test_seed_makes_sampling_reproducible_without_touching_the_global_rng(model):
    engine, prompts = _engine(model), _prompts((6, 6, 8))
    params = SamplingParams(max_new_tokens=10, temperature=1.0, n=4, seed=11)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = engine.generate(prompts, params)
    assert torch.equal(torch.get_rng_state(), before)
    b = engine.generate(prompts, params)
    c = engine.generate(prompts, SamplingParams(max_new_tokens=10, temperature=1.0, n=4, seed=12))
    ids = lambda groups: [g.token_ids for group in groups for g in group]  # noqa: E731
    assert ids(a) == ids(b) != ids(c)
    assert len(set(map(tuple, ids(a)))) > 1  # the copies of one prompt are sampled independently


def test_routing_is_the_routing_of_the_whole_sequence(model):
    """Prefill once + expanded routing == what a plain forward over prompt + completion routes."""
    prompts = _prompts((5, 9))
    groups = _engine(model, batch_size=3).generate(prompts, SamplingParams(max_new_tokens=8, temperature=1.0, n=2, seed=0))
    layers = len(find_routers(model))
    for prompt, group in zip(prompts, groups):
        for gen in group:
            ids = prompt + gen.token_ids
            assert gen.routed_experts.shape == (len(ids), layers, 2)
            assert (gen.routed_experts[-1] == -1).all()  # the last token is never fed
            with RoutingRecorder(model) as recorder:
                model(input_ids=torch.tensor([ids]), use_cache=False)
            full = recorder.per_sequence(len(ids), torch.ones(1, len(ids)))[0]
            # the same experts, as sets per token and layer (top-k order may differ for near-equal scores)
            assert torch.equal(gen.routed_experts[:-1].sort(-1).values, full[:-1].sort(-1).values)


@pytest.mark.parametrize("temperature", [0.0, 0.3])
def test_finished_rows_leave_the_batch_and_every_row_is_unchanged(model, monkeypatch, temperature):
    """Rows that end early are dropped from the decode batch; each row's tokens, log-probs and routing are what the
    full-width batch gives (greedy), and a full forward's log-probs (sampled: dropping changes the random draws)."""
    prompts = _prompts((7, 12, 4, 9, 5, 11, 6, 8, 10, 3, 13, 7, 6, 9, 12, 5))
    params = SamplingParams(max_new_tokens=24, temperature=temperature, n=1, seed=3)
    # an eos the rows emit at many different steps, so that the batch shrinks several times
    seen = [g.token_ids for group in _engine(model).generate(prompts, params) for g in group]
    eos = max(range(300), key=lambda t: len({row.index(t) for row in seen if t in row[:20]}))
    widths = []
    hook = model.register_forward_pre_hook(lambda m, a, k: widths.append(k["input_ids"].shape[0]), with_kwargs=True)
    try:
        monkeypatch.setattr(rollout, "DROP_FINISHED_AT", 0)  # never drop
        kept = [g for group in _engine(model, eos=eos).generate(prompts, params) for g in group]
        full_widths, widths[:] = list(widths), []
        monkeypatch.setattr(rollout, "DROP_FINISHED_AT", 16)  # drop as soon as one row of 16 has finished
        dropped = [g for group in _engine(model, eos=eos).generate(prompts, params) for g in group]
    finally:
        hook.remove()
    assert sum(g.finish_reason == "stop" for g in dropped) >= 3
    assert set(full_widths[1:]) == {16} and len(set(widths[1:])) >= 3  # the batch shrank, more than once
    if temperature == 0.0:
        assert [g.token_ids for g in dropped] == [g.token_ids for g in kept]
        for a, b in zip(dropped, kept):
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=1e-5)
            # the last token (the eos) is fed only while its row stays in the batch: it routes nothing (-1) once dropped
            assert torch.equal(a.routed_experts[:-1].sort(-1).values, b.routed_experts[:-1].sort(-1).values)
            assert (a.routed_experts[-1] == -1).all()
    for prompt, gen in zip(prompts, dropped):
        ids = prompt + gen.token_ids
        with RoutingRecorder(model) as recorder:
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, len(prompt) - 1:-1]
        scaled = logits / (temperature or 1.0)
        expected = torch.log_softmax(scaled, dim=-1).gather(-1, torch.tensor(gen.token_ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(gen.logprobs), expected, atol=1e-5, rtol=1e-5)
        full = recorder.per_sequence(len(ids), torch.ones(1, len(ids)))[0]
        assert torch.equal(gen.routed_experts[:-1].sort(-1).values, full[:-1].sort(-1).values)


def test_top_p_is_transformers_top_p():
    scores = torch.randn(7, 50) * 3
    scores[0, :] = 0.0  # ties
    for top_p in (0.1, 0.5, 0.9, 0.999):
        assert torch.equal(_top_p(scores, top_p), TopPLogitsWarper(top_p)(None, scores.clone()))


def test_grouped_decode_attention_is_sdpa_with_repeated_kv_heads():
    g = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, length, dim = 5, 4, 2, 11, 8
    query = torch.randn(batch, heads, 1, dim, generator=g)
    key, value = (torch.randn(batch, kv_heads, length, dim, generator=g) for _ in range(2))
    attend = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    attend[1, ..., :4] = attend[3, ..., :1] = False  # left padding
    module = SimpleNamespace(num_key_value_groups=heads // kv_heads, is_causal=True, training=False)
    for mask in (attend, None):
        ours, _ = grouped_decode_attention(module, query, key, value, mask, scaling=0.3)
        theirs, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


def test_decode_kv_layer_grows_like_the_dynamic_layer():
    g = torch.Generator().manual_seed(0)
    steps = [(torch.randn(3, 2, n, 4, generator=g), torch.randn(3, 2, n, 4, generator=g)) for n in (5, 1, 1)]
    dynamic = DynamicLayer()
    dynamic.update(*steps[0])
    ours = _DecodeKVLayer(dynamic.keys, dynamic.values, capacity=7)
    for keys, values in steps[1:]:
        expected, got = dynamic.update(keys, values), ours.update(keys, values)
        assert all(torch.equal(a, b) for a, b in zip(expected, got))
    assert ours.get_seq_length() == dynamic.get_seq_length() == 7


def test_engine_restores_the_attention_implementation(model):
    before = model.config._attn_implementation
    _engine(model).generate(_prompts((6, 3)), SamplingParams(max_new_tokens=4, temperature=1.0, n=2, seed=0))
    assert model.config._attn_implementation == before


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_a_shared_prefix_is_prefilled_once_and_every_row_is_unchanged(model, monkeypatch, temperature):
    """Prompts that start with the same 70 tokens (a system prompt): the prefix runs once, the prompts continue from
    it in groups of equal length (one of a single token, which takes the Mamba decode path), and each completion's
    tokens, log-probs and routing are those of the plain left-padded prefill and of a full forward."""
    prefix = _prompts((70,), seed=4)[0]
    prompts = [prefix + own for own in _prompts((5, 1, 9, 5, 3, 9, 12), seed=5)]
    params = SamplingParams(max_new_tokens=12, temperature=temperature, n=2, seed=3)
    fed = []
    hook = model.register_forward_pre_hook(lambda m, a, k: fed.append(tuple(k["input_ids"].shape)), with_kwargs=True)
    try:
        shared = [g for group in _engine(model).generate(prompts, params) for g in group]
        shared_fed, fed[:] = list(fed), []
        monkeypatch.setattr(prefill_module, "SHARED_PREFIX_MIN", 10_000)
        plain = [g for group in _engine(model).generate(prompts, params) for g in group]
    finally:
        hook.remove()
    assert fed[0] == (7, 82)  # the plain prefill: 7 distinct prompts, left-padded to the longest
    # the prefix once, then one call per continuation length (5, 1, 9, 3, 12), each from the prefix's cache
    assert shared_fed[:6] == [(1, 70), (2, 5), (1, 1), (2, 9), (1, 3), (1, 12)]
    if temperature == 0.0:
        assert [g.token_ids for g in shared] == [g.token_ids for g in plain]
    for a, b in zip(shared, plain):
        if a.token_ids == b.token_ids:
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=1e-5)
            assert torch.equal(a.routed_experts.sort(-1).values, b.routed_experts.sort(-1).values)
    for prompt, gen in zip([p for p in prompts for _ in range(2)], shared):
        ids = prompt + gen.token_ids
        with RoutingRecorder(model) as recorder:
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, len(prompt) - 1:-1]
        expected = torch.log_softmax(logits / (temperature or 1.0), dim=-1).gather(-1, torch.tensor(gen.token_ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(gen.logprobs), expected, atol=1e-5, rtol=1e-5)
        full = recorder.per_sequence(len(ids), torch.ones(1, len(ids)))[0]
        assert gen.routed_experts.shape == full.shape
        assert torch.equal(gen.routed_experts[:-1].sort(-1).values, full[:-1].sort(-1).values)


def test_shared_prefix_length_leaves_each_prompt_a_token_of_its_own():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter prompt keeps its last token
    assert shared_prefix_length([[1, 2, 3]]) == 0
    assert shared_prefix_length([[1, 2], [3, 4]]) == 0
