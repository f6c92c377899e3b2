"""The Ray cluster and the actors on it: connect once per process, start restartable actors, wait until they are up.

Every Ray component (reward, teacher, rollout engine) takes the :class:`ActorOptions` keys in its options. The first
one used in a process connects: to ``address`` (or ``$RAY_ADDRESS``) when set, else to a new local cluster of
``cluster_cpus`` CPUs, which Ray shuts down when the process exits.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import ray

from cascade.config import ConfigError


@dataclass
class ActorOptions:
    """Where each actor of a component runs and how it survives a dead process."""

    num_cpus: float = 1.0
    """Ray CPUs each actor reserves; on a local cluster all actors together must fit in ``cluster_cpus``."""
    resources: Dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each actor requests (``{"rollout_node": 1}`` pins it to nodes that offer one)."""
    max_restarts: int = 2
    """How often Ray restarts an actor whose process died (its ``__init__`` runs again)."""
    max_task_retries: int = 2
    """How often a call that a dead actor was running is retried on the restarted one."""
    start_timeout_s: float = 300.0
    """Give up when the actors are not up by then (most often: the cluster lacks the CPUs they reserve)."""
    address: Optional[str] = None
    """Join the cluster at this address; None: ``$RAY_ADDRESS``, else start a local cluster."""
    cluster_cpus: int = 2
    """CPUs of the local cluster started when there is no address."""


def connect(options: ActorOptions) -> None:
    """Join or start the cluster, unless this process is connected already (the first component decides)."""
    if ray.is_initialized():
        return
    address = options.address or os.environ.get("RAY_ADDRESS")
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        ray.init(address=address, **quiet)
    else:  # "local": a fresh cluster even when one started by `ray start` runs on this machine
        ray.init(address="local", num_cpus=options.cluster_cpus, include_dashboard=False, **quiet)


class Worker:
    """What every actor of this plugin answers besides its job."""

    def pid(self) -> int:
        """The actor's process id: the first call, which returns once the actor is up (tests also kill it)."""
        return os.getpid()


def start_actors(worker: type, options: ActorOptions, count: int, what: str, *args: Any) -> list:
    """``count`` actors of class ``worker`` built with ``args``, returned once every ``__init__`` has finished
    (an error raised there is raised here)."""
    connect(options)
    remote = ray.remote(worker).options(num_cpus=options.num_cpus, resources=options.resources or None,
                                        max_restarts=options.max_restarts, max_task_retries=options.max_task_retries)
    actors = [remote.remote(*args) for _ in range(count)]
    pids = [actor.pid.remote() for actor in actors]
    ready, _ = ray.wait(pids, num_returns=len(pids), timeout=options.start_timeout_s)
    if len(ready) < len(pids):
        stop_actors(actors)
        free, total = ray.available_resources().get("CPU", 0), ray.cluster_resources().get("CPU", 0)
        raise ConfigError(f"{what}: {count} actor(s) asking {options.num_cpus:g} CPU(s) each"
                          f"{f' and {options.resources}' if options.resources else ''} were not up after "
                          f"{options.start_timeout_s:g} s; {free:g} of the cluster's {total:g} CPUs are free. "
                          f"Lower num_cpus, or give the cluster more (cluster_cpus for a local one)")
    ray.get(pids)
    return actors


def stop_actors(actors: list) -> None:
    """Kill the actors now (without it they die when the last handle to them goes away)."""
    for actor in actors:
        ray.kill(actor, no_restart=True)
