"""The ``ray`` reward: any reward, by name, run in a few Ray actors that take the groups in turn.

    cascade.domains.math.reward: ray
    cascade.domains.math.reward_options: {reward: math_verify, options: {timeout: 5.0}, workers: 2, num_cpus: 0.5}

Each actor builds the named reward through its own plugin manager, so a restarted actor (its process was killed)
has the same reward again, and the group it was scoring is retried on it.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any, Dict, Sequence

import ray

from cascade.config import ConfigError, validate_options
from cascade.plugins import PluginManager
from cascade.types import Episode, Reward, RewardResult
from cascade_ray.cluster import ActorOptions, Worker, start_actors, stop_actors


@dataclass
class RayRewardOptions(ActorOptions):
    reward: str = ""
    """The reward the actors run (any name ``cascade plugins`` lists under rewards)."""
    options: Dict[str, Any] = field(default_factory=dict)
    """That reward's options."""
    workers: int = 2
    num_cpus: float = 0.5
    """Per worker: the default pair takes one CPU of the 2-CPU local cluster and leaves one to a rollout actor."""


class RewardWorker(Worker):
    def __init__(self, name: str, options: dict):
        self.reward = PluginManager().load().component("rewards", name).factory(**options)

    def score(self, episodes_G: Sequence[Episode]) -> list[RewardResult]:
        return self.reward.score(episodes_G)

    def close(self) -> None:
        if callable(getattr(self.reward, "close", None)):
            self.reward.close()


class RayReward(Reward):
    def __init__(self, **options):
        config = validate_options(RayRewardOptions, options, "ray reward options")
        if not config.reward:
            raise ConfigError("ray reward options: `reward` is not set; name the reward the workers run "
                              "(e.g. math_verify)")
        PluginManager().load().component("rewards", config.reward)  # an unknown name fails here, with suggestions
        self.workers = start_actors(RewardWorker, config, config.workers, f"ray reward ({config.reward})",
                                    config.reward, config.options)
        self._turns = itertools.cycle(self.workers)

    def score(self, episodes_G: Sequence[Episode]) -> list[RewardResult]:
        # rewards never read the routing, the largest part of an episode
        episodes = [dataclasses.replace(e, routed_experts=None) for e in episodes_G]
        return ray.get(next(self._turns).score.remote(episodes))

    def close(self) -> None:
        """Close each worker's reward (its own processes), then the workers; called by the runner at the end."""
        ray.get([worker.close.remote() for worker in self.workers])
        stop_actors(self.workers)
        self.workers = []
