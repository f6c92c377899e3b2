"""MoE routing benchmark: cascade.kernels vs transformers' NemotronH eager experts loop and grouped_mm path.

Shape: Nemotron 3 Nano's MoE (128 experts, top-6, sigmoid router with correction bias, scaling 2.5), with the
hidden/intermediate sizes scaled for a CPU (default 512 / 352, Nano: 2688 / 1856). Measures
  routing: router logits -> (weights, ids)             [ours: topk_gating; HF: NemotronHTopkRouter]
  routing+dispatch: routing plus the sort by expert    [ours only; HF's dispatch lives inside its experts]
  layer: routed MoE forward (router + experts, no shared expert, no_grad)
          ours: moe_forward | HF: gate + NemotronHExperts with experts_implementation "eager" / "grouped_mm"
in each `--dtype` (default: float32 and bfloat16). Both sides use the same weights in that dtype, as the model
would be loaded: experts and router weight in the dtype, e_score_correction_bias fp32 (transformers keeps it
fp32), router logits in fp32. The functions compared are timed interleaved (round-robin), medians reported.

    OMP_NUM_THREADS=1 python benchmarks/moe_routing.py                       # CPU, writes results JSON
    OMP_NUM_THREADS=1 python benchmarks/moe_routing.py --profile             # + torch.profiler top ops
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


def _time_once(fn, device):
    """(wall seconds, this thread's CPU seconds) of one call; CUDA: event time for both."""
    if device == "cuda":
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        return a.elapsed_time(b) / 1e3, a.elapsed_time(b) / 1e3
    t0, c0 = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - t0, time.thread_time() - c0


def timeit(fns: dict, device, repeats, warmup=2):
    """Time each of `fns`, run round-robin (interleaved, so load changes hit all alike):
    {name: (median wall s, min wall s, median thread-CPU s)}. On a shared machine the CPU time leaves out the
    time the thread was preempted (not memory-bandwidth or cache contention)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_time_once(fn, device))
    return {name: (statistics.median(w for w, _ in v), min(w for w, _ in v), statistics.median(c for _, c in v))
            for name, v in times.items()}


def build(tokens, experts, k, hidden, inter, device, dtype=torch.float32, seed=0):
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
    # as loaded in `dtype`: the bias stays fp32 (NemotronH's _keep_in_fp32_modules_strict)
    router.weight.data = router.weight.data.to(dtype)
    ex.to(dtype)
    return router.to(device), ex.to(device), x.to(device=device, dtype=dtype)


def _tolerance(dtype):
    return {torch.float32: 1e-5, torch.bfloat16: 2e-2}.get(dtype, 2e-2)


def _breakdown_fns(x, router, ex, k, e, bias):
    """Parts of the layer, for `--breakdown`: ours split into router logits / gating / dispatch / experts, and
    the bare expert GEMMs (the same per-expert row counts, no gather/activation/combine) in transformers'
    orientation (x @ W.T, as its eager loop does) and in ours (bf16 experts below _TRANSPOSED_BELOW rows:
    W @ x.T) -- the floor any per-expert-GEMM implementation pays."""
    from cascade.kernels import experts_forward, moe_layer

    F = torch.nn.functional
    up, down = ex.up_proj.detach(), ex.down_proj.detach()
    logits = F.linear(x.float(), router.weight.float())
    w, ids = topk_gating(logits, k, "sigmoid", bias, scaling=2.5)
    d = dispatch(ids, e)
    counts = d.counts.tolist()
    h, i = up.shape[2], up.shape[1]
    m = max(counts)
    xs = [x[:n] for n in counts]  # any rows: GEMM cost does not depend on which
    abuf, ybuf = x.new_empty(m * i), x.new_empty(m * h)
    low = up.dtype in (torch.bfloat16, torch.float16)

    def gemms(ours):
        for ex_, (n, xe) in enumerate(zip(counts, xs)):
            if n == 0:
                continue
            if ours and low and n < moe_layer._TRANSPOSED_BELOW:
                a = torch.mm(up[ex_], xe.t(), out=abuf[: n * i].view(i, n))
                torch.mm(down[ex_], a, out=ybuf[: n * h].view(h, n))
            else:
                a = torch.mm(xe, up[ex_].t(), out=abuf[: n * i].view(n, i))
                torch.mm(a, down[ex_].t(), out=ybuf[: n * h].view(n, h))

    def eager_experts():
        ex.config._experts_implementation = "eager"
        return ex(x, ids, w)

    return {
        "bd_router_logits_s": lambda: F.linear(x.float(), router.weight.float()),
        "bd_gating_s": lambda: topk_gating(logits, k, "sigmoid", bias, scaling=2.5),
        "bd_dispatch_s": lambda: dispatch(ids, e),
        "bd_ours_experts_s": lambda: experts_forward(x, ids, w, up, down, d=d),
        "bd_hf_eager_experts_s": eager_experts,
        "bd_gemms_x_wt_s": lambda: gemms(False),
        "bd_gemms_ours_s": lambda: gemms(True),
    }


def run_case(tokens, dtype, args):
    dev = args.device
    router, ex, x = build(tokens, args.experts, args.k, args.hidden, args.inter, dev, dtype)
    k, e, bias = args.k, args.experts, router.e_score_correction_bias
    rep = args.repeats
    row = {"tokens": tokens, "dtype": str(dtype).removeprefix("torch."), "experts": e, "k": k,
           "hidden": args.hidden, "intermediate": args.inter}
    F = torch.nn.functional

    def put(res):
        for name, (med, lo, cpu) in res.items():
            row[name] = med
            row[name.removesuffix("_s") + "_min_s"] = lo
            row[name.removesuffix("_s") + "_cpu_s"] = cpu

    with torch.no_grad():
        logits = F.linear(x.float(), router.weight.float())
        _, ids = topk_gating(logits, k, "sigmoid", bias, scaling=2.5)
        fns = {
            "hf_router_s": lambda: router(x),
            "ours_routing_s": lambda: topk_gating(F.linear(x.float(), router.weight.float()), k, "sigmoid", bias,
                                                  scaling=2.5),
            "ours_gating_only_s": lambda: topk_gating(logits, k, "sigmoid", bias, scaling=2.5),
            "ours_dispatch_s": lambda: dispatch(ids, e),
            "ours_gating_dispatch_s": lambda: dispatch(topk_gating(logits, k, "sigmoid", bias, scaling=2.5)[1], e),
            "ours_gating_dispatch_aligned_s": lambda: dispatch(
                topk_gating(logits, k, "sigmoid", bias, scaling=2.5)[1], e, block_size=64),
        }
        if dev == "cuda":  # torch fallback on the same GPU, for reference
            fns["torch_gating_dispatch_s"] = lambda: dispatch_torch(
                topk_gating_torch(logits, k, "sigmoid", bias, scaling=2.5)[1], e)
        put(timeit(fns, dev, rep))
        if not args.skip_layer:

            def hf_layer(impl):
                def f():
                    ex.config._experts_implementation = impl
                    _, w, i = router(x)
                    return ex(x, i, w)
                return f

            def ours():
                return moe_forward(x, router.weight, bias, ex.up_proj, ex.down_proj, k, scaling=2.5).output

            layer = {"hf_eager_layer_s": hf_layer("eager"), "hf_grouped_mm_layer_s": hf_layer("grouped_mm"),
                     "ours_layer_s": ours}
            put(timeit(layer, dev, args.layer_repeats or (rep if dev == "cuda" else 9), warmup=1))
            out, ref = ours().float(), hf_layer("eager")().float()
            diff = float((out - ref).abs().max())
            scale = float(ref.abs().max())
            row["max_abs_diff_vs_eager"] = diff
            row["max_rel_diff_vs_eager"] = diff / scale  # relative to the output's largest magnitude
            tol = _tolerance(dtype)
            row["matches_eager"] = bool(torch.allclose(out, ref, rtol=tol, atol=tol * scale))
            if args.breakdown:
                put(timeit(_breakdown_fns(x, router, ex, k, e, bias), dev, args.layer_repeats or 9, warmup=1))
            if args.profile:
                from torch.profiler import ProfilerActivity, profile

                for name in ("ours_layer_s", "hf_eager_layer_s"):
                    with profile(activities=[ProfilerActivity.CPU]) as prof:
                        layer[name]()
                    print(f"--- profile T={tokens} {row['dtype']} {name.removesuffix('_s')} (one call, self CPU)")
                    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--tokens", type=int, nargs="+", default=None, help="default: 1024 8192")
    p.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"],
                   help="expert/router weight and hidden dtype, one table block each (default: both)")
    p.add_argument("--experts", type=int, default=128)
    p.add_argument("--k", type=int, default=6)
    p.add_argument("--hidden", type=int, default=None, help="default: 512 on CPU, 2688 on CUDA")
    p.add_argument("--inter", type=int, default=None, help="default: 352 on CPU, 1856 on CUDA")
    p.add_argument("--repeats", type=int, default=None, help="routing timings; default: 15 on CPU, 50 on CUDA")
    p.add_argument("--layer-repeats", type=int, default=None, help="layer timings; default: 9 on CPU")
    p.add_argument("--skip-layer", action="store_true", help="routing only")
    p.add_argument("--breakdown", action="store_true",
                   help="also time the layer's parts and the bare expert GEMMs (bd_* fields, printed)")
    p.add_argument("--profile", action="store_true", help="print torch.profiler's top ops of one layer call")
    p.add_argument("--profile-rows", type=int, default=12)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    cuda = args.device == "cuda"
    args.tokens = args.tokens or [1024, 8192]
    args.hidden = args.hidden or (2688 if cuda else 512)
    args.inter = args.inter or (1856 if cuda else 352)
    args.repeats = args.repeats or (50 if cuda else 15)
    if not cuda:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    machine = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if cuda else None,
    }
    rows = [run_case(t, getattr(torch, dt), args) for dt in args.dtype for t in args.tokens]
    us = lambda s: f"{s * 1e6:9.0f}" if s is not None else "        -"  # noqa: E731
    print(f"device={args.device} E={args.experts} k={args.k} H={args.hidden} I={args.inter} "
          f"threads={machine['threads']}  (wall times in microseconds, median of interleaved runs; cpu-time: "
          f"ratios of the median thread CPU times)")
    print(f"{'dtype':>8} {'T':>6} {'HF router':>9} {'ours rt':>9} {'gate':>9} {'dispatch':>9} {'gate+dsp':>9} "
          f"{'rt ratio':>8} | {'HF eager':>9} {'HF grpmm':>9} {'ours':>9} {'vs eager':>8} {'vs grpmm':>8} "
          f"{'rel diff':>8} | cpu-time: {'vs eager':>8} {'vs grpmm':>8}")
    for r in rows:
        ratio = r["hf_router_s"] / r["ours_routing_s"]
        line = (f"{r['dtype']:>8} {r['tokens']:>6} {us(r['hf_router_s'])} {us(r['ours_routing_s'])} "
                f"{us(r['ours_gating_only_s'])} {us(r['ours_dispatch_s'])} {us(r['ours_gating_dispatch_s'])} "
                f"{ratio:7.2f}x |")
        if "ours_layer_s" in r:
            r["layer_speedup_vs_eager"] = r["hf_eager_layer_s"] / r["ours_layer_s"]
            r["layer_speedup_vs_grouped_mm"] = r["hf_grouped_mm_layer_s"] / r["ours_layer_s"]
            r["layer_cpu_speedup_vs_eager"] = r["hf_eager_layer_cpu_s"] / r["ours_layer_cpu_s"]
            r["layer_cpu_speedup_vs_grouped_mm"] = r["hf_grouped_mm_layer_cpu_s"] / r["ours_layer_cpu_s"]
            line += (f" {us(r['hf_eager_layer_s'])} {us(r['hf_grouped_mm_layer_s'])} {us(r['ours_layer_s'])} "
                     f"{r['layer_speedup_vs_eager']:7.2f}x {r['layer_speedup_vs_grouped_mm']:7.2f}x "
                     f"{r['max_rel_diff_vs_eager']:8.1e} |           {r['layer_cpu_speedup_vs_eager']:7.2f}x "
                     f"{r['layer_cpu_speedup_vs_grouped_mm']:7.2f}x")
            if not r["matches_eager"]:
                line += "  OUTPUT MISMATCH"
        r["routing_speedup_vs_hf"] = ratio
        print(line)
    for r in rows:
        if "bd_gemms_ours_s" in r:
            parts = " ".join(f"{k.removeprefix('bd_').removesuffix('_s')}={r[k] * 1e3:.1f}" for k in r
                             if k.startswith("bd_") and k.endswith("_s") and not k.endswith(("_min_s", "_cpu_s")))
            print(f"breakdown {r['dtype']} T={r['tokens']} (ms, medians): {parts}")
    out = Path(args.out) if args.out else RESULTS / ("moe_routing.json" if not cuda else "moe_routing_cuda.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "args": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
