"""Rollouts: a generation engine on transformers, and the loop that turns samples into episodes.

The engine returns, per completion, the sampled token ids, their log-probs under the temperature-scaled
policy (the same quantity the trainer recomputes, so the importance ratio of a strictly on-policy step
is 1 up to numerics), and for MoE models the experts chosen per token and layer (routing replay).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Sequence

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicLayer

from cascade.engine.moe import RoutingRecorder
from cascade.engine.policy import Policy
from cascade.engine.prefill import Prefilled, prefill
from cascade.models.fast_decode import enable_fast_decode
from cascade.types import Environment, Episode, Generation, Message, RolloutEngine, Sample, SamplingParams


class HFRolloutEngine(RolloutEngine):
    """Batched sampling with a KV / Mamba-state cache, in the trainer's process, sharing the trainer's model.

    Our own decode loop rather than ``model.generate``, for what an RL rollout needs and generate does not give:

    * each distinct prompt is prefilled once, then its cache is copied to its completions (GRPO samples every
      prompt ``n`` times, and ``collect_episodes`` passes the n copies as separate prompts), and a long prefix the
      distinct prompts share (a system prompt) is prefilled once for all of them (`cascade.engine.prefill`);
    * the sampled token's log-prob is taken at each step, instead of keeping every step's logits
      (``output_logits``: [batch, new tokens, vocab] fp32, gigabytes at a 131k vocabulary);
    * no logits processors, stopping criteria or cache bookkeeping that sampling with temperature / top-p does
      not use, and NemotronH's Mamba decode step runs `cascade.models.fast_decode` (where no CUDA kernel is);
    * the decode steps' attention writes into preallocated KV buffers and attends with each KV head shared by its
      query heads in place (``DynamicCache`` concatenates the whole cache and sdpa copies every KV head per query
      head, at every step), with the masks built once (NemotronH's layer types: full attention and Mamba).

    Sampling draws from ``generate(do_sample=True, temperature=T, top_p=p, top_k=0)``'s distribution (softmax of
    the temperature-scaled, top-p-filtered logits; by inverse CDF, not ``torch.multinomial``), greedy is its argmax,
    and the left padding, attention mask and positions are what generate passes the model; the greedy tokens equal
    ``generate``'s (tests/test_fast_decode.py).
    """

    def __init__(self, policy: Policy, batch_size: int = 256, record_routing: bool = True):
        self.policy = policy
        self.batch_size = batch_size
        self.record_routing = record_routing
        enable_fast_decode()

    @torch.no_grad()
    def generate(self, prompts_B: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Generation]]:
        if params.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {params.max_new_tokens}")
        flat = [list(p) for p in prompts_B for _ in range(params.n)]
        results: list[Generation] = []
        # a private generator: a seeded rollout is reproducible without resetting the caller's global RNG
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.policy.model.device).manual_seed(params.seed)
        for start in range(0, len(flat), self.batch_size):
            results.extend(self._generate_batch(flat[start:start + self.batch_size], params, generator))
        return [results[i * params.n:(i + 1) * params.n] for i in range(len(prompts_B))]

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams, generator) -> list[Generation]:
        model, pad, eos = self.policy.model, self.policy.pad_id, self.policy.eos_id
        unique = list(dict.fromkeys(tuple(p) for p in prompts))
        row_of = {p: i for i, p in enumerate(unique)}
        expand = torch.tensor([row_of[tuple(p)] for p in prompts], device=model.device)  # completion -> its prefill row
        was_training = model.training
        model.eval()
        recorder = RoutingRecorder(model) if self.record_routing else None
        try:
            with recorder or nullcontext():
                prefilled = prefill(model, [list(p) for p in unique], pad, recorder)
                new_tokens, logprobs = _sample(model, prefilled, expand, params, eos, pad, generator, recorder)
        finally:
            model.train(was_training)
        attention_mask = prefilled.attention_mask
        routing = recorder.per_sequence(attention_mask.shape[1], attention_mask[expand]) if recorder else None
        generations = []
        for i in range(len(prompts)):
            ids = new_tokens[i].tolist()
            length = ids.index(eos) + 1 if eos in ids else len(ids)  # keep the eos: the model must learn to stop
            experts = None
            if routing is not None:  # [prompt + generated tokens, layers, k]
                experts = pad_routing(routing[i], len(prompts[i]) + length)
            generations.append(Generation(ids[:length], logprobs[i, :length].tolist(),
                                          "stop" if eos in ids[:length] else "length", experts))
        return generations


def _sample(model, prefilled: Prefilled, expand, params: SamplingParams, eos: int, pad: int, generator, recorder):
    """Copy each distinct prompt's prefilled cache to its completions (``expand``), then decode.

    Returns the new tokens [completions, steps] (``pad`` after a row's eos) and their log-probs under the
    temperature-scaled policy, log_softmax(logits / T) (T = 1 for greedy), the quantity the trainer recomputes.
    Positions and the attention mask follow ``generate``: position = index among the row's real tokens (left
    padding at 0), and no mask at all when nothing is padded.
    """
    cache, attention_mask = prefilled.cache, prefilled.attention_mask
    padded = not bool(attention_mask.all())
    # Copy every layer's state -- attention KV, Mamba conv and recurrent states -- to the completions. (Cache has
    # `batch_repeat_interleave`, but its linear-attention layers do not implement it; `reorder_cache` is an
    # index_select on every kind of layer.) The prefill's routing is copied the same way.
    cache.reorder_cache(expand)
    if recorder is not None:
        for calls in recorder.calls:
            calls[-1] = calls[-1][expand]
    logits = prefilled.logits[expand]
    position = prefilled.position_ids[expand, -1:]
    # The decode steps feed one token per row. Their attention runs over preallocated KV buffers with the query heads
    # of each KV group together (`_DecodeKVLayer`, `grouped_decode_attention`), and their masks are passed ready-made:
    # the full-attention one is a view of `attend` (left padding False, every fed token True), the Mamba layers'
    # is None (transformers' own choice for a one-token step: a fed token is never padding).
    width = attention_mask.shape[1]
    capacity = width + params.max_new_tokens - 1  # the last sampled token is never fed
    _preallocate_attention_cache(cache, capacity)
    attend = torch.ones(len(expand), 1, 1, capacity, dtype=torch.bool, device=logits.device)
    attend[:, 0, 0, :width] = attention_mask[expand].bool()
    # Finished rows leave the batch (DROP_FINISHED_AT): a step's cost grows with its rows (the tiny default model on
    # 2 CPU cores: 5 ms at 1 row, 10 at 32, 17 at 256), and a batch would otherwise decode at full width until its
    # longest row ends.
    rows = torch.arange(len(expand), device=logits.device)  # the completions still in the batch
    done = torch.zeros(len(expand), dtype=torch.bool, device=logits.device)
    tokens = torch.full((len(expand), params.max_new_tokens), pad, dtype=torch.long, device=logits.device)
    logprobs = torch.zeros(len(expand), params.max_new_tokens, device=logits.device)
    with _attention_implementation(model, GROUPED_DECODE_ATTENTION):
        for step in range(params.max_new_tokens):
            token, logprob = _next_token(logits, params, generator)
            token = token.masked_fill(done, pad)  # finished rows still in the batch emit padding, as in generate
            tokens[rows, step] = token
            logprobs[rows, step] = logprob
            done |= token == eos
            finished = int(done.sum())  # the step's one host sync: it decides both the stop and the drop
            if finished == len(rows) or step == params.max_new_tokens - 1:
                break  # the last sampled token is never fed: nothing would read its output
            if finished * DROP_FINISHED_AT >= len(rows):
                keep = (~done).nonzero().squeeze(1)
                cache.reorder_cache(keep)
                rows, token, position, attend = rows[keep], token[keep], position[keep], attend[keep]
                done = done[keep]
            position = position + 1
            masks = {"full_attention": attend[..., :width + step + 1] if padded else None, "linear_attention": None}
            out = model(input_ids=token[:, None], attention_mask=masks, position_ids=position,
                        past_key_values=cache, use_cache=True, logits_to_keep=1)
            if recorder is not None and len(rows) < len(expand):
                for calls in recorder.calls:  # back to one row per completion; a row that left routes nothing (-1)
                    calls[-1] = calls[-1].new_full((len(expand), *calls[-1].shape[1:]), -1).index_copy_(0, rows, calls[-1])
            logits = out.logits[:, -1]
    return tokens[:, :step + 1], logprobs[:, :step + 1]  # the loop always ends on a break


DROP_FINISHED_AT = 4
"""A batch drops its finished rows once they are at least 1/DROP_FINISHED_AT of it: each drop copies the cache."""


class _DecodeKVLayer(DynamicLayer):
    """A full-attention cache layer with room for the whole decode: a step writes its keys and values in place,
    where ``DynamicLayer`` concatenates, copying the layer's whole cache at every step."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        super().__init__()
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self._key_buffer = keys.new_empty(*keys.shape[:2], capacity, keys.shape[3])
        self._value_buffer = values.new_empty(*values.shape[:2], capacity, values.shape[3])
        self.keys, self.values = self._key_buffer[:, :, :0], self._value_buffer[:, :, :0]
        self.update(keys, values)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.keys.shape[-2]
        stop = start + key_states.shape[-2]
        self._key_buffer[:, :, start:stop] = key_states
        self._value_buffer[:, :, start:stop] = value_states
        self.keys, self.values = self._key_buffer[:, :, :stop], self._value_buffer[:, :, :stop]
        return self.keys, self.values

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        stop = self.keys.shape[-2]
        self._key_buffer = self._key_buffer.index_select(0, beam_idx)
        self._value_buffer = self._value_buffer.index_select(0, beam_idx)
        self.keys, self.values = self._key_buffer[:, :, :stop], self._value_buffer[:, :, :stop]


