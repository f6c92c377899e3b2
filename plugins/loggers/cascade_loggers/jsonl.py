"""Every lifecycle event as one JSON line in RUN_DIR/metrics.jsonl (append-only, survives resume)."""

from __future__ import annotations

import json
import time

from cascade import hookimpl


class JsonlLogger:
    def __init__(self, run, filename: str = "metrics.jsonl"):
        self.path = run.run_dir / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _write(self, event: str, **fields) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"event": event, "time": time.time(), **fields}, default=str) + "\n")

    @hookimpl
    def cascade_run_start(self, run):
        self._write("run_start", cascade=run.name, stages=run.stages, domains=run.domains, resumed=run.resumed)

    @hookimpl
    def cascade_stage_start(self, stage):
        self._write("stage_start", stage=stage.name, type=stage.type, resumed_from_step=stage.resumed_from_step)

    @hookimpl
    def cascade_step_end(self, stage, step, metrics):
        self._write("step", stage=stage.name, step=step, metrics=metrics)

    @hookimpl
    def cascade_stage_end(self, stage, checkpoint, metrics):
        self._write("stage_end", stage=stage.name, checkpoint=checkpoint.path, metrics=metrics)

    @hookimpl
    def cascade_eval_end(self, stage, scores, details):
        self._write("eval", stage=stage.name, scores=scores, details=details)

    @hookimpl
    def cascade_run_end(self, report):
        self._write("run_end", scores=report["scores"])
