"""The training engine: rollouts, episodes, SFT packing and loss, GRPO maths, trainer guards, bad input."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from cascade import Environment, Episode, Reward, RewardResult, Sample, StepResult
from cascade.config import ConfigError, EvalConfig
from cascade.engine.grpo import Batch, GRPOStage, group_advantages, score_group, score_groups
from cascade.engine.moe import ExpertBalancer, find_routers, freeze_routers
from cascade.engine.policy import init_checkpoint, load_policy, save_policy
from cascade.engine.rollout import HFRolloutEngine, collect_episodes, generation_prefix
from cascade.engine.sft import Packed, SFTStage, pack, tokenize_conversation
from cascade.engine.trainer import NonFiniteLossError, OptimConfig, Trainer, token_logprobs
from cascade.models.packing import packed_inputs
from cascade.types import Checkpoint, Generation, RolloutEngine, SamplingParams


class Arithmetic(Environment):
    """Sums of two digits; the demonstrations answer them."""

    domain = "sums"

    def samples(self, split, n, seed):
        import random

        rng = random.Random(f"{split}{seed}")
        pairs = [(rng.randint(0, 9), rng.randint(0, 9)) for _ in range(n)]
        return [Sample(f"{a}+{b}", "sums", [{"role": "user", "content": f"{a}+{b}="}], a + b) for a, b in pairs]

    def demonstrations(self, n, seed):
        return [[*s.messages, {"role": "assistant", "content": f"<think></think>{s.answer}"}] for s in self.samples("train", n, seed)]


class TwoTurns(Arithmetic):
    """After the first answer the user asks to double it: a multi-turn episode."""

    max_turns = 2

    def step(self, sample, messages):
        if len(messages) == 2:
            return StepResult([{"role": "user", "content": "Double it."}], done=False, metrics={"asked": 1.0})
        return StepResult(done=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("init") / "model"
    model_config = OmegaConf.create({"path": None, "arch": "tiny_nemotron_h", "options": {"vocab_size": 300}, "dtype": "float32"})
    return init_checkpoint(model_config, str(path), seed=0, environments={"sums": Arithmetic()})


@pytest.fixture
def policy(checkpoint):
    return load_policy(checkpoint.path)


# ---- checkpoints and bad input --------------------------------------------------------------------


def test_init_checkpoint_is_a_standard_hf_directory(checkpoint):
    from pathlib import Path

    files = {p.name for p in Path(checkpoint.path).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= files
    assert len(checkpoint.lineage) == 16


def test_unknown_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="is not a Hugging Face model directory"):
        load_policy(tmp_path / "nope")


def test_tokenizer_without_chat_template_is_a_clear_error(policy, tmp_path):
    policy.tokenizer.chat_template = None
    save_policy(policy, tmp_path / "bare")
    with pytest.raises(ConfigError, match="has no chat template"):
        load_policy(tmp_path / "bare")


def test_no_demonstrations_is_a_clear_error(policy):
    class Empty(Arithmetic):
        def demonstrations(self, n, seed):
            return []

    stage = SFTStage("sft", SFTStage.Config(), ["sums"])
    context = SimpleNamespace(environment=lambda d: Empty(), seed=0)
    with pytest.raises(ConfigError, match="no demonstrations in domains"):
        stage.rows(policy.tokenizer, context)


def test_domain_weights_set_the_sft_mix(policy):
    class Few(Arithmetic):
        domain = "few"

        def demonstrations(self, n, seed):
            return super().demonstrations(min(n, 3), seed)  # a small domain: 3 distinct demonstrations

    envs = {"sums": Arithmetic(), "few": Few()}
    context = SimpleNamespace(environment=lambda d: envs[d], seed=0)
    def count(weights):
        config = SFTStage.Config(demonstrations_per_domain=10, seq_len=4096, domain_weights=weights)
        return sum(len(r.lengths) for r in SFTStage("sft", config, ["sums", "few"]).rows(policy.tokenizer, context))

    assert count({}) == 10 + 3  # weight 1: each domain's distinct demonstrations once, a small domain not inflated
    assert count({"few": 2.0, "sums": 0.5}) == 5 + 6
    asked = []
    envs["sums"].demonstrations = lambda n, seed: asked.append(n) or Arithmetic().demonstrations(n, seed)
    assert count({"sums": 0.3, "few": 0}) == 3 and asked == [3]  # a share below 1 is asked for, 0 not at all
    with pytest.raises(ConfigError, match="unknown domain"):
        SFTStage("sft", SFTStage.Config(domain_weights={"sumz": 2.0}), ["sums"]).rows(policy.tokenizer, context)


def load_tool(name: str):
    """A script of tools/ as a module."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "tools" / f"{name}.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_answer_loss_tool_scores_each_answer_token(policy):
    """tools/answer_loss.py (README: what retrieval 0.5 was): per-token losses whose mean is the model's own loss."""
    from cascade.engine.sft import tokenize_conversation

    tool = load_tool("answer_loss")
    conversations = Arithmetic().demonstrations(3, 0)
    for conversation, row in zip(conversations, tool.answer_token_losses(policy, conversations)):
        assert "".join(token for token, _ in row).startswith(conversation[-1]["content"])
        token_ids, mask = tokenize_conversation(policy.tokenizer, conversation)
        labels = torch.tensor([[t if m else -100 for t, m in zip(token_ids, mask)]])
        with torch.no_grad():
            expected = policy.model(input_ids=torch.tensor([token_ids]), labels=labels).loss.item()
        assert sum(nats for _, nats in row) / len(row) == pytest.approx(expected, rel=1e-5)
    table = tool.by_position([[("a", 1.0), ("b", 0.0)], [("c", 3.0)]])
    assert table == [{"position": 0, "token": "a", "mean_nats": 2.0, "answers": 2},
                     {"position": 1, "token": "b", "mean_nats": 0.0, "answers": 1}]