def _preallocate_attention_cache(cache: DynamicCache, capacity: int) -> None:
    """Move every full-attention layer of ``cache`` (the Mamba layers are fixed-size states) into a
    :class:`_DecodeKVLayer` holding ``capacity`` positions."""
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.is_initialized:
            cache.layers[i] = _DecodeKVLayer(layer.keys, layer.values, capacity)


GROUPED_DECODE_ATTENTION = "cascade_grouped_decode"


def grouped_decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """softmax(q k^T * scaling + mask) v for one new token per row, as sdpa computes it for a decode step, without
    sdpa's ``repeat_kv``: that copies every cached KV head once per query head of its group at every step; here the
    query heads of a group are the rows of one matmul against their shared KV head.

    query [B, heads, 1, D], key / value [B, kv heads, S, D], attention_mask a boolean [B, 1, 1, S] (True: attend) or
    None; returns [B, 1, heads, D] as transformers' attention functions do."""
    batch, heads, q_len, dim = query.shape
    if q_len != 1:
        raise ValueError(f"grouped_decode_attention takes one query position, got {q_len}")
    kv_heads = key.shape[1]
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim)  # query head h uses KV head h // group size
    scores = torch.matmul(grouped, key.transpose(-1, -2)) * (dim ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    out = torch.matmul(scores.softmax(dim=-1), value)
    return out.reshape(batch, 1, heads, dim), None


AttentionInterface.register(GROUPED_DECODE_ATTENTION, grouped_decode_attention)


@contextmanager
def _attention_implementation(model, name: str):
    """Run ``model``'s attention layers with the registered attention function ``name`` inside the block (the decode
    steps pass it their ready-made boolean masks, whatever the model's own implementation)."""
    previous = model.config._attn_implementation
    model.config._attn_implementation = name
    try:
        yield
    finally:
        model.config._attn_implementation = previous


def _next_token(logits: torch.Tensor, params: SamplingParams, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample (or argmax) one token per row from fp32 logits [rows, vocab]; return it and its log-prob.

    The log-prob is of the full temperature-scaled distribution (not renormalised after top-p): what the trainer
    computes from its own logits. x[token] - logsumexp(x) is log_softmax(x)[token] without a [rows, vocab] output."""
    if params.temperature <= 0:
        scaled = logits
        token = logits.argmax(-1)
    else:
        scaled = logits / params.temperature
        token = _sample_categorical(_top_p(scaled, params.top_p) if params.top_p < 1.0 else scaled, generator)
    return token, scaled.gather(-1, token[:, None]).squeeze(-1) - torch.logsumexp(scaled, dim=-1)


def _sample_categorical(scores: torch.Tensor, generator) -> torch.Tensor:
    """One draw per row from softmax(scores), by inverting the CDF with one uniform number per row.

    Not torch.multinomial: on CPU it draws a random number per vocabulary entry (64 rows x 131k tokens took 0.4 s,
    more than a decode step of the model). The CDF is accumulated in float64 so that tokens of tiny probability keep
    their exact share; tokens of probability 0 (cut by top-p) are never picked."""
    cdf = torch.softmax(scores, dim=-1).cumsum(dim=-1, dtype=torch.float64)
    u = torch.rand(cdf.shape[0], 1, dtype=torch.float64, device=cdf.device, generator=generator) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


def _top_p(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """transformers' TopPLogitsWarper: drop the least likely tokens whose total probability is <= 1 - top_p
    (always keeping the most likely one)."""
    sorted_scores, order = torch.sort(scores, descending=False)
    remove = sorted_scores.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
    remove[..., -1:] = False
    return scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))


def pad_routing(experts: torch.Tensor, length: int) -> torch.Tensor:
    """Cut or extend per-token routing [tokens, layers, k] to ``length`` rows. The last sampled token is never fed
    through the model (nothing follows it): its row, like any missing one, is -1."""
    experts = experts[:length]
    if experts.shape[0] < length:
        filler = torch.full((length - experts.shape[0], *experts.shape[1:]), -1, dtype=experts.dtype)
        experts = torch.cat([experts, filler])
    return experts


# ---- samples -> episodes ------------------------------------------------------------------------------


def render_prompt(tokenizer, messages: list[Message], thinking: bool) -> str:
    """The text the model continues: the conversation and the generation prompt, in thinking mode or not."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=thinking)


def generation_prefix(tokenizer, thinking: bool) -> str:
    """What the generation prompt writes inside the assistant turn (``<think></think>`` or ``<think>\\n``).

    Stored at the start of the assistant message so the rendered conversation reproduces the exact text
    the model saw, which keeps multi-turn prompts token-for-token identical to what was generated.
    """
    opened = tokenizer.apply_chat_template([{"role": "user", "content": ""}], tokenize=False, add_generation_prompt=True, enable_thinking=thinking)
    closed = tokenizer.apply_chat_template([{"role": "user", "content": ""}], tokenize=False, add_generation_prompt=False)
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
    prefix = generation_prefix(tok, thinking)
    rollouts = []
    for sample in samples:
        text = render_prompt(tok, sample.messages, thinking)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        for _ in range(params.n):
            rollouts.append(_Rollout(sample, list(sample.messages), text, list(ids), [0] * len(ids), [0.0] * len(ids)))
    one = SamplingParams(params.max_new_tokens, params.temperature, params.top_p, 1, params.seed)
    for turn in range(max(1, env.max_turns)):
        active = [r for r in rollouts if not r.done]
        if not active:
            break
        generations = engine.generate([r.token_ids for r in active], one)
        answered = []  # the rollouts whose turn the environment answers, after this loop (side by side)
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
            answered.append(r)
        for r, step in zip(answered, _environment_steps(env, answered)):
            r.metrics.update(step.metrics)
            if step.done or turn == env.max_turns - 1:
                r.done = True
                continue
            _append_environment_turn(policy, r, step.messages, thinking)
    return [
        Episode(r.sample, r.messages, r.token_ids, r.loss_mask, r.logprobs, _merge_routing(r.routed), r.truncated, metrics=r.metrics)
        for r in rollouts
    ]


def _environment_steps(env: Environment, rollouts: list[_Rollout]) -> list:
    """``env.step`` for each rollout, in order; ``env.parallel_steps`` of them at a time."""
    if env.parallel_steps <= 1 or len(rollouts) <= 1:
        return [env.step(r.sample, r.messages) for r in rollouts]
    with ThreadPoolExecutor(max_workers=env.parallel_steps, thread_name_prefix="env-step") as pool:
        return list(pool.map(lambda r: env.step(r.sample, r.messages), rollouts))


def _append_environment_turn(policy: Policy, r: _Rollout, new_messages: list[Message], thinking: bool) -> None:
    """Render the conversation with the environment's messages and append only the new text's tokens."""
    r.messages.extend(new_messages)
    full = render_prompt(policy.tokenizer, r.messages, thinking)
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
