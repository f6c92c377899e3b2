r"""What on-policy distillation (MOPD) adds to a GRPO step on this CPU: the same step with and without a teacher.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python -P benchmarks/mopd_overhead.py [--steps 5] [--repeats 2]

The workload is ``benchmarks/grpo_vs_trl.py``'s cascade side, unchanged: one tiny NemotronH checkpoint
(``cascade.models.tiny_nemotron_h``, random weights, fp32) built once by ``init_checkpoint``; the math plugin's
train prompts in a fixed order (step k takes prompts ``[(k-1)*P, k*P)``, so both sides sample the same prompts);
``P`` = 8 prompts x ``G`` = 8 completions, temperature 1.0, <= 64 new tokens, cascade's hf rollout engine with all
64 completions in one batch; a cheap exact-match reward; one optimizer step per batch (AdamW lr 3e-6, grad clip
1.0), micro-batch 32, routers frozen, no KL term and no reference model. Two sides, each ``GRPOStage.train_step``:

* ``grpo``: the stage's own objective (``PolicyGradient``), dynamic filter off, so every step updates on all
  ``P * G`` sequences (a random model scores almost every group uniform: the filter would drop them);
* ``mopd``: the same stage with ``stage.objective = DistillationObjective({"math": HFTeacher(teacher)})``, what
  ``MOPDStage.run`` does to a wrapped GRPO stage (alpha 0, ratio bounds (0.5, 2.0)), where the teacher is a
  second copy of the checkpoint directory (the same weights, loaded as a separate model): scoring costs exactly
  one no-grad forward per sequence. The optimizer is kept the same as GRPO's (MOPDStage would swap in its own
  lr schedule, which costs nothing per step), so the two steps differ only by the objective.

Each side runs in its own child process (one thread; ``--repeats`` runs alternate grpo, mopd, mopd, grpo, ... and
the timed steps are pooled, so a load that drifts hits both sides); the first ``--warmup`` steps are not timed.
A step's time is the wall time of ``train_step`` and, since the machine may be shared, also the CPU time
(``time.process_time``) of the child over the same call. The MOPD child counts what the teacher does: calls of
``HFTeacher.logprobs`` and the sequences passed to them (a wrapper), and the forward calls and rows of the
teacher's model (a forward hook): ``teacher forward rows / sequences in the batch`` is the number of teacher
forward passes per sampled sequence. ``teacher_time_share`` is the step's own metric (``teacher_seconds`` over
the step's wall time). As a check that the teacher scores the right tokens: at the first step the teacher has
the student's weights, so the step's ``reverse_kl/math`` must be ~0.

Goals (project): teacher scoring <= one forward pass per sampled sequence per step; MOPD step <= 1.5x the GRPO
step on CPU. Results: a table on stdout and ``benchmarks/results/mopd_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# run as `python -P benchmarks/mopd_overhead.py` (and so are its children): put this folder on the path for `workload`
sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload  # noqa: E402
from workload import (DOMAIN, LR, SEED, _cascade_setup, _one_thread, _peak_rss_mb, add_workload_args,  # noqa: E402
                      step_spread, timed_steps)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "mopd_overhead.json"
GOAL_RATIO = 1.5
GOAL_TEACHER_FORWARDS = 1.0


# ---- child: the checkpoint, its teacher copy, the prompts ------------------------------------------------------


def child_prepare(args) -> dict:
    return workload.child_prepare(args, args.prompts * (args.warmup + args.steps), teacher=True)


# ---- child: one side (grpo or mopd) ------------------------------------------------------------------------------


class TeacherCounter:
    """Counts what one HFTeacher does: ``logprobs`` calls and sequences (a wrapper), model forwards and rows (a hook)."""

    def __init__(self, teacher):
        self.calls = self.sequences = self.forward_calls = self.forward_rows = self.forward_tokens = 0
        original = teacher.logprobs

        def logprobs(token_ids_B):
            self.calls += 1
            self.sequences += len(token_ids_B)
            return original(token_ids_B)

        teacher.logprobs = logprobs

        def hook(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.forward_calls += 1
            self.forward_rows += int(ids.shape[0])
            self.forward_tokens += int(ids.numel())

        teacher.policy.model.register_forward_pre_hook(hook, with_kwargs=True)

    def take(self) -> dict[str, int]:
        out = {"teacher_logprobs_calls": self.calls, "teacher_sequences_scored": self.sequences,
               "teacher_forward_calls": self.forward_calls, "teacher_forward_rows": self.forward_rows,
               "teacher_forward_tokens": self.forward_tokens}
        self.calls = self.sequences = self.forward_calls = self.forward_rows = self.forward_tokens = 0
        return out


def child_side(args) -> dict:
    _one_thread()
    import torch

    torch.manual_seed(SEED)
    stage, policy, trainer, engine, pools, context = _cascade_setup(args)
    counter = None
    loaded_seconds = None
    if args.child == "mopd":
        from cascade import Checkpoint
        from cascade.engine.teacher import HFTeacher
        from cascade_mopd.objective import DistillationObjective

        started = time.perf_counter()
        teacher = HFTeacher(Checkpoint("teacher", str(Path(args.workdir) / "teacher")))
        loaded_seconds = time.perf_counter() - started
        counter = TeacherCounter(teacher)
        stage.objective = DistillationObjective({DOMAIN: teacher})  # what MOPDStage.run does to a GRPO stage
    steps = []
    for step in range(1, args.warmup + args.steps + 1):
        started, cpu = time.perf_counter(), time.process_time()
        metrics = stage.train_step(step, policy, trainer, engine, pools, context)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        sequences = args.prompts * args.group_size
        row = {"step": step, "seconds": seconds, "cpu_seconds": cpu, "sequences": sequences,
               "groups_kept": metrics.get("groups_kept"), "skipped_update": metrics.get("skipped_update", 0.0),
               "tokens": round(metrics["response_tokens"] * sequences), "rollout_seconds": metrics["rollout_seconds"],
               "reward": metrics["reward"], "loss": metrics.get("loss"), "grad_norm": metrics.get("grad_norm")}
        if counter is not None:
            row.update(counter.take())
            row["teacher_seconds"] = metrics.get("teacher_seconds")
            row["teacher_time_share"] = metrics.get("teacher_time_share")
            row["reverse_kl"] = metrics.get(f"reverse_kl/{DOMAIN}")
            row["masked_fraction"] = metrics.get("masked_fraction")
            row["batch_sequences"] = round(row["groups_kept"]) * args.group_size
            row["teacher_forwards_per_sequence"] = row["teacher_forward_rows"] / row["batch_sequences"]
        steps.append(row)
        extra = (f", teacher {row['teacher_seconds']:.2f}s ({row['teacher_time_share']:.1%}), "
                 f"{row['teacher_forward_rows']} teacher rows in {row['teacher_forward_calls']} forwards"
                 if counter is not None else "")
        print(f"[{args.child}] step {step}: {seconds:.2f}s (cpu {cpu:.2f}s), {row['tokens']} tokens, "
              f"rollout {row['rollout_seconds']:.2f}s{extra}", file=sys.stderr, flush=True)
    trainer.close()
    return {"steps": steps, "prompt_ids_per_step": stage.seen, "peak_rss_mb": _peak_rss_mb()["peak_rss_mb"],
            "teacher_load_seconds": loaded_seconds}


# ---- parent ------------------------------------------------------------------------------------------------------

CHILDREN = {"prepare": child_prepare, "grpo": child_side, "mopd": child_side}


def run_child(kind: str, args) -> dict:
    return workload.run_child(kind, args, __file__, extra_env={"HF_HUB_DISABLE_PROGRESS_BARS": "1"})


def summarise(runs: list[dict], warmup: int) -> dict:
    timed = timed_steps(runs, warmup)
    n = len(timed)

    def mean(key):
        return sum(s[key] for s in timed) / n

    def median(key):
        values = sorted(s[key] for s in timed)
        return (values[(n - 1) // 2] + values[n // 2]) / 2

    seconds, cpu = mean("seconds"), mean("cpu_seconds")
    out = {"timed_steps": n, "repeats": len(runs), "seconds_per_step": seconds, "cpu_seconds_per_step": cpu,
           "median_seconds_per_step": median("seconds"), "median_cpu_seconds_per_step": median("cpu_seconds"),
           "rollout_seconds_per_step": mean("rollout_seconds"), "update_seconds_per_step": seconds - mean("rollout_seconds"),
           "tokens_per_step": mean("tokens"), "cpu_seconds_per_1k_tokens": 1000 * cpu / mean("tokens"),
           **step_spread(timed),
           "skipped_updates": sum(s["skipped_update"] for s in timed), "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}
    if "teacher_seconds" in timed[0]:
        every = [s for run in runs for s in run["steps"]]  # warm-up steps count too for the forward-pass check
        out.update({
            "teacher_seconds_per_step": mean("teacher_seconds"),
            "teacher_time_share": mean("teacher_time_share"),
            "teacher_logprobs_calls_per_step": mean("teacher_logprobs_calls"),
            "teacher_forward_calls_per_step": mean("teacher_forward_calls"),
            "teacher_forwards_per_sequence": mean("teacher_forwards_per_sequence"),
            "teacher_forwards_per_sequence_max_any_step": max(s["teacher_forwards_per_sequence"] for s in every),
            "teacher_sequences_scored_equals_batch": all(s["teacher_sequences_scored"] == s["batch_sequences"] for s in every),
            "reverse_kl_step1": [r["steps"][0]["reverse_kl"] for r in runs],
            "teacher_load_seconds": max(r["teacher_load_seconds"] for r in runs),
        })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_args(parser)
    parser.add_argument("--repeats", type=int, default=2,
                        help="run the sides alternately this many times each (grpo, mopd, mopd, grpo, ...) and pool the steps")
    parser.add_argument("--workdir", default="/tmp/mopd_overhead", help="checkpoints, prompts, child outputs")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        Path(args.child_out).write_text(json.dumps(CHILDREN[args.child](args)))
        return

    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load_before = list(os.getloadavg())
    prepared = run_child("prepare", args)
    print(f"checkpoint: {prepared['parameters']:,} parameters, vocab {prepared['vocab']}, "
          f"{prepared['mean_prompt_tokens']:.1f} prompt tokens on average; teacher: a copy of it", flush=True)
    kinds = ["grpo", "mopd"]
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for repeat in range(args.repeats):
        for kind in (kinds if repeat % 2 == 0 else kinds[::-1]):
            runs[kind].append(run_child(kind, args))
    grpo, mopd = summarise(runs["grpo"], args.warmup), summarise(runs["mopd"], args.warmup)
    same_prompts = all(g["prompt_ids_per_step"] == m["prompt_ids_per_step"] for g in runs["grpo"] for m in runs["mopd"])
    ratio = {key: mopd[key] / grpo[key] for key in ("seconds_per_step", "cpu_seconds_per_step", "median_seconds_per_step",
                                                     "median_cpu_seconds_per_step", "rollout_seconds_per_step",
                                                     "update_seconds_per_step", "tokens_per_step", "cpu_seconds_per_1k_tokens")}

    print()
    print(f"GRPO vs MOPD step on CPU (1 thread): {args.prompts} prompts x {args.group_size} completions, <= {args.max_new_tokens} "
          f"new tokens, micro-batch {args.micro_batch}, {args.steps} timed steps after {args.warmup} warm-up, x{args.repeats} per side")
    rows = [("seconds/step (wall)", "seconds_per_step", "{:.2f}"),
            ("seconds/step (CPU)", "cpu_seconds_per_step", "{:.2f}"),
            ("median seconds/step (wall)", "median_seconds_per_step", "{:.2f}"),
            ("median seconds/step (CPU)", "median_cpu_seconds_per_step", "{:.2f}"),
            ("  rollout + reward s/step", "rollout_seconds_per_step", "{:.2f}"),
            ("  update s/step (incl. teacher)", "update_seconds_per_step", "{:.2f}"),
            ("generated tokens/step", "tokens_per_step", "{:.0f}"),
            ("CPU s per 1k generated tokens", "cpu_seconds_per_1k_tokens", "{:.2f}")]
    print(f"{'':34s} {'GRPO':>9s} {'MOPD':>9s} {'MOPD/GRPO':>10s}")
    for label, key, fmt in rows:
        print(f"{label:34s} {fmt.format(grpo[key]):>9s} {fmt.format(mopd[key]):>9s} {ratio[key]:>10.2f}")
    print(f"{'fastest / slowest step s (wall)':34s} {grpo['step_seconds_min']:.2f}/{grpo['step_seconds_max']:.2f}"
          f"{'':1s} {mopd['step_seconds_min']:.2f}/{mopd['step_seconds_max']:.2f}")
    print(f"{'peak RSS MB':34s} {grpo['peak_rss_mb']:>9.0f} {mopd['peak_rss_mb']:>9.0f} {mopd['peak_rss_mb'] / grpo['peak_rss_mb']:>10.2f}")
    print(f"MOPD teacher: {mopd['teacher_seconds_per_step']:.2f} s/step, teacher_time_share {mopd['teacher_time_share']:.1%} of the step; "
          f"{mopd['teacher_logprobs_calls_per_step']:.0f} logprobs call(s) and {mopd['teacher_forward_calls_per_step']:.0f} model "
          f"forward(s) per step; teacher forward passes per sampled sequence {mopd['teacher_forwards_per_sequence']:.2f} "
          f"(max over all steps {mopd['teacher_forwards_per_sequence_max_any_step']:.2f}); "
          f"reverse KL at step 1 (teacher = student) {', '.join(f'{x:.2e}' for x in mopd['reverse_kl_step1'])}")
    # the rollout is the same work on both sides but the machine may be shared: its noise dilutes or inflates the
    # measured ratio; this adds only what MOPD adds that the step measures itself (the teacher's scoring) to GRPO's step
    estimate = 1 + mopd["teacher_seconds_per_step"] / grpo["seconds_per_step"]
    ratio["grpo_step_plus_teacher_estimate"] = estimate
    print(f"GRPO step + MOPD teacher scoring (noise-free estimate of the ratio, loss overhead not included): {estimate:.2f}x")
    forwards_ok = mopd["teacher_forwards_per_sequence_max_any_step"] <= GOAL_TEACHER_FORWARDS
    wall_ok, cpu_ok = ratio["seconds_per_step"] <= GOAL_RATIO, ratio["cpu_seconds_per_step"] <= GOAL_RATIO
    load_after = list(os.getloadavg())
    print(f"goals: teacher <= 1 forward per sequence: {'met' if forwards_ok else 'NOT met'}; MOPD step <= {GOAL_RATIO}x GRPO: "
          f"wall {ratio['seconds_per_step']:.2f}x {'met' if wall_ok else 'NOT met'}, CPU {ratio['cpu_seconds_per_step']:.2f}x "
          f"{'met' if cpu_ok else 'NOT met'}")
    print(f"same prompts per step: {same_prompts}; load average before/after: {load_before[0]:.2f}/{load_after[0]:.2f} "
          f"on {os.cpu_count()} CPUs")

    result = {
        "workload": {"steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "prompts_per_step": args.prompts,
                     "group_size": args.group_size, "max_new_tokens": args.max_new_tokens, "micro_batch": args.micro_batch,
                     "temperature": 1.0, "threads": 1, "dynamic_filter": False, "kl_coef": 0.0, "lr": LR,
                     "teacher": "HFTeacher on a copy of the student checkpoint (same weights), batch_size 32, fp32",
                     "mopd_objective": "DistillationObjective alpha 0, ratio bounds (0.5, 2.0)", **prepared},
        "grpo": {**grpo, "runs": [r["steps"] for r in runs["grpo"]]},
        "mopd": {**mopd, "runs": [r["steps"] for r in runs["mopd"]]},
        "ratio_mopd_over_grpo": ratio,
        "goals": {"teacher_forwards_per_sequence_le_1": forwards_ok, "step_ratio_le_1_5_wall": wall_ok,
                  "step_ratio_le_1_5_cpu": cpu_ok},
        "checks": {"same_prompts_per_step": same_prompts, "load_average_before": load_before, "load_average_after": load_after,
                   "cpus": os.cpu_count()},
    }
    result["wall_seconds"] = time.perf_counter() - started
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out} ({result['wall_seconds']:.0f}s in all)")


if __name__ == "__main__":
    main()
