"""Tool-integrated reasoning through the engine: multi-turn episodes with real python-tool calls in SFT (loss
mask), in rollouts (mask, log-probs), in a GRPO update and in a MOPD update, checked token by token."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from cascade.engine.grpo import GRPOStage
from cascade.engine.policy import init_checkpoint, load_policy
from cascade.engine.rollout import collect_episodes, generation_prefix
from cascade.engine.sft import tokenize_conversation
from cascade.engine.teacher import HFTeacher
from cascade.engine.trainer import OptimConfig, Trainer, token_logprobs
from cascade.environments.tool_calls import render_call
from cascade.types import Generation, RolloutEngine, SamplingParams
from cascade_math.plugin import MathEnvironment, MathVerifyReward
from cascade_mopd.objective import DistillationObjective

DOMAIN = "math_tool"


def tool_env() -> MathEnvironment:
    env = MathEnvironment(difficulties=[1], python_tool=True, tool_options={"max_calls": 2})
    env.domain = DOMAIN
    return env


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tir") / "model"
    model = OmegaConf.create({"path": None, "arch": "tiny_nemotron_h", "options": {"vocab_size": 400, "hidden_size": 64}, "dtype": "float32"})
    return init_checkpoint(model, str(path), seed=0, environments={DOMAIN: tool_env()})


@pytest.fixture
def policy(checkpoint):
    return load_policy(checkpoint.path)


class ToolScript(RolloutEngine):
    """Writes what a tool-using model would: a python call (the problem's own code for even completions of a group,
    ``print(0)`` for odd ones), then the tool's output boxed. Log-probs are the policy's own for those tokens, so
    the episodes are what sampling them would have given; every generated token list is kept for the checks."""

    def __init__(self, policy, samples):
        self.policy = policy
        self.code = {s.messages[-1]["content"]: s.meta["code"] for s in samples}
        self.generated: list[list[int]] = []
        self.calls = 0

    def generate(self, prompts_B, params):
        tok = self.policy.tokenizer
        out = []
        for ids in prompts_B:
            text = tok.decode(ids, skip_special_tokens=False)
            if "<|im_start|>tool\n" in text:
                output = text.rsplit("<|im_start|>tool\n", 1)[1].split("<|im_end|>")[0].strip()
                reply = f"\\boxed{{{output}}}"
            else:
                question = text.rsplit("<|im_start|>user\n", 1)[1].split("<|im_end|>")[0]
                reply = render_call("python", code=self.code[question] if self.calls % 2 == 0 else "print(0)")
                self.calls += 1
            new = tok(reply + tok.eos_token, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logprobs, _ = token_logprobs(self.policy.model, torch.tensor([list(ids) + new]), None)
            self.generated.append(new)
            out.append([Generation(new, logprobs[0, len(ids) - 1:].tolist(), "stop")])
        return out


def samples_with_code(env, n):
    """Test samples carrying their problem's code (what ToolScript writes in its call)."""
    problems = env.problems("test", n, 3)
    samples = env.samples("test", n, 3)
    for sample, problem in zip(samples, problems):
        sample.meta["code"] = problem.code
    return samples


