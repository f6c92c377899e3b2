"""The loggers plugin: JSONL events, console lines, wandb offline runs — all through lifecycle hooks."""

from __future__ import annotations

import json

import pytest

from cascade.config import compose
from cascade.plugins import PluginManager
from cascade.runner import CascadeRunner

TOY = ["cascade=toy", "model=toy_table"]


def run_with(tmp_path, loggers: str):
    plugins = PluginManager().load()
    config = compose([*TOY, f"loggers={loggers}"], plugins.config_searchpaths())
    report = CascadeRunner(config, plugins, tmp_path / "run").run()
    assert not [name for name in plugins.plugins if name.startswith("logger:")]  # unregistered after the run
    return report


def test_jsonl_records_every_event(tmp_path, toy_env):
    run_with(tmp_path, "[jsonl]")
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    assert kinds.count("stage_start") == 3 and kinds.count("stage_end") == 3  # init + two stages
    assert kinds.count("eval") == 3 and kinds.count("step") == 20
    steps = [e for e in events if e["event"] == "step" and e["stage"] == "learn_add"]
    assert [e["step"] for e in steps] == list(range(1, 11)) and "reward" in steps[0]["metrics"]


def test_console_prints_progress_and_the_score_table(tmp_path, toy_env, capsys):
    run_with(tmp_path, "[console]")
    out = capsys.readouterr().out
    assert "cascade running toy: learn_add → learn_mul" in out
    assert "learn_add step 10/10" in out and "eval: add=" in out
    assert "held-out score per domain after each stage" in out and "learn_mul" in out


def test_wandb_offline_makes_one_run_per_stage_and_a_scores_run(tmp_path, toy_env):
    pytest.importorskip("wandb")
    run_with(tmp_path, "[wandb]")
    runs = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 4  # init (its evaluation), learn_add, learn_mul, and the summary run with the scores table
    assert all(any(r.glob("*.wandb")) for r in runs)
