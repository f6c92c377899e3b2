"""The report's pictures: drawn next to report.md after every stage and by `cascade report`, linked from
report.md, and never the reason a run or its report fails."""

from __future__ import annotations

import json
import logging
import math
import struct

import numpy as np
import pytest
from omegaconf import OmegaConf

from cascade import figures
from cascade.registry import Entry, Registry
from cascade.report import write_report
from cascade.types import Checkpoint

DOMAINS = ["math", "if", "code"]
STAGES = {"sft": ("sft", DOMAINS), "math_rl": ("grpo", ["math"]), "mopd": ("grpo", ["math", "if"])}
SCORES = {
    "init": {"math": 0.0, "if": 0.05, "code": 0.0},
    "sft": {"math": 0.3, "if": 0.5, "code": 0.1},
    "math_rl": {"math": 0.45, "if": 0.42, "code": 0.1},
    "mopd": {"math": 0.44, "if": 0.49, "code": 0.09},
}
HISTORIES = {
    "sft": [{"step": i, "loss": 8.0 / i, "lr": 1e-3} for i in range(1, 41)],
    "math_rl": [{"step": i, "reward": 0.1 + 0.01 * i, "accuracy": 0.1 + 0.01 * i, "entropy": 0.5, "kl": 0.0} for i in range(1, 11)],
    "mopd": [{"step": i, "reward": 0.3, "reverse_kl/math": 0.02 / i, "reverse_kl/if": 0.01} for i in range(1, 11)],
}
PICTURES = ["cascade", "gains", "training"]


def fake_run(run_dir, scores=SCORES, histories=HISTORIES):
    """A run directory as the runner leaves it (config, checkpoint index, histories), and its report."""
    cascade = {"name": "fake", "domains": {d: {} for d in DOMAINS}, "order": list(STAGES),
               "stages": {name: {"type": kind, "domains": domains} for name, (kind, domains) in STAGES.items()}}
    config = OmegaConf.create({"cascade": cascade})
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, run_dir / "config.yaml")
    for index, (stage, rows) in enumerate(histories.items(), start=1):
        path = run_dir / "stages" / f"{index:02d}_{stage}" / "history.jsonl"
        path.parent.mkdir(parents=True)
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    registry = Registry(run_dir / "checkpoints" / "index.json")
    for stage, row in scores.items():
        metrics = {"seconds": 1.0, "steps": len(histories.get(stage, []))}
        registry.add(Entry(Checkpoint(stage, str(run_dir / stage)), row, {}, metrics))
    return write_report(run_dir, config, registry)


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def linked(run_dir) -> list[str]:
    md = (run_dir / "report.md").read_text()
    return [name for name in PICTURES if f"](figures/{name}.png)" in md]


def test_a_run_gets_its_pictures_linked_from_report_md(tmp_path):
    fake_run(tmp_path / "run")
    for name in PICTURES:
        path = tmp_path / "run" / "figures" / f"{name}.png"
        width, height = png_size(path)
        assert 500 <= width <= 2500 and 300 <= height <= 1500, (name, width, height)
        assert path.stat().st_size > 10_000  # drawn, not blank
    assert linked(tmp_path / "run") == PICTURES
    assert not list((tmp_path / "run" / "figures").glob(".*"))  # no temporary file left behind


def test_cascade_report_regenerates_the_pictures(tmp_path, fresh_cli, capsys):
    fake_run(tmp_path / "run")
    for path in (tmp_path / "run" / "figures").iterdir():
        path.unlink()
    (tmp_path / "run" / "report.md").unlink()
    assert fresh_cli.main(["report", str(tmp_path / "run")]) == 0
    assert "4 stages" in capsys.readouterr().out
    assert all(png_size(tmp_path / "run" / "figures" / f"{name}.png") for name in PICTURES)
    assert linked(tmp_path / "run") == PICTURES


@pytest.mark.parametrize("scored, running, pictures", [
    (["init"], [], ["cascade"]),
    (["init"], ["sft"], ["cascade", "training"]),  # killed during SFT: its curves so far
    (["init", "sft"], [], PICTURES),  # a single stage
    (["init", "sft"], ["math_rl"], PICTURES),
])
def test_a_partial_run_shows_what_is_done(tmp_path, scored, running, pictures):
    histories = {stage: HISTORIES[stage] for stage in [*scored[1:], *running]}
    fake_run(tmp_path / "run", {stage: SCORES[stage] for stage in scored}, histories)
    assert linked(tmp_path / "run") == pictures


def test_missing_scores_nan_and_broken_histories_still_draw(tmp_path):
    scores = {stage: dict(row) for stage, row in SCORES.items()}
    for row in scores.values():
        del row["code"]  # a domain never scored
    scores["math_rl"]["if"] = math.nan
    histories = {
        "sft": [{"step": 1, "loss": math.nan}, {"step": 2, "loss": 3.0}, {"step": 3}],
        "math_rl": HISTORIES["math_rl"],
        # stopped and restarted with other settings: steps 1-3, then 1-4
        "mopd": [{"step": s, "reward": 0.1 * s} for s in (1, 2, 3, 1, 2, 3, 4)],
    }
    fake_run(tmp_path / "run", scores, histories)
    assert linked(tmp_path / "run") == PICTURES
    assert "n/a" in (tmp_path / "run" / "report.md").read_text()  # code has no score in the table
    with open(tmp_path / "run" / "stages" / "02_math_rl" / "history.jsonl", "a") as f:
        f.write('{"step": 11, "rew')  # a line cut short by a kill -9
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert figures.draw_all(tmp_path / "run", report) == {name: f"figures/{name}.png" for name in PICTURES}


def test_a_plotting_failure_leaves_the_report_whole(tmp_path, monkeypatch, caplog):
    def broken(*args):
        raise ValueError("no room for the legend")

    monkeypatch.setattr(figures, "draw_gains", broken)
    with caplog.at_level(logging.WARNING):
        report = fake_run(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "report.json").read_text())["scores"] == report["scores"] == SCORES
    assert linked(tmp_path / "run") == ["cascade", "training"]
    assert "could not draw figures/gains.png" in caplog.text and "no room for the legend" in caplog.text

    monkeypatch.setattr(figures, "draw_all", broken)  # even the drawing as a whole failing
    fake_run(tmp_path / "again")
    assert (tmp_path / "again" / "report.json").exists() and linked(tmp_path / "again") == []


def test_curves_are_smoothed_over_known_steps_and_restarts_keep_the_last_attempt():
    averaged = figures.moving_average(np.array([1.0, math.nan, 3.0, 5.0]), window=2)
    assert averaged[0] == 1.0 and averaged[1] == 1.0 and averaged[2] == 3.0 and averaged[3] == 4.0
    rows = [{"step": s} for s in (1, 2, 3, 1, 2)]
    assert figures.attempt_starts(rows) == [0, 3]  # the last attempt: rows[3:]
    assert figures.curve_keys(HISTORIES["math_rl"]) == (["reward"], "entropy")  # accuracy = reward, no KL
    assert figures.curve_keys(HISTORIES["mopd"]) == (["reverse_kl/math", "reverse_kl/if"], None)
    assert figures.curve_keys(HISTORIES["sft"]) == (["loss"], None)
