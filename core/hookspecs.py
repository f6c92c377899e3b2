"""Every hook of cascade-rl: the contract between the core and its plugins.

Who calls them: :class:`cascade.plugins.PluginManager` collects the *provider* hooks once at start-up
(which stage types, environments, rewards, teachers, wrappers and loggers exist, and where their config
presets live); :class:`cascade.runner.CascadeRunner` calls the *engine* hooks to make and evaluate
checkpoints and the *lifecycle* hooks as a run progresses (loggers and callbacks implement those).

Built-in features are plugins too: the training engine, the loggers, every domain and MOPD register
through the ``cascade`` entry-point group exactly as a third-party package does, and implement these
hooks with ``@cascade.hookimpl``. ``cascade plugins`` shows which plugin provides what.

An implementation may accept any subset of a hook's arguments (pluggy passes them by name).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    from cascade.context import RunInfo, StageInfo
    from cascade.types import Checkpoint, Environment, Reward, RolloutEngine, Stage, Teacher

hookspec = pluggy.HookspecMarker("cascade")

# -------------------------------------------------------------------------------------------------
# providers: called once when the plugin manager loads; each returns ``{name: factory}``.
# Two plugins providing the same name is an error that names both.
# -------------------------------------------------------------------------------------------------


@hookspec
def cascade_stage_types() -> dict[str, type["Stage"]]:
    """Stage types by name (``type: grpo`` in a stage's config).

    A stage type is a :class:`cascade.types.Stage` subclass; its ``Config`` dataclass lists the options
    a stage's ``params`` may set (unknown keys are rejected at start-up, naming the valid ones).
    """


@hookspec
def cascade_environments() -> dict[str, Callable[..., "Environment"]]:
    """Environment factories by name: ``factory(**options) -> Environment``.

    ``options`` come from the domain's config (``domains.NAME.environment_options``).
    """


@hookspec
def cascade_rewards() -> dict[str, Callable[..., "Reward"]]:
    """Reward factories by name: ``factory(**options) -> Reward``."""


@hookspec
def cascade_teachers() -> dict[str, Callable[..., "Teacher"]]:
    """Teacher factories by name: ``factory(checkpoint, **options) -> Teacher`` (used by MOPD)."""


@hookspec
def cascade_rollout_engines() -> dict[str, Callable[..., "RolloutEngine"]]:
    """Rollout engine factories by name (``rollout.engine``): ``factory(policy, rollout_config) -> RolloutEngine``.

    ``policy`` is the trainer's (:class:`cascade.engine.policy.Policy`; ``policy.model.name_or_path`` is the stage's
    start checkpoint), ``rollout_config`` the run's ``rollout`` node (``engine``, ``options``). An engine holding its
    own copy of the weights takes the trainer's in ``load_weights``, called after every update; a ``close()``
    method, if any, is called when the stage ends."""


@hookspec
def cascade_stage_wrappers() -> dict[str, Callable[..., "Stage"]]:
    """Stage wrappers by name: ``wrap(stage, options) -> Stage``.

    A stage config's ``wrap: {NAME: {options}}`` applies the wrapper ``NAME`` to that stage, whatever
    its type. The wrapper returns a Stage with the same contract (MOPD wraps any stage this way).
    """


@hookspec
def cascade_loggers() -> dict[str, Callable[..., object]]:
    """Logger factories by name: ``factory(run: RunInfo, **options) -> object``.

    The loggers enabled in config (``loggers: {NAME: {options}}``) are created at run start; the
    object returned is registered as a plugin for the run, so it receives the lifecycle hooks below.
    """


@hookspec
def cascade_config_searchpaths() -> list[str]:
    """Hydra config search paths (``pkg://my_plugin.conf``) holding the plugin's config presets.

    A plugin ships YAML in config groups (``stage/``, ``domain/``, ``cascade/``...) so that its stages
    and domains are selectable by name without touching the core.
    """


# -------------------------------------------------------------------------------------------------
# engine: make and score checkpoints. The first plugin that returns non-None answers.
# -------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def cascade_init_checkpoint(
    model_config: Any, path: str, seed: int, environments: "dict[str, Environment]"
) -> "Checkpoint | None":
    """Create the cascade's starting checkpoint at ``path`` (or point to an existing one).

    ``model_config`` is the ``model`` config node: a from-scratch recipe or ``path`` to load.
    ``environments`` are the cascade's domains (a from-scratch tokenizer is trained on their text).
    """


@hookspec(firstresult=True)
def cascade_evaluate(
    checkpoint: "Checkpoint", domain: str, environment: "Environment", reward: "Reward", options: Any, seed: int
) -> "dict[str, float] | None":
    """Score ``checkpoint`` on the held-out split of ``domain``; return ``{"score": ..., ...}``.

    ``score`` (in [0, 1]) goes into the stage x domain matrix; other keys are logged. Return None if
    this plugin cannot load the checkpoint. With ``eval_workers`` above 1 this runs in worker processes that load
    the installed plugins, on ``environment`` and ``reward`` they made themselves from the config.
    """


# -------------------------------------------------------------------------------------------------
# lifecycle: called as the run progresses; loggers and callbacks implement these.
# -------------------------------------------------------------------------------------------------


@hookspec
def cascade_run_start(run: "RunInfo") -> None:
    """The run begins (also on resume; ``run.resumed`` tells which)."""


@hookspec
def cascade_run_end(run: "RunInfo", report: dict) -> None:
    """The run finished every stage; ``report`` is what ``report.json`` holds."""


@hookspec
def cascade_stage_start(run: "RunInfo", stage: "StageInfo") -> None:
    """A stage begins (``stage.resumed_from_step`` is set when it picks up a step checkpoint)."""


@hookspec
def cascade_step_end(run: "RunInfo", stage: "StageInfo", step: int, metrics: dict) -> None:
    """A training step finished; ``metrics`` are that step's scalars (loss, reward, tokens/s...)."""


@hookspec
def cascade_stage_end(run: "RunInfo", stage: "StageInfo", checkpoint: "Checkpoint", metrics: dict) -> None:
    """A stage finished and saved ``checkpoint``; ``metrics`` summarise it (time, last step...)."""


@hookspec
def cascade_eval_start(run: "RunInfo", stage: "StageInfo", domains: list[str]) -> None:
    """Every domain is about to be evaluated on the checkpoint of ``stage``."""


@hookspec
def cascade_eval_end(run: "RunInfo", stage: "StageInfo", scores: dict[str, float], details: dict) -> None:
    """Evaluation done: ``scores`` is this stage's row of the stage x domain matrix."""

