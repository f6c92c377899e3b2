"""The whole vocabulary of cascade-rl: a few data types and the four contracts plugins implement.

One RL step, read top to bottom, uses every noun here::

    samples_B  = environment.samples("train", n, seed)           # prompts with ground truth
    episodes   = rollout(engine, environment, samples_B, group)  # the engine generates, the env answers
    results    = reward.score(episodes_G) for each group         # one group = the rollouts of one prompt
    advantages = GRPO: (r - mean(r_G)) / std(r_G);  MOPD: log p_teacher - log p_train per token
    trainer.update(episodes, advantages)                         # one optimizer step (strictly on-policy)

A :class:`Stage` wraps such a loop (or an SFT loop) into ``run(start_checkpoint, context) -> checkpoint``;
the cascade runner chains stages and scores every domain after each one.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from cascade.context import StageContext

Message = dict[str, Any]
"""One chat message: ``{"role": "system"|"user"|"assistant"|"tool", "content": str, ...}``."""

Metrics = dict[str, float]


@dataclass
class Sample:
    """One prompt of a domain, with what its reward needs to score an answer."""

    id: str
    domain: str
    messages: list[Message]
    """The prompt conversation; the model writes the next assistant turn."""
    answer: Any = None
    """Ground truth for the reward (a number, a JSON schema, tests, an expected database state...)."""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Episode:
    """One rollout of a sample: everything the trainer and the reward need, across all turns.

    ``token_ids``, ``loss_mask`` and ``logprobs`` are aligned: position t holds a token, whether the
    model generated it (1) or it came from the prompt or the environment (0, never trained on), and the
    rollout engine's log-probability of it (0.0 where ``loss_mask`` is 0). ``routed_experts`` holds, for
    MoE models, the experts the engine chose per token and layer so the trainer can replay them.
    """

    sample: Sample
    messages: list[Message]
    token_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float]
    routed_experts: Any = None
    truncated: bool = False
    """The response hit the length limit; RL stages score such an episode 0."""
    reward: float = 0.0
    token_rewards: list[float] | None = None
    metrics: Metrics = field(default_factory=dict)

    @property
    def num_generated(self) -> int:
        return sum(self.loss_mask)

    @property
    def response(self) -> str:
        """The content of the model's last turn ("" if it has none): what single-answer rewards score."""
        return next((m.get("content") or "" for m in reversed(self.messages) if m.get("role") == "assistant"), "")


@dataclass
class Generation:
    """What a rollout engine returns for one prompt (transformers and vLLM return the same things)."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    """``"stop"`` (end-of-turn token) or ``"length"`` (hit ``max_new_tokens``)."""
    routed_experts: Any = None


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    """Completions per prompt (the GRPO group size)."""
    seed: int | None = None


@dataclass
class StepResult:
    """What an environment answers after the model's turn."""

    messages: list[Message] = field(default_factory=list)
    """Messages to append before the model's next turn (tool results, feedback)."""
    done: bool = True
    metrics: Metrics = field(default_factory=dict)


@dataclass
class RewardResult:
    value: float
    token_rewards: list[float] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    """Logged with the step: e.g. ``{"status": "timeout"}`` or per-constraint verdicts."""


@dataclass
class Checkpoint:
    """A saved policy: a Hugging Face model directory plus where in the cascade it came from."""

    stage: str
    path: str
    lineage: str = ""
    """Id of the run's initial model: checkpoints of one lineage share a tokenizer (MOPD teachers)."""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "path": self.path, "lineage": self.lineage, "meta": self.meta}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Checkpoint":
        return cls(data["stage"], data["path"], data.get("lineage", ""), data.get("meta", {}))


class StageError(RuntimeError):
    """A stage cannot go on (NaN loss, a broken dataset...); its last step checkpoint is left intact."""


class Environment(abc.ABC):
    """Produces a domain's prompts and answers the model's turns.

    Single-turn environments only implement :meth:`samples`; the rollout loop asks :meth:`step` after
    every model turn, and the default answer is "done". Multi-turn environments (tool calls, feedback)
    return tool or user messages and ``done=False`` until the episode ends; only model-generated tokens
    are trained on, whatever the number of turns.
    """

    domain: str = ""
    max_turns: int = 1
    parallel_steps: int = 1
    """How many :meth:`step` calls the rollout loop may run at once (threads), for steps that wait on a
    subprocess (a sandboxed tool run). Above 1, ``step`` must be thread-safe."""

    @abc.abstractmethod
    def samples(self, split: str, n: int, seed: int) -> list[Sample]:
        """``n`` samples of ``split`` ("train" or "test"), the same for the same seed."""

    def step(self, sample: Sample, messages: list[Message]) -> StepResult:
        """Called after each model turn (``messages[-1]`` is the model's); default: one turn."""
        return StepResult(done=True)

    def demonstrations(self, n: int, seed: int) -> list[list[Message]]:
        """Conversations for the SFT mix: prompt plus a correct assistant answer."""
        return []


class Reward(abc.ABC):
    """Scores the episodes of one group (the rollouts of one prompt).

    Seeing the whole group lets pairwise judges compare rollouts; GRPO then centres the values across
    the group. A reward that raises or hangs must not stall training: wrap slow or untrusted work in
    :class:`cascade.rewards.isolated` workers and return 0 with ``info["status"]``. A ``close()`` method,
    if present, is called when the run ends (environments too).
    """

    per_episode: bool = False
    """True when an episode's score does not depend on the other episodes passed with it (tests passed, an exact
    answer): the engine may then score several groups in one :meth:`score` call, which keeps a reward's worker pool
    busy (held-out evaluation scores every episode as a group of one). Pairwise judges leave it False."""

    @abc.abstractmethod
    def score(self, episodes_G: Sequence[Episode]) -> list[RewardResult]:
        ...


class Teacher(abc.ABC):
    """Gives per-token log-probabilities of given token sequences (MOPD's teachers)."""

    @abc.abstractmethod
    def logprobs(self, token_ids_B: Sequence[Sequence[int]]) -> list[list[float]]:
        """For each sequence, ``log p(token_t | tokens_<t)`` for t >= 1 (position 0 gets 0.0)."""


class RolloutEngine(abc.ABC):
    """Generates completions with per-token log-probs (and MoE routing, when the model has it)."""

    @abc.abstractmethod
    def generate(self, prompts_B: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Generation]]:
        """For each prompt, ``params.n`` generations."""

    def load_weights(self, model: Any) -> None:
        """Take the trainer's new weights after an update (no-op for engines sharing the model)."""


class Stage(abc.ABC):
    """One unit of the cascade: SFT, a GRPO stage on a domain, a wrapped stage (MOPD)...

    A stage type declares its options as a dataclass ``Config``; the runner validates the stage's
    ``params`` against it before anything runs, so a mistyped key fails at start-up.
    """

    Config: type = type("Config", (), {})

    def __init__(self, name: str, config: Any, domains: list[str]):
        self.name = name
        self.config = config
        self.domains = domains

    @abc.abstractmethod
    def run(self, start: Checkpoint, context: "StageContext") -> Checkpoint:
        """Train from ``start``; save the result under ``context.stage_dir`` and return it.

        Long stages save step checkpoints with ``context.save_step`` and pick them up again with
        ``context.last_step()`` so an interrupted run resumes from its last completed step.
        """


StageFactory = Callable[..., Stage]