# ---- rollouts --------------------------------------------------------------------------------------


def test_rollout_logprobs_match_the_trainer_and_routing_is_recorded(policy):
    engine = HFRolloutEngine(policy, batch_size=4)
    prompts = [policy.tokenizer("<|im_start|>user\n1+2=<|im_end|>\n<|im_start|>assistant\n")["input_ids"],
               policy.tokenizer("<|im_start|>user\n7+8=<|im_end|>\n<|im_start|>assistant\n<think></think>")["input_ids"]]
    torch.manual_seed(0)
    groups = engine.generate(prompts, SamplingParams(max_new_tokens=12, temperature=0.8, n=3))
    assert [len(g) for g in groups] == [3, 3]
    routers = find_routers(policy.model)
    for prompt, group in zip(prompts, groups):
        for gen in group:
            assert gen.finish_reason in ("stop", "length") and len(gen.token_ids) == len(gen.logprobs) <= 12
            assert gen.routed_experts.shape == (len(prompt) + len(gen.token_ids), len(routers), 2)
            ids = torch.tensor([prompt + gen.token_ids])
            trainer_logprobs, _ = token_logprobs(policy.model.eval(), ids, temperature=0.8)
            expected = trainer_logprobs[0, len(prompt) - 1:]
            assert torch.allclose(expected, torch.tensor(gen.logprobs), atol=1e-3)


def test_parallel_environment_steps_overlap_and_change_nothing(policy):
    """``parallel_steps``: the environment's answers run side by side, and the episodes are those of one by one."""
    import threading
    import time

    class SlowTwoTurns(TwoTurns):
        def __init__(self, parallel_steps):
            self.parallel_steps, self.running, self.most = parallel_steps, 0, 0
            self.lock = threading.Lock()

        def step(self, sample, messages):
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
            time.sleep(0.05)  # a sandboxed tool run
            with self.lock:
                self.running -= 1
            return super().step(sample, messages)

    class Answering(RolloutEngine):
        """Answers every turn with one token and the eos (the random model would rarely stop)."""

        def generate(self, prompts_B, params):
            return [[Generation([len(p) % 50 + 10, policy.eos_id], [-1.0, -0.5], "stop")] * params.n for p in prompts_B]

    runs = {}
    for workers in (1, 4):
        env = SlowTwoTurns(workers)
        params = SamplingParams(max_new_tokens=6, temperature=1.0, n=2)
        episodes = collect_episodes(Answering(), policy, env, env.samples("train", 3, 0), params)
        runs[workers] = ([(e.token_ids, e.loss_mask, e.messages, e.metrics) for e in episodes], env.most)
    assert runs[4][0] == runs[1][0]
    assert runs[1][1] == 1 and runs[4][1] > 1


