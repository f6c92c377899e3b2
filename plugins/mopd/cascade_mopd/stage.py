"""The MOPD wrapper: any stage becomes on-policy distillation from per-domain teachers.

- A stage that rolls out on-policy (it has an ``objective``, like GRPO) keeps its loop, prompts and
  sampling; only the objective is swapped for :class:`DistillationObjective`.
- Any other stage (SFT, a third party's) is replaced by on-policy sampling over the same domains: the
  student samples from those domains' prompts and the teachers score what it wrote.

Teachers are resolved when the stage starts (so ``best`` sees every stage finished before it), one
per domain by rule, and each distinct checkpoint is loaded once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

from cascade import Checkpoint, Stage, StageError
from cascade.config import validate_options
from cascade.io import write_json_atomic
from cascade.engine.grpo import GRPOStage
from cascade.engine.policy import tokenizer_fingerprint
from cascade.engine.trainer import OptimConfig
from cascade_mopd.objective import DistillationObjective


@dataclass
class MOPDConfig:
    teachers: Dict[str, str] = field(default_factory=lambda: {"default": "best"})
    """Per domain: ``best``, ``stage:NAME`` or ``path:DIR``; ``default`` covers the domains not listed."""
    teacher: str = "hf"
    """Teacher implementation (``cascade plugins`` lists them)."""
    teacher_options: Dict[str, Any] = field(default_factory=dict)
    """Its options (``teacher: ray``: ``num_cpus``, ``batch_size``, ``address``...)."""
    alpha: float = 0.0
    """Weight of the reward advantage blended into the distillation advantage."""
    ratio_bounds: List[float] = field(default_factory=lambda: [0.5, 2.0])
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-6, warmup_steps=30, warmup_start_lr=2e-7, weight_decay=0.0))
    """SPEC.md: lr 2e-6, linear warm-up from 2e-7 over 30 steps; replaces the wrapped stage's optimizer."""
    sampling: Dict[str, Any] = field(default_factory=dict)
    """For a wrapped stage without rollouts: GRPO-stage options for the on-policy sampling loop."""


class MOPDStage(Stage):
    Config = MOPDConfig

    def __init__(self, inner: Stage, config: MOPDConfig):
        super().__init__(inner.name, config, inner.domains)
        self.inner = inner

    def run(self, start: Checkpoint, context) -> Checkpoint:
        cfg = self.config
        teachers = self.load_teachers(start, context)
        sampler = self.inner if hasattr(self.inner, "objective") else self.sampling_stage()
        sampler.objective = DistillationObjective(teachers, cfg.alpha, tuple(cfg.ratio_bounds))
        sampler.config.optim = cfg.optim
        try:
            return sampler.run(start, context)
        finally:
            for teacher in {id(t): t for t in teachers.values()}.values():  # each distinct teacher once
                if callable(getattr(teacher, "close", None)):  # a Ray teacher's actor
                    teacher.close()

    def sampling_stage(self) -> GRPOStage:
        options = validate_options(GRPOStage.Config, {"group_size": 1, "dynamic_filter": False, **self.config.sampling},
                                   f"{self.name}.wrap.mopd.sampling")
        return GRPOStage(self.name, options, self.domains)

    def load_teachers(self, start: Checkpoint, context) -> dict:
        factory = context.plugins.component("teachers", self.config.teacher).factory
        student = tokenizer_fingerprint(start.path)
        loaded: dict[str, object] = {}
        teachers, chosen = {}, {}
        for domain in self.domains:
            rule = self.config.teachers.get(domain, self.config.teachers.get("default", "best"))
            try:
                checkpoint = context.registry.resolve(rule, domain).checkpoint
            except (KeyError, ValueError) as exc:
                raise StageError(f"{self.name}: no teacher for domain '{domain}': {exc}") from None
            if checkpoint.path not in loaded:
                if tokenizer_fingerprint(checkpoint.path) != student:
                    raise StageError(f"{self.name}: teacher {checkpoint.path} (rule '{rule}', domain '{domain}') has a different "
                                     f"tokenizer from the student {start.path}: MOPD compares log-probs token by token, so "
                                     f"teachers must come from the student's lineage")
                loaded[checkpoint.path] = factory(checkpoint, **self.config.teacher_options)
            teachers[domain] = loaded[checkpoint.path]
            chosen[domain] = {"rule": rule, "stage": checkpoint.stage, "path": checkpoint.path}
        write_json_atomic(context.stage_dir / "teachers.json", chosen)  # which checkpoint taught which domain
        return teachers


def wrap(stage: Stage, options) -> MOPDStage:
    return MOPDStage(stage, validate_options(MOPDConfig, options, f"{stage.name}.wrap.mopd"))
