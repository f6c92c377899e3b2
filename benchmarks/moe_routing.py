"""MoE routing benchmark: cascade.kernels vs transformers' NemotronH eager experts loop and grouped_mm path.

Shape: Nemotron 3 Nano's MoE (128 experts, top-6, sigmoid router with correction bias, scaling 2.5), with the
hidden/intermediate sizes scaled for a CPU (default 512 / 352, Nano: 2688 / 1856). Measures
  routing: router logits -> (weights, ids)             [ours: topk_gating; HF: NemotronHTopkRouter]
  routing+dispatch: routing plus the sort by expert    [ours only; HF's dispatch lives inside its experts]
  layer: routed MoE forward (router + experts, no shared expert, no_grad)
          ours: moe_forward | HF: gate + NemotronHExperts with experts_implementation "eager" / "grouped_mm"

    OMP_NUM_THREADS=1 python benchmarks/moe_routing.py                       # CPU, writes results JSON
    python benchmarks/moe_routing.py --device cuda --tokens 8192             # CuPy kernels on a GPU

Prints a table and writes benchmarks/results/moe_routing.json (results/moe_routing_cuda.json for --device cuda).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from cascade.kernels import dispatch, moe_forward, topk_gating
from cascade.kernels.dispatch import dispatch_torch
from cascade.kernels.gating import topk_gating_torch

RESULTS = Path(__file__).parent / "results"


def timeit(fn, device, repeats, warmup=2):
    """Median seconds per call (CUDA: events around each call)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def build(tokens, experts, k, hidden, inter, device, seed=0):
    from transformers import NemotronHConfig
    from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHExperts, NemotronHTopkRouter

    cfg = NemotronHConfig(hidden_size=hidden, n_routed_experts=experts, num_experts_per_tok=k,
                          moe_intermediate_size=inter, mlp_hidden_act="relu2", n_group=1, topk_group=1,
                          norm_topk_prob=True, routed_scaling_factor=2.5)
    g = torch.Generator().manual_seed(seed)
    router, ex = NemotronHTopkRouter(cfg), NemotronHExperts(cfg)
    with torch.no_grad():
        router.weight.normal_(0, 0.05, generator=g)
        router.e_score_correction_bias.normal_(0, 0.01, generator=g)
        ex.up_proj.normal_(0, 0.02, generator=g)
        ex.down_proj.normal_(0, 0.02, generator=g)
    x = torch.randn(tokens, hidden, generator=g)
    return router.to(device), ex.to(device), x.to(device)


