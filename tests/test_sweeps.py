"""Sweeps: ``objective=STAGE.DOMAIN`` is the held-out score a run returns, and Hydra's Optuna sweeper tunes on it."""

from __future__ import annotations

import json

import pytest
from conftest import TOY_ARGS, run_cascade
from omegaconf import OmegaConf

from cascade.config import ConfigError, compose
from cascade.plugins import PluginManager
from cascade.runner import CascadeRunner


def plan(tmp_path, *overrides) -> CascadeRunner:
    plugins = PluginManager().load()
    return CascadeRunner(compose([*TOY_ARGS, *overrides], plugins.config_searchpaths()), plugins, tmp_path / "run")


def test_the_objective_is_a_stage_and_a_domain_checked_before_training(tmp_path, toy_env):
    assert plan(tmp_path).objective is None
    assert plan(tmp_path, "objective=learn_add.add").objective == ("learn_add", "add")
    assert plan(tmp_path, "objective=init.mul").objective == ("init", "mul")  # the starting model's row
    with pytest.raises(ConfigError, match=r"objective=learn_ad\.add: unknown stage 'learn_ad'; did you mean 'learn_add'\? "
                                          r"Available: init, learn_add, learn_mul"):
        plan(tmp_path, "objective=learn_ad.add")
    with pytest.raises(ConfigError, match=r"objective=learn_add\.sub: unknown domain 'sub'.* Available: add, mul"):
        plan(tmp_path, "objective=learn_add.sub")
    with pytest.raises(ConfigError, match=r"objective=learn_add: expected STAGE\.DOMAIN"):
        plan(tmp_path, "objective=learn_add")
    assert not (tmp_path / "run").exists()


def test_optuna_tunes_a_stage_option_on_the_objective(tmp_path, toy_env):
    """The toy stage has no learning rate; its step count changes its score the same way."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper is not installed: pip install -e '.[optuna]'")
    run_cascade(["train", "-m", *TOY_ARGS, "objective=learn_add.add", "hydra/sweeper=optuna", "hydra.sweeper.direction=maximize",
                 "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.seed=1", "hydra.sweep.dir=sweep",
                 "cascade.stages.learn_add.params.steps=tag(log, int(interval(1, 20)))"], toy_env, tmp_path)
    reports = [json.loads((tmp_path / "sweep" / str(job) / "report.json").read_text()) for job in range(3)]
    steps = [r["config"]["cascade"]["stages"]["learn_add"]["params"]["steps"] for r in reports]
    scores = [r["scores"]["learn_add"]["add"] for r in reports]
    assert len(set(scores)) > 1  # the option matters: there is a best to find
    results = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert results.best_value == max(scores)
    assert results.best_params == {"cascade.stages.learn_add.params.steps": steps[scores.index(max(scores))]}
