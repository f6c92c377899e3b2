"""The cascade runner: scores matrix, reports, resume after kill -9, refusal to resume a changed run."""

from __future__ import annotations

import json
import multiprocessing
import signal

import pytest
from conftest import TOY_ARGS, run_cascade

from cascade.config import ConfigError, compose
from cascade.eval_workers import MAX_AUTO_WORKERS, workers_for
from cascade.plugins import PluginManager, hookimpl
from cascade.registry import Registry
from cascade.runner import CascadeRunner


def toy_runner(tmp_path, *overrides):
    plugins = PluginManager().load()
    config = compose([*TOY_ARGS, *overrides], plugins.config_searchpaths())
    return CascadeRunner(config, plugins, tmp_path / "run")


def report(run_dir):
    return json.loads((run_dir / "report.json").read_text())


def test_every_domain_scored_after_every_stage(tmp_path, toy_env):
    result = toy_runner(tmp_path).run()
    assert list(result["scores"]) == ["init", "learn_add", "learn_mul"]
    assert all(set(row) == {"add", "mul"} for row in result["scores"].values())
    # each stage improves its own domain and leaves the other alone (the toy has no forgetting)
    assert result["gains"]["learn_add"]["add"] > 0 and result["gains"]["learn_add"]["mul"] == 0
    assert result["gains"]["learn_mul"]["mul"] > 0 and result["gains"]["learn_mul"]["add"] == 0
    assert result["complete"] is True
    # nothing forgotten: every domain's latest score is its best
    assert result["best"]["add"]["gap"] == 0 and result["best"]["mul"]["stage"] == "learn_mul"
    # how long scoring each domain took, and the evaluation's wall time after each stage (report.md's last
    # column): in this process the domains run one after another inside it
    assert all(d["seconds"] > 0 for row in result["details"].values() for d in row.values())
    added_up = sum(d["seconds"] for d in result["details"]["learn_add"].values())
    assert added_up <= result["eval_seconds"]["learn_add"] < added_up + 1.0
    md = (tmp_path / "run" / "report.md").read_text()
    assert "| learn_add |" in md and "(+" in md and "| seconds | eval seconds |" in md
    assert f"| mul | learn_mul | {result['best']['mul']['score']:.3f} |" in md
    # every stage's checkpoint is kept and indexed for later stages (MOPD's teachers)
    registry = Registry(tmp_path / "run" / "checkpoints" / "index.json")
    assert registry.best("add").checkpoint.stage in ("learn_add", "learn_mul")
    assert registry.best("mul").checkpoint.stage == "learn_mul"
    assert all(e.checkpoint.lineage == "toy_table-seed0" for e in registry.entries.values())
    history = (tmp_path / "run" / "stages" / "01_learn_add" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in history] == list(range(1, 11))


def test_a_variant_domain_is_reported_beside_its_base(tmp_path, toy_env):
    result = toy_runner(tmp_path, "+domain@cascade.domains.add_again=toy_add", "cascade.domains.add_again.variant_of=add").run()
    assert result["variants"] == {"add_again": "add"}
    md = (tmp_path / "run" / "report.md").read_text()
    table = md.split("## `add_again` beside `add`")[1].split("##")[0]
    last = result["scores"]["learn_mul"]
    assert f"| learn_mul | {last['add']:.3f} | {last['add_again']:.3f} | {last['add_again'] - last['add']:+.3f} | n/a |" in table


def test_a_variant_of_an_unknown_domain_names_the_domains(tmp_path, toy_env):
    with pytest.raises(ConfigError, match="cascade.domains.add_again.variant_of: .*'ad'.*add"):
        toy_runner(tmp_path, "+domain@cascade.domains.add_again=toy_add", "cascade.domains.add_again.variant_of=ad")


def test_order_is_a_config_choice(tmp_path, toy_env):
    result = toy_runner(tmp_path, "cascade.order=[learn_mul,learn_add]").run()
    assert list(result["scores"]) == ["init", "learn_mul", "learn_add"]


def test_a_stage_seed_redraws_the_stage_and_keeps_the_held_out_draws(tmp_path, toy_env):
    def learn_add_rewards(run_dir):
        lines = (run_dir / "stages" / "01_learn_add" / "history.jsonl").read_text().splitlines()
        return [json.loads(line)["reward"] for line in lines]

    default = toy_runner(tmp_path / "a").run()
    same = toy_runner(tmp_path / "b", "cascade.stages.learn_add.seed=1").run()  # run seed 0 + position 1
    other = toy_runner(tmp_path / "c", "cascade.stages.learn_add.seed=5").run()
    assert learn_add_rewards(tmp_path / "b" / "run") == learn_add_rewards(tmp_path / "a" / "run")
    assert same["scores"] == default["scores"]
    assert learn_add_rewards(tmp_path / "c" / "run") != learn_add_rewards(tmp_path / "a" / "run")
    assert other["scores"]["init"] == default["scores"]["init"]  # the held-out items are the same ones


