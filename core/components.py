"""Each domain's environment, reward and evaluation settings, made from the config once and shared by the stages
and evaluation (the runner's, and each evaluation worker's own)."""

from __future__ import annotations

import time

from omegaconf import DictConfig, OmegaConf

from cascade.config import ConfigError, EvalConfig, validate_options
from cascade.plugins import PluginManager
from cascade.types import Checkpoint, Environment, Reward


def domain_reward(config: DictConfig, domain: str, overlay=None) -> tuple[str, dict]:
    """The name and options of ``domain``'s own reward, with ``overlay`` laid over its options (a stage's
    ``domain_reward_options``: other options for training only)."""
    spec = config.cascade.domains[domain]
    return spec.reward, {**OmegaConf.to_container(spec.reward_options, resolve=True), **(overlay or {})}


class Components:
    def __init__(self, config: DictConfig, plugins: PluginManager):
        self.config = config
        self.plugins = plugins
        self._environments: dict[str, Environment] = {}
        self._rewards: dict[str, Reward] = {}

    def environment(self, domain: str) -> Environment:
        if domain not in self._environments:
            spec = self.config.cascade.domains[domain]
            factory = self.plugins.component("environments", spec.environment).factory
            env = factory(**OmegaConf.to_container(spec.environment_options, resolve=True))
            env.domain = domain
            self._environments[domain] = env
        return self._environments[domain]

    def reward(self, domain: str) -> Reward:
        if domain not in self._rewards:
            name, options = domain_reward(self.config, domain)
            self._rewards[domain] = self.plugins.component("rewards", name).factory(**options)
        return self._rewards[domain]

    def eval_options(self, domain: str) -> EvalConfig:
        """The top-level ``eval`` settings with the domain's own overrides."""
        merged = {**OmegaConf.to_container(self.config.eval), **OmegaConf.to_container(self.config.cascade.domains[domain].eval)}
        return validate_options(EvalConfig, merged, f"cascade.domains.{domain}.eval")

    def evaluate(self, checkpoint: Checkpoint, domain: str, seed: int) -> dict[str, float]:
        """``cascade_evaluate`` of one domain: its result as floats, plus ``seconds``, the time it took."""
        started = time.perf_counter()
        result = self.plugins.hook.cascade_evaluate(
            checkpoint=checkpoint,
            domain=domain,
            environment=self.environment(domain),
            reward=self.reward(domain),
            options=self.eval_options(domain),
            seed=seed,
        )
        if result is None:
            raise ConfigError(f"no plugin can evaluate checkpoint {checkpoint.path} (stage {checkpoint.stage})")
        return {k: float(v) for k, v in result.items()} | {"seconds": time.perf_counter() - started}

    def close(self) -> None:
        for component in [*self._environments.values(), *self._rewards.values()]:
            if callable(getattr(component, "close", None)):  # e.g. a reward's worker processes
                component.close()