def test_greedy_generation_is_deterministic(policy):
    engine = HFRolloutEngine(policy)
    prompt = [policy.tokenizer("<|im_start|>user\n3+4=<|im_end|>\n<|im_start|>assistant\n")["input_ids"]]
    a = engine.generate(prompt, SamplingParams(max_new_tokens=8, temperature=0.0))
    b = engine.generate(prompt, SamplingParams(max_new_tokens=8, temperature=0.0))
    assert a[0][0].token_ids == b[0][0].token_ids


def test_multi_turn_episodes_mask_only_model_tokens(policy):
    env = TwoTurns()
    samples = env.samples("train", 2, 0)
    episodes = collect_episodes(HFRolloutEngine(policy), policy, env, samples, SamplingParams(max_new_tokens=6, temperature=1.0, n=2))
    assert len(episodes) == 4 and [e.sample.id for e in episodes][:2] == [samples[0].id] * 2
    tok = policy.tokenizer
    for e in episodes:
        assert len(e.token_ids) == len(e.loss_mask) == len(e.logprobs)
        # every token with mask 0 after the prompt came from the environment, rendered by the template
        text = tok.decode(e.token_ids, skip_special_tokens=False)
        assert text.startswith(tok.apply_chat_template(e.sample.messages, tokenize=False, add_generation_prompt=True, enable_thinking=False))
        assert all(lp == 0.0 for lp, m in zip(e.logprobs, e.loss_mask) if m == 0)
        assert e.routed_experts.shape[0] == len(e.token_ids)  # routing recorded over every turn, for replay
        if not e.truncated:
            assert "Double it." in text and e.metrics == {"asked": 1.0}
            assert [m["role"] for m in e.messages] == ["user", "assistant", "user", "assistant"]
            env_tokens = tok("<|im_start|>user\nDouble it.<|im_end|>", add_special_tokens=False)["input_ids"]
            masked_runs = "".join(str(m) for m in e.loss_mask)
            assert "10" in masked_runs and "01" in masked_runs  # model, then environment, then model again
            start = next(i for i in range(len(e.token_ids)) if e.token_ids[i:i + len(env_tokens)] == env_tokens)
            assert all(m == 0 for m in e.loss_mask[start:start + len(env_tokens)])


def test_generation_prefix_is_the_empty_think_block(policy):
    assert generation_prefix(policy.tokenizer, thinking=False) == "<think></think>"
    assert generation_prefix(policy.tokenizer, thinking=True) == "<think>\n"


# ---- SFT ---------------------------------------------------------------------------------------------


def test_packing_fills_rows_without_splitting_samples():
    examples = [([1] * n, [0] * (n - 2) + [1, 1]) for n in (300, 200, 200, 100, 50, 40)]
    rows = pack(examples, seq_len=512)
    assert sorted(n for r in rows for n in r.lengths) == [40, 50, 100, 200, 200, 300]
    assert all(len(r.token_ids) == sum(r.lengths) <= 512 and len(r.loss_mask) == len(r.token_ids) for r in rows)
    assert len(rows) == 2


