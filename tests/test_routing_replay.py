"""cascade.kernels in transformers MoE models: the router patch is exact, routing replay forces the recorded
experts (and still trains the router), GRPO replays the rollout's routing, dense models are untouched."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

from cascade import Episode, Sample
from cascade.engine.grpo import Batch, GRPOStage
from cascade.engine.moe import ExpertBalancer, prepare_moe
from cascade.engine.policy import Policy
from cascade.engine.trainer import OptimConfig, Trainer
from cascade.kernels.integration import RoutingRecorder, find_routers, replay_routing, use_cascade_kernels
from cascade.models.tiny_nemotron_h import build_model, tiny_nemotron_h_config

VOCAB = 64


def tiny_nemotron(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(tiny_nemotron_h_config(VOCAB)).eval()
    with torch.no_grad():  # decisive routing (the 0.02 init makes all scores ~0.5) and a non-zero selection bias
        for router in find_routers(model):
            router.weight.normal_(0, 0.3)
            router.e_score_correction_bias.normal_(0, 0.05)
    return model


def tiny_qwen3(norm_topk_prob: bool):
    torch.manual_seed(0)
    config = Qwen3MoeConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, moe_intermediate_size=24,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                            num_experts=8, num_experts_per_tok=2, norm_topk_prob=norm_topk_prob)
    return Qwen3MoeForCausalLM(config).eval()


def tiny_mixtral():
    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=8,
                           num_experts_per_tok=2)
    return MixtralForCausalLM(config).eval()


def record(model, input_ids) -> torch.Tensor:
    """[B, T, layers, k] experts a forward of `input_ids` routes to."""
    with RoutingRecorder(model) as recorder, torch.no_grad():
        model(input_ids=input_ids, use_cache=False)
    return torch.stack(recorder.per_sequence(input_ids.shape[1], torch.ones_like(input_ids)))


def other_experts(ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """For each token, the k lowest experts NOT in its routing (so every choice differs)."""
    k = ids.shape[-1]
    taken = torch.zeros(*ids.shape[:-1], num_experts, dtype=torch.bool).scatter_(-1, ids.long(), True)
    return torch.sort((~taken).float() * -torch.arange(num_experts, 0, -1).float(), dim=-1).indices[..., :k].to(ids.dtype)


INPUT = torch.randint(3, VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))


# ---- the patch is exact -----------------------------------------------------------------------------------


def test_patched_nemotron_h_matches_transformers_logits_and_greedy_generation():
    reference = tiny_nemotron()
    model = copy.deepcopy(reference)
    assert use_cascade_kernels(model) == 2 and model.config._experts_implementation == "cascade"
    assert reference.config._experts_implementation != "cascade"  # per model, not global
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=INPUT).logits, reference(input_ids=INPUT).logits, rtol=0, atol=1e-5)
    greedy = dict(max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(model.generate(INPUT[:1], **greedy), reference.generate(INPUT[:1], **greedy))


@pytest.mark.parametrize("build", [lambda: tiny_qwen3(True), lambda: tiny_qwen3(False), tiny_mixtral],
                         ids=["qwen3-norm", "qwen3-raw", "mixtral"])
def test_patched_softmax_routers_match_transformers_and_replay(build):
    reference = build()
    model = copy.deepcopy(reference)
    assert use_cascade_kernels(model) == 2 and model.config._experts_implementation == "cascade"
    with torch.no_grad():
        expected = reference(input_ids=INPUT).logits
        torch.testing.assert_close(model(input_ids=INPUT).logits, expected, rtol=0, atol=1e-5)
    recorded = record(model, INPUT)  # these routers see flattened [B*T, H] tokens
    assert recorded.shape == (2, 10, 2, 2)
    with replay_routing(model, recorded) as replay, torch.no_grad():
        torch.testing.assert_close(model(input_ids=INPUT).logits, expected, rtol=0, atol=1e-5)
    assert replay.agreement == 1.0


# ---- routing replay ---------------------------------------------------------------------------------------


def test_replaying_the_recorded_routing_changes_nothing_and_trains_the_router():
    model = tiny_nemotron()
    use_cascade_kernels(model)
    with torch.no_grad():
        expected = model(input_ids=INPUT).logits
    recorded = record(model, INPUT)
    model.train()
    with replay_routing(model, recorded) as replay:
        logits = model(input_ids=INPUT, use_cache=False).logits
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)
    assert replay.agreement == 1.0
    (logits * torch.randn_like(logits)).sum().backward()
    assert all(r.weight.grad is not None and r.weight.grad.abs().sum() > 0 for r in find_routers(model))


def test_forced_experts_are_used_and_minus_one_falls_back():
    model = tiny_nemotron()
    use_cascade_kernels(model)
    with torch.no_grad():
        expected = model(input_ids=INPUT).logits
    own = record(model, INPUT)
    forced = other_experts(own, 8)
    forced[:, :4] = -1  # the first 4 positions keep the router's own choice
    with replay_routing(model, forced) as replay, RoutingRecorder(model) as inside, torch.no_grad():
        logits = model(input_ids=INPUT, use_cache=False).logits
    used = torch.stack(inside.per_sequence(10, torch.ones_like(INPUT)))
    assert torch.equal(used[:, 4:], forced[:, 4:])  # the forced ids are what the experts received
    assert torch.equal(used[:, :4], own[:, :4])  # -1: own choice
    torch.testing.assert_close(logits[:, :4], expected[:, :4], rtol=0, atol=1e-6)  # causal: untouched prefix
    assert (logits[:, 4:] - expected[:, 4:]).abs().max() > 1e-3
    # the trainer's own choice at layer 0 never matches (layer 1 sees a changed input, so it is not checked)
    assert 0.0 <= replay.agreement < 0.5


def test_replay_rejects_misaligned_routing():
    model = tiny_nemotron()
    with pytest.raises(ValueError, match="aligned with the forward's input_ids"):
        with replay_routing(model, torch.zeros(2, 9, 2, 2, dtype=torch.long)), torch.no_grad():
            model(input_ids=INPUT)
    with pytest.raises(ValueError, match="layers"):
        with replay_routing(model, torch.zeros(2, 10, 3, 2, dtype=torch.long)):
            pass


# ---- the engine -------------------------------------------------------------------------------------------


def episodes_with_routing(model, lengths=(9, 6)):
    """Episodes as the rollout engine makes them: routing per token, -1 for the never-fed last token."""
    sample = Sample("s", "d", [])
    episodes = []
    for n in lengths:
        ids = INPUT[0, :n].tolist()
        routed = record(model, torch.tensor([ids]))[0].to(torch.int16)
        routed[-1] = -1
        episodes.append(Episode(sample, [], ids, [0, 0] + [1] * (n - 2), [0.0] + [-1.0] * (n - 1), routed))
    return episodes


def test_grpo_update_replays_the_rollout_routing_and_logs_agreement():
    model = tiny_nemotron()
    prepare_moe(model)  # what load_policy does for every engine model
    assert model.config._experts_implementation == "cascade"
    trainer = Trainer(Policy(model, SimpleNamespace(pad_token_id=0, eos_token_id=2)), OptimConfig(lr=1e-3), 2)
    episodes = episodes_with_routing(model)
    batch = Batch.of(episodes, torch.tensor([1.0, -1.0]), pad_id=0)
    assert batch.routed_experts.shape == (2, 9, 2, 2)
    assert (batch.routed_experts[1, 5:] == -1).all() and (batch.routed_experts[0, 8] == -1).all()
    assert batch.rows(1, 2).routed_experts.shape == (1, 9, 2, 2)

    stage = GRPOStage("g", GRPOStage.Config(), ["d"])
    stage.reference = None
    metrics = stage.update(batch, trainer, step=1)
    assert metrics["routing_agreement"] == 1.0  # same weights as the "rollout"
    assert "moe_max_over_mean_load" in metrics and "moe_aux_loss" in metrics and "moe_max_over_mean_load_layer1" in metrics

    batch.routed_experts = other_experts(batch.routed_experts.clamp(min=0), 8).masked_fill(batch.routed_experts < 0, -1)
    metrics = stage.update(batch, trainer, step=2)
    assert 0.0 <= metrics["routing_agreement"] < 1.0

    stage.config.routing_replay = False
    assert "routing_agreement" not in stage.update(batch, trainer, step=3)
    trainer.close()


def test_dense_model_is_unaffected():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    reference = copy.deepcopy(model)
    assert prepare_moe(model) == 0 and find_routers(model) == []
    balancer = ExpertBalancer(model)
    with replay_routing(model, torch.zeros(2, 10, 1, 2, dtype=torch.long)) as replay, torch.no_grad():
        torch.testing.assert_close(model(input_ids=INPUT).logits, reference(input_ids=INPUT).logits, rtol=0, atol=0)
    assert replay.agreement is None and balancer.update() == {}
    sample = Sample("s", "d", [])
    assert Batch.of([Episode(sample, [], [1, 2, 3], [0, 1, 1], [0.0] * 3)], torch.zeros(1), 0).routed_experts is None
