"""Rich console output: a progress bar per stage on a terminal, periodic lines elsewhere (CI, files)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cascade import hookimpl

SHOWN_METRICS = ("loss", "reward", "accuracy", "kl", "tokens_per_s")


class ConsoleLogger:
    def __init__(self, run, lines_per_stage: int = 10):
        self.console = Console(stderr=False, highlight=False)
        self.lines_per_stage = lines_per_stage
        self.progress: Progress | None = None
        self.task = None
        self.stage_name = ""

    @hookimpl
    def cascade_run_start(self, run):
        verb = "resuming" if run.resumed else "running"
        self.console.print(f"[bold]cascade[/bold] {verb} [cyan]{run.name}[/cyan]: {' → '.join(run.stages)}  ({run.run_dir})")

    @hookimpl
    def cascade_stage_start(self, stage):
        self.stage_name = stage.name
        note = f" (resuming after step {stage.resumed_from_step})" if stage.resumed_from_step else ""
        self.console.rule(f"stage {stage.index}: {stage.name} [{stage.type}]{note}")
        if self.console.is_terminal:
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[metrics]}"), console=self.console, transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task(stage.name, total=stage.total_steps, metrics="")

    @hookimpl
    def cascade_step_end(self, stage, step, metrics):
        shown = "  ".join(f"{k}={metrics[k]:.4g}" for k in SHOWN_METRICS if k in metrics)
        if self.progress is not None:
            self.progress.update(self.task, completed=step, total=stage.total_steps, metrics=shown)
            return
        every = max(1, (stage.total_steps or self.lines_per_stage) // self.lines_per_stage)
        if step % every == 0 or step == stage.total_steps:
            total = f"/{stage.total_steps}" if stage.total_steps else ""
            self.console.print(f"  {stage.name} step {step}{total}  {shown}")

    @hookimpl
    def cascade_stage_end(self, stage, metrics):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        self.console.print(f"  {stage.name} done in {metrics.get('seconds', 0.0):.1f}s")

    @hookimpl
    def cascade_eval_end(self, stage, scores):
        self.console.print("  eval: " + "  ".join(f"{d}={s:.3f}" for d, s in scores.items()))

    @hookimpl
    def cascade_run_end(self, run, report):
        table = Table(title=f"held-out score per domain after each stage ({run.name})")
        table.add_column("stage")
        for domain in report["domains"]:
            table.add_column(domain, justify="right")
        for stage, scores in report["scores"].items():
            deltas = report["gains"].get(stage, {})
            table.add_row(stage, *(_cell(scores[d], deltas.get(d)) for d in report["domains"]))
        self.console.print(table)
        self.console.print(f"report: {run.run_dir / 'report.md'}")


def _cell(score: float, delta: float | None) -> str:
    if delta is None:
        return f"{score:.3f}"
    colour = "green" if delta > 0 else "red" if delta < 0 else "dim"
    return f"{score:.3f} [{colour}]({delta:+.3f})[/{colour}]"
