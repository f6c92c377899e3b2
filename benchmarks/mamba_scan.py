r"""The Mamba-2 SSD chunk scan on CPU: which chunk length to compute with, and ours against transformers' own.

    OMP_NUM_THREADS=1 python -P benchmarks/mamba_scan.py [--rounds 7]

The scan is exact for any chunk length, so cascade's scan (``cascade.models.ssd``, called by
``cascade.models.fast_decode`` unpacked and by ``cascade.models.packing`` with ``seq_idx``) computes with ``min(model chunk_size, SCAN_BLOCK)`` (16). This measures
that choice on the shapes the default cascade runs, with the default model's Mamba layer (16 heads of 32, state
32, one B/C group, chunk_size 64):

* ``prefill``: a rollout's prompt prefill (no grad), short prompts (64 x 80) and long ones (32 x 440: tool
  schemas, long-context documents);
* ``train``: GRPO's forward and backward over completions (32 x 120);
* ``packed``: SFT's forward and backward over packed rows (4 x 512, several samples a row, ``seq_idx``).

Every configuration runs once per round, in turn, so load that drifts during the run hits all of them; the table
gives the median over rounds, in ms, and the ratio to the model's own chunk (64). ``transformers`` is the function
ours replace (its torch fallback; it has no packed path). Results: a table on stdout and
``benchmarks/results/mamba_scan.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "mamba_scan.json"
HEADS, HEAD_DIM, STATE, GROUPS, MODEL_CHUNK = 16, 32, 32, 1, 64
BLOCKS = (16, 32, 64)
WORKLOADS = {  # name: (rows, tokens per row, backward, packed)
    "prefill 64x80": (64, 80, False, False),
    "prefill 32x440": (32, 440, False, False),
    "train 32x120": (32, 120, True, False),
    "packed 4x512": (4, 512, True, True),
}


def inputs(rows: int, tokens: int, grad: bool, packed: bool) -> dict:
    from cascade.models.packing import packed_inputs

    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).requires_grad_(grad)

    kwargs = dict(
        hidden_states=randn(rows, tokens, HEADS, HEAD_DIM), dt=randn(rows, tokens, HEADS),
        A=-torch.rand(HEADS, generator=generator) * 4, B=randn(rows, tokens, GROUPS, STATE),
        C=randn(rows, tokens, GROUPS, STATE), D=torch.randn(HEADS, generator=generator),
        dt_bias=torch.randn(HEADS, generator=generator), dt_softplus=True, return_final_states=True,
    )
    if packed:  # the rows of an SFT step: a few samples each, of mixed lengths
        lengths = [[100, 37, 200, 175], [tokens], [60] * 8 + [tokens - 480], [250, tokens - 250]][:rows]
        kwargs["seq_idx"] = packed_inputs(lengths, seq_len=tokens).model_kwargs()["seq_idx"]
    return kwargs


def scan_functions(packed: bool) -> dict:
    """name -> f(kwargs) for our scan at each block length and (unpacked only) transformers' torch scan."""
    import transformers.models.nemotron_h.modeling_nemotron_h as nemotron_h

    import cascade.models.packing as packing
    import cascade.models.ssd as ssd
    from cascade.models import fast_decode

    ours = packing.mamba2_chunk_scan if packed else fast_decode.mamba2_chunk_scan

    def at_block(block):
        def run(kwargs):
            saved, ssd.SCAN_BLOCK = ssd.SCAN_BLOCK, block
            try:
                return ours(chunk_size=MODEL_CHUNK, **kwargs)
            finally:
                ssd.SCAN_BLOCK = saved
        return run

    functions = {f"ours, chunk {b}": at_block(b) for b in BLOCKS}
    if not packed:
        reference = nemotron_h.mamba2_chunk_scan  # transformers' (fast decode is not enabled in this process)
        functions["transformers, chunk 64"] = lambda kwargs: reference(chunk_size=MODEL_CHUNK, **kwargs)
    return functions


def timed(function, kwargs: dict, grad: bool) -> tuple[float, torch.Tensor]:
    started = time.perf_counter()
    output, state = function(kwargs)
    if grad:
        (output.square().mean() + state.square().mean()).backward()
    return time.perf_counter() - started, output.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    results = {}
    for name, (rows, tokens, grad, packed) in WORKLOADS.items():
        kwargs = inputs(rows, tokens, grad, packed)
        functions = scan_functions(packed)
        seconds = {label: [] for label in functions}
        outputs = {}
        for round_ in range(args.rounds + 1):  # round 0 warms up
            for label, function in functions.items():
                elapsed, outputs[label] = timed(function, kwargs, grad)
                if round_:
                    seconds[label].append(elapsed)
        base = statistics.median(seconds[f"ours, chunk {MODEL_CHUNK}"])
        reference = outputs[f"ours, chunk {MODEL_CHUNK}"]
        results[name] = {
            label: {"ms": 1000 * statistics.median(s), "ratio_to_chunk_64": statistics.median(s) / base,
                    "max_rel_diff": float((outputs[label] - reference).abs().max() / reference.abs().max())}
            for label, s in seconds.items()
        }

    labels = list(next(iter(results.values())))
    print(f"Mamba-2 chunk scan, median ms over {args.rounds} rounds (ratio to ours at chunk 64), "
          f"{torch.get_num_threads()} thread(s)")
    print(f"{'':16}" + "".join(f"{label:>26}" for label in labels))
    for name, row in results.items():
        cells = [f"{row[l]['ms']:9.1f} ({row[l]['ratio_to_chunk_64']:.2f}x)" if l in row else "-" for l in labels]
        print(f"{name:16}" + "".join(f"{c:>26}" for c in cells))
    worst = max(v["max_rel_diff"] for row in results.values() for v in row.values())
    print(f"largest relative difference of any output from ours at chunk 64: {worst:.1e}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rounds": args.rounds, "threads": torch.get_num_threads(),
                                          "shape": {"heads": HEADS, "head_dim": HEAD_DIM, "state": STATE,
                                                    "groups": GROUPS, "model_chunk": MODEL_CHUNK},
                                          "results": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
