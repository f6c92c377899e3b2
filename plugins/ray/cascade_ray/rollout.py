"""The ``ray`` rollout engine (``rollout=ray``): the transformers engine in a Ray actor with its own copy of the policy.

What makes its generations the in-process engine's, token for token:

* the weights: the trainer's state dict is put in the object store once per change and the actor loads it before
  its next generation. A change is an in-place update of any weight or buffer (optimizer step, expert-bias
  balancing, a resumed step checkpoint), seen in the tensors' version counters, so the engine stays current
  whether or not the stage calls :meth:`RayRolloutEngine.load_weights`;
* the random numbers: GRPO samples without a seed, from the trainer's global torch generator, so each call
  carries that generator's state to the actor and brings back the state after sampling; the trainer's stream
  goes on exactly as if it had sampled itself (a seeded call uses its own generator and leaves it unchanged);
* the arithmetic: the actor runs with the trainer process's :class:`~cascade_ray.numerics.Numerics` (torch threads,
  cascade's Mamba scan).

The actor loads the policy from the stage's start checkpoint (``model.name_or_path``), so on a multi-node cluster
that directory must be on a shared filesystem. A killed actor is restarted with those start weights; the retried
call carries the last weights' ObjectRef (the engine keeps it) and the same generator state, so it returns what the
first attempt would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import ray
import torch
from torch import nn

from cascade.config import validate_options
from cascade.engine.policy import Policy, dtype_name, load_policy, weights_version
from cascade.engine.rollout import HFRolloutEngine
from cascade.types import Generation, RolloutEngine, SamplingParams
from cascade_ray.cluster import ActorOptions, Worker, start_actors, stop_actors
from cascade_ray.numerics import Numerics


@dataclass
class RayRolloutOptions(ActorOptions):
    batch_size: int = 256
    record_routing: bool = True


class RolloutWorker(Worker):
    """An :class:`HFRolloutEngine` on the policy loaded as the trainer loaded it (the stage's start checkpoint); the
    trainer's current weights replace the loaded ones on the first call."""

    def __init__(self, path: str, dtype: str, batch_size: int, record_routing: bool, numerics: Numerics):
        numerics.apply()
        self.engine = HFRolloutEngine(load_policy(path, dtype), batch_size, record_routing)
        self.weights_version: int | None = None

    def generate(self, prompts_B: Sequence[Sequence[int]], params: SamplingParams, weights: list, weights_version: int,
                 rng_state: torch.Tensor) -> tuple[list[list[Generation]], torch.Tensor]:
        """``weights`` is ``[ObjectRef]`` (in a list, so Ray passes the reference and the actor fetches the state
        dict only when its version is new to it: once per update, and after a restart)."""
        if weights_version != self.weights_version:
            self.engine.policy.model.load_state_dict(ray.get(weights[0]))
            self.weights_version = weights_version
        torch.set_rng_state(rng_state)
        return self.engine.generate(prompts_B, params), torch.get_rng_state()


class RayRolloutEngine(RolloutEngine):
    def __init__(self, policy: Policy, **options):
        config = validate_options(RayRolloutOptions, options, "rollout.options")
        self.policy = policy
        model = policy.model
        [self.actor] = start_actors(RolloutWorker, config, 1, "ray rollout engine", model.name_or_path, dtype_name(model),
                                    config.batch_size, config.record_routing, Numerics.of_this_process())
        self.weights: ray.ObjectRef | None = None
        """The last weights sent, kept so that a restarted actor can load them again."""
        self.weights_version = 0
        self.sent_versions: tuple[int, ...] | None = None
        """The model's tensor versions when those weights were sent."""

    def load_weights(self, model: nn.Module) -> None:
        """Put ``model``'s weights in the object store for the actor, unless they are the ones sent last."""
        versions = weights_version(model)
        if versions == self.sent_versions:
            return
        self.weights = ray.put(model.state_dict())  # serialised now: later in-place updates do not reach this copy
        self.weights_version += 1
        self.sent_versions = versions

    def generate(self, prompts_B: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Generation]]:
        self.load_weights(self.policy.model)  # whether or not the stage did after its update
        groups, rng_state = ray.get(self.actor.generate.remote(
            prompts_B, params, [self.weights], self.weights_version, torch.get_rng_state()))
        torch.set_rng_state(rng_state)
        return groups

    def close(self) -> None:
        """Stop the actor now rather than when this engine is garbage-collected."""
        stop_actors([self.actor])

