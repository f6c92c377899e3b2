"""Structured configs: the schema Hydra checks every YAML file and command-line override against.

The YAML groups in ``conf/`` (and in plugins' config search paths) fill these dataclasses::

    cascade train cascade=math seed=3 cascade.stages.math_grpo.params.lr=1e-6
    cascade train -m cascade.stages.math_grpo.params.lr=1e-6,3e-6      # a sweep: one run per value

Options of a stage type (``params``), an environment or a reward are the plugin's own; they are
checked against the plugin's ``Config`` dataclass when the runner builds the cascade, before any work.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cascade.plugins import closest


class ConfigError(ValueError):
    """A config names something that does not exist or sets a value that cannot work."""


@dataclass
class EvalConfig:
    n: int = 64
    """Held-out samples per domain."""
    temperature: float = 0.0
    """0 = greedy pass@1; above 0, sampled pass@1."""
    max_new_tokens: int = 128
    batch_size: int = 256
    """Completions decoded together: finished ones leave the batch, so a wide batch costs little (rollout engine)."""
    thinking: bool = False
    """Open answers with ``<think>\\n`` (thinking mode) instead of an empty ``<think></think>``."""
    breakdown: Optional[str] = None
    """A key of the samples' ``meta`` (e.g. ``task``): the details add ``score/<value>`` for each of its values."""


@dataclass
class DomainConfig:
    """One domain: where its prompts come from and how answers are scored."""

    environment: str = MISSING
    environment_options: Dict[str, Any] = field(default_factory=dict)
    reward: str = MISSING
    reward_options: Dict[str, Any] = field(default_factory=dict)
    eval: Dict[str, Any] = field(default_factory=dict)
    """Per-domain overrides of the top-level ``eval`` settings."""
    variant_of: str = ""
    """The domain this one evaluates in another setting (the same problems with a tool, say): the report
    puts the two side by side."""


@dataclass
class StageConfig:
    type: str = MISSING
    """A stage type provided by a plugin (``cascade plugins`` lists them)."""
    domains: List[str] = field(default_factory=list)
    """Domains this stage trains on; empty = every domain of the cascade."""
    params: Dict[str, Any] = field(default_factory=dict)
    """Options of the stage type, checked against its ``Config``."""
    wrap: Dict[str, Any] = field(default_factory=dict)
    """Wrappers to apply, ``{name: {options}}`` (e.g. ``mopd``)."""
    seed: Optional[int] = None
    """The stage's own seed (its prompt draws and sampling); None: the run's seed plus the stage's position.
    Set it to rerun a stage with other draws while the held-out draws, set by the run's seed, stay."""


@dataclass
class CascadeConfig:
    name: str = "custom"
    domains: Dict[str, DomainConfig] = field(default_factory=dict)
    stages: Dict[str, StageConfig] = field(default_factory=dict)
    order: Optional[List[str]] = None
    """Stage names in the order to run them; default: the order ``stages`` lists them."""


@dataclass
class ModelConfig:
    path: Optional[str] = None
    """A Hugging Face model directory to start from; None builds ``arch`` from scratch."""
    arch: str = "tiny_nemotron_h"
    options: Dict[str, Any] = field(default_factory=dict)
    """Architecture options for a from-scratch model (sizes, layer pattern, tokenizer size...)."""
    dtype: str = "float32"


@dataclass
class RolloutConfig:
    """Which engine generates; sampling settings (temperature, length) belong to each stage."""

    engine: str = "hf"
    options: Dict[str, Any] = field(default_factory=dict)
    """Engine options, e.g. ``batch_size`` for ``hf``."""


