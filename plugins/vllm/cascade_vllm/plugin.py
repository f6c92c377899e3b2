"""Registers the ``vllm`` rollout engine and the ``rollout=vllm`` preset.

vLLM is imported only when a config asks for the engine: the plugin loads (and `cascade plugins` lists it) where
vLLM is not installed, and asking for it there says how to install it.
"""

from cascade import hookimpl


def vllm_rollout_engine(policy, rollout_config):
    from omegaconf import OmegaConf

    from cascade_vllm.engine import VLLMRolloutEngine

    return VLLMRolloutEngine(policy, **OmegaConf.to_container(rollout_config.options, resolve=True))


@hookimpl
def cascade_rollout_engines():
    return {"vllm": vllm_rollout_engine}


@hookimpl
def cascade_config_searchpaths():
    return ["pkg://cascade_vllm.conf"]