def run_case(tokens, args):
    dev = args.device
    router, ex, x = build(tokens, args.experts, args.k, args.hidden, args.inter, dev)
    k, e, bias = args.k, args.experts, router.e_score_correction_bias
    rep = args.repeats
    row = {"tokens": tokens, "experts": e, "k": k, "hidden": args.hidden, "intermediate": args.inter}
    with torch.no_grad():
        logits = torch.nn.functional.linear(x.float(), router.weight.float())
        row["hf_router_s"] = timeit(lambda: router(x), dev, rep)
        row["ours_routing_s"] = timeit(
            lambda: topk_gating(torch.nn.functional.linear(x.float(), router.weight.float()), k, "sigmoid", bias,
                                scaling=2.5), dev, rep)
        row["ours_gating_only_s"] = timeit(lambda: topk_gating(logits, k, "sigmoid", bias, scaling=2.5), dev, rep)
        _, ids = topk_gating(logits, k, "sigmoid", bias, scaling=2.5)
        row["ours_dispatch_s"] = timeit(lambda: dispatch(ids, e), dev, rep)
        row["ours_gating_dispatch_s"] = timeit(
            lambda: dispatch(topk_gating(logits, k, "sigmoid", bias, scaling=2.5)[1], e), dev, rep)
        row["ours_gating_dispatch_aligned_s"] = timeit(
            lambda: dispatch(topk_gating(logits, k, "sigmoid", bias, scaling=2.5)[1], e, block_size=64), dev, rep)
        if dev == "cuda":  # torch fallback on the same GPU, for reference
            row["torch_gating_dispatch_s"] = timeit(
                lambda: dispatch_torch(topk_gating_torch(logits, k, "sigmoid", bias, scaling=2.5)[1], e), dev, rep)
        if not args.skip_layer:
            lrep = max(1, rep // 4) if dev == "cpu" else rep

            def hf_layer(impl):
                ex.config._experts_implementation = impl

                def f():
                    _, w, i = router(x)
                    return ex(x, i, w)
                return f

            row["hf_eager_layer_s"] = timeit(hf_layer("eager"), dev, lrep, warmup=1)
            row["hf_grouped_mm_layer_s"] = timeit(hf_layer("grouped_mm"), dev, lrep, warmup=1)
            row["ours_layer_s"] = timeit(
                lambda: moe_forward(x, router.weight, bias, ex.up_proj, ex.down_proj, k, scaling=2.5), dev, lrep,
                warmup=1)
            ours = moe_forward(x, router.weight, bias, ex.up_proj, ex.down_proj, k, scaling=2.5).output
            ref = hf_layer("eager")()
            row["max_abs_diff_vs_eager"] = float((ours - ref).abs().max())
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--tokens", type=int, nargs="+", default=None, help="default: 1024 8192")
    p.add_argument("--experts", type=int, default=128)
    p.add_argument("--k", type=int, default=6)
    p.add_argument("--hidden", type=int, default=None, help="default: 512 on CPU, 2688 on CUDA")
    p.add_argument("--inter", type=int, default=None, help="default: 352 on CPU, 1856 on CUDA")
    p.add_argument("--repeats", type=int, default=None, help="default: 8 on CPU, 50 on CUDA")
    p.add_argument("--skip-layer", action="store_true", help="routing only")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    cuda = args.device == "cuda"
    args.tokens = args.tokens or [1024, 8192]
    args.hidden = args.hidden or (2688 if cuda else 512)
    args.inter = args.inter or (1856 if cuda else 352)
    args.repeats = args.repeats or (50 if cuda else 8)
    if not cuda:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    machine = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if cuda else None,
    }
    rows = [run_case(t, args) for t in args.tokens]
    us = lambda s: f"{s * 1e6:9.0f}" if s is not None else "        -"  # noqa: E731
    print(f"device={args.device} E={args.experts} k={args.k} H={args.hidden} I={args.inter} "
          f"threads={machine['threads']}  (times in microseconds, median)")
    print(f"{'T':>6} {'HF router':>9} {'ours rt':>9} {'gate':>9} {'dispatch':>9} {'gate+dsp':>9} "
          f"{'rt ratio':>8} | {'HF eager':>9} {'HF grpmm':>9} {'ours':>9} {'vs eager':>8} {'vs grpmm':>8}")
    for r in rows:
        ratio = r["hf_router_s"] / r["ours_routing_s"]
        line = (f"{r['tokens']:>6} {us(r['hf_router_s'])} {us(r['ours_routing_s'])} {us(r['ours_gating_only_s'])} "
                f"{us(r['ours_dispatch_s'])} {us(r['ours_gating_dispatch_s'])} {ratio:7.2f}x |")
        if "ours_layer_s" in r:
            r["layer_speedup_vs_eager"] = r["hf_eager_layer_s"] / r["ours_layer_s"]
            r["layer_speedup_vs_grouped_mm"] = r["hf_grouped_mm_layer_s"] / r["ours_layer_s"]
            line += (f" {us(r['hf_eager_layer_s'])} {us(r['hf_grouped_mm_layer_s'])} {us(r['ours_layer_s'])} "
                     f"{r['layer_speedup_vs_eager']:7.2f}x {r['layer_speedup_vs_grouped_mm']:7.2f}x")
        r["routing_speedup_vs_hf"] = ratio
        print(line)
    out = Path(args.out) if args.out else RESULTS / ("moe_routing.json" if not cuda else "moe_routing_cuda.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "args": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
