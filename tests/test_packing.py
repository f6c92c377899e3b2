"""Packed SFT rows on the tiny NemotronH: no information flows between the samples of a row (cascade.models.packing)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import sys
import types

import pytest
import torch
import torch.nn.functional as F
import transformers.models.nemotron_h.modeling_nemotron_h as nemotron_h
from transformers.integrations.hub_kernels import use_kernel_func_from_hub_with_fallback
from transformers.masking_utils import create_causal_mask, find_packed_sequence_indices

from cascade.models import fast_decode, packing
from cascade.models.packing import (
    disable_packed_sequences,
    enable_packed_sequences,
    packed_inputs,
    seq_idx_from_position_ids,
)
from cascade.models.tiny_nemotron_h import build_model, tiny_nemotron_h_config

torch.set_num_threads(1)

VOCAB = 512
CHUNK = 16  # small chunks: samples span several chunks, boundaries fall inside chunks and on a chunk start
LENGTHS = [[5, 37, 20], [16, 40]]  # row 0: boundaries at 5, 42 (mid-chunk); row 1: at 16 (chunk start)
SEQ_LEN = 72  # row 0 has 10 padding positions, row 1 has 16


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = build_model(tiny_nemotron_h_config(VOCAB, chunk_size=CHUNK))
    # The default init forgets within a few tokens (A = -1..-8, dt ~ 1.3), so a leaking scan would hardly move the
    # logits. Give the Mamba layers a long memory (decay ~0.99 per token), as trained models have.
    with torch.no_grad():
        for layer in model.model.layers:
            if layer.block_type == "linear_attention":
                heads = layer.mixer.num_heads
                layer.mixer.A_log.copy_(torch.log(torch.linspace(0.02, 0.2, heads)))
                layer.mixer.dt_bias.fill_(-2.0)
    return model


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(1)
    input_ids = torch.randint(3, VOCAB, (len(LENGTHS), SEQ_LEN))
    input_ids[0, 62:] = 0  # padding
    input_ids[1, 56:] = 0
    return input_ids, packed_inputs(LENGTHS, seq_len=SEQ_LEN)


def samples():
    """(row, start, length) of every real sample."""
    for row, lengths in enumerate(LENGTHS):
        start = 0
        for n in lengths:
            yield row, start, n
            start += n


def test_packed_inputs_match_transformers_packing_rule(batch):
    _, packed = batch
    assert packed.position_ids[0].tolist() == [*range(5), *range(37), *range(20), *range(10)]
    assert packed.seq_idx[0].tolist() == [0] * 5 + [1] * 37 + [2] * 20 + [3] * 10
    assert packed.seq_idx[1].tolist() == [0] * 16 + [1] * 40 + [2] * 16
    assert packed.seq_idx.dtype == torch.int32 and packed.position_ids.dtype == torch.long
    assert torch.equal(seq_idx_from_position_ids(packed.position_ids), packed.seq_idx)
    assert torch.equal(find_packed_sequence_indices(packed.position_ids).int(), packed.seq_idx)
    assert packed.model_kwargs()["use_cache"] is False
    with pytest.raises(ValueError):
        packed_inputs([[5, 0]])


def test_full_attention_mask_is_block_diagonal_causal(model, batch):
    """transformers builds the packed mask itself from position_ids (no attention_mask, no cache)."""
    _, packed = batch
    mask = create_causal_mask(
        config=model.config,
        inputs_embeds=torch.zeros(len(LENGTHS), SEQ_LEN, model.config.hidden_size),
        attention_mask=None,
        past_key_values=None,
        position_ids=packed.position_ids,
    )
    seq = packed.seq_idx
    expected = (seq[:, :, None] == seq[:, None, :]) & torch.ones(SEQ_LEN, SEQ_LEN, dtype=torch.bool).tril()
    assert mask.dtype == torch.bool and torch.equal(mask[:, 0], expected)


def test_torch_fallback_refuses_seq_idx_without_this_module(model, batch):
    input_ids, packed = batch
    was_enabled = packing.packed_sequences_enabled()
    disable_packed_sequences()
    try:
        with torch.no_grad(), pytest.raises(ValueError, match="packed sequences"):
            model.eval()(input_ids, **packed.model_kwargs())
    finally:
        if was_enabled:
            enable_packed_sequences()


def test_packing_leaves_and_rejoins_from_under_fast_decode(model, batch):
    """Fast decode installed over packing (an SFT stage, then a rollout engine): disabling packing takes it out from
    under fast decode, whose packed calls then reach transformers' fallback again, which refuses them."""
    input_ids, packed = batch
    fast_decode_was_enabled, packing_was_enabled = fast_decode.fast_decode_enabled(), packing.packed_sequences_enabled()
    fast_decode.disable_fast_decode()
    disable_packed_sequences()
    try:
        enable_packed_sequences()
        fast_decode.enable_fast_decode()
        assert packing.packed_sequences_enabled() and fast_decode.fast_decode_enabled()
        model.eval()
        with torch.no_grad():
            packed_logits = model(input_ids, **packed.model_kwargs()).logits
            disable_packed_sequences()
            assert not packing.packed_sequences_enabled() and fast_decode.fast_decode_enabled()
            with pytest.raises(ValueError, match="packed sequences"):
                model(input_ids, **packed.model_kwargs())
            enable_packed_sequences()  # now over fast decode
            torch.testing.assert_close(model(input_ids, **packed.model_kwargs()).logits, packed_logits)
    finally:
        fast_decode.disable_fast_decode()
        disable_packed_sequences()
        if packing_was_enabled:
            enable_packed_sequences()
        if fast_decode_was_enabled:
            fast_decode.enable_fast_decode()


