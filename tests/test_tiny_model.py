"""The tiny NemotronH: the right architecture, trainable, generates batched with the hybrid cache, round-trips."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import NemotronHForCausalLM

from cascade.models.tiny_nemotron_h import build_model, count_parameters, tiny_nemotron_h_config

torch.set_num_threads(1)  # two threads are ~30x slower on the 2-core CI machines

VOCAB = 512


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_nemotron_h_config(VOCAB)).eval()


def left_padded_batch(prompts, pad_id=0):
    """Right-align prompts of different lengths, as generate() wants them."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = prompt
        attention_mask[row, width - len(prompt) :] = 1
    return input_ids, attention_mask


def test_parameter_count_is_a_few_million():
    torch.manual_seed(0)
    n = count_parameters(build_model(tiny_nemotron_h_config(2048)))
    assert 1_000_000 < n < 6_000_000, n


def test_has_mamba_moe_and_attention_blocks(model):
    config = model.config
    assert {"linear_attention", "moe", "full_attention"} <= set(config.layers_block_type)
    mixers = {type(layer.mixer).__name__ for layer in model.model.layers}
    assert mixers == {"NemotronHMamba2Mixer", "NemotronHMoE", "NemotronHAttention"}
    assert (config.n_routed_experts, config.num_experts_per_tok, config.n_shared_experts) == (8, 2, 1)
    assert config.mlp_hidden_act == "relu2" and config.norm_topk_prob and config.routed_scaling_factor == 2.5


def test_router_is_sigmoid_with_bias_for_selection_only(model):
    """SPEC.md: fp32 sigmoid scores; correction bias picks the experts; gates = unbiased scores, sum to 2.5."""
    moe_layer = next(layer for layer in model.model.layers if layer.block_type == "moe")
    router = moe_layer.mixer.gate
    hidden = torch.randn(10, model.config.hidden_size)
    bias = torch.linspace(-0.5, 0.5, model.config.n_routed_experts)  # big enough to change the choice
    original_bias = router.e_score_correction_bias.clone()
    router.e_score_correction_bias.copy_(bias)
    try:
        with torch.no_grad():
            _, weights, chosen = router(hidden)
    finally:
        router.e_score_correction_bias.copy_(original_bias)

    scores = torch.sigmoid(hidden.float() @ router.weight.float().T)
    expected_chosen = (scores + bias).topk(2, dim=-1).indices
    assert torch.equal(chosen.sort(-1).values, expected_chosen.sort(-1).values)
    expected_weights = scores.gather(1, chosen)
    expected_weights = 2.5 * expected_weights / expected_weights.sum(-1, keepdim=True)
    torch.testing.assert_close(weights, expected_weights)
    assert not torch.equal(expected_chosen, scores.topk(2, dim=-1).indices)  # the bias did matter


def test_forward_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = build_model(tiny_nemotron_h_config(VOCAB)).train()
    input_ids = torch.randint(3, VOCAB, (4, 64))
    loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    assert torch.isfinite(loss) and abs(loss.item() - torch.log(torch.tensor(VOCAB)).item()) < 1.0
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_left_padding_does_not_change_logits(model):
    long_prompt, short_prompt = torch.randint(3, VOCAB, (12,)), torch.randint(3, VOCAB, (5,))
    input_ids, attention_mask = left_padded_batch([long_prompt, short_prompt])
    with torch.no_grad():
        batched = model(input_ids, attention_mask=attention_mask).logits
        alone = model(short_prompt[None]).logits
    torch.testing.assert_close(batched[1, -5:], alone[0], atol=1e-5, rtol=1e-5)


def test_batched_sampling_log_probs_match_a_teacher_forced_pass(model):
    """Rollout log-probs (hybrid Mamba/KV cache, left padding) agree with a full forward: what MOPD/GRPO rely on."""
    torch.manual_seed(1)
    prompts = [torch.randint(3, VOCAB, (n,)) for n in (9, 4, 6, 1)]
    input_ids, attention_mask = left_padded_batch(prompts)
    temperature = 0.7
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=12,
            min_new_tokens=12,  # keep every row alive so every position is a real sample
            do_sample=True,
            temperature=temperature,
            top_k=0,  # transformers samples from the top 50 unless told otherwise
            top_p=1.0,
            output_logits=True,
            return_dict_in_generate=True,
        )
    new_tokens = out.sequences[:, input_ids.shape[1] :]
    assert new_tokens.shape == (4, 12)
    logits = torch.stack(out.logits, dim=1)  # (batch, new, vocab), raw: divide by the temperature ourselves
    rollout_log_probs = torch.log_softmax(logits / temperature, -1).gather(-1, new_tokens[..., None])[..., 0]
    assert torch.isfinite(rollout_log_probs).all() and (rollout_log_probs < 0).all()

    full_mask = torch.cat([attention_mask, torch.ones_like(new_tokens)], dim=1)
    with torch.no_grad():
        teacher_forced = model(out.sequences, attention_mask=full_mask).logits[:, input_ids.shape[1] - 1 : -1]
    trainer_log_probs = torch.log_softmax(teacher_forced / temperature, -1).gather(-1, new_tokens[..., None])[..., 0]
    torch.testing.assert_close(rollout_log_probs, trainer_log_probs, atol=1e-4, rtol=1e-4)


def test_save_and_load_give_identical_logits(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded = NemotronHForCausalLM.from_pretrained(tmp_path).eval()
    input_ids = torch.randint(3, VOCAB, (2, 20))
    with torch.no_grad():
        assert torch.equal(model(input_ids).logits, reloaded(input_ids).logits)
    assert reloaded.config.layers_block_type == model.config.layers_block_type
