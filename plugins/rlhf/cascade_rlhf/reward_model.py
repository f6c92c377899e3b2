"""A Bradley-Terry reward model: the ``reward_model`` stage trains it, the ``reward_model`` reward scores with it.

The model is a sequence classifier with one output (transformers' ``AutoModelForSequenceClassification``,
``num_labels=1``) reading the prompt and the final answer rendered with the run's chat template, so it sees the
policy's text tokenised exactly as the policy does. The score is the output at the last token. Trained on
preference pairs with ``-log sigmoid(r_chosen - r_rejected)``.

Where it starts from (``init``):

* ``policy`` (the usual practice): the stage's starting checkpoint with a new linear head. transformers has no
  classification head for NemotronH, so this module registers :class:`NemotronHForSequenceClassification`
  (transformers' generic head on ``NemotronHModel``) with ``AutoModelForSequenceClassification``; other
  architectures (Llama, Qwen...) use transformers' own.
* ``scratch``: a small Llama-family classifier on the run's tokenizer (``scratch_options`` sets its sizes).

The result is a standard HF directory (config, safetensors, tokenizer). The stage leaves the policy alone: it
returns a checkpoint of the policy it started from, so the next stage continues from that policy, and writes
the reward model to ``output`` (the presets use ``${run_dir}/reward_model``, which the rlhf stage's reward
reads). Loading a NemotronH reward model needs this module imported (the plugin does it).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import (
    AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig, LlamaForSequenceClassification, NemotronHConfig,
)
from transformers.modeling_layers import GenericForSequenceClassification
from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHPreTrainedModel

from cascade import Checkpoint, Episode, Reward, RewardResult, Stage, StageError
from cascade.config import ConfigError
from cascade.engine.moe import prepare_moe
from cascade.engine.policy import Policy, save_policy
from cascade.engine.trainer import OptimConfig, right_pad, scheduled_lr
from cascade.environments.generated import NO_THINKING, strip_think
from cascade_rlhf.chat import PreferencePair


class NemotronHForSequenceClassification(GenericForSequenceClassification, NemotronHPreTrainedModel):
    """NemotronH backbone + a linear score at the last non-padding token (transformers' generic head)."""


AutoModelForSequenceClassification.register(NemotronHConfig, NemotronHForSequenceClassification, exist_ok=True)


# ---- the model's input -------------------------------------------------------------------------------


def render(tokenizer, messages: Sequence[dict], response: str) -> str:
    """The conversation the reward model reads: the prompt and the final answer (``<think>`` removed)."""
    answer = {"role": "assistant", "content": NO_THINKING + strip_think(response).strip()}
    return tokenizer.apply_chat_template([*messages, answer], tokenize=False)


def encode(tokenizer, texts: Sequence[str], max_length: int) -> torch.Tensor:
    """Right-padded token ids (the head reads the last non-pad token); long texts keep their end."""
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"][-max_length:] for t in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return right_pad(rows, pad, dtype=torch.long)


def rewards(model, input_ids: torch.Tensor) -> torch.Tensor:
    """[B] scalar rewards."""
    return model(input_ids=input_ids).logits.squeeze(-1)


def load_reward_model(path: str | Path):
    """Model (eval mode) and tokenizer of a reward model directory, or an error saying how to make one."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise ConfigError(f"no reward model at {path} (no config.json): run a 'reward_model' stage first (preset "
                          f"'+stage@cascade.stages.reward_model=reward_model', its 'output' param names where it writes), "
                          f"or point the reward's 'model' option at an HF sequence-classification directory")
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    prepare_moe(model)
    return model, AutoTokenizer.from_pretrained(path)


# ---- the stage -----------------------------------------------------------------------------------------


def pair_accuracy(model, tokenizer, pairs: Sequence[PreferencePair], max_length: int, batch_size: int = 32) -> float:
    """Share of pairs whose chosen response the model scores strictly higher."""
    right = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start:start + batch_size]
            chosen, rejected = scores_of_pairs(model, tokenizer, batch, max_length)
            right += int((chosen > rejected).sum())
    return right / len(pairs)


def scores_of_pairs(model, tokenizer, pairs: Sequence[PreferencePair], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    texts = [render(tokenizer, p.messages, p.chosen) for p in pairs] + [render(tokenizer, p.messages, p.rejected) for p in pairs]
    scores = rewards(model, encode(tokenizer, texts, max_length))
    return scores[:len(pairs)], scores[len(pairs):]


class RewardModelStage(Stage):
    """Trains a Bradley-Terry reward model on the domains' preference pairs; returns the policy unchanged.

    Each domain's environment must have ``preference_pairs(split, n, seed)`` (the rlhf environment does).
    Logs ``loss`` and the batch ``accuracy`` every step, ``eval_pair_accuracy`` on held-out (test-split) pairs
    every ``eval_every`` steps and at the end. Short, so it keeps no step checkpoints: a resumed run redoes it.
    """

    @dataclass
    class Config:
        output: str = "reward_model"
        """Directory the reward model is written to; the presets say ``${run_dir}/reward_model``."""
        init: str = "policy"
        """``policy``: the starting checkpoint plus a new head; ``scratch``: a small Llama classifier."""
        scratch_options: dict[str, Any] = field(default_factory=lambda: {
            "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256})
        """LlamaConfig fields of the ``scratch`` model."""
        train_pairs: int = 2000
        eval_pairs: int = 200
        steps: int = 150
        batch_size: int = 16
        """Pairs per step."""
        max_length: int = 256
        eval_every: int = 50
        optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, weight_decay=0.0))

    def run(self, start: Checkpoint, context) -> Checkpoint:
        cfg = self.config
        if cfg.init not in ("policy", "scratch"):
            raise ConfigError(f"stage {self.name!r}: init must be 'policy' or 'scratch', got {cfg.init!r}")
        tokenizer = AutoTokenizer.from_pretrained(start.path)
        model = self.initial_model(start.path, tokenizer)
        train, held_out = [], []
        for domain in self.domains:
            env = context.environment(domain)
            if not callable(getattr(env, "preference_pairs", None)):
                raise ConfigError(f"stage {self.name!r}: domain {domain!r} ({type(env).__name__}) has no preference_pairs(); "
                                  f"a reward_model stage trains on domains that generate preference pairs (e.g. rlhf)")
            train += env.preference_pairs("train", cfg.train_pairs, context.seed)
            held_out += env.preference_pairs("test", cfg.eval_pairs, context.seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                      weight_decay=cfg.optim.weight_decay)
        rng = random.Random(context.seed)
        # the stage is short and keeps no step checkpoints: an interrupted attempt starts over, without its metrics
        context.history = []
        context.history_path.write_text("")
        context.stage.total_steps = cfg.steps
        accuracy = float("nan")
        for step in range(1, cfg.steps + 1):
            started = time.perf_counter()
            model.train()
            batch = rng.sample(train, min(cfg.batch_size, len(train)))
            chosen, rejected = scores_of_pairs(model, tokenizer, batch, cfg.max_length)
            margin = chosen - rejected
            loss = -torch.nn.functional.logsigmoid(margin).mean()
            if not torch.isfinite(loss):
                raise StageError(f"stage {self.name!r}: reward model loss is {loss.item()} at step {step}; lower optim.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            for group in optimizer.param_groups:
                group["lr"] = self.lr_at(step)
            optimizer.step()
            metrics = {"loss": loss.item(), "accuracy": (margin > 0).float().mean().item(),
                       "margin": margin.mean().item(), "grad_norm": grad_norm.item(), "lr": self.lr_at(step),
                       "step_seconds": time.perf_counter() - started}
            if step % cfg.eval_every == 0 or step == cfg.steps:
                accuracy = pair_accuracy(model, tokenizer, held_out, cfg.max_length)
                metrics["eval_pair_accuracy"] = accuracy
            context.log(step, metrics)
        save_policy(Policy(model, tokenizer), cfg.output)  # a sequence classifier and its tokenizer, saved alike
        return Checkpoint(self.name, start.path, meta={"reward_model": str(cfg.output), "eval_pair_accuracy": accuracy})

    def lr_at(self, step: int) -> float:
        """The shared schedule over the stage (``step`` from 1), decaying to 0 when ``optim.min_lr`` is unset."""
        o = self.config.optim
        return scheduled_lr(replace(o, min_lr=o.min_lr or 0.0), step - 1, self.config.steps)

    def initial_model(self, policy_path: str, tokenizer):
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.config.init == "policy":
            model = AutoModelForSequenceClassification.from_pretrained(policy_path, num_labels=1, pad_token_id=pad)
        else:
            config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=pad, num_labels=1,
                                 max_position_embeddings=max(512, self.config.max_length), **self.config.scratch_options)
            model = LlamaForSequenceClassification(config)
        prepare_moe(model)
        return model

# ---- the reward ----------------------------------------------------------------------------------------


class RewardModelReward(Reward):
    """Scores each rollout of a group with a trained reward model (batched, no gradient).

    ``normalize: true`` returns the group's scores centred and scaled ``(r - mean) / std`` (GRPO normalises
    anyway, so the default is the raw score); ``info["raw"]`` always holds the raw score.
    """

    def __init__(self, model: str, batch_size: int = 32, max_length: int = 256, normalize: bool = False):
        self.model, self.tokenizer = load_reward_model(model)
        self.batch_size = batch_size
        self.max_length = max_length
        self.normalize = normalize
        self.per_episode = not normalize  # raw scores: several groups go through the model in one batch

    @torch.no_grad()
    def score(self, episodes_G: Sequence[Episode]) -> list[RewardResult]:
        texts = [render(self.tokenizer, e.sample.messages, e.response) for e in episodes_G]
        raw = torch.cat([rewards(self.model, encode(self.tokenizer, texts[i:i + self.batch_size], self.max_length))
                         for i in range(0, len(texts), self.batch_size)]).float()
        values = raw
        if self.normalize and len(raw) > 1:
            values = (raw - raw.mean()) / (raw.std(unbiased=False) + 1e-6)
        return [RewardResult(float(v), info={"status": "ok", "raw": float(r)}) for v, r in zip(values, raw)]
