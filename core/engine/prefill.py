"""The prefill of a rollout batch, with the distinct prompts' common prefix computed once.

Multi-turn domains start every conversation with the same long system prompt (tool schemas, a repository's
instructions), and each turn prefills the whole conversation again: in the default cascade 421 of tool calling's
~440 prompt tokens are the same in every prompt, 284 of agentic SWE's ~320, 96 of math-with-a-tool's ~127, and
its evaluation was ~90% prefill. So when the prompts share at least ``SHARED_PREFIX_MIN`` tokens, the prefix runs
once (one row), its cache is copied to the prompts, and they continue from it with their own tokens.

The result is what the plain left-padded prefill gives -- the same cache layout, last-position logits and routing
-- up to float rounding. The continuations are grouped by length, so no padding ever sits between a prefix and
its continuation: a Mamba layer would run its recurrence and its convolution window through it. Each group's cache
is then left-padded to the batch's width and the groups are stacked, which is the plain prefill's layout (left
padding, masked out of attention; a Mamba layer keeps a fixed-size state per row).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, DynamicLayer, LinearAttentionCacheLayerMixin

SHARED_PREFIX_MIN = 64
"""Share a prefix of at least this many tokens: below it, the continuations' extra forward calls cost more than
the prefix tokens they save (the tiny model, 2 CPU threads)."""


@dataclass
class Prefilled:
    cache: DynamicCache
    logits: torch.Tensor
    """[prompts, vocab]: each prompt's last position."""
    attention_mask: torch.Tensor
    """[prompts, width]: 0 on the left padding."""
    position_ids: torch.Tensor
    """[prompts, width]: index among the row's real tokens (0 on padding), as ``generate`` numbers them."""


def prefill(model, prompts: list[list[int]], pad: int, recorder=None) -> Prefilled:
    """Run the distinct ``prompts`` (left-padded to the longest) into a fresh cache; ``recorder`` (a
    :class:`~cascade.kernels.integration.RoutingRecorder`) ends with one ``[prompts, width, k]`` call per router."""
    device = model.device
    width = max(len(p) for p in prompts)
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    shared = shared_prefix_length(prompts)
    cache = DynamicCache(config=model.config)
    if shared < SHARED_PREFIX_MIN or not _stackable(cache):
        input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
        padded = not bool(attention_mask.all())
        out = model(input_ids=input_ids, attention_mask=attention_mask if padded else None, position_ids=position_ids,
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
        return Prefilled(cache, out.logits[:, -1], attention_mask, position_ids)

    calls_before = [len(calls) for calls in recorder.calls] if recorder is not None else []
    prefix = cache
    model(input_ids=torch.tensor([prompts[0][:shared]], device=device), position_ids=torch.arange(shared, device=device)[None],
          past_key_values=prefix, use_cache=True, logits_to_keep=1)
    by_length: dict[int, list[int]] = {}
    for row, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(row)
    groups, caches, logits = [], [], []
    for i, (length, rows) in enumerate(by_length.items()):
        cache = prefix if i == len(by_length) - 1 else copy.deepcopy(prefix)
        cache.reorder_cache(torch.zeros(len(rows), dtype=torch.long, device=device))
        ids = torch.tensor([prompts[r][shared:] for r in rows], device=device)
        positions = torch.arange(shared, length, device=device)[None].expand(len(rows), -1)
        out = model(input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1)
        groups.append(rows)
        caches.append(cache)
        logits.append(out.logits[:, -1])
    order = torch.tensor([r for rows in groups for r in rows], device=device)
    back = torch.empty_like(order)
    back[order] = torch.arange(len(order), device=device)  # stacked row -> prompt order
    cache = _stack(caches, width)
    cache.reorder_cache(back)
    if recorder is not None:
        _stitch_routing(recorder, calls_before, shared, groups, prompts, width)
    return Prefilled(cache, torch.cat(logits)[back], attention_mask, position_ids)


def shared_prefix_length(prompts: list[list[int]]) -> int:
    """Tokens every prompt starts with, leaving each at least one of its own (the position whose logits sample the
    first new token); 0 for a single prompt, which has nothing to share with."""
    if len(prompts) < 2:
        return 0
    return min(len(os.path.commonprefix(prompts)), min(len(p) for p in prompts) - 1)


def _stack(caches: list[DynamicCache], width: int) -> DynamicCache:
    """One cache holding every group's rows in turn, attention keys and values left-padded to ``width``."""
    stacked = caches[0]
    for i, layer in enumerate(stacked.layers):
        parts = [c.layers[i] for c in caches]
        if type(layer) is DynamicLayer and layer.is_initialized:
            layer.keys = torch.cat([F.pad(p.keys, (0, 0, width - p.keys.shape[-2], 0)) for p in parts])
            layer.values = torch.cat([F.pad(p.values, (0, 0, width - p.values.shape[-2], 0)) for p in parts])
        elif isinstance(layer, LinearAttentionCacheLayerMixin):
            for s in range(layer.number_of_states):
                if layer.is_conv_states_initialized[s]:
                    layer.conv_states[s] = torch.cat([p.conv_states[s] for p in parts])
                if layer.is_recurrent_states_initialized[s]:
                    layer.recurrent_states[s] = torch.cat([p.recurrent_states[s] for p in parts])
    return stacked


def _stackable(cache: DynamicCache) -> bool:
    """Whether :func:`_stack` knows every layer kind of the model's cache (full attention, Mamba-style states);
    a sliding-window or quantized layer takes the plain prefill."""
    return all(type(layer) is DynamicLayer or isinstance(layer, LinearAttentionCacheLayerMixin) for layer in cache.layers)


def _stitch_routing(recorder, calls_before: list[int], shared: int, groups: list[list[int]], prompts, width: int) -> None:
    """Replace the prefix's and the groups' recorded calls with the one a plain left-padded prefill records:
    ``[prompts, width, k]``, -1 on the padding."""
    for layer, calls in enumerate(recorder.calls):
        prefix, *continuations = calls[calls_before[layer]:]
        del calls[calls_before[layer]:]
        stitched = prefix.new_full((len(prompts), width, prefix.shape[-1]), -1)
        for rows, routed in zip(groups, continuations):
            for i, r in enumerate(rows):
                start = width - len(prompts[r])
                stitched[r, start:start + shared] = prefix[0]
                stitched[r, start + shared:] = routed[i]
        calls.append(stitched)
