"""`cascade train cascade=smoke`: the whole default cascade, shortened, learns (slow tier: ~3-4 minutes)."""

from __future__ import annotations

import json

import pytest
from conftest import run_cascade


@pytest.mark.slow
def test_smoke_cascade_learns(tmp_path, toy_env):
    run_cascade(["train", "cascade=smoke", "loggers=[jsonl]", f"run_dir={tmp_path / 'run'}"], toy_env, tmp_path, timeout=900)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    scores = {stage: row["math"] for stage, row in report["scores"].items()}
    assert report["complete"] and list(scores) == ["init", "sft", "math_grpo"]
    assert scores["init"] < 0.02  # an untrained model does not answer
    assert scores["sft"] >= scores["init"] + 0.05  # SFT teaches the format and some arithmetic
    assert scores["math_grpo"] >= scores["sft"] - 0.05  # GRPO does not collapse what SFT learned
    grpo = [json.loads(line) for line in (tmp_path / "run" / "stages" / "02_math_grpo" / "history.jsonl").read_text().splitlines()]
    assert len(grpo) == 15 and all(0.0 < row["reward"] < 1.0 for row in grpo)
    assert report["details"]["math_grpo"]["math"]["n"] == 100.0
