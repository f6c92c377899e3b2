"""Training log-probs with each group's prompt computed once.

The rollouts of one GRPO group share their prompt, which is often a third of their tokens. Instead of
running it G times, the prompts of a micro-batch are run once (left-padded, with a cache), the cache is
expanded to every rollout of its group, and the rollouts continue from it. Gradients flow back through the
cache into the prompt's activations, so log-probs and gradients equal the plain forward's (tested).
"""

from __future__ import annotations

import torch

from cascade.engine.moe import replay_routing


def prompt_groups(input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[list[int], list[int], list[int]]:
    """Per row: the prompt length (tokens before the first trained target) and its group; plus group heads.

    Rows of a group are adjacent and start with the same prompt tokens (how rollouts are laid out).
    """
    prompt_lens = (mask.argmax(dim=1) + 1).tolist()
    heads: list[int] = []
    group_of: list[int] = []
    for row, length in enumerate(prompt_lens):
        head = heads[-1] if heads else None
        if head is None or prompt_lens[head] != length or not torch.equal(input_ids[row, :length], input_ids[head, :length]):
            heads.append(row)
        group_of.append(len(heads) - 1)
    return prompt_lens, group_of, heads


def shared_prompt_logprobs(model, batch, temperature: float = 1.0, with_entropy: bool = False, replay: bool = True, balancer=None):
    """Like ``token_logprobs(model, batch.input_ids, batch.attention_mask)`` on the trained positions.

    Returns ``(logprobs [B, T-1], entropy [B, T-1] or None, replay hits, replay choices)``; positions before a
    row's first trained target are 0 (they are never trained on).
    """
    ids, attention = batch.input_ids, batch.attention_mask
    rows, width = ids.shape
    prompt_lens, group_of, heads = prompt_groups(ids, batch.mask)
    lengths = attention.sum(dim=1).tolist()
    groups = torch.tensor(group_of)
    p_max = max(prompt_lens[h] for h in heads)
    r_max = max(length - p for length, p in zip(lengths, prompt_lens))
    routed = batch.routed_experts if replay else None

    # 1. each group's prompt once, left-padded so every prompt ends at the same position
    prompt_ids = torch.zeros(len(heads), p_max, dtype=ids.dtype)
    prompt_mask = torch.zeros(len(heads), p_max, dtype=attention.dtype)
    prompt_routing = None if routed is None else torch.full((len(heads), p_max, *routed.shape[2:]), -1, dtype=routed.dtype)
    for g, head in enumerate(heads):
        p = prompt_lens[head]
        prompt_ids[g, p_max - p:] = ids[head, :p]
        prompt_mask[g, p_max - p:] = 1
        if prompt_routing is not None:
            prompt_routing[g, p_max - p:] = routed[head, :p]
    prompt_positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)

    # 2. every rollout's own tokens after its prompt, right-padded, continuing from its group's cache
    response_ids = torch.zeros(rows, r_max, dtype=ids.dtype)
    response_mask = torch.zeros(rows, r_max, dtype=attention.dtype)
    response_routing = None if routed is None else torch.full((rows, r_max, *routed.shape[2:]), -1, dtype=routed.dtype)
    for row in range(rows):
        p, n = prompt_lens[row], lengths[row] - prompt_lens[row]
        response_ids[row, :n] = ids[row, p:p + n]
        response_mask[row, :n] = 1
        if response_routing is not None:
            response_routing[row, :n] = routed[row, p:p + n]
    response_positions = torch.tensor(prompt_lens).unsqueeze(1) + torch.arange(r_max).unsqueeze(0)

    hits = total = 0
    if balancer is not None:
        balancer.token_mask = prompt_mask
    with replay_routing(model, prompt_routing) as replayed:
        # only the prompt's last position predicts a trained token: no vocabulary projection (or its backward) for the rest
        out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=prompt_positions, use_cache=True, logits_to_keep=1)
    hits, total = hits + replayed.hits, total + replayed.total
    cache = out.past_key_values
    cache.reorder_cache(groups)
    last = out.logits[:, -1][groups]
    logits = last.unsqueeze(1)
    if r_max > 1:  # one-token responses (an immediate end of turn) need no continuation; fed alone, the Mamba
        # layers would take their in-place decode path and break the backward pass
        if balancer is not None:
            balancer.token_mask = response_mask
        with replay_routing(model, response_routing) as replayed:
            full_mask = torch.cat([prompt_mask[groups], response_mask], dim=1)
            later = model(input_ids=response_ids, attention_mask=full_mask, position_ids=response_positions,
                          past_key_values=cache, use_cache=True).logits[:, :-1]
        hits, total = hits + replayed.hits, total + replayed.total
        logits = torch.cat([logits, later], dim=1)
    logits = logits.float()  # [B, r_max]: position t predicts response token t
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    response_logprobs = logp_all.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)

    # 3. back to the [B, T-1] layout of the batch: target t of the response sits at position prompt_len - 1 + t;
    # padding goes to one spare column (index width - 1), dropped after the scatter, so it never overwrites
    index = torch.tensor(prompt_lens).unsqueeze(1) - 1 + torch.arange(r_max).unsqueeze(0)
    index = index.masked_fill(~response_mask.bool(), width - 1)
    logprobs = torch.zeros(rows, width, dtype=response_logprobs.dtype).scatter(1, index, response_logprobs)[:, :-1]
    entropy = None
    if with_entropy:
        with torch.no_grad():
            response_entropy = -(logp_all.exp() * logp_all).sum(-1)
            entropy = torch.zeros(rows, width).scatter(1, index, response_entropy)[:, :-1]
    return logprobs, entropy, hits, total
