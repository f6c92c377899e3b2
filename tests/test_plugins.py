"""Plugin discovery and validation: each failure is an error naming the plugin and its distribution."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import TOY_ARGS, run_cascade

from cascade.plugins import PluginError, PluginManager


def make_distribution(root, dist: str, modules: dict[str, str], entry_points: dict[str, str], version="1.2.3"):
    """An installed-looking distribution on ``root`` (a .dist-info directory), without pip."""
    for name, source in modules.items():
        path = root / (name.replace(".", "/") + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[cascade]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


GOOD = """
    from cascade import hookimpl, Stage

    class Echo(Stage):
        def run(self, start, context):
            return start

    @hookimpl
    def cascade_stage_types():
        return {"echo": Echo}
"""


def test_entry_point_plugins_are_found_with_their_distribution(site):
    make_distribution(site, "cascade-echo", {"echo_plugin": GOOD}, {"echo": "echo_plugin"})
    pm = PluginManager().load_entry_points()
    info = pm.plugins["echo"]
    assert (info.distribution, info.version) == ("cascade-echo", "1.2.3")
    assert info.provides == {"stages": ["echo"]}
    assert pm.component("stages", "echo").plugin is info


def test_a_plugin_that_fails_to_import_is_named(site):
    make_distribution(site, "cascade-broken", {"broken_plugin": "import does_not_exist\n"}, {"broken": "broken_plugin"})
    with pytest.raises(PluginError) as err:
        PluginManager().load_entry_points()
    message = str(err.value)
    assert "plugin 'broken' (broken_plugin) from distribution 'cascade-broken 1.2.3' failed to import" in message
    assert "No module named 'does_not_exist'" in message


def test_a_hookimpl_with_a_wrong_signature_is_named_with_the_real_signature(site):
    source = """
        from cascade import hookimpl

        @hookimpl
        def cascade_step_end(stage, step, metrcs):
            pass
    """
    make_distribution(site, "cascade-typo", {"typo_plugin": source}, {"typo": "typo_plugin"})
    with pytest.raises(PluginError) as err:
        PluginManager().load_entry_points()
    message = str(err.value)
    assert "plugin 'typo' (typo_plugin) from distribution 'cascade-typo 1.2.3' is invalid" in message
    assert "{'metrcs'}" in message
    assert "the hook is: cascade_step_end(run, stage, step, metrics)" in message


def test_an_unknown_hook_name_suggests_the_right_one(site):
    source = """
        from cascade import hookimpl

        @hookimpl
        def cascade_stage_type():
            return {}
    """
    make_distribution(site, "cascade-unknown", {"unknown_plugin": source}, {"unknown": "unknown_plugin"})
    with pytest.raises(PluginError, match=r"unknown hook 'cascade_stage_type'.*did you mean 'cascade_stage_types'\?"):
        PluginManager().load_entry_points()


def test_two_plugins_providing_the_same_stage_are_both_named(site):
    make_distribution(site, "cascade-echo-a", {"echo_a": GOOD}, {"echo_a": "echo_a"})
    make_distribution(site, "cascade-echo-b", {"echo_b": GOOD}, {"echo_b": "echo_b"})
    with pytest.raises(PluginError) as err:
        PluginManager().load_entry_points()
    message = str(err.value)
    assert "stage 'echo' is provided twice" in message
    assert "'cascade-echo-a 1.2.3'" in message and "'cascade-echo-b 1.2.3'" in message


def test_two_plugins_with_the_same_name_are_both_named(site):
    make_distribution(site, "cascade-one", {"one_plugin": GOOD}, {"same": "one_plugin"})
    make_distribution(site, "cascade-two", {"two_plugin": "\n"}, {"same": "two_plugin"})
    with pytest.raises(PluginError, match=r"two plugins are named 'same': .*cascade-one.*cascade-two|two plugins are named 'same': .*cascade-two.*cascade-one"):
        PluginManager().load_entry_points()


def test_a_provider_returning_garbage_is_named(site):
    source = """
        from cascade import hookimpl

        @hookimpl
        def cascade_rewards():
            return ["exact"]
    """
    make_distribution(site, "cascade-garbage", {"garbage_plugin": source}, {"garbage": "garbage_plugin"})
    with pytest.raises(PluginError, match=r"plugin 'garbage'.*cascade_rewards\(\) must return a dict of name -> factory"):
        PluginManager().load_entry_points()


def test_cascade_plugins_lists_who_provides_what(toy_env, tmp_path):
    described = json.loads(run_cascade(["plugins", "--json"], toy_env, tmp_path).stdout)
    by_name = {p["name"]: p for p in described}
    assert by_name["loggers"]["distribution"] == "cascade-loggers"
    assert by_name["loggers"]["provides"]["loggers"] == ["console", "jsonl", "wandb"]
    toy = by_name["cascade_toy.plugin"]
    assert toy["provides"]["stages"] == ["memorize"]
    assert "cascade_evaluate" in toy["hooks"] and toy["config_searchpaths"] == ["pkg://cascade_toy.conf"]
    table = run_cascade(["plugins"], toy_env, tmp_path).stdout
    assert "cascade-loggers" in table and "memorize" in table


THIRD_PARTY_PLUGIN = '''
"""A third-party domain: answer the string reversed. Its stage "reverse" sets a table entry per step."""
import json
from dataclasses import dataclass
from pathlib import Path

from cascade import Checkpoint, Environment, Reward, RewardResult, Sample, Stage, hookimpl


class Words(Environment):
    def samples(self, split, n, seed):
        words = ["cascade", "plugin", "reward", "stage"]
        return [Sample(id=w, domain=self.domain, messages=[{"role": "user", "content": w}], answer=w[::-1]) for w in words[:n]]


class Exact(Reward):
    def score(self, episodes_G):
        return [RewardResult(float(e.messages[-1]["content"] == e.sample.answer)) for e in episodes_G]


class Reverse(Stage):
    @dataclass
    class Config:
        words: int = 2

    def run(self, start, context):
        known = json.loads((Path(start.path) / "known.json").read_text()) if (Path(start.path) / "known.json").exists() else {}
        for step, sample in enumerate(context.environment(self.domains[0]).samples("train", self.config.words, 0), 1):
            known[sample.id] = sample.answer
            context.log(step, {"known": len(known)})
        out = context.stage_dir / "model"
        out.mkdir(parents=True)
        (out / "known.json").write_text(json.dumps(known))
        return Checkpoint(self.name, str(out))


@hookimpl
def cascade_stage_types():
    return {"reverse": Reverse}


@hookimpl
def cascade_environments():
    return {"words": Words}


@hookimpl
def cascade_rewards():
    return {"reverse_exact": Exact}


@hookimpl
def cascade_config_searchpaths():
    return ["pkg://cascade_reverse.conf"]


@hookimpl
def cascade_init_checkpoint(model_config, path):
    if model_config.arch != "reverse_table":
        return None
    Path(path).mkdir(parents=True)
    return Checkpoint("init", path, lineage="reverse")


@hookimpl
def cascade_evaluate(checkpoint, environment, reward, options, seed):
    from cascade import Episode

    file = Path(checkpoint.path) / "known.json"
    known = json.loads(file.read_text()) if file.exists() else {}
    samples = environment.samples("test", 4, seed)
    episodes = [Episode(s, [{"role": "assistant", "content": known.get(s.id, "")}], [], [], []) for s in samples]
    scores = [r.value for r in reward.score(episodes)]
    return {"score": sum(scores) / len(scores)}
'''


def test_third_party_plugin_pip_installed_then_uninstalled(tmp_path, toy_env):
    """The whole life of a third-party plugin: pip install, discovery, a cascade in config, pip uninstall."""
    pkg = tmp_path / "cascade-reverse"
    (pkg / "cascade_reverse" / "conf" / "cascade").mkdir(parents=True)
    (pkg / "cascade_reverse" / "conf" / "model").mkdir()
    (pkg / "cascade_reverse" / "__init__.py").write_text("")
    (pkg / "cascade_reverse" / "conf" / "__init__.py").write_text("")
    (pkg / "cascade_reverse" / "plugin.py").write_text(THIRD_PARTY_PLUGIN)
    (pkg / "cascade_reverse" / "conf" / "model" / "reverse_table.yaml").write_text("arch: reverse_table\n")
    (pkg / "cascade_reverse" / "conf" / "cascade" / "reverse.yaml").write_text(textwrap.dedent("""\
        name: reverse
        domains:
          reverse: {environment: words, reward: reverse_exact}
        stages:
          learn: {type: reverse, params: {words: 3}}
    """))
    (pkg / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "cascade-reverse"
        version = "0.0.1"
        dependencies = ["cascade-rl"]

        [project.entry-points.cascade]
        reverse = "cascade_reverse.plugin"

        [tool.setuptools]
        packages = ["cascade_reverse", "cascade_reverse.conf"]

        [tool.setuptools.package-data]
        "cascade_reverse.conf" = ["**/*.yaml"]
    """))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", str(pkg)], check=True, capture_output=True)
    try:
        listed = {p["name"]: p for p in json.loads(run_cascade(["plugins", "--json"], toy_env, tmp_path).stdout)}
        assert listed["reverse"]["distribution"] == "cascade-reverse"
        assert listed["reverse"]["provides"]["stages"] == ["reverse"]

        args = ["train", "cascade=reverse", "model=reverse_table", "loggers=[]", "run_dir=run"]
        run_cascade(args, toy_env, tmp_path)
        scores = json.loads((tmp_path / "run" / "report.json").read_text())["scores"]
        assert scores == {"init": {"reverse": 0.0}, "learn": {"reverse": 0.75}}
    finally:
        subprocess.run([*pip, "uninstall", "-y", "cascade-reverse"], check=True, capture_output=True)

    gone = run_cascade(["train", "cascade=reverse", "model=reverse_table", "loggers=[]", "run_dir=run2"], toy_env, tmp_path, check=False)
    assert gone.returncode == 2
    assert "Could not find 'cascade/reverse'" in gone.stderr and "Available options in 'cascade'" in gone.stderr
    # a cascade spelled out in config that needs the plugin's stage type names what does exist
    gone = run_cascade(["train", *TOY_ARGS, "run_dir=run3", "cascade.stages.learn_add.type=reverse"], toy_env, tmp_path, check=False)
    assert gone.returncode == 2
    assert "cascade.stages.learn_add.type: unknown stage 'reverse' Available: " in gone.stderr
    assert "memorize" in gone.stderr.split("Available: ")[1] and "reverse" not in gone.stderr.split("Available: ")[1]


def test_an_unknown_name_with_nothing_installed_says_so():
    from cascade.plugins import unknown_name_message

    assert unknown_name_message("wrapper", "mopd", []) == "unknown wrapper 'mopd' Available: (none: is the plugin that provides it installed?)"