def test_sft_loss_is_assistant_cross_entropy_of_each_sample_alone(policy):
    """Packed loss == the loss of each conversation run on its own, counting assistant targets only."""
    first, second = Arithmetic().demonstrations(2, 0)
    (ids1, mask1), (ids2, mask2) = tokenize_conversation(policy.tokenizer, first), tokenize_conversation(policy.tokenizer, second)
    answer = policy.tokenizer(first[1]["content"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert [t for t, m in zip(ids1, mask1) if m] == answer
    trainer = Trainer(policy, OptimConfig(), 1)
    total = sum(mask1[1:]) + sum(mask2)
    packed = SFTStage.loss(policy.model, [Packed(ids1 + ids2, mask1 + mask2, [len(ids1), len(ids2)])], trainer, total)
    expected = 0.0
    for ids, mask in ((ids1, mask1), (ids2, mask2)):
        logits = policy.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, :-1]
        nll = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
        expected += (nll * torch.tensor(mask[1:], dtype=torch.float32)).sum().item()
    # the first token of the second sample is a prompt token: its target from sample one is masked
    assert mask2[0] == 0
    assert packed.item() == pytest.approx(expected / total, rel=1e-4)


def test_sft_loss_projects_only_the_supervised_positions_with_the_same_loss_and_gradient(policy):
    """Two rows of different lengths (right padding): the vocabulary head sees the supervised positions only,
    and the loss and every gradient equal the full-logits cross-entropy's."""
    demos = Arithmetic().demonstrations(3, 1)
    (a, ma), (b, mb), (c, mc) = [tokenize_conversation(policy.tokenizer, d) for d in demos]
    rows = [Packed(a + b, ma + mb, [len(a), len(b)]), Packed(c, mc, [len(c)])]
    total = sum(sum(r.loss_mask[1:]) for r in rows)
    trainer = Trainer(policy, OptimConfig(), 1)
    seen = []
    handle = policy.model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        loss = SFTStage.loss(policy.model, rows, trainer, total)
    finally:
        handle.remove()
    assert seen == [total]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.grad is not None}
    policy.model.zero_grad()

    width = max(len(r.token_ids) for r in rows)
    ids = torch.tensor([r.token_ids + [policy.pad_id] * (width - len(r.token_ids)) for r in rows])
    mask = torch.tensor([r.loss_mask + [0] * (width - len(r.loss_mask)) for r in rows], dtype=torch.float32)
    position_ids, seq_idx = packed_inputs([r.lengths for r in rows], width)
    logits = policy.model(input_ids=ids, position_ids=position_ids, seq_idx=seq_idx, use_cache=False).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    expected = (nll * mask[:, 1:].reshape(-1)).sum() / total
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert grads.keys() == {n for n, p in policy.model.named_parameters() if p.grad is not None}
    for name, p in policy.model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    policy.model.zero_grad()


def test_sft_autocast_runs_the_products_in_bf16_and_keeps_fp32_weights_and_gradients(policy):
    """``autocast: bfloat16``: the linear layers compute in bf16 (their outputs say so), the loss and every gradient
    stay fp32 and within bf16 rounding of the fp32 ones; an unknown precision is refused by name."""
    demos = Arithmetic().demonstrations(2, 2)
    (a, ma), (b, mb) = [tokenize_conversation(policy.tokenizer, d) for d in demos]
    rows = [Packed(a + b, ma + mb, [len(a), len(b)])]
    total = sum(ma[1:]) + sum(mb)
    trainer = Trainer(policy, OptimConfig(), 1)
    results = {}
    for autocast in (None, "bfloat16"):
        dtypes = []
        handle = policy.model.get_output_embeddings().register_forward_hook(lambda m, args, out: dtypes.append(out.dtype))
        try:
            loss = SFTStage.loss(policy.model, rows, trainer, total, autocast)
        finally:
            handle.remove()
        loss.backward()
        results[autocast] = (loss.detach(), dtypes, {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.grad is not None})
        policy.model.zero_grad()
    (fp32_loss, fp32_dtypes, fp32_grads), (bf16_loss, bf16_dtypes, bf16_grads) = results[None], results["bfloat16"]
    assert fp32_dtypes == [torch.float32] and bf16_dtypes == [torch.bfloat16]
    assert bf16_loss.dtype == torch.float32 and bf16_loss.item() != fp32_loss.item()
    assert bf16_loss.item() == pytest.approx(fp32_loss.item(), rel=2e-2)
    assert bf16_grads.keys() == fp32_grads.keys()
    for name, grad in bf16_grads.items():
        assert grad.dtype == torch.float32
        assert torch.nn.functional.cosine_similarity(grad.flatten(), fp32_grads[name].flatten(), dim=0) > 0.95, name
    stage = SFTStage("sft", SFTStage.Config(autocast="float16"), ["sums"])
    with pytest.raises(ConfigError, match="sft.autocast: 'float16' is not one of None, bfloat16"):
        stage.run(Checkpoint("init", "unused"), SimpleNamespace())


