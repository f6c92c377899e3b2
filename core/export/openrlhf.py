"""Run a GRPO stage of a cascade on OpenRLHF's Ray trainer at scale.

    cascade export openrlhf multidomain_rl --model outputs/default/RUN/checkpoints/sft --out exports/md
    bash exports/md/launch.sh

writes into ``--out``:

- ``prompts.jsonl``: the stage's prompt pools (the draw its GRPO run makes), domains interleaved, one row per
  prompt: ``prompt`` (the conversation rendered by the model's chat template in the stage's thinking mode, ending
  with the generation prompt, exactly what cascade's rollouts feed the model), ``label`` (the :class:`Sample` as
  JSON: id, domain, messages, answer, meta) and ``datasource`` (the domain, which OpenRLHF logs by).
- ``cascade_export.json``: the model, the thinking mode, and each domain's environment and reward (name, options).
- ``reward_func.py``: OpenRLHF's reward function (``--reward.remote_url FILE.py``), a :class:`RewardFunction`.
- ``agent_func.py``, when a domain is multi-turn (``max_turns > 1``): OpenRLHF's agent
  (``--train.agent_func_path``), whose instances are :class:`EpisodeAgent`.
- ``launch.sh``: the ``openrlhf.cli.train_ppo_ray`` command with the stage's GRPO settings mapped to its flags, and
  a comment listing what has no counterpart there.

The two ``.py`` files only name this module: their environments and rewards are built in the OpenRLHF workers by
the plugin manager from ``cascade_export.json``, so any plugin's domain works, and cascade-rl with the cascade's
plugins must be installed where OpenRLHF runs.

Written against OpenRLHF 0.11.2, the newest release on PyPI, reading its wheel's sources (the same files are in
github.com/OpenRLHF/OpenRLHF):

- ``openrlhf/utils/agent.py``: ``SingleTurnAgentExecutor`` loads ``reward_func`` from the ``.py`` file and calls
  ``reward_func(queries, prompts, labels)`` one response at a time (``query`` = the decoded prompt and response
  tokens, special tokens kept) and reads ``rewards`` / ``scores`` / ``extra_logs`` from the dict it returns;
  ``MultiTurnAgentExecutor`` makes one ``AgentInstanceBase`` per episode with no arguments, awaits
  ``reset({"observation", "label"})`` and then ``step({"observation_text", "action_text", "label",
  "sampling_params"})``, which returns ``rewards`` (a tensor, summed over steps), ``scores``,
  ``environment_feedback`` (text appended to the context), ``done``, ``sampling_params`` and ``extra_logs``;
- ``openrlhf/trainer/ray/vllm_engine.py`` (an agent file must define ``AgentExecutor``, made with no arguments);
- ``openrlhf/cli/train_ppo_ray.py``: the hierarchical flags (``--actor.model_name_or_path``,
  ``--data.prompt_dataset``, ``--rollout.n_samples_per_prompt``, ``--algo.advantage.estimator group_norm``,
  ``--algo.kl.init_coef``, ``--actor.adam.lr``, ``--reward.remote_url``, ``--train.agent_func_path``...; older
  releases spelled them ``--pretrain``, ``--prompt_data``, ``--n_samples_per_prompt``, ``--advantage_estimator``,
  ``--init_kl_coef``, ``--actor_learning_rate``, ``--remote_rm_url``, ``--agent_func_path``);
- ``openrlhf/datasets/prompts_dataset.py`` (``input_key`` / ``label_key`` / ``datasource``),
  ``openrlhf/trainer/ppo_trainer.py`` (``--data.max_samples`` keeps the first rows; steps = rows x samples / train
  batch), ``openrlhf/trainer/ppo_utils/samples_generator.py`` (how rewards and extra_logs become tensors, the
  dynamic filter), ``openrlhf/trainer/ppo_utils/length_penalty.py`` and ``openrlhf/utils/deepspeed/deepspeed.py``
  (the truncation penalty, the lr schedule).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import math
import logging
import shlex
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from cascade.components import domain_reward
from cascade.config import ConfigError
from cascade.engine.rollout import generation_prefix, render_prompt
from cascade.plugins import PluginManager, unknown_name_message
from cascade.types import Environment, Episode, Message, Reward, Sample, StepResult

OPENRLHF_VERSION = "0.11.2"
SETTINGS_FILE = "cascade_export.json"
PROMPTS_FILE = "prompts.jsonl"
REWARD_FILE = "reward_func.py"
AGENT_FILE = "agent_func.py"
LAUNCH_FILE = "launch.sh"

GRPO_OPTIONS = (
    "steps", "prompts_per_step", "group_size", "temperature", "top_p", "max_new_tokens", "optim", "updates_per_batch",
    "clip_eps", "kl_coef", "dynamic_filter", "max_sampling_rounds", "overlong_reward", "min_best_reward",
    "prefilter_samples", "freeze_router", "routing_replay", "prompt_pool", "checkpoint_every", "thinking", "reward",
    "reward_options", "domain_reward_options",
)
"""The GRPO stage options the export reads: a stage type whose ``Config`` has them all can be exported."""

logger = logging.getLogger(__name__)


# ---- labels: the whole Sample travels with its prompt ------------------------------------------------------------


def sample_label(sample: Sample) -> str:
    """A prompt row's label: the Sample as JSON, so the reward scores against exactly what the environment made."""
    return json.dumps({"id": sample.id, "domain": sample.domain, "messages": sample.messages,
                       "answer": sample.answer, "meta": sample.meta}, ensure_ascii=False)