def test_packed_logits_equal_each_sample_alone(model, batch):
    enable_packed_sequences()
    input_ids, packed = batch
    model.eval()
    with torch.no_grad():
        logits = model(input_ids, **packed.model_kwargs()).logits
        for row, start, n in samples():
            alone = model(input_ids[row : row + 1, start : start + n], use_cache=False).logits[0]
            torch.testing.assert_close(logits[row, start : start + n], alone, atol=1e-5, rtol=1e-5)
        # forgetting use_cache=False would silently leak through attention (no packed mask with a cache): refused
        with pytest.raises(ValueError, match="use_cache=False"):
            model(input_ids, position_ids=packed.position_ids, seq_idx=packed.seq_idx)
        # and it matters: without seq_idx the later samples see the earlier ones
        leaky = model(input_ids, position_ids=packed.position_ids, use_cache=False).logits
        assert (leaky[0, 5:42] - logits[0, 5:42]).abs().max() > 1e-2


def sample_loss(logits, input_ids):
    """Summed next-token cross-entropy inside one sample."""
    return F.cross_entropy(logits[:-1], input_ids[1:], reduction="sum")


def test_packed_gradients_equal_sum_of_per_sample_gradients(model, batch):
    """Training mode: the fused-path fallback must step aside for seq_idx, and the backward must not cross either."""
    enable_packed_sequences()
    input_ids, packed = batch
    model.train()

    model.zero_grad()
    logits = model(input_ids, **packed.model_kwargs()).logits
    loss = sum(sample_loss(logits[r, s : s + n], input_ids[r, s : s + n]) for r, s, n in samples())
    loss.backward()
    packed_grads = {name: grad_of(p) for name, p in model.named_parameters()}

    model.zero_grad()
    total = 0.0
    for r, s, n in samples():
        ids = input_ids[r : r + 1, s : s + n]
        one = sample_loss(model(ids, use_cache=False).logits[0], ids[0])
        one.backward()  # accumulates over the samples
        total += one.item()
    assert abs(loss.item() - total) < 1e-4 * abs(total)
    for name, p in model.named_parameters():
        torch.testing.assert_close(
            packed_grads[name], grad_of(p), atol=1e-4, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}"
        )
    model.zero_grad()


def grad_of(p):
    return p.grad.clone() if p.grad is not None else torch.zeros_like(p)