@pytest.mark.parametrize("crash_at", ["learn_add:5", "learn_mul:7", "learn_mul:10"])
def test_resume_after_kill_9_gives_the_same_scores(tmp_path, toy_env, crash_at):
    """A run killed mid-stage (between step checkpoints) and resumed ends exactly like an uninterrupted one."""
    reference = run_cascade(["train", *TOY_ARGS, f"run_dir={tmp_path / 'ref'}"], toy_env, tmp_path)
    assert reference.returncode == 0

    crashing = dict(toy_env, CASCADE_CRASH_AT=crash_at)
    killed = run_cascade(["train", *TOY_ARGS, "hydra.run.dir=outputs/toy/1"], crashing, tmp_path, check=False)
    assert killed.returncode == -signal.SIGKILL
    assert not report(tmp_path / "outputs/toy/1")["complete"] if (tmp_path / "outputs/toy/1/report.json").exists() else True

    # `resume=true` finds the newest unfinished run of the cascade by itself
    run_cascade(["train", *TOY_ARGS, "hydra.run.dir=outputs/toy/2", "resume=true"], toy_env, tmp_path)
    resumed, expected = report(tmp_path / "outputs/toy/1"), report(tmp_path / "ref")
    assert resumed["complete"]
    assert resumed["scores"] == expected["scores"]
    stage = crash_at.split(":")[0]
    index = {"learn_add": "01", "learn_mul": "02"}[stage]
    rows = (tmp_path / f"outputs/toy/1/stages/{index}_{stage}/history.jsonl").read_text().splitlines()
    ref_rows = (tmp_path / f"ref/stages/{index}_{stage}/history.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == list(range(1, 11))  # no step lost, none twice
    assert [json.loads(r)["reward"] for r in rows] == [json.loads(r)["reward"] for r in ref_rows]


def test_resume_with_nothing_to_resume_is_a_clear_error(tmp_path, toy_env):
    proc = run_cascade(["train", *TOY_ARGS, "hydra.run.dir=outputs/toy/x", "resume=true"], toy_env, tmp_path, check=False)
    assert proc.returncode == 2
    assert "resume=true: no unfinished run of cascade 'toy'" in proc.stderr


def test_resume_refuses_a_run_whose_finished_stages_changed(tmp_path, toy_env):
    toy_runner(tmp_path).run()
    with pytest.raises(ConfigError, match="stage 'learn_add' finished with a different config"):
        toy_runner(tmp_path, "cascade.stages.learn_add.params.steps=3").run()


def test_a_finished_run_resumed_does_nothing_more(tmp_path, toy_env):
    first = toy_runner(tmp_path).run()
    index = tmp_path / "run" / "checkpoints" / "index.json"
    before = index.stat().st_mtime_ns
    again = toy_runner(tmp_path).run()
    assert again["scores"] == first["scores"]
    assert index.stat().st_mtime_ns == before


def test_report_command_rebuilds_the_report(tmp_path, toy_env):
    toy_runner(tmp_path).run()
    (tmp_path / "run" / "report.md").unlink()
    (tmp_path / "run" / "report.json").unlink()
    proc = run_cascade(["report", str(tmp_path / "run")], toy_env, tmp_path)
    assert "3 stages" in proc.stdout
    assert report(tmp_path / "run")["scores"]["learn_mul"]["mul"] > 0


def test_multirun_gives_one_run_directory_and_report_per_value(tmp_path, toy_env):
    run_cascade(["train", "-m", *TOY_ARGS, "seed=1,2", "hydra.sweep.dir=sweep"], toy_env, tmp_path)
    reports = [report(tmp_path / "sweep" / str(job)) for job in (0, 1)]
    assert [r["config"]["seed"] for r in reports] == [1, 2]
    assert all(r["complete"] for r in reports)
    assert reports[0]["scores"] != reports[1]["scores"]  # different seeds, different draws


def test_multirun_with_the_joblib_launcher(tmp_path, toy_env):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    # threads=2 would start evaluation workers, which a loky worker cannot spawn: the jobs evaluate in process
    run_cascade(["train", "-m", *TOY_ARGS, "seed=3,4", "threads=2", "hydra.sweep.dir=sweep", "hydra/launcher=joblib",
                 "hydra.launcher.n_jobs=2"], toy_env, tmp_path)
    assert [report(tmp_path / "sweep" / str(job))["config"]["seed"] for job in (0, 1)] == [3, 4]


def test_evaluation_workers_score_what_the_training_process_scores(tmp_path, toy_env):
    """eval_workers=2: the domains are scored in two spawned processes (the toy plugin loads there from
    $CASCADE_PLUGINS), with the scores and details of in-process evaluation."""
    serial = toy_runner(tmp_path / "serial", "eval_workers=1").run()
    runner = toy_runner(tmp_path / "workers", "eval_workers=2")
    parallel = runner.run()
    assert runner._eval_workers is not None and runner._eval_workers.pool._max_workers == 2
    assert parallel["scores"] == serial["scores"]
    strip = lambda details: {s: {d: {k: v for k, v in row.items() if k != "seconds"} for d, row in rows.items()}  # noqa: E731
                             for s, rows in details.items()}
    assert strip(parallel["details"]) == strip(serial["details"])
    assert list(parallel["details"]["init"]) == ["add", "mul"]  # the config's order, whatever order they finished in


def test_evaluation_workers_auto_and_their_errors(tmp_path, toy_env, monkeypatch):
    plugins = PluginManager().load()
    assert workers_for(0, 1, plugins) == 1  # one thread: in the training process
    assert workers_for(0, 2, plugins) == 2 and workers_for(0, 16, plugins) == MAX_AUTO_WORKERS
    assert workers_for(3, 1, plugins) == 3
    with monkeypatch.context() as patch:  # in a child process (a joblib sweep's worker): in process
        patch.setattr(multiprocessing, "parent_process", lambda: object())
        assert workers_for(0, 2, plugins) == 1
    with pytest.raises(ValueError, match="eval_workers=-1"):
        workers_for(-1, 2, plugins)

    class InCodeEvaluator:  # a plugin registered in code: a fresh worker process would not have it
        @hookimpl
        def cascade_evaluate(self, checkpoint, environment, reward, options, seed):
            return None

    plugins.register(InCodeEvaluator(), "in-code-evaluator")
    assert workers_for(0, 2, plugins) == 1  # auto falls back to evaluating in process
    config = compose([*TOY_ARGS, "eval_workers=2"], plugins.config_searchpaths())
    with pytest.raises(RuntimeError, match="plugins in-code-evaluator are not installed.*eval_workers=1"):
        CascadeRunner(config, plugins, tmp_path / "run").run()


def test_evaluation_workers_end_with_a_killed_training_process(tmp_path):
    """A run killed with SIGKILL never shuts its pool down: its workers must not outlive it (they held ~700 MB
    each, idle, for an hour after a killed run before they watched their parent)."""
    import subprocess
    import sys
    import time

    import psutil

    script = (
        "import os, signal\n"
        "from omegaconf import OmegaConf\n"
        "from cascade.eval_workers import EvalWorkers\n"
        "from cascade.plugins import PluginManager\n"
        "if __name__ == '__main__':\n"
        "    workers = EvalWorkers(OmegaConf.create({}), PluginManager(), 2, 1)\n"
        "    pids = {workers.pool.submit(os.getpid).result() for _ in range(4)}\n"
        "    print(*pids, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    (tmp_path / "killed_run.py").write_text(script)
    done = subprocess.run([sys.executable, str(tmp_path / "killed_run.py")], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    pids = [int(pid) for pid in done.stdout.split()]
    assert pids

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in pids)


def test_best_scores_show_forgetting_and_recovery():
    from cascade.report import best_scores

    matrix = {"init": {"a": 0.0, "b": 0.1}, "rl_a": {"a": 0.6, "b": 0.5}, "rl_b": {"a": 0.4, "b": 0.7},
              "mopd": {"a": 0.58, "b": 0.7}}
    best = best_scores({k: matrix[k] for k in ["init", "rl_a", "rl_b"]}, ["a", "b"])
    assert best["a"] == {"stage": "rl_a", "score": 0.6, "latest": 0.4, "gap": -0.2}  # rl_b made a forget
    best = best_scores(matrix, ["a", "b"])
    assert best["a"]["gap"] == -0.02 and best["b"] == {"stage": "rl_b", "score": 0.7, "latest": 0.7, "gap": 0.0}


def test_a_domain_broken_down_by_kind_gets_its_own_table():
    from cascade.report import breakdown_tables

    report = {"domains": ["add", "longctx"],
              "details": {"init": {"add": {"score": 0.1}, "longctx": {"score": 0.0, "score/niah": 0.0, "score/qa": 0.0}},
                          "rl": {"add": {"score": 0.2}, "longctx": {"score": 0.25, "score/niah": 0.5}}}}
    assert breakdown_tables(report) == ["## `longctx` by kind", "", "| stage | niah | qa |", "|---|---:|---:|",
                                        "| init | 0.000 | 0.000 |", "| rl | 0.500 | n/a |", ""]
