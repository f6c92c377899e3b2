"""Held-out evaluation: pass@1 (greedy by default) of a checkpoint on one domain's test split."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from cascade.engine.grpo import score_groups
from cascade.engine.policy import Policy, load_policy
from cascade.engine.rollout import HFRolloutEngine, collect_episodes
from cascade.types import Checkpoint, Environment, Episode, Reward, Sample, SamplingParams

_loaded: tuple[str, Policy] | None = None


def policy_for(checkpoint: Checkpoint) -> Policy:
    """The runner scores every domain on one checkpoint in a row: load it once."""
    global _loaded
    if _loaded is None or _loaded[0] != checkpoint.path:
        _loaded = (checkpoint.path, load_policy(checkpoint.path))
    return _loaded[1]


def evaluate(checkpoint: Checkpoint, environment: Environment, reward: Reward, options, seed: int) -> dict[str, float] | None:
    if not (Path(checkpoint.path) / "config.json").exists():
        return None  # not a Hugging Face checkpoint: another plugin's
    samples, episodes, values, statuses = held_out_episodes(policy_for(checkpoint), environment, reward, options, seed)
    return {
        "score": sum(values) / len(values),
        **breakdown(samples, values, options.breakdown),
        "n": float(len(values)),
        "truncated": sum(e.truncated for e in episodes) / len(episodes),
        "response_tokens": sum(e.num_generated for e in episodes) / len(episodes),
        "reward_errors": float(statuses["error"] + statuses["timeout"]),
        "tool_call_rate": sum(any(m.get("role") == "tool" for m in e.messages) for e in episodes) / len(episodes),
    }


def held_out_episodes(policy: Policy, environment: Environment, reward: Reward, options, seed: int
                      ) -> tuple[list[Sample], list[Episode], list[float], Counter]:
    """The evaluation's items (``options.n`` of the test split), their episodes, scores and reward statuses."""
    samples = environment.samples("test", options.n, seed)
    params = SamplingParams(options.max_new_tokens, options.temperature, 1.0, 1, seed)
    episodes = collect_episodes(HFRolloutEngine(policy, options.batch_size), policy, environment, samples, params, options.thinking)
    values, statuses = [], Counter()
    for scores, counts in score_groups(reward, [[episode] for episode in episodes]):
        values += scores
        statuses.update(counts)
    return samples, episodes, values, statuses


def breakdown(samples: list[Sample], values: list[float], key: str | None) -> dict[str, float]:
    """``score/<value>``: the mean score of the samples whose ``meta[key]`` is that value (none without a key)."""
    if key is None:
        return {}
    groups: dict[str, list[float]] = defaultdict(list)
    for sample, value in zip(samples, values):
        groups[str(sample.meta.get(key))].append(value)
    return {f"score/{name}": sum(group) / len(group) for name, group in sorted(groups.items())}