def sample_from_label(label: str) -> Sample:
    data = json.loads(label)
    return Sample(data["id"], data["domain"], data["messages"], data.get("answer"), data.get("meta") or {})


# ---- export: a stage of a composed cascade -> files -------------------------------------------------------------


@dataclass
class StageExport:
    """What the files are made of: the stage's GRPO options and what the export measured."""

    stage: str
    options: Any
    """The stage's validated ``GRPOStage.Config`` (or any config with :data:`GRPO_OPTIONS`)."""
    seed: int
    model: str
    out: Path
    prompts_per_domain: dict[str, int]
    longest_prompt: int
    """Tokens of the longest rendered prompt."""
    max_turns: int
    """The most assistant turns of the stage's domains (1: single-turn, scored by ``reward_func.py``)."""

    @property
    def rows(self) -> int:
        return sum(self.prompts_per_domain.values())

    @property
    def multi_turn(self) -> bool:
        return self.max_turns > 1

    @property
    def files(self) -> list[Path]:
        names = [PROMPTS_FILE, SETTINGS_FILE, REWARD_FILE, *([AGENT_FILE] if self.multi_turn else []), LAUNCH_FILE]
        return [self.out / name for name in names]


def export_stage(config: DictConfig, plugins: PluginManager, stage: str, out: str | Path | None = None,
                 model: str | None = None) -> StageExport:
    """Write the OpenRLHF files of ``stage`` of the composed ``config`` into ``out`` (default
    ``exports/openrlhf/CASCADE/STAGE``); ``model`` (default ``model.path``) is the policy OpenRLHF trains."""
    from cascade.runner import CascadeRunner  # planning only: OpenRLHF's workers import this module without it

    out = Path(out or Path("exports") / "openrlhf" / config.cascade.name / stage).resolve()
    model = model or config.model.path
    if not model:
        raise ConfigError("model.path is not set (this cascade builds its model from scratch): pass --model PATH, a "
                          "Hugging Face model directory such as a finished run's checkpoints/STAGE")
    runner = CascadeRunner(config, plugins, Path(config.run_dir or out))  # validates every name and option
    index, planned = _find_stage(runner, stage)
    options = _grpo_options(runner, planned)
    tokenizer = _load_tokenizer(model)
    seed = config.seed + index  # the stage's seed in a run (CascadeRunner._run_stage): the same prompt pools
    pools, max_turns = _draw_pools(runner, planned.domains, options.prompt_pool, seed)
    rows = _prompt_rows(pools, tokenizer, options.thinking)
    export = StageExport(
        stage=stage, options=options, seed=seed, model=_model_reference(model), out=out,
        prompts_per_domain={domain: len(pool) for domain, pool in pools.items()},
        longest_prompt=max(map(len, tokenizer([r["prompt"] for r in rows], add_special_tokens=False)["input_ids"])),
        max_turns=max_turns,
    )
    settings = {
        "openrlhf": OPENRLHF_VERSION, "cascade": config.cascade.name, "stage": stage, "model": export.model,
        "thinking": options.thinking, "generation_prefix": generation_prefix(tokenizer, options.thinking),
        "eos_token": tokenizer.eos_token, "domains": _domain_settings(config, planned.domains, options),
    }
    _write_files(export, rows, settings)
    return export


