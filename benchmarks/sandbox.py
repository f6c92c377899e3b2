r"""Sandboxed executions per second, and the cost per execution over a bare ``python -I -S`` subprocess.

Code RL scores ~128 programs per training step, so the sandbox's overhead multiplies. Two programs: a trivial one
(``print``) and a typical test run (a harness calling a model-written function on 10 inputs and printing the results
as JSON). Each runs ``--runs`` times on each side, serially and through a pool of ``--workers``:

* **bare**: ``subprocess.run([sys.executable, "-I", "-S", "main.py"], capture_output=True)`` in a fresh temporary
  directory (the files written and removed each time too, as the sandbox does);
* **sandbox**: ``cascade.environments.sandbox.run`` in the mode this machine allows (namespaces here), and, for the
  breakdown, the same jobs in the ``plain`` mode (launcher + limits, no namespaces).

    python -P benchmarks/sandbox.py            # prints the table, writes benchmarks/results/sandbox.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cascade.environments import sandbox
from cascade.environments.sandbox import Job, Limits

RESULTS = Path(__file__).parent / "results" / "sandbox.json"
HARNESS = r'''import json, sys
sys.path.insert(0, "")
from solution import longest_run
inputs = [[1, 1, 2, 2, 2, 3], [], [5], [4, 4, 4, 4], [1, 2, 3, 4, 5], [7, 7, 1, 7, 7, 7, 2], [0] * 50,
          list(range(100)), [3, 3, 2, 2, 1, 1, 1], [9, 8, 8, 9, 9, 9, 9]]
results = []
for args in inputs:
    try:
        results.append({"ok": True, "value": longest_run(args)})
    except Exception as exc:
        results.append({"ok": False, "error": type(exc).__name__})
print(json.dumps(results))
'''
SOLUTION = '''def longest_run(xs):
    best = run = 0
    for i, x in enumerate(xs):
        run = run + 1 if i and xs[i - 1] == x else 1
        best = max(best, run)
    return best
'''
PROGRAMS = {"trivial": {"main.py": "print('ok')"}, "harness (10 inputs)": {"main.py": HARNESS, "solution.py": SOLUTION}}
LIMITS = Limits(cpu_seconds=5, wall_seconds=10)


def bare(files: dict[str, str]) -> bool:
    """The baseline: the same program in a fresh directory, no sandbox."""
    workdir = tempfile.mkdtemp(prefix="bench-bare-")
    try:
        for name, text in files.items():
            Path(workdir, name).write_text(text)
        proc = subprocess.run([sys.executable, "-I", "-S", "main.py"], cwd=workdir, capture_output=True, timeout=10)
        return proc.returncode == 0
    finally:
        shutil.rmtree(workdir)


def in_mode(mode):
    def one(files: dict[str, str]) -> bool:
        return sandbox._execute(Job(files, limits=LIMITS), mode).passed
    return one


def timed(fn, files: dict[str, str], runs: int, workers: int) -> dict:
    """Run ``fn(files)`` ``runs`` times with ``workers`` at a time: executions/s and seconds per execution."""
    latencies = []

    def one(_):
        started = time.perf_counter()
        ok = fn(files)
        latencies.append(time.perf_counter() - started)
        return ok

    fn(files)  # warm-up: page cache, the mode probe
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        oks = list(pool.map(one, range(runs)))
    wall = time.perf_counter() - started
    if not all(oks):
        raise RuntimeError(f"{sum(not ok for ok in oks)} of {runs} runs failed")
    return {"runs": runs, "workers": workers, "execs_per_s": runs / wall, "wall_ms_per_exec": 1000 * wall / runs,
            "latency_ms_median": 1000 * statistics.median(latencies), "latency_ms_p90": 1000 * sorted(latencies)[int(0.9 * runs)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=60, help="executions per program, side and concurrency")
    parser.add_argument("--workers", type=int, default=2, help="the pool's concurrency (this machine: 2 cores)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"

    mode = sandbox._current_mode()
    sides = {"bare": bare, f"sandbox ({mode.name})": in_mode(mode)}
    plain = next(m for m in sandbox._candidate_modes() if m.name == "plain")
    if mode != plain:
        sides["sandbox (plain)"] = in_mode(plain)
    isolation = sandbox.run(Job(PROGRAMS["trivial"])).isolation
    load_before = os.getloadavg()[0]
    rows = []
    for program, files in PROGRAMS.items():
        for workers in (1, args.workers):
            base = None
            for side, fn in sides.items():
                row = {"program": program, "side": side, **timed(fn, files, args.runs, workers)}
                base = base or row
                row["overhead_ms_per_exec"] = row["wall_ms_per_exec"] - base["wall_ms_per_exec"]
                row["slowdown"] = row["wall_ms_per_exec"] / base["wall_ms_per_exec"]
                rows.append(row)

    print(f"isolation ({mode.name}): {', '.join(isolation)}")
    print(f"{'program':22s} {'side':22s} {'workers':>7s} {'exec/s':>7s} {'ms/exec':>8s} {'median':>7s} {'p90':>7s} "
          f"{'+ms/exec':>9s} {'x bare':>7s}")
    for r in rows:
        print(f"{r['program']:22s} {r['side']:22s} {r['workers']:>7d} {r['execs_per_s']:>7.1f} {r['wall_ms_per_exec']:>8.1f} "
              f"{r['latency_ms_median']:>7.1f} {r['latency_ms_p90']:>7.1f} {r['overhead_ms_per_exec']:>9.1f} {r['slowdown']:>7.2f}")
    pooled = next(r for r in rows if r["program"] != "trivial" and r["workers"] == args.workers and r["side"].startswith(f"sandbox ({mode.name}"))
    step = 128 / pooled["execs_per_s"]
    print(f"a code-RL step of 128 harness runs through the pool: ~{step:.1f}s; load average before/after: "
          f"{load_before:.2f}/{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    result = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_average_before": load_before,
                          "load_average_after": os.getloadavg()[0]},
              "mode": mode.name, "isolation": list(isolation), "runs": args.runs, "rows": rows,
              "seconds_per_128_harness_runs_pooled": step}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
