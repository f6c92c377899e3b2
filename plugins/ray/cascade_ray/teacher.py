"""The ``ray`` teacher (MOPD's ``teacher: ray``): an :class:`HFTeacher` in a Ray actor, off the trainer's process.

The actor loads the checkpoint from its path, so on a multi-node cluster that path must be on a shared filesystem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import ray

from cascade.config import validate_options
from cascade.engine.teacher import HFTeacher
from cascade.types import Checkpoint, Teacher
from cascade_ray.cluster import ActorOptions, Worker, start_actors, stop_actors
from cascade_ray.numerics import Numerics


@dataclass
class RayTeacherOptions(ActorOptions):
    batch_size: int = 32
    dtype: str = "float32"


class TeacherWorker(Worker):
    def __init__(self, checkpoint: Checkpoint, batch_size: int, dtype: str, numerics: Numerics):
        numerics.apply()
        self.teacher = HFTeacher(checkpoint, batch_size, dtype)

    def logprobs(self, token_ids_B: Sequence[Sequence[int]]) -> list[list[float]]:
        return self.teacher.logprobs(token_ids_B)


class RayTeacher(Teacher):
    def __init__(self, checkpoint: Checkpoint, **options):
        config = validate_options(RayTeacherOptions, options, "ray teacher options")
        self.checkpoint = checkpoint
        [self.actor] = start_actors(TeacherWorker, config, 1, f"ray teacher ({checkpoint.path})",
                                    checkpoint, config.batch_size, config.dtype, Numerics.of_this_process())

    def logprobs(self, token_ids_B: Sequence[Sequence[int]]) -> list[list[float]]:
        return ray.get(self.actor.logprobs.remote(token_ids_B))

    def close(self) -> None:
        """Stop the actor now rather than when this teacher is garbage-collected."""
        stop_actors([self.actor])
