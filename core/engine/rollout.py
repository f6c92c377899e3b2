"""Rollouts: a generation engine on transformers, and the loop that turns samples into episodes.

The engine returns, per completion, the sampled token ids, their log-probs under the temperature-scaled
policy (the same quantity the trainer recomputes, so the importance ratio of a strictly on-policy step
is 1 up to numerics), and for MoE models the experts chosen per token and layer (routing replay).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from cascade.engine.moe import RoutingRecorder
from cascade.engine.policy import Policy
from cascade.types import Environment, Episode, Generation, Message, RolloutEngine, Sample, SamplingParams


class HFRolloutEngine(RolloutEngine):
    """Batched ``generate`` with KV cache, in the trainer's process, sharing the trainer's model."""

    def __init__(self, policy: Policy, batch_size: int = 64, record_routing: bool = True):
        self.policy = policy
        self.batch_size = batch_size
        self.record_routing = record_routing

    @torch.no_grad()
    def generate(self, prompts_B: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Generation]]:
        flat = [list(p) for p in prompts_B for _ in range(params.n)]
        results: list[Generation] = []
        if params.seed is not None:
            torch.manual_seed(params.seed)
        for start in range(0, len(flat), self.batch_size):
            results.extend(self._generate_batch(flat[start:start + self.batch_size], params))
        return [results[i * params.n:(i + 1) * params.n] for i in range(len(prompts_B))]

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        model, pad, eos = self.policy.model, self.policy.pad_id, self.policy.eos_id
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        greedy = params.temperature <= 0
        was_training = model.training
        model.eval()
        recorder = RoutingRecorder(model) if self.record_routing else None
        try:
            with recorder or _nullcontext():
                # transformers' default top_k=50 would silently change the sampling distribution: top_k=0
                sampling = {} if greedy else {"temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    do_sample=not greedy,
                    **sampling,
                    max_new_tokens=params.max_new_tokens,
                    eos_token_id=eos,
                    pad_token_id=pad,
                    output_logits=True,
                    return_dict_in_generate=True,
                )
        finally:
            model.train(was_training)
        new_tokens = out.sequences[:, width:]
        logits = torch.stack(out.logits, dim=1).float()  # [B, new, vocab], before temperature
        if not greedy:
            logits = logits / params.temperature
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        routing = recorder.per_sequence(width, attention_mask) if recorder else None
        generations = []
        for i in range(len(prompts)):
            ids = new_tokens[i].tolist()
            length = ids.index(eos) + 1 if eos in ids else len(ids)  # keep the eos: the model must learn to stop
            experts = None
            if routing is not None:  # [prompt + generated tokens, layers, k]
                experts = _pad_routing(routing[i], len(prompts[i]) + length)
            generations.append(Generation(ids[:length], logprobs[i, :length].tolist(),
                                          "stop" if eos in ids[:length] else "length", experts))
        return generations


def _pad_routing(experts: torch.Tensor, length: int) -> torch.Tensor:
    """The last sampled token is never fed through the model (nothing follows it): its row is -1."""
    experts = experts[:length]
    if experts.shape[0] < length:
        filler = torch.full((length - experts.shape[0], *experts.shape[1:]), -1, dtype=experts.dtype)
        experts = torch.cat([experts, filler])
    return experts


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# ---- samples -> episodes ------------------------------------------------------------------------------


def render_prompt(policy: Policy, messages: list[Message], thinking: bool) -> str:
    return policy.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=thinking)


def generation_prefix(policy: Policy, thinking: bool) -> str:
    """What the generation prompt writes inside the assistant turn (``<think></think>`` or ``<think>\\n``).

    Stored at the start of the assistant message so the rendered conversation reproduces the exact text
    the model saw, which keeps multi-turn prompts token-for-token identical to what was generated.
    """
    opened = policy.tokenizer.apply_chat_template([{"role": "user", "content": ""}], tokenize=False, add_generation_prompt=True, enable_thinking=thinking)
    closed = policy.tokenizer.apply_chat_template([{"role": "user", "content": ""}], tokenize=False, add_generation_prompt=False)
    header = opened[len(closed):]
    marker = "assistant\n"
    return header[header.index(marker) + len(marker):] if marker in header else ""


@dataclass
class _Rollout:
    sample: Sample
    messages: list[Message]
    text: str
    token_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float]
    routed: list = field(default_factory=list)
    truncated: bool = False
    done: bool = False
    metrics: dict = field(default_factory=dict)


def collect_episodes(
    engine: RolloutEngine, policy: Policy, env: Environment, samples: Sequence[Sample], params: SamplingParams, thinking: bool = False
) -> list[Episode]:
    """Roll out every sample ``params.n`` times (grouped: the n rollouts of a sample are adjacent).

    Multi-turn: after each model turn the environment answers; its messages are appended as prompt tokens
    (loss mask 0) and the model continues, until the environment says done, the turn limit, or a
    response hits ``max_new_tokens`` (truncated).
    """
    tok = policy.tokenizer
    prefix = generation_prefix(policy, thinking)
    rollouts = []
    for sample in samples:
        text = render_prompt(policy, sample.messages, thinking)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        for _ in range(params.n):
            rollouts.append(_Rollout(sample, list(sample.messages), text, list(ids), [0] * len(ids), [0.0] * len(ids)))
    one = SamplingParams(params.max_new_tokens, params.temperature, params.top_p, 1, params.seed)
    for turn in range(max(1, env.max_turns)):
        active = [r for r in rollouts if not r.done]
        if not active:
            break
        generations = engine.generate([r.token_ids for r in active], one)
        for r, (gen,) in zip(active, generations):
            r.token_ids += gen.token_ids
            r.loss_mask += [1] * len(gen.token_ids)
            r.logprobs += gen.logprobs
            if gen.routed_experts is not None:
                r.routed.append(gen.routed_experts)
            reply = tok.decode(gen.token_ids, skip_special_tokens=False)
            r.text += reply
            content = reply[: -len(tok.eos_token)] if gen.finish_reason == "stop" and reply.endswith(tok.eos_token) else reply
            r.messages.append({"role": "assistant", "content": prefix + content})
            if gen.finish_reason == "length":
                r.truncated = r.done = True
                continue
            step = env.step(r.sample, r.messages)
            r.metrics.update(step.metrics)
            if step.done or turn == env.max_turns - 1:
                r.done = True
                continue
            _append_environment_turn(policy, r, step.messages, thinking)
    return [
        Episode(r.sample, r.messages, r.token_ids, r.loss_mask, r.logprobs, _merge_routing(r.routed), r.truncated, metrics=r.metrics)
        for r in rollouts
    ]


def _append_environment_turn(policy: Policy, r: _Rollout, new_messages: list[Message], thinking: bool) -> None:
    """Render the conversation with the environment's messages and append only the new text's tokens."""
    r.messages.extend(new_messages)
    full = render_prompt(policy, r.messages, thinking)
    if not full.startswith(r.text):
        raise ValueError("the chat template re-renders earlier turns differently, so multi-turn prompts would not "
                         "match what the model generated; use a prefix-stable template (ChatML)")
    continuation = full[len(r.text):]
    ids = policy.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    r.text = full
    r.token_ids += ids
    r.loss_mask += [0] * len(ids)
    r.logprobs += [0.0] * len(ids)


def _merge_routing(parts: list) -> torch.Tensor | None:
    """Each turn's routing covers its whole prompt again; keep the last (the longest: the full episode)."""
    return parts[-1] if parts else None