def _draw_pools(runner, domains: Sequence[str], n: int, seed: int) -> tuple[dict[str, list[Sample]], int]:
    """Each domain's training pool, as the stage draws it, and the most assistant turns of its environments."""
    environments = {domain: runner.environment(domain) for domain in domains}
    try:
        pools = {domain: env.samples("train", n, seed) for domain, env in environments.items()}
    finally:
        for env in environments.values():
            if callable(getattr(env, "close", None)):
                env.close()
    return pools, max(env.max_turns for env in environments.values())


def _write_files(export: StageExport, rows: list[dict[str, str]], settings: dict[str, Any]) -> None:
    out = export.out
    out.mkdir(parents=True, exist_ok=True)
    (out / PROMPTS_FILE).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")
    (out / REWARD_FILE).write_text(REWARD_FILE_TEXT.format(stage=export.stage))
    if export.multi_turn:
        (out / AGENT_FILE).write_text(AGENT_FILE_TEXT.format(stage=export.stage))
    (out / LAUNCH_FILE).write_text(launch_script(export))
    (out / LAUNCH_FILE).chmod(0o755)


def _find_stage(runner, name: str):
    for index, planned in enumerate(runner.plan, start=1):
        if planned.name == name:
            return index, planned
    raise ConfigError(unknown_name_message("stage", name, [p.name for p in runner.plan]))


def _grpo_options(runner, planned):
    """The stage's GRPO options; a stage of another kind, or a wrapped one (MOPD), has no OpenRLHF counterpart."""
    if _is_grpo(runner, planned):
        return planned.stage.config
    wrappers = list(runner.config.cascade.stages[planned.name].wrap)
    why = f"is wrapped by {', '.join(wrappers)}" if wrappers else f"(type {planned.type}) is not a GRPO stage"
    exportable = [p.name for p in runner.plan if _is_grpo(runner, p)]
    raise ConfigError(f"stage '{planned.name}' {why}: OpenRLHF runs plain GRPO stages; exportable stages of this "
                      f"cascade: {', '.join(exportable) or 'none'}")


def _is_grpo(runner, planned) -> bool:
    return (not runner.config.cascade.stages[planned.name].wrap
            and all(hasattr(planned.stage.config, option) for option in GRPO_OPTIONS))


def _load_tokenizer(model: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the tokenizer of the model {model}: {exc}") from None


def _model_reference(model: str) -> str:
    """A local model directory as an absolute path (the Ray workers run elsewhere); a hub id as given."""
    return str(Path(model).resolve()) if Path(model).exists() else model


def _prompt_rows(pools: dict[str, list[Sample]], tokenizer, thinking: bool) -> list[dict[str, str]]:
    """Rows interleaved domain by domain, so that the first ``--data.max_samples`` hold the domains evenly, as
    GRPO's draw spreads each step's prompts over them."""
    for domain, pool in pools.items():
        if not pool:
            raise ConfigError(f"domain '{domain}' made no training samples")
    return [{"prompt": render_prompt(tokenizer, sample.messages, thinking), "label": _checked_label(sample),
             "datasource": sample.domain}
            for group in itertools.zip_longest(*pools.values()) for sample in group if sample is not None]


def _checked_label(sample: Sample) -> str:
    """The label, refused unless it rebuilds the same Sample (the reward would score against something else)."""
    try:
        label = sample_label(sample)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"domain '{sample.domain}': sample {sample.id} cannot be written as JSON ({exc})") from None
    if sample_from_label(label) != sample:
        raise ConfigError(f"domain '{sample.domain}': sample {sample.id} changes through JSON (tuples, non-string keys?); "
                          f"its reward would see a different answer")
    return label