def mask_runs(mask: list[int], ids: list[int]) -> list[list[int]]:
    runs, current = [], []
    for token, m in zip(ids, mask):
        if m:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def test_sft_trains_on_exactly_the_models_turns_of_a_tool_demonstration(policy):
    tok = policy.tokenizer
    demo = tool_env().demonstrations(1, 0)[0]
    assert [m["role"] for m in demo] == ["system", "user", "assistant", "tool", "assistant"]
    ids, mask = tokenize_conversation(tok, demo)
    # token by token: a token is trained on iff its text lies inside an assistant turn's body (its <|im_end|> included)
    text = tok.decode(ids, skip_special_tokens=False)
    spans = [m.span(1) for m in re.finditer(r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)", text, re.DOTALL)]
    assert len(spans) == 2
    position = 0
    for token, trained in zip(ids, mask):
        piece = tok.decode([token], skip_special_tokens=False)
        start, position = position, position + len(piece)
        inside = any(a <= start and position <= b for a, b in spans)
        assert trained == inside, (piece, start)
    assert position == len(text)
    runs = [tok.decode(run, skip_special_tokens=False) for run in mask_runs(mask, ids)]
    assert runs == [m["content"] + "<|im_end|>" for m in demo if m["role"] == "assistant"]


def test_rollouts_run_the_tool_and_mask_every_token_it_returned(policy):
    env = tool_env()
    samples = samples_with_code(env, 2)
    engine = ToolScript(policy, samples)
    episodes = collect_episodes(engine, policy, env, samples, SamplingParams(max_new_tokens=64, temperature=1.0, n=2))
    prefix = generation_prefix(policy.tokenizer, False)
    rewards = MathVerifyReward().score(episodes)
    for i, episode in enumerate(episodes):
        roles = [m["role"] for m in episode.messages]
        assert roles == ["system", "user", "assistant", "tool", "assistant"]
        assert len(episode.token_ids) == len(episode.loss_mask) == len(episode.logprobs)
        # the trained tokens are exactly the engine's two turns (all first turns come in one batch, then all second
        # turns); everything else, the prompt and the tool's output, is 0
        assert mask_runs(episode.loss_mask, episode.token_ids) == [engine.generated[i], engine.generated[len(episodes) + i]]
        assert all(lp == 0.0 for lp, m in zip(episode.logprobs, episode.loss_mask) if m == 0)
        assert all(lp < 0.0 for lp, m in zip(episode.logprobs, episode.loss_mask) if m == 1)
        tool = episode.messages[3]
        assert tool["tool_status"] == "ok"
        expected = str(episode.sample.answer) if i % 2 == 0 else "0"
        assert tool["content"].strip() == expected  # run for real in the sandbox
        assert episode.messages[4]["content"] == prefix + f"\\boxed{{{expected}}}"
        assert episode.metrics["tool_calls"] == 1.0
        assert rewards[i].value == (1.0 if i % 2 == 0 else 0.0)


def grpo_step(policy, objective=None):
    env = tool_env()
    samples = samples_with_code(env, 2)
    config = GRPOStage.Config(prompts_per_step=2, group_size=2, max_new_tokens=64, max_sampling_rounds=1)
    stage = GRPOStage("tir", config, [DOMAIN])
    stage.reference = None
    if objective is not None:
        stage.objective = objective
    trainer = Trainer(policy, OptimConfig(lr=1e-3, warmup_steps=0), 1)
    context = SimpleNamespace(environment=lambda d: env, reward=lambda d: MathVerifyReward(), seed=0)
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    metrics = stage.train_step(1, policy, trainer, ToolScript(policy, samples), {DOMAIN: samples}, context)
    moved = [n for n, p in policy.model.named_parameters() if not torch.equal(p, before[n])]
    return metrics, moved


def test_a_grpo_update_learns_from_tool_episodes(policy):
    metrics, moved = grpo_step(policy)
    assert "skipped_update" not in metrics and metrics["groups_kept"] == 2.0
    assert metrics["reward"] == 0.5  # each group: the right call and print(0)
    assert moved  # the update reached the weights


def test_a_mopd_update_distils_on_tool_episodes(policy, checkpoint):
    metrics, moved = grpo_step(policy, DistillationObjective({DOMAIN: HFTeacher(checkpoint)}))
    assert f"reverse_kl/{DOMAIN}" in metrics and "skipped_update" not in metrics
    assert moved


def test_evaluation_reports_the_tool_call_rate(policy, checkpoint, monkeypatch):
    from cascade.config import EvalConfig
    from cascade.engine import evaluate as evaluation

    env = tool_env()
    samples = samples_with_code(env, 4)
    monkeypatch.setattr(env, "samples", lambda split, n, seed: samples)
    monkeypatch.setattr(evaluation, "HFRolloutEngine", lambda policy, batch_size: ToolScript(policy, samples))
    result = evaluation.evaluate(checkpoint, env, MathVerifyReward(), EvalConfig(n=4, max_new_tokens=64), seed=0)
    assert result["tool_call_rate"] == 1.0 and result["score"] == 0.5  # every episode calls; half call print(0)
