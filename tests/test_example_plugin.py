"""The example third-party plugin (examples/cascade-wordplay), installed for real as a stranger would.

pip installs it into a temporary directory (never the shared site-packages); `cascade` then finds it
through its entry point in a subprocess whose PYTHONPATH holds that directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_cascade

from cascade import Episode, Sample

EXAMPLE = Path(__file__).parent.parent / "examples" / "cascade-wordplay"

TINY = [  # a real cascade (tokenizer, model, SFT, GRPO, three evaluations) in ~15 s on one core
    "cascade=wordplay",
    "model=tiny_nemotron_h_small",
    "model.options.vocab_size=400",
    "loggers=[]",
    "cascade.domains.wordplay.eval.n=16",
    "cascade.domains.wordplay.eval.max_new_tokens=12",
    "cascade.stages.sft.params.steps=4",
    "cascade.stages.sft.params.rows_per_step=2",
    "cascade.stages.sft.params.micro_rows=2",
    "cascade.stages.sft.params.seq_len=256",
    "cascade.stages.sft.params.demonstrations_per_domain=40",
    "cascade.stages.wordplay_rl.params.steps=2",
    "cascade.stages.wordplay_rl.params.prompts_per_step=2",
    "cascade.stages.wordplay_rl.params.group_size=4",
    "cascade.stages.wordplay_rl.params.max_new_tokens=12",
    "cascade.stages.wordplay_rl.params.dynamic_filter=false",  # else all-wrong groups are resampled
    "cascade.stages.wordplay_rl.params.prompt_pool=20",
]


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    """The example installed with pip into a fresh target directory, from a copy of its sources (so
    that pip's build/ and *.egg-info/ land in the copy, not in the repository)."""
    root = tmp_path_factory.mktemp("wordplay")
    source = shutil.copytree(EXAMPLE, root / "src", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--target", str(root / "site"), str(source)], check=True, capture_output=True)
    return root / "site"


@pytest.fixture
def env(site) -> dict:
    """A subprocess environment that sees the installed example, and nothing through $CASCADE_PLUGINS."""
    env = {k: v for k, v in os.environ.items() if k != "CASCADE_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
    return env


@pytest.fixture
def plugin(site, monkeypatch):
    """The installed plugin module, imported in this process."""
    monkeypatch.syspath_prepend(str(site))
    import cascade_wordplay.plugin

    assert Path(cascade_wordplay.plugin.__file__).is_relative_to(site)
    return cascade_wordplay.plugin


def episode(sample: Sample, content: str) -> Episode:
    """What a rollout of ``sample`` that answered ``content`` looks like to the reward."""
    return Episode(sample, [*sample.messages, {"role": "assistant", "content": content}], [], [], [])


def prompts(samples: list[Sample]) -> set[str]:
    return {s.messages[0]["content"] for s in samples}


def test_cascade_plugins_finds_it_through_its_entry_point(env, site, tmp_path):
    listed = {p["name"]: p for p in json.loads(run_cascade(["plugins", "--json"], env, tmp_path).stdout)}
    assert listed["wordplay"] == {
        "name": "wordplay", "module": "cascade_wordplay.plugin",
        "distribution": "cascade-wordplay", "version": "0.1.0",
        "hooks": ["cascade_config_searchpaths", "cascade_environments", "cascade_rewards"],
        "provides": {"environments": ["wordplay"], "rewards": ["wordplay_exact"]},
        "config_searchpaths": ["pkg://cascade_wordplay.conf"],
    }
    # the presets are package data: a pyproject without [tool.setuptools.package-data] would drop them
    conf = site / "cascade_wordplay" / "conf"
    assert {p.relative_to(conf).as_posix() for p in conf.rglob("*.yaml")} == {
        "domain/wordplay.yaml", "stage/wordplay_rl.yaml", "cascade/wordplay.yaml"}


def test_demonstrations_score_1(plugin):
    env, reward = plugin.WordplayEnvironment(), plugin.ExactAnswerReward()
    demos = env.demonstrations(40, seed=3)
    # demonstrations(n, seed) are the train samples of seed + 1, so each one's ground truth is known
    samples = env.samples("train", 40, seed=4)
    assert [d[0] for d in demos] == [s.messages[0] for s in samples]
    assert {s.meta["kind"] for s in samples} == {"reverse", "count"}
    results = reward.score([episode(s, d[-1]["content"]) for s, d in zip(samples, demos)])
    assert [r.value for r in results] == [1.0] * 40


def test_wrong_answers_score_0_and_formatting_is_forgiven(plugin):
    reverse = Sample("r", "wordplay", [{"role": "user", "content": "Spell the word 'kobera' backwards."}], "arebok")
    count = Sample("c", "wordplay", [{"role": "user", "content": "How many times does 'o' appear in 'modoho'?"}], "3")
    answers = [
        (reverse, "<think></think>kobera", 0.0),      # not reversed
        (reverse, "<think></think>areboka", 0.0),
        (reverse, "<think>arebok", 0.0),              # never finished thinking: no answer
        (reverse, "", 0.0),
        (count, "<think></think>2", 0.0),
        (reverse, "<think>hmm</think> Arebok.\n", 1.0),  # case, spaces and a final period are forgiven
        (count, "<think></think>3", 1.0),
    ]
    scored = plugin.ExactAnswerReward().score([episode(sample, text) for sample, text, _ in answers])
    assert [r.value for r in scored] == [value for _, _, value in answers]  # one result per episode of the group
    strict = plugin.ExactAnswerReward(case_sensitive=True).score([episode(reverse, "Arebok")])
    assert strict[0].value == 0.0


def test_splits_are_disjoint_and_seeded(plugin):
    env = plugin.WordplayEnvironment()
    train, test = env.samples("train", 800, seed=0), env.samples("test", 200, seed=0)
    assert len(prompts(train)) == 800 and len(prompts(test)) == 200
    assert not prompts(train) & prompts(test)
    assert not {s.id for s in train} & {s.id for s in test}
    assert env.samples("test", 50, seed=0) == test[:50]                 # same seed, same items
    assert prompts(env.samples("test", 50, seed=1)) != prompts(test[:50])


def test_count_answers_are_not_one_constant(plugin):
    samples = plugin.WordplayEnvironment(kinds=["count"]).samples("train", 300, seed=0)
    answers = [s.answer for s in samples]
    assert set(answers) == {"1", "2", "3"} and max(map(answers.count, "123")) < 0.5 * len(answers)


def test_bad_environment_options_are_refused(plugin):
    with pytest.raises(ValueError, match=r"kinds must be a non-empty subset of \['reverse', 'count'\], got \['spell'\]"):
        plugin.WordplayEnvironment(kinds=["spell"])
    with pytest.raises(ValueError, match="max_syllables must be at least 2"):
        plugin.WordplayEnvironment(max_syllables=1)


def test_the_readme_command_line_adds_the_domain_and_stage_to_a_cascade(env, tmp_path):
    args = ["train", "cascade=math", "+domain@cascade.domains.wordplay=wordplay",
            "+stage@cascade.stages.wordplay_rl=wordplay_rl", "--cfg", "job", "-p", "cascade"]
    cascade = yaml.safe_load(run_cascade(args, env, tmp_path).stdout)
    assert cascade["domains"]["wordplay"]["environment"] == "wordplay"
    assert cascade["domains"]["wordplay"]["reward"] == "wordplay_exact"
    rl = cascade["stages"]["wordplay_rl"]
    assert rl["type"] == "grpo" and rl["domains"] == ["wordplay"] and rl["params"]["max_new_tokens"] == 16
    assert rl["params"]["group_size"] == 8  # inherited from the core's grpo preset
    assert list(cascade["stages"])[-1] == "wordplay_rl"


def test_a_tiny_cascade_trains_and_scores_the_wordplay_domain(env, tmp_path):
    run = tmp_path / "run"
    run_cascade(["train", *TINY, f"run_dir={run}"], env, tmp_path)
    report = json.loads((run / "report.json").read_text())
    assert report["complete"]
    assert list(report["scores"]) == ["init", "sft", "wordplay_rl"]
    assert all(set(row) == {"wordplay"} and 0.0 <= row["wordplay"] <= 1.0 for row in report["scores"].values())
    history = [json.loads(line) for line in (run / "stages" / "02_wordplay_rl" / "history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history] == [1, 2]
    assert all(0.0 <= row["reward"] <= 1.0 for row in history)