def test_rows_for_step_depend_only_on_seed_and_step():
    stage = SFTStage("sft", SFTStage.Config(rows_per_step=3), ["sums"])
    rows = [Packed([i], [1], [1]) for i in range(7)]
    assert stage.rows_for_step(rows, 5, 0) == stage.rows_for_step(rows, 5, 0)
    epoch = [r.token_ids[0] for s in (1, 2) for r in stage.rows_for_step(rows, s, 0)][:6]
    assert len(set(epoch)) == 6  # within an epoch no row repeats


# ---- GRPO ----------------------------------------------------------------------------------------------


def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    adv = group_advantages(rewards)
    assert torch.allclose(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-5)
    assert torch.all(adv[1] == 0)  # a uniform group carries no signal


def test_batch_aligns_masks_and_logprobs_with_targets():
    sample = Sample("s", "d", [])
    e1 = Episode(sample, [], [5, 6, 7, 8], [0, 0, 1, 1], [0.0, 0.0, -0.5, -0.25])
    e2 = Episode(sample, [], [5, 9], [0, 1], [0.0, -1.0])
    batch = Batch.of([e1, e2], torch.tensor([1.0, -1.0]), pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8], [5, 9, 0, 0]]
    assert batch.mask.tolist() == [[0, 1, 1], [1, 0, 0]]
    assert batch.rollout_logprobs.tolist() == [[0.0, -0.5, -0.25], [-1.0, 0.0, 0.0]]


def test_on_policy_loss_is_token_level_policy_gradient(policy):
    """One update: ratio is 1, loss = -sum(A_i * mask) / tokens, gradient = -sum(A grad logp) / tokens."""
    stage = GRPOStage("g", GRPOStage.Config(), ["sums"])
    stage.reference = None
    trainer = Trainer(policy, OptimConfig(lr=0.0), 1)
    sample = Sample("s", "d", [])
    episodes = [Episode(sample, [], [1, 20, 30, 40, 2], [0, 0, 1, 1, 1], [0.0] * 5),
                Episode(sample, [], [1, 20, 50, 2], [0, 0, 1, 1], [0.0] * 4)]
    batch = Batch.of(episodes, torch.tensor([0.5, -2.0]), policy.pad_id)
    metrics = stage.update(batch, trainer, step=1)
    assert metrics["loss"] == pytest.approx(-(0.5 * 3 - 2.0 * 2) / 5, abs=1e-6)
    assert metrics["clip_fraction"] == 0.0 and metrics["kl"] == 0.0


def test_score_group_turns_a_crashing_reward_into_zeros():
    class Crashing(Reward):
        def score(self, episodes_G):
            raise RuntimeError("boom")

    class Timing(Reward):
        def score(self, episodes_G):
            return [RewardResult(0.0, info={"status": "timeout"}), RewardResult(1.0)]

    group = [Episode(Sample("s", "d", []), [], [], [], [])] * 2
    assert score_group(Crashing(), group) == ([0.0, 0.0], {"error": 2})
    assert score_group(Timing(), group) == ([0.0, 1.0], {"timeout": 1, "ok": 1})