def _domain_settings(config: DictConfig, domains: Sequence[str], options) -> dict[str, dict]:
    """Each domain's environment and reward as the runner builds them, and trained on as ``GRPOStage.reward`` does: the
    stage's ``reward`` option, when set, replaces every domain's reward; ``domain_reward_options`` overlay one's own."""
    settings = {}
    for domain in domains:
        spec = config.cascade.domains[domain]
        if options.reward:
            reward, reward_options = options.reward, dict(options.reward_options)
        else:
            reward, reward_options = domain_reward(config, domain, options.domain_reward_options.get(domain))
        settings[domain] = {
            "environment": spec.environment,
            "environment_options": OmegaConf.to_container(spec.environment_options, resolve=True),
            "reward": reward,
            "reward_options": reward_options,
        }
    return settings


# ---- launch.sh: GRPOStage.Config -> openrlhf.cli.train_ppo_ray flags ---------------------------------------------


def launch_script(export: StageExport) -> str:
    flags = launch_flags(export)
    lines = [
        "#!/usr/bin/env bash",
        f"# OpenRLHF {OPENRLHF_VERSION} run of cascade stage '{export.stage}' (written by `cascade export openrlhf`).",
        "# Needs cascade-rl and the cascade's plugins installed on every Ray node (the reward and the environments",
        "# are built there by the plugin manager). Cluster shape, not part of the stage: GPUS per node (default 8),",
        "# one colocated vLLM engine per GPU (the hybrid engine).",
        "# Not mapped (cascade option: why):",
        *[f"#   - {item}" for item in unmapped_options(export)],
        "set -euo pipefail",
        'GPUS="${GPUS:-8}"',
        "python3 -m openrlhf.cli.train_ppo_ray \\",
    ]
    rendered = [" ".join([flag, *map(_shell_word, values)]) for flag, *values in flags]
    lines += [f"  {flag} \\" for flag in rendered[:-1]] + [f"  {rendered[-1]}"]
    return "\n".join(lines) + "\n"


def _shell_word(value: Any) -> str:
    text = str(value)
    return text if text.startswith('"$') else shlex.quote(text)


