"""The training engine, registered like any other plugin: SFT and GRPO stages, the transformers rollout
engine, the in-process teacher, Hugging Face checkpoints (from scratch or from ``model.path``) and
held-out evaluation."""

from __future__ import annotations

from cascade.plugins import hookimpl


@hookimpl
def cascade_stage_types():
    from cascade.engine.grpo import GRPOStage
    from cascade.engine.sft import SFTStage

    return {"sft": SFTStage, "grpo": GRPOStage}


@hookimpl
def cascade_rollout_engines():
    from cascade.engine.rollout import HFRolloutEngine

    def hf(policy, rollout_config):
        return HFRolloutEngine(policy, **rollout_config.options)

    return {"hf": hf}


@hookimpl
def cascade_teachers():
    from cascade.engine.teacher import HFTeacher

    return {"hf": HFTeacher}


@hookimpl
def cascade_init_checkpoint(model_config, path, seed, environments):
    from cascade.engine.policy import init_checkpoint

    return init_checkpoint(model_config, path, seed, environments)


@hookimpl
def cascade_evaluate(checkpoint, environment, reward, options, seed):
    from cascade.engine.evaluate import evaluate

    return evaluate(checkpoint, environment, reward, options, seed)