def test_score_groups_scores_per_episode_rewards_in_one_call_and_isolates_a_failing_group():
    def episodes(sample_id, n):
        return [Episode(Sample(sample_id, "d", []), [{"role": "assistant", "content": str(i)}], [], [], []) for i in range(n)]

    class ByLength(Reward):
        """The value is the episode's index in its group: wrong if groups were merged or split wrongly."""

        def __init__(self, per_episode):
            self.per_episode, self.calls = per_episode, []

        def score(self, episodes_G):
            self.calls.append(len(episodes_G))
            if any(e.sample.id == "bad" for e in episodes_G):
                raise RuntimeError("boom")
            return [RewardResult(float(e.messages[-1]["content"]), info={"status": e.sample.id}) for e in episodes_G]

    groups = [episodes("a", 2), episodes("b", 3), episodes("c", 1)]
    expected = [([0.0, 1.0], {"a": 2}), ([0.0, 1.0, 2.0], {"b": 3}), ([0.0], {"c": 1})]
    joint, alone = ByLength(per_episode=True), ByLength(per_episode=False)
    assert score_groups(joint, groups) == expected and joint.calls == [6]
    assert score_groups(alone, groups) == expected and alone.calls == [2, 3, 1]
    # a joint call that fails is retried group by group: only the bad group scores 0
    joint.calls.clear()
    result = score_groups(joint, [groups[0], episodes("bad", 2), groups[2]])
    assert result == [expected[0], ([0.0, 0.0], {"error": 2}), expected[2]] and joint.calls == [5, 2, 2, 1]


# ---- trainer -----------------------------------------------------------------------------------------


def test_schedule_warms_up_then_decays(policy):
    trainer = Trainer(policy, OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=4, warmup_start_lr=0.2), total_steps=14)
    assert [round(trainer.lr_at(s), 3) for s in range(4)] == [0.4, 0.6, 0.8, 1.0]
    assert trainer.lr_at(4) == pytest.approx(1.0) and trainer.lr_at(9) == pytest.approx(0.55) and trainer.lr_at(14) == pytest.approx(0.1)


def test_nan_gradients_stop_the_step(policy):
    trainer = Trainer(policy, OptimConfig(), 1)
    before = [p.detach().clone() for p in policy.model.parameters()]
    next(policy.model.parameters()).grad = torch.full_like(next(policy.model.parameters()), float("nan"))
    with pytest.raises(NonFiniteLossError, match="gradient norm is nan at step 1"):
        trainer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, policy.model.parameters()))


def test_router_freezing_and_bias_balancing(policy):
    assert freeze_routers(policy.model) == policy.model.config.layers_block_type.count("moe")
    routers = find_routers(policy.model)
    assert all(not r.weight.requires_grad for r in routers)
    balancer = ExpertBalancer(policy.model, rate=0.01)
    policy.model.train()
    policy.model(input_ids=torch.randint(10, 200, (2, 16)), use_cache=False)
    metrics = balancer.update()
    assert metrics["moe_max_over_mean_load"] >= 1.0
    biases = torch.stack([r.e_score_correction_bias for r in routers])
    assert set(round(b, 6) for b in biases.unique().tolist()) <= {-0.01, 0.0, 0.01} and biases.abs().sum() > 0
    balancer.close()


def test_trainer_state_round_trips(policy, tmp_path):
    trainer = Trainer(policy, OptimConfig(lr=1e-3), 10)
    policy.model(input_ids=torch.randint(10, 200, (2, 8)), use_cache=False).logits.mean().backward()
    trainer.step()
    trainer.save(tmp_path)
    reference = {k: v.clone() for k, v in policy.model.state_dict().items()}
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(1.0)
    trainer.load(tmp_path)
    assert trainer.step_count == 1
    assert all(torch.equal(reference[k], v) for k, v in policy.model.state_dict().items())


def test_evaluation_scores_the_held_out_split(checkpoint):
    from cascade.engine.evaluate import evaluate

    class AlwaysRight(Reward):
        def score(self, episodes_G):
            return [RewardResult(1.0) for _ in episodes_G]

    options = EvalConfig(n=4, max_new_tokens=4, batch_size=4)
    result = evaluate(checkpoint, Arithmetic(), AlwaysRight(), options, seed=0)
    assert result["score"] == 1.0 and result["n"] == 4.0
    assert evaluate(checkpoint.__class__("x", "/nonexistent"), Arithmetic(), AlwaysRight(), options, 0) is None