def launch_flags(export: StageExport) -> list[tuple]:
    """The ``train_ppo_ray`` flags of the stage, each ``(flag, *values)``."""
    o, optim = export.options, export.options.optim
    prompts = o.steps * o.prompts_per_step
    return [
        ("--actor.num_nodes", 1), ("--actor.num_gpus_per_node", '"$GPUS"'),
        ("--vllm.num_engines", '"$GPUS"'), ("--vllm.tensor_parallel_size", 1),
        ("--train.colocate_all",), ("--vllm.enable_sleep",), ("--ds.enable_sleep",),
        ("--actor.model_name_or_path", export.model),
        ("--data.prompt_dataset", export.out / PROMPTS_FILE),
        ("--data.input_key", "prompt"), ("--data.label_key", "label"),
        # `steps` rollout batches: the first `steps` x `prompts_per_step` rows, passed over again if the pool is smaller
        ("--data.max_samples", min(prompts, export.rows)), ("--train.num_episodes", math.ceil(prompts / export.rows)),
        ("--data.max_len", export.longest_prompt + export.max_turns * o.max_new_tokens),
        (("--train.agent_func_path", export.out / AGENT_FILE) if export.multi_turn
         else ("--reward.remote_url", export.out / REWARD_FILE)),
        ("--algo.advantage.estimator", "group_norm"),
        ("--rollout.n_samples_per_prompt", o.group_size),
        ("--rollout.batch_size", o.prompts_per_step),
        # the whole rollout batch in one optimizer step, `updates_per_batch` times: strictly on-policy at 1
        ("--train.batch_size", o.prompts_per_step * o.group_size), ("--train.max_epochs", o.updates_per_batch),
        ("--actor.eps_clip", o.clip_eps), ("--actor.loss_agg_mode", "token-mean"),
        ("--rollout.max_new_tokens", o.max_new_tokens),
        ("--rollout.temperature", o.temperature), ("--rollout.top_p", o.top_p),
        ("--actor.adam.lr", optim.lr), ("--actor.adam.betas", *optim.betas),
        ("--actor.adam.weight_decay", optim.weight_decay), ("--actor.max_norm", optim.grad_clip),
        *_schedule_flags(o),
        *_kl_flags(o),
        *_filter_flags(o),
        ("--train.seed", export.seed),
        ("--ckpt.output_dir", export.out / "checkpoint"), ("--ckpt.save_steps", o.checkpoint_every),
        ("--ckpt.save_hf",),
    ]


def _schedule_flags(o) -> list[tuple]:
    """transformers' schedulers by the names OpenRLHF passes on; warm-up as a share of the stage's steps."""
    warmup = ("--actor.lr_warmup_ratio", o.optim.warmup_steps / o.steps)
    if o.optim.min_lr is not None:
        return [("--actor.lr_scheduler", "cosine_with_min_lr"), warmup,
                ("--actor.min_lr_ratio", o.optim.min_lr / o.optim.lr)]
    return [("--actor.lr_scheduler", "constant_with_warmup" if o.optim.warmup_steps else "constant"), warmup]


def _kl_flags(o) -> list[tuple]:
    """KL to the start policy as a k3 loss term, as GRPOStage adds it; 0 builds no reference model at all."""
    if o.kl_coef <= 0:
        return [("--algo.kl.init_coef", 0)]
    return [("--algo.kl.init_coef", o.kl_coef), ("--algo.kl.use_loss",), ("--algo.kl.estimator", "k3"),
            ("--ref.num_nodes", 1), ("--ref.num_gpus_per_node", '"$GPUS"')]


def _filter_flags(o) -> list[tuple]:
    """Dynamic filtering (OpenRLHF keeps a group whose mean score is strictly inside the range: for 0/1 rewards, one
    not all equal) and the reward of a cut-off response (OpenRLHF scales it by a coefficient in [0, 1] or sets a
    negative one: 0 and negative values map)."""
    flags = [("--algo.dynamic_filtering_enable",), ("--algo.dynamic_filtering_range", 0, 1)] if o.dynamic_filter else []
    if o.overlong_reward <= 0:
        flags.append(("--reward.stop_properly_penalty_coef", o.overlong_reward))
    return flags


