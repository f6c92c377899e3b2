"""wandb: one wandb run per stage, grouped by cascade run, and a summary run; offline unless the user sets it up.

A stage's run holds its config, training curves (``train/*``), summary (``stage/*``) and held-out scores
(``eval/*``). The summary run, ``scores``, holds the stage x domain scores matrix as a table and the report's
pictures: the cascade chart (``cascade``) and the gains heat map (``gains``).

Offline runs land in RUN_DIR/wandb and can be uploaded later with ``wandb sync``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from cascade import hookimpl

FIGURES = ("cascade", "gains")
"""The report's figures the summary run shows (``figures/NAME.png``)."""


class WandbLogger:
    def __init__(self, run, mode: str = "offline", project: str = "cascade-rl", entity: str | None = None, tags: list | None = None):
        import wandb  # optional dependency: only needed when this logger is enabled

        self.wandb = wandb
        self.options = {"mode": mode, "project": project, "entity": entity, "tags": list(tags or [])}
        self.group = f"{run.name}-{run.run_dir.name}"
        self.current = None

    @hookimpl
    def cascade_stage_start(self, run, stage):
        config = OmegaConf.to_container(run.config, resolve=True)
        self.current = self.wandb.init(
            **self.options, group=self.group, name=stage.name, job_type=stage.type, dir=str(run.run_dir),
            config={"stage": stage.name, "stage_type": stage.type, "domains": stage.domains, "cascade": config},
            reinit="finish_previous",
        )

    @hookimpl
    def cascade_step_end(self, step, metrics):
        if self.current is not None:
            self.current.log({f"train/{k}": v for k, v in metrics.items() if k != "step"}, step=step)

    @hookimpl
    def cascade_stage_end(self, metrics):
        if self.current is not None:
            self.current.summary.update({f"stage/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})

    @hookimpl
    def cascade_eval_end(self, scores):
        """The stage's last event (its checkpoint is evaluated after it ends): the run finishes here."""
        if self.current is not None:
            self.current.summary.update({f"eval/{d}": s for d, s in scores.items()})
            self.current.finish()
            self.current = None

    @hookimpl
    def cascade_run_end(self, run, report):
        """The summary run: the scores matrix as a table, and the figures drawn for these scores."""
        summary = self.wandb.init(**self.options, group=self.group, name="scores", job_type="report", dir=str(run.run_dir), reinit="finish_previous")
        table = self.wandb.Table(columns=["stage", *report["domains"]])
        for stage, scores in report["scores"].items():
            table.add_data(stage, *(scores[d] for d in report["domains"]))
        images = {name: self.wandb.Image(str(path)) for name, path in current_figures(run.run_dir).items()}
        summary.log({"scores": table, **images})
        summary.finish()


def current_figures(run_dir: Path) -> dict[str, Path]:
    """The figures of ``FIGURES`` drawn with the final scores. The report redraws them after every stage and
    registry write; a figure that failed to draw keeps an older file, older than the registry (left out)."""
    from cascade.figures import FIGURE_DIR  # matplotlib: loaded by the report anyway, not before

    registry = run_dir / "checkpoints" / "index.json"
    paths = {name: run_dir / FIGURE_DIR / f"{name}.png" for name in FIGURES}
    return {name: path for name, path in paths.items()
            if path.exists() and path.stat().st_mtime_ns >= registry.stat().st_mtime_ns}
