"""GRPO as in SPEC.md, one step read top to bottom in :meth:`GRPOStage.train_step`.

Strictly on-policy by default: one optimizer step per rollout batch, so the importance ratio is 1 and
the loss is plain policy gradient with group-normalised advantages ``A_i = (r_i - mean) / std`` over the
rollouts of one prompt, normalised per token over the whole batch. With ``updates_per_batch > 1`` the
PPO-clip form applies. No KL term by default (RLHF sets ``kl_coef: 0.03`` to the stage's start policy).
"""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from cascade.components import domain_reward
from cascade.config import ConfigError
from cascade.engine.moe import freeze_routers, replay_routing
from cascade.engine.policy import Policy, load_policy
from cascade.engine.prefix_sharing import shared_prompt_logprobs
from cascade.engine.rollout import collect_episodes
from cascade.engine.trainer import (
    OptimConfig, Trainer, attention_mask, check_finite, right_pad, token_logprobs, train_steps,
)
from cascade.types import Checkpoint, Episode, Reward, SamplingParams, Stage, StageError


@dataclass
class Batch:
    """Episodes as right-padded tensors; ``mask`` marks the sampled tokens (the targets trained on).

    Per-token tensors are [B, T-1], aligned with :func:`token_logprobs` (position t scores token t+1).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mask: torch.Tensor
    advantages: torch.Tensor
    """[B]: the reward advantage of each episode (GRPO's group-normalised one)."""
    rollout_logprobs: torch.Tensor
    domains: list[str]
    teacher_logprobs: torch.Tensor | None = None
    """[B, T-1]: set by objectives that distil (MOPD)."""
    routed_experts: torch.Tensor | None = None
    """[B, T, moe_layers, k]: the rollout's experts per token (aligned with ``input_ids``), -1 where none was
    recorded (padding, the never-fed last token); None when no episode carries routing (dense models)."""

    @classmethod
    def of(cls, episodes: Sequence[Episode], advantages: torch.Tensor, pad_id: int) -> "Batch":
        width = max(len(e.token_ids) for e in episodes)
        ids = right_pad([e.token_ids for e in episodes], pad_id, width)
        attention = attention_mask([e.token_ids for e in episodes], width)
        mask = right_pad([e.loss_mask[1:] for e in episodes], 0, width - 1, dtype=torch.float32)
        logprobs = right_pad([e.logprobs[1:] for e in episodes], 0.0, width - 1, dtype=torch.float32)
        return cls(ids, attention, mask, advantages, logprobs, [e.sample.domain for e in episodes],
                   routed_experts=cls._routing(episodes, width))

    def rows(self, start: int, stop: int) -> "Batch":
        return Batch(self.input_ids[start:stop], self.attention_mask[start:stop], self.mask[start:stop],
                     self.advantages[start:stop], self.rollout_logprobs[start:stop], self.domains[start:stop],
                     None if self.teacher_logprobs is None else self.teacher_logprobs[start:stop],
                     None if self.routed_experts is None else self.routed_experts[start:stop])

    @staticmethod
    def _routing(episodes: Sequence[Episode], width: int) -> torch.Tensor | None:
        """Right-pad each episode's [tokens, layers, k] routing to ``width`` with -1 (an episode without routing
        is all -1: its tokens keep the trainer's own choice)."""
        recorded = [torch.as_tensor(e.routed_experts) for e in episodes if e.routed_experts is not None]
        if not recorded:
            return None
        out = torch.full((len(episodes), width, *recorded[0].shape[1:]), -1, dtype=torch.int16)
        for row, e in enumerate(episodes):
            if e.routed_experts is not None:
                r = torch.as_tensor(e.routed_experts)[:width]
                out[row, :r.shape[0]] = r
        return out


class PolicyGradient:
    """GRPO's objective: the clipped surrogate ``-min(r A, clip(r) A)``, normalised per token over the batch.

    With one update per batch the ratio r is exactly 1 and this is plain policy gradient. Another objective
    (MOPD's) replaces :meth:`prepare` (its advantages) and :meth:`loss`; the stage's loop stays the same.
    """

    filters_uniform_groups = True

    def __init__(self, clip_eps: float = 0.2):
        self.clip_eps = clip_eps

    def prepare(self, batch: Batch, context) -> dict[str, float]:
        """Add what the loss needs beyond the batch (e.g. teacher log-probs); returns metrics."""
        return {}

    def loss(self, logprobs: torch.Tensor, old_logprobs: torch.Tensor, micro: Batch, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        ratio = torch.exp(logprobs - old_logprobs)
        advantage = micro.advantages.unsqueeze(-1)
        unclipped = ratio * advantage
        clipped = torch.clamp(ratio, 1 - self.clip_eps, 1 + self.clip_eps) * advantage
        loss = (-torch.minimum(unclipped, clipped) * micro.mask).sum() / batch.mask.sum().clamp(min=1)
        return loss, {"clipped_tokens": ((unclipped != clipped).float() * micro.mask).sum().item()}

    def summarize(self, sums: dict[str, float], batch: Batch, updates: int) -> dict[str, float]:
        return {"clip_fraction": sums.get("clipped_tokens", 0.0) / (batch.mask.sum().item() * updates)}


def _scored(reward: Reward, episodes: Sequence[Episode]) -> list[tuple[float, str]] | None:
    """(value, status) per episode, or None when the reward raised or returned the wrong number of results."""
    try:
        results = reward.score(episodes)
        if len(results) != len(episodes):
            raise ValueError(f"returned {len(results)} results for {len(episodes)} episodes")
        return [(float(r.value), str(r.info.get("status", "ok"))) for r in results]
    except Exception:  # noqa: BLE001 - any reward failure is scored, not raised
        return None


def _values_and_statuses(scored: Sequence[tuple[float, str]]) -> tuple[list[float], Counter]:
    return [value for value, _ in scored], Counter(status for _, status in scored)


def score_group(reward: Reward, group: Sequence[Episode]) -> tuple[list[float], Counter]:
    """Score one group; a reward that raises scores 0 (counted), never stops training."""
    return _values_and_statuses(_scored(reward, group) or [(0.0, "error")] * len(group))


def score_groups(reward: Reward, groups: Sequence[Sequence[Episode]]) -> list[tuple[list[float], Counter]]:
    """Score several groups: in one ``score`` call when the reward scores each episode on its own
    (``Reward.per_episode``: a sandbox pool then runs every group's programs side by side), else group by group.
    A joint call that fails is retried group by group, so a bad group costs only its own scores."""
    if reward.per_episode and len(groups) > 1:
        scored = _scored(reward, [e for group in groups for e in group])
        if scored is not None:
            ends = list(itertools.accumulate(len(group) for group in groups))
            return [_values_and_statuses(scored[end - len(group):end]) for group, end in zip(groups, ends)]
    return [score_group(reward, group) for group in groups]


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``(r - mean(r)) / std(r)`` within each group; rewards is [groups, group_size]."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + eps)


class GRPOStage(Stage):
    @dataclass
    class Config:
        steps: int = 50
        prompts_per_step: int = 16
        group_size: int = 8
        temperature: float = 1.0
        top_p: float = 1.0
        max_new_tokens: int = 128
        optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-6, weight_decay=0.0))
        updates_per_batch: int = 1
        clip_eps: float = 0.2
        kl_coef: float = 0.0
        dynamic_filter: bool = True
        """Drop groups whose rollouts all scored the same (all right or all wrong): no signal."""
        max_sampling_rounds: int = 3
        """With dynamic filtering, draw fresh prompts up to this many times to fill the batch."""
        overlong_reward: float = 0.0
        """Reward of a response that hit ``max_new_tokens``."""
        min_best_reward: float | None = None
        """Drop groups whose best rollout scored at most this (SWE-RL agentless: 0.5, no rollout came close)."""
        prefilter_samples: int = 0
        """Hard prompts only (code RL): before training, this many rollouts of the starting policy per pool prompt;
        prompts that every one of them solves are dropped from the pool. 0: no filter."""
        freeze_router: bool = True
        share_prompts: bool = True
        """Run each group's prompt once in the update and continue every rollout from its cache (same result)."""
        routing_replay: bool = True
        """MoE: the training forward uses the experts the rollout chose (episodes' ``routed_experts``)."""
        micro_batch: int = 32
        prompt_pool: int = 2000
        checkpoint_every: int = 10
        thinking: bool = False
        reward: str | None = None
        """Train on this reward instead of each domain's own, which held-out evaluation keeps (RLHF: a learnt
        reward model here, the domain's gold scorer in evaluation); ``reward_options`` are its options."""
        reward_options: dict[str, Any] = field(default_factory=dict)
        domain_reward_options: dict[str, dict[str, Any]] = field(default_factory=dict)
        """Per domain: options laid over that domain's own ``reward_options`` while this stage trains it, e.g.
        ``{workplace: {metric: part}}`` (part credit in training; held-out evaluation keeps the domain's own)."""

    def __init__(self, name, config, domains):
        super().__init__(name, config, domains)
        unknown = sorted(set(config.domain_reward_options) - set(domains))
        if unknown:
            raise ConfigError(f"stage {name}: domain_reward_options names {unknown}, not domains of this stage "
                              f"(its domains: {list(domains)})")
        if config.reward is not None and config.domain_reward_options:
            raise ConfigError(f"stage {name}: set reward (one reward for every domain) or domain_reward_options "
                              "(each domain's own reward with other options), not both")
        self.objective = PolicyGradient(config.clip_eps)
        """What the update optimises; a wrapper (MOPD) swaps in its own."""
        self.pool_metrics: dict[str, float] = {}
        """Facts about the prompt pools (the prefilter's kept share), logged with every step."""
        self.training_reward: Reward | None = None
        """The ``reward`` option's reward, made when the stage runs (its inputs may come from earlier stages)."""
        self.domain_rewards: dict[str, Reward] = {}
        """The rewards ``domain_reward_options`` makes, by domain."""

    # ---- the stage -------------------------------------------------------------------------------

    def run(self, start: Checkpoint, context) -> Checkpoint:
        cfg = self.config
        policy = load_policy(start.path, context.config.model.dtype)
        if cfg.freeze_router:
            freeze_routers(policy.model)
        self.reference = load_policy(start.path, context.config.model.dtype).model.eval() if cfg.kl_coef > 0 else None
        trainer = Trainer(policy, cfg.optim, cfg.steps)
        engine = context.plugins.component("rollout_engines", context.config.rollout.engine).factory(policy, context.config.rollout)
        pools = {d: context.environment(d).samples("train", cfg.prompt_pool, context.seed) for d in self.domains}
        self.make_rewards(context)
        try:
            if cfg.prefilter_samples > 0:
                pools = {d: self.hard_prompts(d, pool, policy, engine, context) for d, pool in pools.items()}
            return train_steps(trainer, context, cfg.steps, cfg.checkpoint_every,
                               lambda n: {**self.train_step(n, policy, trainer, engine, pools, context), **self.pool_metrics})
        finally:
            for component in (engine, self.training_reward, *self.domain_rewards.values()):
                if callable(getattr(component, "close", None)):  # a Ray engine's actor, a reward's workers
                    component.close()

    def make_rewards(self, context) -> None:
        """The rewards this stage trains on in place of the domains' own: ``reward``'s, ``domain_reward_options``'."""
        cfg = self.config
        if cfg.reward is not None:
            self.training_reward = context.plugins.component("rewards", cfg.reward).factory(**cfg.reward_options)
        for domain, overlay in cfg.domain_reward_options.items():
            name, options = domain_reward(context.config, domain, overlay)
            self.domain_rewards[domain] = context.plugins.component("rewards", name).factory(**options)

    def reward(self, domain: str, context) -> Reward:
        """What the stage trains ``domain`` on: the ``reward`` option's, else the domain's own (with this stage's
        ``domain_reward_options``)."""
        if self.training_reward is not None:
            return self.training_reward
        return self.domain_rewards[domain] if domain in self.domain_rewards else context.reward(domain)

    def hard_prompts(self, domain: str, pool: list, policy: Policy, engine, context) -> list:
        """The pool without the prompts the starting policy always solves (``prefilter_samples`` rollouts each).

        Seeded and run on the stage's starting weights, so a resumed stage rebuilds the same pool."""
        cfg = self.config
        n = cfg.prefilter_samples
        params = SamplingParams(cfg.max_new_tokens, cfg.temperature, cfg.top_p, n, seed=context.seed)
        episodes = collect_episodes(engine, policy, context.environment(domain), pool, params, cfg.thinking)
        reward = self.reward(domain, context)
        kept = []
        groups = [episodes[i * n:(i + 1) * n] for i in range(len(pool))]
        for sample, group, (values, _) in zip(pool, groups, score_groups(reward, groups)):
            if not all(v >= 1.0 and not e.truncated for e, v in zip(group, values)):
                kept.append(sample)
        if not kept:
            raise StageError(f"stage {self.name!r}: the starting policy solved all {len(pool)} {domain!r} prompts in each of "
                             f"{n} rollouts, so prefilter_samples left nothing to train on; raise the domain's difficulty")
        self.pool_metrics[f"prefilter_kept_fraction/{domain}"] = len(kept) / len(pool)
        return kept

    def train_step(self, step: int, policy: Policy, trainer: Trainer, engine, pools, context) -> dict[str, float]:
        cfg = self.config
        started = time.perf_counter()
        params = SamplingParams(cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.group_size)

        # 1. rollouts and rewards, drawing fresh prompts while dynamic filtering leaves the batch short
        engine.load_weights(policy.model)  # an engine with its own copy samples from the last update (or a resume)
        kept, stats = [], {"groups": 0, "filtered": 0, "masked": 0, "episodes": 0, "truncated": 0, "reward_sum": 0.0, "correct": 0, "generated": 0}
        statuses: Counter = Counter()
        domain_rewards: dict[str, list[float]] = {}
        for round_ in range(cfg.max_sampling_rounds if cfg.dynamic_filter else 1):
            need = cfg.prompts_per_step - len(kept)
            if need <= 0:
                break
            for domain, samples in self.draw(pools, need, context.seed, step, round_).items():
                env, reward = context.environment(domain), self.reward(domain, context)
                episodes = collect_episodes(engine, policy, env, samples, params, cfg.thinking)
                groups = [episodes[g * cfg.group_size:(g + 1) * cfg.group_size] for g in range(len(samples))]
                for group, (values, counts) in zip(groups, score_groups(reward, groups)):
                    values = [cfg.overlong_reward if e.truncated else v for e, v in zip(group, values)]
                    statuses.update(counts)
                    stats["groups"] += 1
                    stats["episodes"] += len(group)
                    stats["truncated"] += sum(e.truncated for e in group)
                    stats["generated"] += sum(e.num_generated for e in group)
                    stats["reward_sum"] += sum(values)
                    domain_rewards.setdefault(domain, []).extend(values)
                    stats["correct"] += sum(v >= 1.0 for v in values)
                    for e, v in zip(group, values):
                        e.reward = v
                    if cfg.dynamic_filter and self.objective.filters_uniform_groups and max(values) == min(values):
                        stats["filtered"] += 1
                        continue
                    if cfg.min_best_reward is not None and max(values) <= cfg.min_best_reward:
                        stats["masked"] += 1
                        continue
                    if len(kept) < cfg.prompts_per_step:
                        kept.append(group)
        rollout_seconds = time.perf_counter() - started

        metrics = {
            "reward": stats["reward_sum"] / stats["episodes"],
            "accuracy": stats["correct"] / stats["episodes"],
            "filtered_fraction": stats["filtered"] / stats["groups"],
            "masked_fraction": stats["masked"] / stats["groups"],
            "truncated_fraction": stats["truncated"] / stats["episodes"],
            "reward_errors": float(statuses["error"]),
            "reward_timeouts": float(statuses["timeout"]),
            "rollout_seconds": rollout_seconds,
        }
        if len(self.domains) > 1:  # which of a multi-domain stage's domains is learning
            metrics.update({f"reward/{d}": sum(v) / len(v) for d, v in domain_rewards.items()})
        if not kept:  # every group was uniform: nothing to learn from this step, and nothing to update
            metrics["skipped_update"] = 1.0
            return metrics

        # 2. advantages, then one (or a few, PPO-clip) optimizer steps on the kept groups
        episodes = [e for group in kept for e in group]
        advantages = group_advantages(torch.tensor([[e.reward for e in group] for group in kept])).reshape(-1)
        batch = Batch.of(episodes, advantages, policy.pad_id)
        metrics.update(self.objective.prepare(batch, context))
        metrics.update(self.update(batch, trainer, step))
        metrics["response_tokens"] = stats["generated"] / stats["episodes"]
        metrics["tokens_per_s"] = stats["generated"] / (time.perf_counter() - started)
        metrics["groups_kept"] = float(len(kept))
        if "teacher_seconds" in metrics:
            metrics["teacher_time_share"] = metrics["teacher_seconds"] / (time.perf_counter() - started)
        return metrics

    def draw(self, pools, n: int, seed: int, step: int, round_: int) -> dict[str, list]:
        """``n`` prompts spread over the stage's domains; a function of (seed, step, round) for resume."""
        rng = random.Random(seed * 1_000_003 + step * 7919 + round_)
        domains = [self.domains[i % len(self.domains)] for i in range(n)]
        drawn: dict[str, list] = {}
        for domain in domains:
            drawn.setdefault(domain, []).append(rng.choice(pools[domain]))
        return drawn

    def update(self, batch: Batch, trainer: Trainer, step: int) -> dict[str, float]:
        """``updates_per_batch`` optimizer steps on ``batch`` (1 = strictly on-policy)."""
        cfg = self.config
        tokens = batch.mask.sum().clamp(min=1)
        old_logprobs: dict[int, torch.Tensor] = {}
        sums = {"loss": 0.0, "entropy": 0.0, "kl": 0.0, "rollout_logprob_gap": 0.0}
        for update in range(cfg.updates_per_batch):
            for start in range(0, batch.input_ids.shape[0], cfg.micro_batch):
                micro = batch.rows(start, start + cfg.micro_batch)
                if cfg.share_prompts:
                    logprobs, entropy, hits, choices = shared_prompt_logprobs(
                        trainer.model, micro, cfg.temperature, update == 0, cfg.routing_replay, trainer.balancer)
                else:
                    trainer.balancer.token_mask = micro.attention_mask
                    with replay_routing(trainer.model, micro.routed_experts if cfg.routing_replay else None) as replay:
                        logprobs, entropy = token_logprobs(trainer.model, micro.input_ids, micro.attention_mask,
                                                           with_entropy=update == 0, temperature=cfg.temperature)
                    hits, choices = replay.hits, replay.total
                if update == 0:  # before any optimizer step: these are the behaviour policy's log-probs
                    sums["routing_hits"] = sums.get("routing_hits", 0.0) + hits
                    sums["routing_choices"] = sums.get("routing_choices", 0) + choices
                    old_logprobs[start] = logprobs.detach()
                    sums["entropy"] += (entropy * micro.mask).sum().item()
                    sums["rollout_logprob_gap"] += ((logprobs.detach() - micro.rollout_logprobs).abs() * micro.mask).sum().item()
                loss, stats = self.objective.loss(logprobs, old_logprobs[start], micro, batch)
                if self.reference is not None:
                    with torch.no_grad():
                        ref_logprobs, _ = token_logprobs(self.reference, micro.input_ids, micro.attention_mask, temperature=cfg.temperature)
                    log_ratio = ref_logprobs - logprobs
                    kl = torch.exp(log_ratio) - log_ratio - 1  # k3 estimator of KL(pi || ref), always >= 0
                    loss = loss + cfg.kl_coef * (kl * micro.mask).sum() / tokens
                    sums["kl"] += (kl.detach() * micro.mask).sum().item()
                check_finite(loss, step)
                loss.backward()
                sums["loss"] += loss.item()
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value
            optim_metrics = trainer.step()
        n = tokens.item()
        return {
            "loss": sums["loss"] / cfg.updates_per_batch,
            "entropy": sums["entropy"] / n,
            "kl": sums["kl"] / (n * cfg.updates_per_batch),
            "rollout_logprob_gap": sums["rollout_logprob_gap"] / n,
            **self.objective.summarize(sums, batch, cfg.updates_per_batch),
            **optim_metrics,
            **({"routing_agreement": sums["routing_hits"] / sums["routing_choices"]} if sums.get("routing_choices") else {}),
        }