def unmapped_options(export: StageExport) -> list[str]:
    """What of the stage has no counterpart in OpenRLHF, as ``option: why`` lines for launch.sh."""
    o = export.options
    unmapped = [
        "prompt draw: GRPO draws each step's prompts with replacement from the whole pool; OpenRLHF shuffles the "
        f"first {min(o.steps * o.prompts_per_step, export.rows)} rows of {PROMPTS_FILE} and takes each once per pass",
        f"group-aware rewards: OpenRLHF {OPENRLHF_VERSION} scores each response alone (reward_func gets one query "
        "per call, the agent scores its own episode), so a reward comparing the rollouts of a prompt sees one",
    ]
    if o.dynamic_filter:
        unmapped += [f"dynamic_filter: mapped to a mean-score range (0, 1), which drops only all-equal groups of 0/1 "
                     f"rewards; filtered prompts are replaced from the same rows, so fewer than {o.steps} steps may run",
                     f"max_sampling_rounds={o.max_sampling_rounds}: OpenRLHF refills filtered prompts without a limit"]
    if export.multi_turn:
        unmapped.append(f"max_new_tokens={o.max_new_tokens} per turn: OpenRLHF's multi-turn executor lets each turn use "
                        f"what is left of --data.max_len, which counts the environment's messages too (raise it if "
                        f"episodes end on it)")
    if o.overlong_reward > 0:
        unmapped.append(f"overlong_reward={o.overlong_reward}: OpenRLHF can only scale a cut-off response's reward "
                        f"or set it to a negative value")
    if o.optim.warmup_start_lr:
        unmapped.append(f"optim.warmup_start_lr={o.optim.warmup_start_lr}: OpenRLHF's warm-up starts at 0")
    if o.min_best_reward is not None:
        unmapped.append(f"min_best_reward={o.min_best_reward}: no OpenRLHF option masks groups by their best reward")
    if o.prefilter_samples:
        unmapped.append(f"prefilter_samples={o.prefilter_samples}: OpenRLHF has no hard-prompt prefilter; the whole "
                        f"pool is exported")
    if o.freeze_router or o.routing_replay:
        unmapped.append("freeze_router / routing_replay (MoE): OpenRLHF trains the router and does not replay the "
                        "rollout's expert choices")
    return unmapped


# ---- in the OpenRLHF workers: the export's reward and environments ---------------------------------------------


REWARD_FILE_TEXT = '''\
"""OpenRLHF reward function of cascade stage {stage!r} (written by `cascade export openrlhf`).

Use: --reward.remote_url THIS_FILE. Scores with the stage's rewards, built by cascade's plugin manager from
cascade_export.json next to this file; see cascade.export.openrlhf.RewardFunction.
"""

from pathlib import Path

from cascade.export.openrlhf import RewardFunction

reward_func = RewardFunction(Path(__file__).with_name("cascade_export.json"))
'''

AGENT_FILE_TEXT = '''\
"""OpenRLHF agent of cascade stage {stage!r} (written by `cascade export openrlhf`).

Use: --train.agent_func_path THIS_FILE. Each episode runs the domain's cascade environment and reward, built by
cascade's plugin manager from cascade_export.json next to this file; see cascade.export.openrlhf.EpisodeAgent.
"""

from pathlib import Path

from openrlhf.utils.agent import AgentInstanceBase, MultiTurnAgentExecutor

from cascade.export.openrlhf import EpisodeAgent

SETTINGS = Path(__file__).with_name("cascade_export.json")


class AgentInstance(EpisodeAgent, AgentInstanceBase):
    def __init__(self, *args, **kwargs):
        super().__init__(SETTINGS)


class AgentExecutor(MultiTurnAgentExecutor):
    def __init__(self):
        super().__init__(AgentInstance)
'''