def test_unpacked_path_is_bit_identical(model):
    torch.manual_seed(2)
    input_ids = torch.randint(3, VOCAB, (2, 40))

    def run():
        model.eval()
        with torch.no_grad():
            cached = model(input_ids).logits  # default use_cache=True: the cache / final-state path
            plain = model(input_ids, use_cache=False).logits
        model.train()
        model.zero_grad()
        loss = model(input_ids, labels=input_ids, use_cache=False).loss
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        return [cached, plain, loss.detach(), *grads]

    was_enabled = packing.packed_sequences_enabled()
    disable_packed_sequences()
    try:
        reference = run()
        enable_packed_sequences()
        patched = run()
    finally:
        if not was_enabled:
            disable_packed_sequences()
    assert all(torch.equal(a, b) for a, b in zip(reference, patched))

    # the public functions, called directly without seq_idx, are transformers' functions
    x, w, b = torch.randn(2, 24, 30), torch.randn(24, 4), torch.randn(24)
    orig_conv = packing._ORIGINAL["causal_conv1d_fn"]
    assert torch.equal(packing.causal_conv1d_fn(x, w, b, activation="silu"), orig_conv(x, w, b, activation="silu"))
    args = scan_inputs(torch.Generator().manual_seed(0), 2, 30, heads=4, groups=2)
    orig_scan = packing._ORIGINAL["mamba2_chunk_scan"]
    kw = dict(D=args["D"], dt_bias=args["dt_bias"], dt_softplus=True, return_final_states=True)
    ours = packing.mamba2_chunk_scan(*args["pos"], 8, **kw)
    theirs = orig_scan(*args["pos"], 8, **kw)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_enable_is_idempotent_and_leaves_real_kernels_alone(monkeypatch):
    enable_packed_sequences()
    first = {name: getattr(nemotron_h, name) for name in packing._PATCH.kernels}
    assert enable_packed_sequences() == dict.fromkeys(packing._PATCH.kernels, True)
    assert all(getattr(nemotron_h, name) is fn for name, fn in first.items())

    # a scan wrapper whose real kernel was found (as when mamba_ssm is installed) stays in place
    disable_packed_sequences()
    kernel_pkg = types.ModuleType("cascade_fake_ssm")
    kernel_pkg.fake_chunk_scan = lambda hidden_states, dt, A, B, C, chunk_size, seq_idx=None, **kw: "kernel"
    monkeypatch.setitem(sys.modules, "cascade_fake_ssm", kernel_pkg)
    real = use_kernel_func_from_hub_with_fallback("fake_chunk_scan", "cascade_fake_ssm")(
        packing._ORIGINAL["mamba2_chunk_scan"]
    )
    monkeypatch.setattr(nemotron_h, "mamba2_chunk_scan", real)
    installed = enable_packed_sequences()
    assert installed["mamba2_chunk_scan"] is False and installed["causal_conv1d_fn"] is True
    assert nemotron_h.mamba2_chunk_scan is real
    assert real(None, None, None, None, None, 16, seq_idx=torch.zeros(1, 3)) == "kernel"
    disable_packed_sequences()  # monkeypatch puts the torch fallback back; later tests re-enable


# ----------------------------------------------------------------------------------------------------------------
# The two kernels alone against naive sequential references
# ----------------------------------------------------------------------------------------------------------------

SEQ_IDX = torch.tensor(
    [
        [0] * 3 + [1] * 14 + [2] * 1 + [3] * 12 + [4] * 15,  # boundaries mid-chunk, a 1-token sample
        [7] * 8 + [2] * 16 + [9] * 21,  # boundaries on chunk starts (chunk 8), unsorted ids
    ],
    dtype=torch.int32,
)


def naive_conv(x, weight, bias, seq_idx):
    batch, dim, seq_len = x.shape
    kernel = weight.shape[-1]
    out = torch.zeros_like(x)
    for b in range(batch):
        for t in range(seq_len):
            acc = bias.clone()
            for k in range(kernel):  # input t - k, weight tap kernel - 1 - k
                if t - k >= 0 and all(seq_idx[b, j] == seq_idx[b, t] for j in range(t - k, t + 1)):
                    acc = acc + weight[:, kernel - 1 - k] * x[b, :, t - k]
            out[b, :, t] = acc
    return F.silu(out)


def test_causal_conv1d_respects_sample_boundaries():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, SEQ_IDX.shape[1], generator=g)
    w, bias = torch.randn(6, 4, generator=g), torch.randn(6, generator=g)
    ours = packing.causal_conv1d_fn(x, w, bias, activation="silu", seq_idx=SEQ_IDX)
    torch.testing.assert_close(ours, naive_conv(x, w, bias, SEQ_IDX), atol=1e-5, rtol=1e-5)
    # cu_seqlens (one packed row) means the same as seq_idx
    cu = torch.tensor([0, 3, 17, 18, 30, 45])
    torch.testing.assert_close(packing.causal_conv1d_fn(x[:1], w, bias, activation="silu", cu_seqlens=cu), ours[:1])
    # no boundaries at all: the same as the plain conv
    one = torch.zeros_like(SEQ_IDX)
    plain = packing.causal_conv1d_fn(x, w, bias, activation="silu")
    torch.testing.assert_close(packing.causal_conv1d_fn(x, w, bias, activation="silu", seq_idx=one), plain)


