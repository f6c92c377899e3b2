"""The trainer owns the model's optimizer: schedule, gradient clipping, the NaN guard, step checkpoints.

Stages compute their own loss (SFT: cross-entropy on assistant tokens; GRPO and MOPD: policy gradient)
with :func:`token_logprobs`, call ``loss.backward()`` per micro-batch and then :meth:`Trainer.step`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_model, save_model

from cascade.engine.moe import ExpertBalancer
from cascade.engine.policy import Policy, save_policy
from cascade.types import Checkpoint, StageError


class NonFiniteLossError(StageError):
    """Training produced NaN/inf: the stage stops; its last step checkpoint is left intact."""


@dataclass
class OptimConfig:
    lr: float = 3e-6
    min_lr: float | None = None
    """End of the cosine decay; None = constant after warm-up."""
    warmup_steps: int = 0
    warmup_start_lr: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    weight_decay: float = 0.1
    grad_clip: float = 1.0


def scheduled_lr(o: OptimConfig, step: int, total_steps: int) -> float:
    """The lr of 0-based ``step``: linear warm-up from ``warmup_start_lr``, then cosine to ``min_lr`` (or constant)."""
    if step < o.warmup_steps:
        return o.warmup_start_lr + (o.lr - o.warmup_start_lr) * (step + 1) / o.warmup_steps
    if o.min_lr is None:
        return o.lr
    progress = min(1.0, (step - o.warmup_steps) / max(1, total_steps - o.warmup_steps))
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * progress))


class Trainer:
    def __init__(self, policy: Policy, optim: OptimConfig, total_steps: int, balance_rate: float = 1e-3):
        self.policy = policy
        self.model = policy.model
        self.optim = optim
        self.total_steps = max(1, total_steps)
        self.step_count = 0
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim < 2 or "norm" in name else decay).append(param)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=optim.lr, betas=tuple(optim.betas),
        )
        self.balancer = ExpertBalancer(self.model, balance_rate)
        self.model.train()

    def lr_at(self, step: int) -> float:
        return scheduled_lr(self.optim, step, self.total_steps)

    def step(self) -> dict[str, float]:
        """Clip, step, zero grads, update expert biases; gradients must already be accumulated."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.optim.grad_clip)
        if not torch.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(f"gradient norm is {grad_norm.item()} at step {self.step_count + 1}")
        lr = self.lr_at(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        return {"lr": lr, "grad_norm": grad_norm.item(), **self.balancer.update()}

    # ---- step checkpoints: weights, optimizer and counters, restored exactly -----------------------

    def save(self, directory: Path) -> None:
        save_model(self.model, str(directory / "model.safetensors"))
        # the state dict holds the routers' correction biases too (persistent buffers)
        torch.save({"optimizer": self.optimizer.state_dict(), "step": self.step_count}, directory / "trainer.pt")

    def load(self, directory: Path) -> None:
        load_model(self.model, str(directory / "model.safetensors"))
        state = torch.load(directory / "trainer.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = state["step"]

    def close(self) -> None:
        self.balancer.close()


def train_steps(trainer: Trainer, context, steps: int, checkpoint_every: int, step: Callable[[int], dict]) -> Checkpoint:
    """The loop every training stage shares: resume from the last step checkpoint, run ``step(n)`` for
    the remaining steps (logging its metrics, checkpointing every ``checkpoint_every``), save the policy."""
    context.stage.total_steps = steps
    first = 1
    resumed = context.last_step()
    if resumed is not None:
        trainer.load(resumed[1])
        first = resumed[0] + 1
    for n in range(first, steps + 1):
        context.log(n, step(n))
        if n % checkpoint_every == 0 or n == steps:
            context.save_step(n, trainer.save)
    trainer.close()
    path = save_policy(trainer.policy, context.stage_dir / "checkpoint")
    return Checkpoint(context.stage.name, str(path))


def check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"loss is {loss.item()} at step {step}")


def right_pad(rows: list[list], value, width: int | None = None, dtype=None) -> torch.Tensor:
    """Rows of different lengths as one [B, width] tensor, ``value`` after each row's end."""
    width = max(len(r) for r in rows) if width is None else width
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=dtype)


def attention_mask(rows: list[list], width: int | None = None) -> torch.Tensor:
    """1 on each row's tokens, 0 on the right padding :func:`right_pad` adds."""
    return right_pad([[1] * len(r) for r in rows], 0, width)


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, with_entropy: bool = False,
                   temperature: float = 1.0, **forward_kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log p(x_t | x_<t)`` for t >= 1, shape [B, T-1] (and the policy's entropy at those positions)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **forward_kwargs).logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logprobs = logp_all.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logprobs, entropy
