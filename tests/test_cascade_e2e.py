"""The real engine end to end: a tiny SFT -> GRPO cascade, killed mid-stage twice, resumes to the same result."""

from __future__ import annotations

import json
import signal

import pytest
from conftest import run_cascade

TINY = [
    "cascade=math",
    "loggers=[]",
    "eval.n=12",
    "eval.max_new_tokens=24",
    "cascade.domains.math.environment_options.difficulties=[1]",
    "cascade.stages.sft.params.steps=6",
    "cascade.stages.sft.params.checkpoint_every=2",
    "cascade.stages.sft.params.rows_per_step=2",
    "cascade.stages.sft.params.micro_rows=2",
    "cascade.stages.sft.params.seq_len=256",
    "cascade.stages.sft.params.demonstrations_per_domain=60",
    "cascade.stages.math_grpo.params.steps=4",
    "cascade.stages.math_grpo.params.checkpoint_every=2",
    "cascade.stages.math_grpo.params.prompts_per_step=3",
    "cascade.stages.math_grpo.params.group_size=4",
    "cascade.stages.math_grpo.params.max_new_tokens=16",
    "cascade.stages.math_grpo.params.dynamic_filter=false",
    "cascade.stages.math_grpo.params.prompt_pool=50",
    "model.options.vocab_size=400",
]


def read(path):
    return json.loads(path.read_text())


def test_sft_and_grpo_resume_after_kill_9_to_identical_results(tmp_path, toy_env):
    run_cascade(["train", *TINY, f"run_dir={tmp_path / 'ref'}"], toy_env, tmp_path)
    run = tmp_path / "run"
    for crash_at in ("sft:3", "math_grpo:3"):
        killed = run_cascade(["train", *TINY, f"resume={run}" if run.exists() else f"hydra.run.dir={run}"],
                             dict(toy_env, CASCADE_CRASH_AT=crash_at), tmp_path, check=False)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_cascade(["train", *TINY, f"resume={run}"], toy_env, tmp_path)

    resumed, reference = read(run / "report.json"), read(tmp_path / "ref" / "report.json")
    assert resumed["complete"] and resumed["scores"] == reference["scores"]
    for stage in ("01_sft", "02_math_grpo"):
        rows = [json.loads(line) for line in (run / "stages" / stage / "history.jsonl").read_text().splitlines()]
        ref_rows = [json.loads(line) for line in (tmp_path / "ref" / "stages" / stage / "history.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]
        key = "loss"
        assert [r[key] for r in rows] == pytest.approx([r[key] for r in ref_rows], abs=1e-6)
    # the stage checkpoints are standard Hugging Face directories
    assert (run / "stages" / "02_math_grpo" / "checkpoint" / "model.safetensors").exists()