def scan_inputs(g, batch, seq_len, heads, groups, head_dim=3, state=5):
    x = torch.randn(batch, seq_len, heads, head_dim, generator=g)
    dt = torch.randn(batch, seq_len, heads, generator=g)
    A = -torch.rand(heads, generator=g) * 2 - 0.1
    B = torch.randn(batch, seq_len, groups, state, generator=g)
    C = torch.randn(batch, seq_len, groups, state, generator=g)
    D, dt_bias = torch.randn(heads, generator=g), torch.randn(heads, generator=g) * 0.5
    return {"pos": (x, dt, A, B, C), "D": D, "dt_bias": dt_bias}


def naive_scan(x, dt, A, B, C, D, dt_bias, seq_idx, initial_states=None):
    """h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t, y_t = C_t h_t + D x_t; h reset to 0 where a sample starts."""
    batch, seq_len, heads, head_dim = x.shape
    rep = heads // B.shape[2]
    B, C = B.repeat_interleave(rep, dim=2), C.repeat_interleave(rep, dim=2)
    dt = F.softplus(dt + dt_bias)
    h = initial_states.clone() if initial_states is not None else torch.zeros(batch, heads, head_dim, B.shape[-1])
    ys = []
    for t in range(seq_len):
        if t > 0:
            h = h * (seq_idx[:, t] == seq_idx[:, t - 1]).float()[:, None, None, None]
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        h = decay * h + (dt[:, t, :, None, None] * x[:, t, :, :, None]) * B[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C[:, t]) + D[:, None] * x[:, t])
    return torch.stack(ys, dim=1), h


@pytest.mark.parametrize("chunk_size", [8, 64])  # 64, the default model's, is computed in blocks of SCAN_BLOCK
@pytest.mark.parametrize("with_initial_state", [False, True])
def test_chunk_scan_matches_sequential_recurrence_with_resets(with_initial_state, chunk_size):
    g = torch.Generator().manual_seed(0)
    batch, seq_len = SEQ_IDX.shape
    args = scan_inputs(g, batch, seq_len, heads=4, groups=2)
    x, dt, A, B, C = args["pos"]
    init = torch.randn(batch, 4, 3, 5, generator=g) if with_initial_state else None
    kw = dict(D=args["D"], dt_bias=args["dt_bias"], initial_states=init, dt_softplus=True)
    y, final = packing.mamba2_chunk_scan(x, dt, A, B, C, chunk_size, **kw, return_final_states=True, seq_idx=SEQ_IDX)
    y_ref, final_ref = naive_scan(x, dt, A, B, C, args["D"], args["dt_bias"], SEQ_IDX, init)
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(final, final_ref, atol=1e-4, rtol=1e-4)

    # the reference itself agrees with transformers' scan when nothing is packed
    one = torch.zeros_like(SEQ_IDX)
    y_plain = packing.mamba2_chunk_scan(x, dt, A, B, C, 8, **kw)
    y_plain_ref, _ = naive_scan(x, dt, A, B, C, args["D"], args["dt_bias"], one, init)
    torch.testing.assert_close(y_plain, y_plain_ref, atol=1e-4, rtol=1e-4)


def test_chunk_scan_gradients_match_the_recurrence():
    g = torch.Generator().manual_seed(3)
    batch, seq_len = SEQ_IDX.shape
    args = scan_inputs(g, batch, seq_len, heads=2, groups=1)
    leaves = [t.clone().requires_grad_() for t in (*args["pos"], args["D"], args["dt_bias"])]
    weights = torch.randn(batch, seq_len, 2, 3, generator=g)

    def grads(fn):
        for t in leaves:
            t.grad = None
        (fn(*leaves) * weights).sum().backward()
        return [t.grad.clone() for t in leaves]

    def chunked(x, dt, A, B, C, D, dt_bias):
        return packing.mamba2_chunk_scan(x, dt, A, B, C, 8, D=D, dt_bias=dt_bias, dt_softplus=True, seq_idx=SEQ_IDX)

    def sequential(x, dt, A, B, C, D, dt_bias):
        return naive_scan(x, dt, A, B, C, D, dt_bias, SEQ_IDX)[0]

    ours, ref = grads(chunked), grads(sequential)
    for a, b in zip(ours, ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