class ExportRuntime:
    """The components of one export in one process, built through the plugin manager from its settings file."""

    def __init__(self, settings_path: str | Path):
        self.settings = json.loads(Path(settings_path).read_text())
        self.plugins = PluginManager().load()
        # OpenRLHF scores from several threads at once (asyncio.to_thread); environments and rewards need not be thread-safe
        self.lock = threading.Lock()
        self._environments: dict[str, Environment] = {}
        self._rewards: dict[str, Reward] = {}

    def environment(self, domain: str) -> Environment:
        if domain not in self._environments:
            spec = self.settings["domains"][domain]
            env = self.plugins.component("environments", spec["environment"]).factory(**spec["environment_options"])
            env.domain = domain
            self._environments[domain] = env
        return self._environments[domain]

    def reward(self, domain: str) -> Reward:
        if domain not in self._rewards:
            spec = self.settings["domains"][domain]
            self._rewards[domain] = self.plugins.component("rewards", spec["reward"]).factory(**spec["reward_options"])
        return self._rewards[domain]

    @functools.cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.settings["model"])

    def render(self, messages: Sequence[Message]) -> str:
        return render_prompt(self.tokenizer, messages, self.settings["thinking"])

    def assistant_turn(self, response: str) -> tuple[Message, bool]:
        """The model's turn as cascade's rollouts store it (the generation prefix its prompt ended with, then the
        text without its end-of-turn token), and whether it finished (False: cut at the length limit)."""
        eos = self.settings["eos_token"]
        finished = response.endswith(eos)
        content = response[:-len(eos)] if finished else response
        return {"role": "assistant", "content": self.settings["generation_prefix"] + content}, finished

    def score(self, domain: str, episodes_G: Sequence[Episode]) -> list[float] | None:
        """The domain's reward of one group, or None (logged) if the reward fails: never raises."""
        try:
            with self.lock:
                results = self.reward(domain).score(episodes_G)
            if len(results) != len(episodes_G):
                raise ValueError(f"returned {len(results)} results for {len(episodes_G)} episodes")
            return [float(r.value) for r in results]
        except Exception:  # noqa: BLE001 - a failing reward scores 0, it must not stop training
            logger.exception("cascade reward of domain %r failed on %d responses", domain, len(episodes_G))
            return None

    def close(self) -> None:
        for component in [*self._environments.values(), *self._rewards.values()]:
            if callable(getattr(component, "close", None)):
                component.close()


@functools.cache
def runtime(settings_path: str) -> ExportRuntime:
    """One runtime per export and process: OpenRLHF makes an agent per episode, and plugins load in seconds."""
    return ExportRuntime(settings_path)


def response_of(query: str, prompt: str) -> str:
    """What the model wrote: OpenRLHF's query is its prompt and response decoded together."""
    if not query.startswith(prompt):
        raise ValueError("the query does not start with its prompt (was the prompt cut to fit --data.max_len?)")
    return query[len(prompt):]


class RewardFunction:
    """OpenRLHF's ``reward_func(queries, prompts, labels, **kwargs)`` for one export.

    Rebuilds each response's Sample from its label, scores the responses of one sample together (group-aware
    rewards see every rollout of a prompt that arrives in one call) with the domain's reward, and returns
    ``{"rewards", "scores", "extra_logs"}`` as tensors over the queries. Bad input (a garbage label, a query that
    does not extend its prompt, a failing reward) scores 0, is logged and counted in ``extra_logs["reward_failed"]``.
    """

    def __init__(self, settings_path: str | Path):
        self.runtime = runtime(str(Path(settings_path).resolve()))

    def __call__(self, queries: Sequence[str], prompts: Sequence[str], labels: Sequence[str], **kwargs) -> dict[str, Any]:
        values, failed = [0.0] * len(queries), [1.0] * len(queries)
        groups: dict[tuple[str, str], list[tuple[int, Episode]]] = {}
        for i, (query, prompt, label) in enumerate(zip(queries, prompts, labels)):
            try:
                episode = self.episode(query, prompt, label)
            except Exception as err:  # noqa: BLE001 - bad input scores 0
                logger.warning("cascade reward_func: response %d scores 0: %s: %s", i, type(err).__name__, err)
                continue
            groups.setdefault((episode.sample.domain, episode.sample.id), []).append((i, episode))
        for (domain, _), members in groups.items():
            for (i, _), value in zip(members, self.runtime.score(domain, [e for _, e in members]) or []):
                values[i], failed[i] = value, 0.0
        rewards = torch.tensor(values)
        return {"rewards": rewards, "scores": rewards.clone(), "extra_logs": {"reward_failed": torch.tensor(failed)}}

    def episode(self, query: str, prompt: str, label: str) -> Episode:
        sample = sample_from_label(label)
        if sample.domain not in self.runtime.settings["domains"]:
            raise ValueError(f"domain {sample.domain!r} is not one of this export's")
        message, finished = self.runtime.assistant_turn(response_of(query, prompt))
        return Episode(sample, [*sample.messages, message], [], [], [], truncated=not finished)

    def close(self) -> None:
        """Close the export's environments and rewards in this process (a reward's workers); OpenRLHF never calls it."""
        self.runtime.close()


