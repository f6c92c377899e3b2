"""cascade-rl: SFT, Cascade RL and multi-domain on-policy distillation, composed from plugins.

A plugin imports only what is re-exported here::

    from cascade import hookimpl, Stage, Environment, Reward, Sample
"""

from cascade.context import RunInfo, StageContext, StageInfo
from cascade.plugins import hookimpl
from cascade.types import (
    Checkpoint,
    Environment,
    Episode,
    Generation,
    Message,
    Metrics,
    Reward,
    RewardResult,
    RolloutEngine,
    Sample,
    SamplingParams,
    Stage,
    StageError,
    StepResult,
    Teacher,
)

__version__ = "0.1.0"

__all__ = [
    "Checkpoint", "Environment", "Episode", "Generation", "Message", "Metrics", "Reward", "RewardResult",
    "RolloutEngine", "RunInfo", "Sample", "SamplingParams", "Stage", "StageContext", "StageError", "StageInfo", "StepResult",
    "Teacher", "hookimpl",
]
