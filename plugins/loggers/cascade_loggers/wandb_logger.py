"""wandb: one wandb run per stage, grouped by cascade run; offline unless the user sets it up.

Offline runs land in RUN_DIR/wandb and can be uploaded later with ``wandb sync``.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from cascade import hookimpl


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
    def cascade_eval_end(self, stage, scores):
        if self.current is not None:
            self.current.summary.update({f"eval/{d}": s for d, s in scores.items()})

    @hookimpl
    def cascade_stage_end(self, metrics):
        if self.current is not None:
            self.current.summary.update({f"stage/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
            self.current.finish()
            self.current = None

    @hookimpl
    def cascade_run_end(self, run, report):
        """A summary run holding the stage x domain scores matrix as a table."""
        summary = self.wandb.init(**self.options, group=self.group, name="scores", job_type="report", dir=str(run.run_dir), reinit="finish_previous")
        table = self.wandb.Table(columns=["stage", *report["domains"]])
        for stage, scores in report["scores"].items():
            table.add_data(stage, *(scores[d] for d in report["domains"]))
        summary.log({"scores": table})
        summary.finish()
