"""Config errors fail fast, before any work, naming the bad key and the valid ones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import TOY_ARGS

from cascade.config import AppConfig, ConfigError, compose, valid_keys
from cascade.plugins import PluginManager
from cascade.runner import CascadeRunner


def plan(tmp_path, *overrides):
    plugins = PluginManager().load()
    return CascadeRunner(compose([*TOY_ARGS, *overrides], plugins.config_searchpaths()), plugins, tmp_path)


@pytest.mark.parametrize(
    "override, message",
    [
        ("cascade.stagez=1", "unknown config key 'cascade.stagez'; did you mean 'cascade.stages'? Valid keys under 'cascade': domains, name, order, stages"),
        ("sed=1", "unknown config key 'sed'; did you mean 'seed'?"),
        ("eval.nn=3", "unknown config key 'eval.nn'; did you mean 'eval.n'? Valid keys under 'eval': batch_size, breakdown, max_new_tokens, n, temperature"),
        ("cascade.stages.learn_add.typ=x", "unknown config key 'cascade.stages.learn_add.typ'; did you mean 'cascade.stages.learn_add.type'?"),
        ("seed=abc", "bad value for 'seed': Value 'abc' of type 'str' could not be converted to Integer"),
        ("cascade.stages.learn_add.params.stepz=3", "to add it, write '+cascade.stages.learn_add.params.stepz=...'"),
        ("cascade=nope", "Could not find 'cascade/nope'"),
        ("+cascade.stages.extra.type=sft", "cannot build the new stage 'extra' key by key; add it from a preset, '+stage@cascade.stages.extra=PRESET'"),
        ("+cascade.domains.extra.environment=sums", "cannot build the new domain 'extra' key by key"),
    ],
)
def test_cli_config_errors_name_the_key(fresh_cli, toy_env, capsys, tmp_path, monkeypatch, override, message):
    monkeypatch.chdir(tmp_path)
    assert fresh_cli.main(["train", *TOY_ARGS, override]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "outputs" / "toy").exists() or not any((tmp_path / "outputs" / "toy").glob("*/checkpoints"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("+cascade.stages.learn_add.params.stepz=3", "cascade.stages.learn_add.params: unknown config key 'stepz'; did you mean 'steps'? Valid keys: batch, checkpoint_every, steps"),
        ("cascade.stages.learn_add.params.steps=many", "cascade.stages.learn_add.params: bad value for 'steps'"),
        ("cascade.stages.learn_add.type=memorise", "cascade.stages.learn_add.type: unknown stage 'memorise'; did you mean 'memorize'? Available: "),
        ("cascade.stages.learn_add.domains=[ad]", "cascade.stages.learn_add.domains: unknown domain 'ad'; did you mean 'add'? Available: add, mul"),
        ("cascade.domains.add.environment=modular", "cascade.domains.add.environment: unknown environment 'modular'; did you mean 'modular_arithmetic'?"),
        ("cascade.domains.add.reward=exact", "cascade.domains.add.reward: unknown reward 'exact'; did you mean 'exact_answer'?"),
        ("+cascade.stages.learn_add.wrap.mopdd={}", "cascade.stages.learn_add.wrap: unknown wrapper 'mopdd'; did you mean 'mopd'? Available: mopd"),
        ("cascade.order=[learn_add,learn_mull]", "cascade.order: unknown stage 'learn_mull'; did you mean 'learn_mul'?"),
        ("+loggers.jsonll={}", "loggers.jsonll: unknown logger 'jsonll'; did you mean 'jsonl'? Available: console, jsonl, wandb"),
        ("+cascade.domains.add.eval.nn=4", "cascade.domains.add.eval: unknown config key 'nn'; did you mean 'n'?"),
    ],
)
def test_plugin_options_are_checked_before_any_work(tmp_path, toy_env, override, message):
    with pytest.raises(ConfigError) as err:
        plan(tmp_path, override)
    assert message in str(err.value)
    assert not any(tmp_path.iterdir())  # nothing was written


def test_valid_keys_follow_the_schema_through_dicts():
    assert valid_keys(AppConfig, ["cascade", "stages", "anything"]) == ["type", "domains", "params", "wrap", "seed"]
    assert valid_keys(AppConfig, ["cascade", "stages", "x", "params"]) is None  # free-form: the stage checks


def test_a_cascade_without_stages_is_refused(tmp_path, toy_env):
    with pytest.raises(ConfigError, match="cascade 'toy' has no stages"):
        plan(tmp_path, "~cascade.stages.learn_add", "~cascade.stages.learn_mul")


def test_init_is_a_reserved_stage_name(tmp_path, toy_env):
    with pytest.raises(ConfigError, match="'init' is reserved"):
        plan(tmp_path, "+stage@cascade.stages.init=toy_memorize")


def test_hydra_flags_work_after_overrides(fresh_cli, toy_env, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert fresh_cli.main(["train", *TOY_ARGS, "seed=7", "--cfg", "job"]) == 0
    assert "seed: 7" in capsys.readouterr().out
    assert not (tmp_path / "outputs").exists()  # printing the config runs nothing


def test_readme_quotes_the_default_cascade_as_it_is():
    """README shows conf/cascade/default.yaml whole: a stale copy there misleads every newcomer."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    head = "```yaml\n# conf/cascade/default.yaml\n"
    quoted = readme[readme.index(head) + len(head):]
    assert quoted[:quoted.index("```")] == (root / "conf" / "cascade" / "default.yaml").read_text()


