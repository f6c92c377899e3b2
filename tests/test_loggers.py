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
    assert len(runs) == 4  # init (its evaluation), learn_add, learn_mul, and the summary run
    assert all(any(r.glob("*.wandb")) for r in runs)
    media = sorted(path.name.split("_")[0] for r in runs for path in r.glob("files/media/*/*"))
    assert media == ["cascade", "gains", "scores"]  # the summary run's pictures and its scores table


class RecordedRun:
    """Stands in for ``wandb.init``'s run: keeps what the logger logs, so a test can read it back."""

    def __init__(self, **options):
        self.options, self.logged, self.summary, self.finished = options, {}, {}, False

    def log(self, data, step=None):
        self.logged.update(data)

    def finish(self):
        self.finished = True


@pytest.fixture
def wandb_runs(monkeypatch):
    wandb = pytest.importorskip("wandb")
    runs: list[RecordedRun] = []
    monkeypatch.setattr(wandb, "init", lambda **options: runs.append(RecordedRun(**options)) or runs[-1])
    return runs


def test_wandb_stage_runs_hold_their_scores_and_the_summary_run_the_matrix_and_figures(tmp_path, toy_env, wandb_runs):
    import wandb

    report = run_with(tmp_path, "[wandb]")
    assert [r.options["name"] for r in wandb_runs] == ["init", "learn_add", "learn_mul", "scores"]
    assert len({r.options["group"] for r in wandb_runs}) == 1 and all(r.finished for r in wandb_runs)
    assert all(r.options["mode"] == "offline" for r in wandb_runs)
    for run in wandb_runs[:-1]:  # each stage's run ends after its evaluation, with that row of the matrix
        assert run.summary["eval/add"] == report["scores"][run.options["name"]]["add"]
    logged = wandb_runs[-1].logged
    table = logged["scores"]
    assert isinstance(table, wandb.Table) and table.columns == ["stage", "add", "mul"]
    assert table.data == [[stage, row["add"], row["mul"]] for stage, row in report["scores"].items()]
    assert isinstance(logged["cascade"], wandb.Image) and isinstance(logged["gains"], wandb.Image)


def test_wandb_leaves_out_a_figure_that_failed_for_the_final_scores(tmp_path, toy_env, wandb_runs, monkeypatch):
    import cascade.figures

    draw_gains = cascade.figures.draw_gains

    def fail_on_the_last_stage(report):
        if "learn_mul" in report["scores"]:
            raise RuntimeError("no gains for you")
        return draw_gains(report)

    monkeypatch.setattr(cascade.figures, "draw_gains", fail_on_the_last_stage)
    run_with(tmp_path, "[wandb]")
    assert (tmp_path / "run" / "figures" / "gains.png").exists()  # learn_add's, stale
    assert "gains" not in wandb_runs[-1].logged and "cascade" in wandb_runs[-1].logged