class Parity(Arithmetic):
    def samples(self, split, n, seed):
        return [replace(s, meta={"parity": "even" if s.answer % 2 == 0 else "odd"}) for s in super().samples(split, n, seed)]


class RightOnEven(Reward):
    def score(self, episodes_G):
        return [RewardResult(float(e.sample.answer % 2 == 0)) for e in episodes_G]


def test_evaluation_breaks_the_score_down_by_a_meta_key(checkpoint):
    from cascade.engine.evaluate import evaluate

    samples = Parity().samples("test", 8, 0)
    even = sum(s.meta["parity"] == "even" for s in samples)
    assert 0 < even < 8  # both kinds drawn
    result = evaluate(checkpoint, Parity(), RightOnEven(), EvalConfig(n=8, max_new_tokens=2, breakdown="parity"), seed=0)
    assert result["score/even"] == 1.0 and result["score/odd"] == 0.0 and result["score"] == even / 8
    assert not any(k.startswith("score/") for k in evaluate(checkpoint, Parity(), RightOnEven(), EvalConfig(n=8, max_new_tokens=2), 0))


def test_held_out_answers_tool_lists_what_the_evaluation_scored(checkpoint, policy):
    """tools/held_out_answers.py (README: tool calling after SFT): the evaluation's items, answers and scores."""
    from cascade.engine.evaluate import evaluate, held_out_episodes

    tool = load_tool("held_out_answers")
    options = EvalConfig(n=6, max_new_tokens=3, breakdown="parity")
    samples, episodes, values, _ = held_out_episodes(policy, Parity(), RightOnEven(), options, seed=0)
    assert sum(values) / len(values) == evaluate(checkpoint, Parity(), RightOnEven(), options, 0)["score"]
    rows = tool.answer_rows(samples, episodes, values, "parity")
    assert [(r["id"], r["kind"], r["asked"], r["score"]) for r in rows] == [
        (s.id, s.meta["parity"], s.messages[-1]["content"], float(s.answer % 2 == 0)) for s in samples]
    assert all(r["answers"] == [r["messages"][-1]["content"]] and r["messages"][-1]["role"] == "assistant" for r in rows)
    assert tool.one_line("a\n b   c", 10) == "a b c" and tool.one_line("x" * 20, 10) == "x" * 7 + "..."


def test_shared_prompt_logprobs_equal_the_plain_forward(policy):
    """Groups of 3, 2 and 1 rollouts with prompts of different lengths: same log-probs, entropy and gradients."""
    from cascade.engine.prefix_sharing import prompt_groups, shared_prompt_logprobs
    from cascade.models.fast_decode import enable_fast_decode

    enable_fast_decode()  # what the rollout engine installs: the update runs after a rollout, through its scan
    torch.manual_seed(0)
    rows = []
    for prompt_len, group in [(7, 3), (12, 2), (5, 1)]:
        prompt = torch.randint(10, 250, (prompt_len,)).tolist()
        rows += [(prompt + torch.randint(10, 250, (int(torch.randint(1, 9, ())),)).tolist(), prompt_len) for _ in range(group)]
    width = max(len(r) for r, _ in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r, _ in rows])
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in rows])
    mask = torch.tensor([[0] * (p - 1) + [1] * (len(r) - p) + [0] * (width - len(r)) for r, p in rows], dtype=torch.float32)
    batch = SimpleNamespace(input_ids=ids, attention_mask=attention, mask=mask, routed_experts=None)
    assert prompt_groups(ids, mask)[1] == [0, 0, 0, 1, 1, 2]

    model = policy.model.train()
    plain, plain_entropy = token_logprobs(model, ids, attention, with_entropy=True, temperature=0.7)
    (plain * mask).sum().backward()
    plain_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    shared, shared_entropy, _, _ = shared_prompt_logprobs(model, batch, temperature=0.7, with_entropy=True)
    assert torch.allclose(shared * mask, plain * mask, atol=1e-4)
    assert torch.allclose(shared_entropy * mask, plain_entropy * mask, atol=1e-4)
    (shared * mask).sum().backward()
    for name, param in model.named_parameters():
        if name in plain_grads:
            assert torch.allclose(param.grad, plain_grads[name], atol=1e-5, rtol=1e-3), name


