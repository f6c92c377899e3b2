"""Config presets of cascade-rlhf: ``domain=rlhf``, ``stage=reward_model``, ``stage=rlhf``."""
