"""CuPy backend: the routing and dispatch CUDA kernels of `kernels/cuda/routing.cu`, on torch CUDA tensors.

`gating.topk_gating` and `dispatch.dispatch` call into this module for CUDA tensors when CuPy imports and the
expert count fits the kernels (E <= 256). The kernels are compiled once per process by NVRTC (CuPy's
`RawModule`, cached in memory and in CuPy's on-disk kernel cache). Tensors cross between torch and CuPy
through DLPack without copies, and every launch goes on torch's current CUDA stream, so ordering with the
surrounding torch ops is preserved and nothing synchronises the host.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

CUDA_SOURCE = Path(__file__).parent / "cuda" / "routing.cu"
MAX_EXPERTS = 256  # MAX_PER_LANE (8) * 32 lanes in topk_gating
CHUNK = 256  # must match routing.cu
WARPS_PER_BLOCK = 4
SCAN_THREADS = 1024


@functools.lru_cache(maxsize=1)
def _cupy():
    try:
        import cupy

        return cupy
    except Exception:  # not installed, or no usable CUDA driver
        return None


def available() -> bool:
    """CuPy imports (it may still be unable to run kernels without a GPU)."""
    return _cupy() is not None


def usable(num_experts: int) -> bool:
    """Take the CuPy path for a CUDA tensor with this many experts?"""
    return available() and num_experts <= MAX_EXPERTS


@functools.lru_cache(maxsize=1)
def _module():
    cp = _cupy()
    return cp.RawModule(code=CUDA_SOURCE.read_text(), options=("--std=c++14",))


def _kernel(name: str):
    return _module().get_function(name)


def _cp(t: torch.Tensor):
    """Zero-copy torch -> CuPy view (DLPack)."""
    return _cupy().from_dlpack(t.contiguous())


def _launch(name: str, grid: int, block: int, args: tuple, shared_mem: int = 0) -> None:
    cp = _cupy()
    stream = cp.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)
    with cp.cuda.Device(torch.cuda.current_device()):
        _kernel(name)((grid,), (block,), args, shared_mem=shared_mem, stream=stream)


def topk_gating(logits, k, score, correction_bias, n_group, topk_group, normalize, scaling):
    """Kernel version of `gating.topk_gating_torch` (forward only; same ids bit for bit)."""
    import numpy as np

    t, e = logits.shape
    if k > 32 or n_group > 32:
        raise ValueError("CuPy topk_gating supports k <= 32 and n_group <= 32")
    x = logits.detach().float().contiguous()
    has_bias = correction_bias is not None
    bias = correction_bias.detach().float().contiguous() if has_bias else x.new_zeros(1)
    ids = torch.empty(t, k, dtype=torch.long, device=x.device)
    w = torch.empty(t, k, dtype=torch.float32, device=x.device)
    if t == 0:
        return w, ids
    warps = WARPS_PER_BLOCK
    grid = (t + warps - 1) // warps
    smem = warps * e * 4 if n_group > 1 else 0
    args = (_cp(x), _cp(bias), _cp(ids), _cp(w), np.int32(t), np.int32(e), np.int32(k),
            np.int32(1 if score == "softmax" else 0), np.int32(has_bias), np.int32(n_group),
            np.int32(topk_group), np.int32(bool(normalize)), np.float32(scaling))
    _launch("topk_gating", grid, warps * 32, args, smem)
    return w, ids


def dispatch(ids: torch.Tensor, num_experts: int, block_size: int | None = None):
    """Kernel version of `dispatch.dispatch_torch`: three launches (count, scan, scatter), no host sync."""
    import numpy as np

    from .dispatch import Dispatch, padded_buffer_size

    t, k = ids.shape
    n = t * k
    e = num_experts
    dev = ids.device
    flat = ids.reshape(-1).long().contiguous()
    nchunks = max(1, (n + CHUNK - 1) // CHUNK)
    L = dict(dtype=torch.long, device=dev)
    base = torch.empty((e + 1) * nchunks, **L)
    counts = torch.empty(e, **L)
    offsets = torch.empty(e + 1, **L)
    order, inverse, token_ids, sorted_expert = (torch.empty(n, **L) for _ in range(4))
    bs = int(block_size or 0)
    if bs:
        size = padded_buffer_size(n, e, bs)
        nblocks = (size + bs - 1) // bs
        padded_offsets = torch.empty(e + 1, **L)
        sorted_token_ids = torch.full((size,), n, dtype=torch.int32, device=dev)
        block_expert_ids = torch.empty(nblocks, dtype=torch.int32, device=dev)
        num_post = torch.empty(1, dtype=torch.int32, device=dev)
    else:
        nblocks = 0
        padded_offsets = offsets  # unused placeholders with a valid pointer
        sorted_token_ids = block_expert_ids = num_post = torch.empty(1, dtype=torch.int32, device=dev)
    if bs and e > SCAN_THREADS:
        raise ValueError(f"block alignment supports at most {SCAN_THREADS} experts")
    grid = (nchunks + WARPS_PER_BLOCK - 1) // WARPS_PER_BLOCK
    smem = WARPS_PER_BLOCK * (e + 1) * 4
    i32 = np.int32
    if n:
        _launch("dispatch_count", grid, WARPS_PER_BLOCK * 32,
                (_cp(flat), np.int64(n), i32(e), i32(nchunks), _cp(base)), smem)
    else:
        base.zero_()
    _launch("dispatch_scan", 1, SCAN_THREADS,
            (_cp(base), i32(e), i32(nchunks), _cp(counts), _cp(offsets), i32(bs), _cp(padded_offsets),
             _cp(block_expert_ids), i32(nblocks), _cp(num_post)))
    if n:
        _launch("dispatch_scatter", grid, WARPS_PER_BLOCK * 32,
                (_cp(flat), np.int64(n), i32(e), i32(k), i32(nchunks), _cp(base), _cp(offsets), _cp(order),
                 _cp(inverse), _cp(token_ids), _cp(sorted_expert), i32(bs), _cp(padded_offsets),
                 _cp(sorted_token_ids)), smem)
    d = Dispatch(num_tokens=t, top_k=k, num_experts=e, order=order, inverse=inverse, token_ids=token_ids,
                 sorted_expert_ids=sorted_expert, counts=counts, offsets=offsets, valid=(flat >= 0).view(t, k))
    if bs:
        d.block_size, d.sorted_token_ids, d.block_expert_ids = bs, sorted_token_ids, block_expert_ids
        d.num_tokens_post_padded = num_post
    return d


__all__ = ["CUDA_SOURCE", "available", "usable", "topk_gating", "dispatch"]