class EpisodeAgent:
    """One episode of a cascade environment, for OpenRLHF's ``MultiTurnAgentExecutor`` (its ``AgentInstanceBase``).

    ``step`` feeds the model's action to ``Environment.step`` as cascade's rollouts do: the environment's messages
    come back rendered by the model's chat template as the next observation text (exactly the tokens cascade would
    append), and when the environment says done, at the domain's ``max_turns``, or after a turn cut at the length
    limit, the domain's reward scores the whole conversation. Intermediate steps are rewarded 0 (OpenRLHF sums them).
    Nothing the model writes raises: a malformed action gets the environment's error message as its observation,
    and a broken label or environment ends the episode with reward 0 (logged).
    """

    def __init__(self, settings_path: str | Path):
        self.runtime = runtime(str(Path(settings_path).resolve()))
        self.sample: Sample | None = None
        self.messages: list[Message] = []
        self.text = ""
        """Everything the model has seen and written so far, as OpenRLHF's ``observation_text`` holds it."""
        self.turns = 0

    async def reset(self, states: dict, **kwargs) -> dict:
        self.text = states["observation"]
        try:
            self.sample = sample_from_label(states["label"])
            self.runtime.environment(self.sample.domain)
            self.messages = list(self.sample.messages)
        except Exception as err:  # noqa: BLE001 - a bad label is scored 0, not raised
            logger.warning("cascade agent: the episode scores 0, its label is unusable: %s: %s", type(err).__name__, err)
            self.sample = None
        return {"observation": self.text}

    async def step(self, states: dict, **kwargs) -> dict:
        # environments and rewards may block (sandboxes): off the event loop that drives every episode
        reward, feedback, done = await asyncio.to_thread(self.advance, states["action_text"])
        value = torch.tensor(reward)
        return {"rewards": value, "scores": value, "environment_feedback": feedback, "done": done,
                "sampling_params": states.get("sampling_params"), "extra_logs": {"turns": float(self.turns)}}

    def advance(self, action: str) -> tuple[float, str, bool]:
        """(reward, next observation text, done) after the model's ``action``."""
        if self.sample is None:
            return 0.0, "", True
        self.turns += 1
        self.text += action
        message, finished = self.runtime.assistant_turn(action)
        self.messages.append(message)
        environment = self.runtime.environment(self.sample.domain)
        result = self.environment_step() if finished else None  # a cut-off turn ends the episode, as in cascade
        if result is None or result.done or self.turns >= environment.max_turns:
            return self.final_reward(truncated=not finished), "", True
        self.messages += result.messages
        feedback = self.rendered_feedback()
        if feedback is None:
            return self.final_reward(truncated=False), "", True
        return 0.0, feedback, False

    def environment_step(self) -> StepResult | None:
        try:
            with self.runtime.lock:
                return self.runtime.environment(self.sample.domain).step(self.sample, self.messages)
        except Exception:  # noqa: BLE001 - the environment's failure ends the episode, it must not stop training
            logger.exception("cascade environment of domain %r failed; the episode ends", self.sample.domain)
            return None

    def rendered_feedback(self) -> str | None:
        """The text the chat template adds for the environment's messages and the next generation prompt; None
        (logged) if the template re-renders earlier turns differently, which would desynchronise the tokens."""
        full = self.runtime.render(self.messages)
        if not full.startswith(self.text):
            logger.error("cascade agent: the chat template re-renders earlier turns differently; the episode ends "
                         "(use a prefix-stable template such as ChatML)")
            return None
        feedback, self.text = full[len(self.text):], full
        return feedback

    def final_reward(self, truncated: bool) -> float:
        episode = Episode(self.sample, self.messages, [], [], [], truncated=truncated)
        return (self.runtime.score(self.sample.domain, [episode]) or [0.0])[0]
