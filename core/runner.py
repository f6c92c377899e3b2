"""The cascade runner: stages in order, each from the last checkpoint, every domain scored after each.

    init model -> score all domains -> stage 1 -> score all domains -> stage 2 -> ... -> report

Finished stages are recorded in the registry (``checkpoints/index.json``) the moment they are scored,
so a run killed at any point resumes (``resume=true``) at the first unfinished stage, and inside that
stage from its last step checkpoint.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cascade.components import Components
from cascade.config import ConfigError, validate_options
from cascade.context import RunInfo, StageContext, StageInfo, seed_everything
from cascade.eval_workers import EvalWorkers, workers_for
from cascade.io import write_text_atomic
from cascade.plugins import PluginManager, UnknownComponentError, unknown_name_message
from cascade.registry import Entry, Registry
from cascade.report import build_report, write_report
from cascade.types import Checkpoint, Stage

INIT = "init"


@dataclass
class PlannedStage:
    name: str
    type: str
    domains: list[str]
    stage: Stage
    seed: int | None


class CascadeRunner:
    def __init__(self, config: DictConfig, plugins: PluginManager, run_dir: Path):
        self.config = config
        self.plugins = plugins
        self.run_dir = Path(run_dir)
        config.run_dir = str(self.run_dir)  # stage params and reward options may say ${run_dir}/... (a reward model's path)
        self.domains = list(config.cascade.domains)
        self.components = Components(config, plugins)
        self.environment, self.reward, self.eval_options = (
            self.components.environment, self.components.reward, self.components.eval_options)
        self._eval_workers: EvalWorkers | None = None
        self.plan = self._plan()  # every name and option checked before any work starts
        self.objective = self._objective()

    # ---- planning: turn config into stage objects, or fail naming the bad key ---------------------

    def _plan(self) -> list[PlannedStage]:
        cascade = self.config.cascade
        if not cascade.stages:
            raise ConfigError(f"cascade '{cascade.name}' has no stages")
        order = list(cascade.order) if cascade.order is not None else list(cascade.stages)
        for name in order:
            if name not in cascade.stages:
                raise ConfigError(f"cascade.order: {unknown_name_message('stage', name, cascade.stages)}")
        if INIT in order:
            raise ConfigError(f"'{INIT}' is reserved for the starting model; rename that stage")
        for domain, spec in cascade.domains.items():
            self._check(lambda: self.plugins.component("environments", spec.environment), f"cascade.domains.{domain}.environment")
            self._check(lambda: self.plugins.component("rewards", spec.reward), f"cascade.domains.{domain}.reward")
            self.eval_options(domain)
            if spec.variant_of and spec.variant_of not in cascade.domains:
                raise ConfigError(f"cascade.domains.{domain}.variant_of: "
                                  + unknown_name_message("domain", spec.variant_of, cascade.domains))
        for name in self.config.loggers:
            self._check(lambda: self.plugins.component("loggers", name), f"loggers.{name}")
        return [self._plan_stage(name, cascade.stages[name]) for name in order]

    def _objective(self) -> tuple[str, str] | None:
        """``objective=STAGE.DOMAIN`` as (stage, domain): a row and a column of this run's scores matrix."""
        if self.config.objective is None:
            return None
        stages = [INIT, *(planned.name for planned in self.plan)]
        stage, dot, domain = self.config.objective.partition(".")
        if not dot:
            raise ConfigError(f"objective={self.config.objective}: expected STAGE.DOMAIN, the held-out score of DOMAIN after STAGE")
        if stage not in stages:
            raise ConfigError(f"objective={self.config.objective}: {unknown_name_message('stage', stage, stages)}")
        if domain not in self.domains:
            raise ConfigError(f"objective={self.config.objective}: {unknown_name_message('domain', domain, self.domains)}")
        return stage, domain

    def _plan_stage(self, name: str, spec: DictConfig) -> PlannedStage:
        where = f"cascade.stages.{name}"
        stage_type = self._check(lambda: self.plugins.component("stages", spec.type), f"{where}.type").factory
        domains = list(spec.domains) or self.domains
        for domain in domains:
            if domain not in self.domains:
                raise ConfigError(f"{where}.domains: {unknown_name_message('domain', domain, self.domains)}")
        options = validate_options(stage_type.Config, OmegaConf.to_container(spec.params, resolve=True), f"{where}.params")
        stage = stage_type(name, options, domains)
        for wrapper_name, wrapper_options in spec.wrap.items():
            wrap = self._check(lambda: self.plugins.component("wrappers", wrapper_name), f"{where}.wrap").factory
            stage = wrap(stage, wrapper_options)
        return PlannedStage(name, spec.type, domains, stage, spec.seed)

    @staticmethod
    def _check(lookup, where: str):
        try:
            return lookup()
        except UnknownComponentError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    # ---- the run -----------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        registry = Registry(self.run_dir / "checkpoints" / "index.json")
        resumed = len(registry.entries) > 0
        self._check_resumable(registry)
        info = RunInfo(
            name=self.config.cascade.name,
            run_dir=self.run_dir,
            config=self.config,
            seed=self.config.seed,
            stages=[p.name for p in self.plan],
            domains=self.domains,
            resumed=resumed,
        )
        loggers = self._start_loggers(info)
        try:
            self.plugins.hook.cascade_run_start(run=info)
            if INIT not in registry:
                self._run_init(info, registry)
            for index, planned in enumerate(self.plan, start=1):
                if planned.name in registry:
                    continue
                self._run_stage(info, registry, index, planned)
            # every stage (and init) wrote the report as it finished: the files are current, only the data is needed
            report = build_report(self.run_dir, self.config, registry)
            self.plugins.hook.cascade_run_end(run=info, report=report)
            return report
        finally:
            for name in loggers:
                self.plugins.unregister(name)
            self.components.close()
            if self._eval_workers is not None:
                self._eval_workers.close()

    def _run_init(self, info: RunInfo, registry: Registry) -> None:
        stage = StageInfo(INIT, 0, "init", self.domains)
        path = self.run_dir / "checkpoints" / INIT
        seed_everything(self.config.seed)
        self.plugins.hook.cascade_stage_start(run=info, stage=stage)
        started = time.time()
        environments = {domain: self.environment(domain) for domain in self.domains}
        checkpoint = self.plugins.hook.cascade_init_checkpoint(
            model_config=self.config.model, path=str(path), seed=self.config.seed, environments=environments
        )
        if checkpoint is None:
            engines = sorted(p.name for p in self.plugins.plugins.values() if "cascade_init_checkpoint" in p.hooks)
            raise ConfigError(f"no plugin could create the model for model={OmegaConf.to_container(self.config.model)}; "
                              f"plugins that make models: {', '.join(engines) or 'none'}")
        self._finish(info, registry, stage, checkpoint, {"seconds": time.time() - started})

    def _run_stage(self, info: RunInfo, registry: Registry, index: int, planned: PlannedStage) -> None:
        stage = StageInfo(planned.name, index, planned.type, planned.domains)
        stage_dir = self.run_dir / "stages" / f"{index:02d}_{planned.name}"
        stage_dir.mkdir(parents=True, exist_ok=True)
        context = StageContext(
            run=info,
            stage=stage,
            stage_dir=stage_dir,
            registry=registry,
            plugins=self.plugins,
            seed=self.config.seed + index if planned.seed is None else planned.seed,
            make_environment=self.environment,
            make_reward=self.reward,
        )
        context.load_history()
        seed_everything(context.seed)
        self.plugins.hook.cascade_stage_start(run=info, stage=stage)
        started = time.time()
        previous = registry.last()
        checkpoint = planned.stage.run(previous.checkpoint, context)
        checkpoint.lineage = registry[INIT].checkpoint.lineage
        summary = {"seconds": time.time() - started, "steps": len(context.history)}
        if context.history:
            summary["last"] = context.history[-1]
        # a stage that left the policy as it was (a reward model stage) keeps its scores: same weights, same draw
        self._finish(info, registry, stage, checkpoint, summary, previous if checkpoint.path == previous.checkpoint.path else None)

    def _finish(self, info: RunInfo, registry: Registry, stage: StageInfo, checkpoint: Checkpoint, summary: dict,
                unchanged: Entry | None = None) -> None:
        self.plugins.hook.cascade_stage_end(run=info, stage=stage, checkpoint=checkpoint, metrics=summary)
        if unchanged is None:
            started = time.time()
            scores, details = self.evaluate(info, stage, checkpoint)
            summary = {**summary, "eval_seconds": time.time() - started}
        else:
            scores = dict(unchanged.scores)
            details = {domain: {**values, "seconds": 0.0} for domain, values in unchanged.details.items()}  # nothing was run
            summary = {**summary, "eval_seconds": 0.0}
            self.plugins.hook.cascade_eval_end(run=info, stage=stage, scores=scores, details=details)
        registry.add(Entry(checkpoint, scores, details, summary))
        write_report(self.run_dir, self.config, registry)

    def evaluate(self, info: RunInfo, stage: StageInfo, checkpoint: Checkpoint) -> tuple[dict[str, float], dict[str, dict]]:
        self.plugins.hook.cascade_eval_start(run=info, stage=stage, domains=self.domains)
        seeds = {domain: eval_seed(self.config.seed, domain) for domain in self.domains}
        workers = self._workers()
        if workers is None:
            details = {domain: self.components.evaluate(checkpoint, domain, seed) for domain, seed in seeds.items()}
        else:
            details = workers.evaluate(checkpoint, seeds)
        scores = {domain: d["score"] for domain, d in details.items()}
        self.plugins.hook.cascade_eval_end(run=info, stage=stage, scores=scores, details=details)
        return scores, details

    def _workers(self) -> EvalWorkers | None:
        """The evaluation worker processes (``eval_workers``), started on first use; None: evaluate in this process."""
        if self._eval_workers is None:
            import torch  # the count ``threads`` set (cli)

            threads = torch.get_num_threads()
            count = workers_for(self.config.eval_workers, threads, self.plugins)
            if count == 1:
                return None
            self._eval_workers = EvalWorkers(self.config, self.plugins, count, max(1, threads // count))
        return self._eval_workers

    def _start_loggers(self, info: RunInfo) -> list[str]:
        names = []
        for name, options in self.config.loggers.items():
            factory = self.plugins.component("loggers", name).factory
            logger = factory(info, **OmegaConf.to_container(options or {}, resolve=True))
            self.plugins.register(logger, f"logger:{name}")
            names.append(f"logger:{name}")
        return names

    # ---- resume ------------------------------------------------------------------------------------

    def _check_resumable(self, registry: Registry) -> None:
        """Refuse to resume a run whose finished stages were made by a different config."""
        saved = self.run_dir / "config.yaml"
        if saved.exists() and registry.entries:
            before = OmegaConf.load(saved)
            for name in registry.entries:
                if name == INIT:
                    changed = before.get("model") != self.config.model
                else:
                    changed = before.cascade.stages.get(name) != self.config.cascade.stages.get(name)
                if changed:
                    raise ConfigError(
                        f"cannot resume {self.run_dir}: stage '{name}' finished with a different config "
                        f"(compare {saved}); start a new run instead"
                    )
        write_text_atomic(saved, OmegaConf.to_yaml(self.config))


def eval_seed(seed: int, domain: str) -> int:
    """The held-out draw of ``domain``: the same after every stage, and in every cascade that has the domain
    (a function of its name, not of its place in the list), so runs with different domain sets compare."""
    return seed + 1000 + zlib.crc32(domain.encode()) % 100_000
