r"""Held-out evaluation of every domain of the default cascade, three ways side by side on one checkpoint.

    python -P benchmarks/evaluation.py --checkpoint RUN_DIR/stages/10_swe_agentic/checkpoint [--threads 2] [--rounds 2]

* ``plain prefill``: in this process, every prompt prefilled whole (``cascade.engine.prefill.SHARED_PREFIX_MIN``
  set out of reach): what evaluation did before prompts shared their common prefix;
* ``shared prefix``: in this process, as ``eval_workers=1`` runs it;
* ``N workers``: ``eval_workers=N`` (default: one per thread), each worker with threads / N torch threads, the
  slowest domains submitted first. The workers are started and warmed up on every domain before timing.

Each round runs the three in turn on the same items (the default cascade's held-out draws, ``seed=0``); the table
has the median per way, the ratio to ``plain prefill`` and whether the scores equal the first way's. Results: a
table on stdout and ``benchmarks/results/evaluation.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a Hugging Face checkpoint of the default cascade's model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="0: one per thread")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import torch

    from cascade.cli import plugins
    from cascade.config import compose
    from cascade.engine import prefill
    from cascade.eval_workers import EvalWorkers
    from cascade.runner import CascadeRunner, eval_seed
    from cascade.types import Checkpoint

    torch.set_num_threads(args.threads)
    workers = args.workers or args.threads
    manager = plugins()
    config = compose([], manager.config_searchpaths())
    runner = CascadeRunner(config, manager, Path("/tmp/cascade-bench-evaluation"))
    checkpoint = Checkpoint(stage="benchmark", path=args.checkpoint)
    seeds = {domain: eval_seed(config.seed, domain) for domain in runner.domains}
    pool = EvalWorkers(config, manager, workers, max(1, args.threads // workers))
    pool.evaluate(checkpoint, seeds)  # start the workers, load the checkpoint, learn each domain's time (slowest first)

    def in_process(shared_prefix_min: int):
        def run():
            prefill.SHARED_PREFIX_MIN = shared_prefix_min
            return {domain: runner.components.evaluate(checkpoint, domain, seed) for domain, seed in seeds.items()}
        return run

    default_min = prefill.SHARED_PREFIX_MIN
    ways = {"plain prefill": in_process(10**9), "shared prefix": in_process(default_min),
            f"{workers} workers": lambda: pool.evaluate(checkpoint, seeds)}
    times: dict[str, list[float]] = {way: [] for way in ways}
    details: dict[str, dict] = {}
    for _ in range(args.rounds):
        for way, run in ways.items():
            started = time.perf_counter()
            details[way] = run()
            times[way].append(time.perf_counter() - started)
    prefill.SHARED_PREFIX_MIN = default_min
    pool.close()

    first = next(iter(details.values()))
    base = statistics.median(times["plain prefill"])
    rows = []
    for way in ways:
        median = statistics.median(times[way])
        same = all(details[way][d]["score"] == first[d]["score"] for d in seeds)
        rows.append({"way": way, "seconds": median, "all_seconds": times[way], "speedup": base / median, "same_scores": same,
                     "domain_seconds": {d: round(details[way][d]["seconds"], 2) for d in seeds}})
    print(f"evaluation of {len(seeds)} domains, {args.threads} threads, median of {args.rounds} rounds")
    print(f"{'way':16s} {'seconds':>8s} {'speed-up':>9s}  same scores")
    for row in rows:
        print(f"{row['way']:16s} {row['seconds']:8.1f} {row['speedup']:8.2f}x  {row['same_scores']}")
    print("per domain (s):", "  ".join(f"{d} " + "/".join(f"{r['domain_seconds'][d]:.1f}" for r in rows) for d in seeds))
    out = HERE / "results" / "evaluation.json"
    out.write_text(json.dumps({"checkpoint": args.checkpoint, "threads": args.threads, "rounds": args.rounds,
                               "scores": {d: first[d]["score"] for d in seeds}, "ways": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