def test_default_smoke_and_math_cascades_compose():
    """The embedded default holds the bundled domains in the paper's stage order on the full-width model;
    smoke runs the same stages on the half-width model; math narrows to math SFT and GRPO."""
    searchpaths = PluginManager().load().config_searchpaths()
    default = compose([], searchpaths)
    domains = ["math", "math_tool", "if", "mcq", "structured", "workplace", "rlhf", "longctx", "code", "swe_agentless", "swe_agentic",
               "retrieval"]
    stages = ["sft", "if_rl", "multidomain_rl", "mopd", "reward_model", "rlhf", "longctx_rl", "code_rl", "swe_agentless",
              "swe_agentic"]
    assert list(default.cascade.domains) == domains and list(default.cascade.stages) == stages
    assert list(default.cascade.stages.mopd.domains) == ["math", "math_tool", "if", "mcq", "structured", "workplace"]
    assert default.cascade.domains.math_tool.variant_of == "math" and default.cascade.domains.math_tool.environment_options.python_tool
    assert default.cascade.stages.rlhf.params.kl_coef == 0.03
    assert default.model.options.hidden_size == 256
    smoke = compose(["cascade=smoke"], searchpaths)
    assert smoke.cascade.name == "smoke" and list(smoke.cascade.stages) == stages
    assert list(smoke.cascade.domains) == domains and smoke.model.options.hidden_size == 128
    retrieval_first = compose(["cascade=retrieval_first"], searchpaths)
    assert list(retrieval_first.cascade.domains) == domains
    # no explicit order: the runner takes the stages in config order, the retrieval stage first
    assert retrieval_first.cascade.order is None and list(retrieval_first.cascade.stages) == ["retrieval_sft", *stages]
    assert retrieval_first.cascade.stages.retrieval_sft.domains == ["retrieval"]
    assert retrieval_first.cascade.stages.sft.params.optim.lr == 1e-3 and default.cascade.stages.sft.params.optim.lr == 2e-3
    forgetting = compose(["cascade=forgetting"], searchpaths)
    assert list(forgetting.cascade.domains) == domains and list(forgetting.cascade.order) == ["sft", "if_rl", "math_sft", "mopd"]
    math = compose(["cascade=math"], searchpaths)
    assert math.cascade.name == "math" and list(math.cascade.stages) == ["sft", "math_grpo"]
    assert list(math.cascade.domains) == ["math"]
    assert math.model.options.hidden_size == 128



def test_threads_zero_means_omp_num_threads_else_every_cpu(monkeypatch):
    from cascade.cli import torch_threads

    assert torch_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert torch_threads(0) == 2
    cpus = len(os.sched_getaffinity(0))
    for unusable in ("", "0", "many"):
        monkeypatch.setenv("OMP_NUM_THREADS", unusable)
        assert torch_threads(0) == cpus
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert torch_threads(0) == cpus
    with pytest.raises(ConfigError, match="threads=-1"):
        torch_threads(-1)