@dataclass
class AppConfig:
    cascade: CascadeConfig = field(default_factory=CascadeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    loggers: Dict[str, Any] = field(default_factory=dict)
    """Enabled loggers, ``{name: {options}}``; remove one with ``~loggers.wandb``."""
    seed: int = 0
    run_dir: Optional[str] = None
    """Where the run writes; default: Hydra's output directory."""
    resume: Any = False
    """``true``: continue the newest unfinished run of this cascade; or the run directory to continue."""
    threads: int = 0
    """torch threads; 0: ``OMP_NUM_THREADS`` if set (the tests set 1: processes running side by side on a small CPU
    are much slower with several threads each), else every CPU this process may use."""
    eval_workers: int = 0
    """Processes that score the domains after each stage side by side, each with ``threads / eval_workers`` torch
    threads; 1: in the training process. 0: one per torch thread (at most 4) when there are 2 or more, the run is a
    main process (not a joblib sweep's worker) and every plugin evaluation uses is installed (a worker loads the
    entry points, not plugins registered in code), else 1."""
    objective: Optional[str] = None
    """``STAGE.DOMAIN``: the held-out score ``cascade train`` returns to Hydra, the number a sweeper such as
    Optuna optimizes (``objective=if_rl.if``: IF's score after the ``if_rl`` stage); None returns nothing."""


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="app_schema", node=AppConfig)
    cs.store(group="cascade", name="cascade_schema", node=CascadeConfig)


def validate_options(schema: type, options: Any, where: str) -> Any:
    """Merge ``options`` into the dataclass ``schema``; an unknown key names the valid ones."""
    if not dataclasses.is_dataclass(schema):
        return OmegaConf.create(options or {})
    base = OmegaConf.structured(schema)
    try:
        return OmegaConf.to_object(OmegaConf.merge(base, options or {}))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{where}: {describe_error(exc, schema)}") from None


def describe_error(exc: BaseException, schema: type | None = None) -> str:
    """One line for a config error: the bad key, a close match and the valid keys at that level."""
    for err in _chain(exc):
        full_key = getattr(err, "full_key", None) or getattr(err, "key", None)
        if not isinstance(err, OmegaConfBaseException) or not full_key:
            continue
        message = str(getattr(err, "msg", err)).splitlines()[0]
        typed = re.search(r"is not a subclass of (StageConfig|DomainConfig)", message)
        if typed:  # `+cascade.stages.NEW.type=...`: OmegaConf builds a typed node whole, never key by key
            group = "stage" if typed.group(1) == "StageConfig" else "domain"
            return (f"cannot build the new {group} '{full_key}' key by key; add it from a preset, "
                    f"'+{group}@cascade.{group}s.{full_key}=PRESET', then override its keys "
                    f"(`cascade plugins` lists the presets' search paths)")
        parts = str(full_key).split(".")
        bad, parent = parts[-1], parts[:-1]
        valid = valid_keys(schema or AppConfig, parent)
        if valid is not None and bad not in valid:
            close = closest(bad, valid)
            hint = f"; did you mean '{'.'.join(parent + [close])}'?" if close else ""
            where = f" under '{'.'.join(parent)}'" if parent else ""
            return f"unknown config key '{full_key}'{hint} Valid keys{where}: {', '.join(sorted(valid))}"
        if "not in struct" in message:  # a free-form node (stage params, options): its owner checks names
            return (f"config key '{full_key}' is not set by the composed config; to add it, write "
                    f"'+{full_key}=...' (the plugin that reads it checks the name)")
        return f"bad value for '{full_key}': {message}"
    return str(exc).strip()


def valid_keys(schema: type, path: list[str]) -> list[str] | None:
    """Field names of the dataclass found at ``path`` under ``schema`` (None if free-form)."""
    node: Any = schema
    for part in path:
        if dataclasses.is_dataclass(node):
            hints = typing.get_type_hints(node)
            if part not in hints:
                return None
            node = hints[part]
        elif typing.get_origin(node) in (dict, Dict):
            node = typing.get_args(node)[1]
        else:
            return None
    if not dataclasses.is_dataclass(node):
        return None
    return [f.name for f in dataclasses.fields(node)]


def _chain(exc: BaseException):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def compose(overrides: list[str] = (), searchpaths: list[str] = ()) -> DictConfig:
    """The config ``cascade train OVERRIDES`` would run, for notebooks and tests (no run directory)."""
    from hydra import compose as hydra_compose, initialize_config_module

    register_configs()
    overrides = list(overrides) + ([f"hydra.searchpath=[{','.join(searchpaths)}]"] if searchpaths else [])
    with initialize_config_module(config_module="cascade.conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)