# ---- GRPO prompt filters ---------------------------------------------------------------------------------


class Scripted(Reward):
    """Scores rollout i of a group with ``sample.answer[i]``, whatever the model wrote."""

    def score(self, episodes_G):
        return [RewardResult(v) for v in episodes_G[0].sample.answer]


class Stops(RolloutEngine):
    """Ends every response at once (an untrained model would rather run into the length limit)."""

    def __init__(self, policy):
        self.eos = policy.eos_id

    def generate(self, prompts_B, params):
        return [[Generation([self.eos], [0.0], "stop") for _ in range(params.n)] for _ in prompts_B]


def scripted_sample(name: str, values: list[float]) -> Sample:
    return Sample(name, "sums", [{"role": "user", "content": f"{name}="}], values)


def filter_context():
    return SimpleNamespace(environment=lambda d: Arithmetic(), reward=lambda d: Scripted(), seed=0)


def test_prefilter_drops_only_the_prompts_every_rollout_solves(policy):
    stage = GRPOStage("code_rl", GRPOStage.Config(prefilter_samples=3, max_new_tokens=2), ["sums"])
    pool = [scripted_sample("easy", [1.0, 1.0, 1.0]), scripted_sample("mixed", [1.0, 0.0, 1.0]),
            scripted_sample("hard", [0.0, 0.0, 0.0]), scripted_sample("partial", [0.5, 1.0, 1.0])]
    engine = Stops(policy)
    kept = stage.hard_prompts("sums", pool, policy, engine, filter_context())
    assert [s.id for s in kept] == ["mixed", "hard", "partial"]
    assert stage.pool_metrics == {"prefilter_kept_fraction/sums": 0.75}
    with pytest.raises(Exception, match="solved all 1 'sums' prompts in each of 3 rollouts"):
        stage.hard_prompts("sums", pool[:1], policy, engine, filter_context())


@pytest.mark.parametrize("values, masked", [([0.5, 0.2, 0.5, 0.0], True), ([0.6, 0.2, 0.5, 0.0], False)])
def test_min_best_reward_masks_groups_no_rollout_scores_above(policy, values, masked):
    """Also an update on one-token responses (an immediate end of turn), which once broke the shared-prompt backward."""
    config = GRPOStage.Config(prompts_per_step=2, group_size=4, max_new_tokens=2, min_best_reward=0.5, max_sampling_rounds=1)
    stage = GRPOStage("swe", config, ["sums"])
    stage.reference = None
    trainer = Trainer(policy, OptimConfig(lr=0.0), 1)
    metrics = stage.train_step(1, policy, trainer, Stops(policy), {"sums": [scripted_sample("p", values)]}, filter_context())
    assert metrics["masked_fraction"] == (1.0 if masked else 0.0)
    assert ("skipped_update" in metrics) == masked


def test_a_multi_domain_stage_logs_each_domains_reward(policy):
    config = GRPOStage.Config(prompts_per_step=2, group_size=2, max_new_tokens=2, max_sampling_rounds=1)
    stage = GRPOStage("multidomain_rl", config, ["sums", "other"])
    stage.reference = None
    trainer = Trainer(policy, OptimConfig(lr=0.0), 1)
    pools = {"sums": [scripted_sample("a", [1.0, 0.0])], "other": [scripted_sample("b", [0.25, 0.25])]}
    metrics = stage.train_step(1, policy, trainer, Stops(policy), pools, filter_context())
    assert metrics["reward/sums"] == 0.5 and metrics["reward/other"] == 0.25
    assert metrics["reward"] == 0.375
