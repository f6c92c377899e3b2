"""Scoring the domains after a stage in worker processes, side by side.

Decoding the tiny model is a long chain of small ops, which a second torch thread speeds up only ~1.4x; two
processes of one thread each score two domains at once. Each worker loads the installed plugins (the ``cascade``
entry points and ``$CASCADE_PLUGINS``), makes its own environments and rewards from the run's config, and keeps the
last checkpoint it loaded; the pool lives as long as the run. A domain's score does not depend on which worker
computes it (evaluation is seeded), only, through float rounding, on the threads each worker has.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor

from omegaconf import DictConfig, OmegaConf

from cascade.components import Components
from cascade.plugins import PluginManager
from cascade.types import Checkpoint

EVALUATION_HOOKS = ("cascade_evaluate", "cascade_environments", "cascade_rewards")
"""What a worker needs from the plugins: every plugin implementing one must load in a fresh process."""

MAX_AUTO_WORKERS = 4


def workers_for(setting: int, threads: int, plugins: PluginManager) -> int:
    """The ``eval_workers`` setting as a count: 0 (auto) is one worker per torch thread, at most
    ``MAX_AUTO_WORKERS``, when there are 2+ threads, this is a main process (a joblib sweep's loky worker cannot
    spawn processes) and a fresh process would load every plugin evaluation uses (not one registered in code);
    anything else is 1, in this process."""
    if setting < 0:
        raise ValueError(f"eval_workers={setting}: give a count, or 0 for one per torch thread")
    if setting:
        return setting
    if threads < 2 or multiprocessing.parent_process() is not None or not loads_in_a_fresh_process(plugins):
        return 1
    return min(threads, MAX_AUTO_WORKERS)


def loads_in_a_fresh_process(plugins: PluginManager) -> bool:
    return all(plugins.plugins[name].distribution != "(registered in-process)" for name in evaluation_plugins(plugins))


def evaluation_plugins(plugins: PluginManager) -> list[str]:
    return sorted({impl.plugin_name for hook in EVALUATION_HOOKS for impl in getattr(plugins.hook, hook).get_hookimpls()})


class EvalWorkers:
    """``workers`` spawned processes with ``threads`` torch threads each, started on the first ``evaluate``."""

    def __init__(self, config: DictConfig, plugins: PluginManager, workers: int, threads: int):
        self.config = OmegaConf.to_container(config, resolve=False)
        self.needed = evaluation_plugins(plugins)
        self.threads = threads
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_exit_with_parent)
        self.last_seconds: dict[str, float] = {}

    def evaluate(self, checkpoint: Checkpoint, seeds: dict[str, int]) -> dict[str, dict[str, float]]:
        """Every domain of ``seeds`` on ``checkpoint``, in that order. They are submitted slowest first (by their last
        evaluation here), so no worker is left with a long one at the end."""
        slowest_first = sorted(seeds, key=lambda domain: -self.last_seconds.get(domain, 0.0))
        futures = {domain: self.pool.submit(_evaluate, self.config, self.needed, self.threads, checkpoint, domain, seeds[domain])
                   for domain in slowest_first}
        details = {domain: futures[domain].result() for domain in seeds}
        self.last_seconds.update((domain, d["seconds"]) for domain, d in details.items())
        return details

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


def _exit_with_parent() -> None:
    """A worker ends when the training process does, however that ends: a killed run never shuts its pool down,
    and the workers, which hold the task queue's write end themselves, would wait on it forever."""
    parent = multiprocessing.parent_process()

    def watch() -> None:
        parent.join()
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


_components: Components | None = None  # a worker's own, made on its first request


def _evaluate(config: dict, needed: list[str], threads: int, checkpoint: Checkpoint, domain: str, seed: int) -> dict[str, float]:
    global _components
    if _components is None:
        import torch

        torch.set_num_threads(threads)
        plugins = PluginManager().load()
        missing = sorted(set(needed) - set(plugins.plugins))
        if missing:
            raise RuntimeError(f"evaluation worker: plugins {', '.join(missing)} are not installed (a worker loads the "
                               f"entry points); set eval_workers=1 to evaluate in the training process")
        _components = Components(OmegaConf.create(config), plugins)
    return _components.evaluate(checkpoint, domain, seed)
