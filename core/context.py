"""What a running stage can see: the run, its own directory, the registry, the domains' components."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from cascade.io import write_dir_atomic

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from cascade.plugins import PluginManager
    from cascade.registry import Registry
    from cascade.types import Environment, Reward

STEP_PREFIX = "step_"
KEEP_STEP_CHECKPOINTS = 2


@dataclass
class RunInfo:
    name: str
    run_dir: Path
    config: "DictConfig"
    seed: int
    stages: list[str]
    domains: list[str]
    resumed: bool = False


@dataclass
class StageInfo:
    name: str
    index: int
    type: str
    domains: list[str]
    resumed_from_step: int | None = None
    total_steps: int | None = None
    """Set by the stage when it knows its length (progress bars)."""


@dataclass
class StageContext:
    """Services the runner hands to ``Stage.run``: logging, step checkpoints, the domains' parts."""

    run: RunInfo
    stage: StageInfo
    stage_dir: Path
    registry: "Registry"
    plugins: "PluginManager"
    seed: int
    make_environment: Callable[[str], "Environment"]
    make_reward: Callable[[str], "Reward"]
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def config(self) -> "DictConfig":
        """The whole app config (model, rollout, eval...); the stage's own options are ``Stage.config``."""
        return self.run.config

    def environment(self, domain: str) -> "Environment":
        return self.make_environment(domain)

    def reward(self, domain: str) -> "Reward":
        return self.make_reward(domain)

    # ---- metrics ----------------------------------------------------------------------------------

    @property
    def history_path(self) -> Path:
        return self.stage_dir / "history.jsonl"

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record one step's metrics (kept for the report) and pass them to every logger."""
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self.history.append(row)
        with self.history_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.plugins.hook.cascade_step_end(run=self.run, stage=self.stage, step=step, metrics=row)

    # ---- step checkpoints -------------------------------------------------------------------------

    def save_step(self, step: int, write: Callable[[Path], None]) -> Path:
        """Save the stage's state after ``step``: ``write(dir)`` stores model/optimizer, we add the RNGs.

        Written to a temporary directory and renamed, so a crash never leaves a half checkpoint.
        """

        import torch

        def write_all(tmp: Path) -> None:
            write(tmp)
            torch.save(_rng_state(), tmp / "rng.pt")

        path = write_dir_atomic(self.stage_dir / "steps" / f"{STEP_PREFIX}{step:07d}", write_all)
        for old in self._step_dirs()[:-KEEP_STEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def last_step(self) -> tuple[int, Path] | None:
        """The last saved step and its directory, with RNG states restored; None to start afresh.

        Metrics logged after that step are dropped from the history: the resumed stage logs them again.
        """
        dirs = self._step_dirs()
        if not dirs:
            return None
        import torch

        path = dirs[-1]
        step = int(path.name[len(STEP_PREFIX):])
        _set_rng_state(torch.load(path / "rng.pt", weights_only=False))
        self.history = [row for row in self.history if row["step"] <= step]
        self._rewrite_history()
        self.stage.resumed_from_step = step
        return step, path

    def load_history(self) -> None:
        """Read the metrics of an interrupted attempt (a kill can tear the last line: it is dropped)."""
        if not self.history_path.exists():
            return
        self.history = []
        for line in self.history_path.read_text().splitlines():
            try:
                self.history.append(json.loads(line))
            except json.JSONDecodeError:
                break

    def _rewrite_history(self) -> None:
        self.history_path.write_text("".join(json.dumps(row) + "\n" for row in self.history))

    def _step_dirs(self) -> list[Path]:
        root = self.stage_dir / "steps"
        return sorted(p for p in root.glob(f"{STEP_PREFIX}*") if p.is_dir()) if root.exists() else []


# torch is imported where used: `cascade plugins` and the config tools should start instantly.


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
