"""SFT: packed sequences of the domains' demonstrations, loss on assistant tokens only.

Packing puts several conversations in one row; ``position_ids`` restart and ``seq_idx`` numbers the
samples so that neither attention nor the Mamba state crosses a sample boundary. Settings follow the
paper (AdamW(0.9, 0.98), weight decay 0.1, cosine to lr/10 after warm-up); the sizes are config.
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict

import torch

from cascade.config import ConfigError
from cascade.engine.policy import load_policy
from cascade.engine.trainer import OptimConfig, Trainer, attention_mask, check_finite, right_pad, train_steps
from cascade.models.packing import enable_packed_sequences, packed_inputs
from cascade.types import Checkpoint, Stage


AUTOCAST = {None: None, "bfloat16": torch.bfloat16}


@dataclass
class Packed:
    """One row: concatenated conversations, which tokens are trained on, and the sample lengths."""

    token_ids: list[int]
    loss_mask: list[int]
    lengths: list[int]


def tokenize_conversation(tokenizer, conversation) -> tuple[list[int], list[int]]:
    out = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    return list(out["input_ids"]), list(out["assistant_masks"])


def pack(examples: list[tuple[list[int], list[int]]], seq_len: int) -> list[Packed]:
    """First-fit decreasing: few rows, little padding. Examples longer than a row are cut to it."""
    rows: list[Packed] = []
    for ids, mask in sorted(examples, key=lambda e: -len(e[0])):
        ids, mask = ids[:seq_len], mask[:seq_len]
        row = next((r for r in rows if len(r.token_ids) + len(ids) <= seq_len), None)
        if row is None:
            row = Packed([], [], [])
            rows.append(row)
        row.token_ids += ids
        row.loss_mask += mask
        row.lengths.append(len(ids))
    return rows


class SFTStage(Stage):
    @dataclass
    class Config:
        steps: int = 100
        rows_per_step: int = 8
        micro_rows: int = 8
        """Rows per forward pass; rows_per_step / micro_rows = gradient accumulation steps."""
        seq_len: int = 512
        demonstrations_per_domain: int = 1000
        domain_weights: Dict[str, float] = field(default_factory=dict)
        """The mix: a domain's demonstrations (up to ``demonstrations_per_domain`` distinct ones) count ``weight``
        times (default 1): 3 repeats them three times, 0.5 asks the domain for half as many, 0 for none."""
        optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5, min_lr=5e-6, warmup_steps=200))
        checkpoint_every: int = 50
        autocast: str | None = None
        """``bfloat16``: mixed precision, the forward's matrix products in bf16 (``torch.autocast``) while the weights,
        gradients and optimizer stay in the model's dtype. None: everything in the model's dtype."""

    def run(self, start: Checkpoint, context) -> Checkpoint:
        cfg = self.config
        if cfg.rows_per_step % cfg.micro_rows:
            raise ConfigError(f"{self.name}: rows_per_step ({cfg.rows_per_step}) must be a multiple of micro_rows ({cfg.micro_rows})")
        if cfg.autocast not in AUTOCAST:
            raise ConfigError(f"{self.name}.autocast: '{cfg.autocast}' is not one of {', '.join(map(str, AUTOCAST))}")
        policy = load_policy(start.path, context.config.model.dtype)
        rows = self.rows(policy.tokenizer, context)
        trainer = Trainer(policy, cfg.optim, cfg.steps)

        def step(n: int) -> dict[str, float]:
            started = time.perf_counter()
            batch = self.rows_for_step(rows, n, context.seed)
            total_tokens = sum(sum(r.loss_mask[1:]) for r in batch)
            loss_sum = 0.0
            for i in range(0, len(batch), cfg.micro_rows):
                loss = self.loss(policy.model, batch[i:i + cfg.micro_rows], trainer, total_tokens, cfg.autocast)
                check_finite(loss, n)
                loss.backward()
                loss_sum += loss.item()
            metrics = trainer.step()
            tokens = sum(len(r.token_ids) for r in batch)
            return {"loss": loss_sum, "tokens_per_s": tokens / (time.perf_counter() - started), **metrics}

        return train_steps(trainer, context, cfg.steps, cfg.checkpoint_every, step)

    def rows(self, tokenizer, context) -> list[Packed]:
        examples = []
        unknown = set(self.config.domain_weights) - set(self.domains)
        if unknown:
            raise ConfigError(f"{self.name}.domain_weights: unknown domain(s) {sorted(unknown)}; the stage's domains are {self.domains}")
        for domain in self.domains:
            weight = self.config.domain_weights.get(domain, 1.0)
            if weight <= 0:
                continue
            # a share below 1 asks for fewer demonstrations rather than making all and dropping some (an agentic
            # SWE demonstration runs the tests in the sandbox)
            wanted = self.config.demonstrations_per_domain if weight >= 1 else max(1, round(weight * self.config.demonstrations_per_domain))
            demos = context.environment(domain).demonstrations(wanted, context.seed)
            tokenized = [tokenize_conversation(tokenizer, conversation) for conversation in demos]
            # repeats, not more distinct ones: asking for weight x as many distinct demonstrations cost the other
            # domains in the default (structured output -0.19, tool calling -0.17, code -0.14: README)
            share = round(weight * len(tokenized)) if weight >= 1 else len(tokenized)
            examples += [tokenized[i % len(tokenized)] for i in range(share)]
        if not examples:
            raise ConfigError(f"{self.name}: no demonstrations in domains {self.domains}: nothing to fine-tune on")
        return pack(examples, self.config.seq_len)

    def rows_for_step(self, rows: list[Packed], step: int, seed: int) -> list[Packed]:
        """Epochs of shuffled rows; a function of (seed, step) only, so a resumed run sees the same data."""
        n = self.config.rows_per_step
        start = (step - 1) * n
        picked = []
        for position in range(start, start + n):
            epoch, index = divmod(position, len(rows))
            order = list(range(len(rows)))
            random.Random(seed * 100_003 + epoch).shuffle(order)
            picked.append(rows[order[index]])
        return picked

    @staticmethod
    def loss(model, rows: list[Packed], trainer: Trainer, total_tokens: int, autocast: str | None = None) -> torch.Tensor:
        width = max(len(r.token_ids) for r in rows)
        pad = trainer.policy.pad_id
        input_ids = right_pad([r.token_ids for r in rows], pad, width)
        mask = right_pad([r.loss_mask for r in rows], 0, width)
        enable_packed_sequences()  # idempotent: the Mamba layers must honour seq_idx on CPU too
        position_ids, seq_idx = packed_inputs([r.lengths for r in rows], width)
        trainer.balancer.token_mask = attention_mask([r.token_ids for r in rows], width)
        is_target = mask[:, 1:].bool()
        predicts_target = torch.zeros_like(mask, dtype=torch.bool)
        predicts_target[:, :-1] = is_target  # position t is scored on token t + 1
        with logits_only_at(model, predicts_target), torch.autocast(model.device.type, AUTOCAST[autocast], enabled=autocast is not None):
            logits = model(input_ids=input_ids, position_ids=position_ids, seq_idx=seq_idx, use_cache=False).logits.float()
        nll = torch.nn.functional.cross_entropy(logits, input_ids[:, 1:][is_target], reduction="sum")
        return nll / max(1, total_tokens)


@contextmanager
def logits_only_at(model, positions: torch.Tensor):
    """Within it, the model's ``logits`` are [N, vocab]: those of the ``positions`` (bool [batch, seq]) only.

    The output head gets the selected hidden states (a forward pre-hook), so the vocabulary projection and its
    backward skip the prompt tokens SFT does not train on (a third to most of a row). What a model does to the
    head's output (a logit scale or soft cap) still applies: it is elementwise."""
    head = model.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda module, args: (args[0][positions], *args[1:]))
    try:
        yield
    finally:
        handle.remove()
