"""The shipped cascades end to end (slow tier): `cascade=math` learns; `cascade=smoke` runs every stage of the
default cascade, in its order, and writes the report with its pictures."""

from __future__ import annotations

import json

import pytest
from conftest import run_cascade


def history(run_dir, stage_dir: str) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "stages" / stage_dir / "history.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_math_cascade_learns(tmp_path, toy_env):
    run_cascade(["train", "cascade=math", "loggers=[jsonl]", f"run_dir={tmp_path / 'run'}"], toy_env, tmp_path, timeout=900)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    scores = {stage: row["math"] for stage, row in report["scores"].items()}
    assert report["complete"] and list(scores) == ["init", "sft", "math_grpo"]
    assert scores["init"] < 0.02  # an untrained model does not answer
    assert scores["sft"] >= scores["init"] + 0.05  # SFT teaches the format and some arithmetic
    assert scores["math_grpo"] >= scores["sft"] - 0.05  # GRPO does not collapse what SFT learned
    grpo = history(tmp_path / "run", "02_math_grpo")
    assert len(grpo) == 15 and all(0.0 < row["reward"] < 1.0 for row in grpo)
    assert report["details"]["math_grpo"]["math"]["n"] == 100.0


@pytest.mark.slow
def test_smoke_cascade_runs_every_stage_of_the_default(tmp_path, toy_env):
    run = tmp_path / "run"
    run_cascade(["train", "cascade=smoke", "loggers=[jsonl]", f"run_dir={run}"], toy_env, tmp_path, timeout=900)
    report = json.loads((run / "report.json").read_text())
    stages = ["sft", "if_rl", "multidomain_rl", "mopd", "reward_model", "rlhf", "longctx_rl", "code_rl", "swe_agentless",
              "swe_agentic"]
    assert report["complete"] and list(report["scores"]) == ["init", *stages]
    assert all(set(row) == set(report["domains"]) for row in report["scores"].values())
    assert report["scores"]["reward_model"] == report["scores"]["mopd"]  # it trains a reward model, not the policy
    assert (run / "reward_model" / "config.json").exists()
    for index, stage in enumerate(stages, start=1):
        rows = history(run, f"{index:02d}_{stage}")
        assert rows and all(row["step"] == i for i, row in enumerate(rows, start=1)), stage
    assert all("kl" in row for row in history(run, "06_rlhf"))
    assert {"cascade.png", "gains.png", "training.png"} <= {p.name for p in (run / "figures").iterdir()}
    assert "figures/cascade.png" in (run / "report.md").read_text()
