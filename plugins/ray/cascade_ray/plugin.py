"""Registers the ``ray`` reward, teacher and rollout engine and the ``rollout=ray`` preset.

The factories import Ray only when a config asks for it: loading the plugin costs nothing.
"""

from cascade import hookimpl


def ray_reward(**options):
    from cascade_ray.reward import RayReward

    return RayReward(**options)


def ray_teacher(checkpoint, **options):
    from cascade_ray.teacher import RayTeacher

    return RayTeacher(checkpoint, **options)


def ray_rollout_engine(policy, rollout_config):
    from omegaconf import OmegaConf

    from cascade_ray.rollout import RayRolloutEngine

    return RayRolloutEngine(policy, **OmegaConf.to_container(rollout_config.options, resolve=True))


@hookimpl
def cascade_rewards():
    return {"ray": ray_reward}


@hookimpl
def cascade_teachers():
    return {"ray": ray_teacher}


@hookimpl
def cascade_rollout_engines():
    return {"ray": ray_rollout_engine}


@hookimpl
def cascade_config_searchpaths():
    return ["pkg://cascade_ray.conf"]
