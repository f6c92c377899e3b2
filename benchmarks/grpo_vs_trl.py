r"""Side by side on this CPU: cascade's GRPO stage vs TRL's ``GRPOTrainer``, on the same workload.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline python benchmarks/grpo_vs_trl.py [--profile]

The same for both sides:

* model and tokenizer: one tiny NemotronH checkpoint (``cascade.models.tiny_nemotron_h``, random weights, a
  tokenizer trained on the math prompts) built once by ``init_checkpoint`` and loaded by both, fp32;
* prompts: the math plugin's train prompts, rendered with the checkpoint's chat template (TRL gets them in
  conversational format with ``chat_template_kwargs={"enable_thinking": False}``, which yields the same token
  ids as cascade's ``render_prompt``; checked), in the same fixed order: step k sees prompts
  ``[(k-1)*P, k*P)`` on both sides (cascade: ``draw`` overridden; TRL: ``shuffle_dataset=False``);
* sampling: ``group_size`` completions per prompt, temperature 1.0, top_p 1.0, top_k 0, ``max_new_tokens``;
  all ``P * G`` completions in one ``generate`` call (cascade's hf engine ``batch_size`` 64 or more; TRL's
  generation batch is the whole step);
* reward: one cheap binary exact-match (last ``\boxed{}`` or else the last number == the answer), 0 for a
  completion that hit the length limit, so the reward costs nothing next to the model;
* update: one optimizer step per batch, no KL term and no reference model, PPO-clip 0.2 (ratio is 1),
  group-normalised advantages, the loss normalised by the number of completion tokens of the whole batch
  (cascade's only mode; TRL ``loss_type="dapo"``), the same micro-batch (TRL: ``per_device_train_batch_size``
  = micro-batch with gradient accumulation up to ``P * G``), AdamW lr 3e-6, betas (0.9, 0.98), no weight
  decay, grad-norm clip 1.0, constant lr; no gradient checkpointing, no bf16/fp16 (TRL defaults both on);
* cascade's dynamic filter is off (a random model scores almost all groups uniform, and the filter would
  drop them and skip the update); TRL ``router_aux_loss_coef=0`` (cascade has no aux loss; it freezes the
  routers and balances them with biases, which it keeps doing here).

Each side runs in its own child process (fresh interpreter, so its peak RSS is its own: ``VmHWM``), one
thread; ``--repeats`` runs alternate (ours, TRL, TRL, ours, ...) and their timed steps are pooled, so a load
that drifts during the run hits both sides. The first ``--warmup`` steps of a run are not timed; a step's
time is the wall time of cascade's ``train_step`` and, for TRL, the time between consecutive ``on_step_end``
callbacks (rollout, reward, loss, backward, optimizer, TRL's own per-step logging). tokens/s = generated
completion tokens (eos included) / step time. "tokens per CPU-second" divides by the process's CPU time
over the same steps instead: on a shared machine it is the figure other processes disturb least.
``--profile`` adds a last child that runs cProfile over one cascade step after the warm-up.

Results: a table on stdout and ``benchmarks/results/grpo_vs_trl.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# run as `python -P benchmarks/grpo_vs_trl.py` (and so are its children): put this folder on the path for `workload`
sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload  # noqa: E402
from workload import (BETAS, LR, SEED, _cascade_setup, _load_prompts, _one_thread, _peak_rss_mb,  # noqa: E402
                      add_workload_args, exact_match, step_spread, timed_steps)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "grpo_vs_trl.json"


# ---- child: build the checkpoint and the prompt list once ---------------------------------------------------


def child_prepare(args) -> dict:
    return workload.child_prepare(args, args.prompts * (args.warmup + args.steps + (1 if args.profile else 0)))


# ---- child: cascade ------------------------------------------------------------------------------------------


def child_ours(args) -> dict:
    _one_thread()
    import torch

    torch.manual_seed(SEED)
    stage, policy, trainer, engine, pools, context = _cascade_setup(args)
    steps = []
    for step in range(1, args.warmup + args.steps + 1):
        started, cpu = time.perf_counter(), time.process_time()
        metrics = stage.train_step(step, policy, trainer, engine, pools, context)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        tokens = metrics["response_tokens"] * args.prompts * args.group_size
        steps.append({"step": step, "seconds": seconds, "cpu_seconds": cpu, "tokens": round(tokens), "rollout_seconds": metrics["rollout_seconds"],
                      "reward": metrics["reward"], "loss": metrics.get("loss"), "grad_norm": metrics.get("grad_norm")})
        print(f"[ours] step {step}: {seconds:.2f}s (cpu {cpu:.2f}s), {round(tokens)} tokens, rollout {metrics['rollout_seconds']:.2f}s, "
              f"reward {metrics['reward']:.3f}", file=sys.stderr, flush=True)
    trainer.close()
    return {"steps": steps, "prompt_ids_per_step": stage.seen, **_peak_rss_mb()}


def child_profile(args) -> dict:
    """cProfile over one cascade step after the warm-up; the top sinks go to the JSON, the stats to workdir."""
    _one_thread()
    import cProfile
    import pstats

    import torch

    torch.manual_seed(SEED)
    stage, policy, trainer, engine, pools, context = _cascade_setup(args)
    for step in range(1, args.warmup + 1):
        stage.train_step(step, policy, trainer, engine, pools, context)
    step = args.warmup + 1
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    metrics = stage.train_step(step, policy, trainer, engine, pools, context)
    profiler.disable()
    total = time.perf_counter() - started
    out = Path(args.workdir) / "ours_step.prof"
    profiler.dump_stats(out)
    stats = pstats.Stats(profiler)
    rows = []
    for (file, line, name), (cc, nc, tottime, cumtime, _) in stats.stats.items():
        rows.append({"function": f"{Path(file).name}:{line}({name})" if line else name, "calls": nc,
                     "tottime": tottime, "cumtime": cumtime})

    def top(key, n=25):
        return [{**r, "share": r[key] / total} for r in sorted(rows, key=lambda r: -r[key])[:n]]

    return {"step_seconds_profiled": total, "rollout_seconds": metrics["rollout_seconds"], "stats_file": str(out),
            "top_tottime": top("tottime"), "top_cumtime": top("cumtime", 40)}


# ---- child: TRL ----------------------------------------------------------------------------------------------


def child_trl(args) -> dict:
    _one_thread()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    import trl
    from trl import GRPOConfig, GRPOTrainer

    workdir = Path(args.workdir)
    prompts = _load_prompts(workdir)
    total_steps = args.warmup + args.steps
    n = args.prompts * args.group_size
    if n % args.micro_batch:
        raise SystemExit(f"--micro-batch {args.micro_batch} must divide prompts x group size ({n}) for TRL")
    tokenizer = AutoTokenizer.from_pretrained(workdir / "checkpoint")
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(workdir / "checkpoint", dtype=torch.float32)

    # same prompt token ids as cascade's render_prompt?
    trl_ids = tokenizer.apply_chat_template(conversation=[prompts[0]["messages"]], add_generation_prompt=True, tokenize=True,
                                            return_dict=True, enable_thinking=False)["input_ids"][0]
    prompt_ids_match = list(trl_ids) == prompts[0]["ids"]

    rows = prompts[: args.prompts * total_steps]
    dataset = Dataset.from_list([{"prompt": p["messages"], "answer": p["answer"], "pid": p["id"]} for p in rows])
    eos = tokenizer.eos_token_id
    per_call = {"tokens": [], "pids": []}

    def exact_match_reward(prompts, completions, completion_ids, answer, pid, **kwargs):
        per_call["tokens"].append(sum(len(ids) for ids in completion_ids))
        per_call["pids"].append(list(dict.fromkeys(pid)))
        scores = []
        for completion, ids, gold in zip(completions, completion_ids, answer):
            text = completion[-1]["content"] if isinstance(completion, list) else completion
            truncated = eos not in ids  # what cascade scores 0 (overlong_reward)
            scores.append(0.0 if truncated else exact_match(text, gold))
        return scores

    class Timer(TrainerCallback):
        def __init__(self):
            self.marks: list[float] = []

        def on_train_begin(self, *a, **k):
            self.marks.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, *a, **k):
            self.marks.append((time.perf_counter(), time.process_time()))

    class TimedGRPOTrainer(GRPOTrainer):
        rollout_seconds: list[float] = []

        def _generate_and_score_completions(self, inputs):
            started = time.perf_counter()
            try:
                return super()._generate_and_score_completions(inputs)
            finally:
                self.rollout_seconds.append(time.perf_counter() - started)

    config = GRPOConfig(
        output_dir=str(workdir / "trl_out"),
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        use_vllm=False, report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True,
        max_steps=total_steps, seed=SEED, shuffle_dataset=False, dataloader_num_workers=0,
        per_device_train_batch_size=args.micro_batch, gradient_accumulation_steps=n // args.micro_batch,
        num_generations=args.group_size, max_completion_length=args.max_new_tokens,
        temperature=1.0, top_p=1.0, top_k=0,
        num_iterations=1, beta=0.0, epsilon=0.2, loss_type="dapo", scale_rewards="group",
        mask_truncated_completions=False, router_aux_loss_coef=0.0,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=BETAS[0], adam_beta2=BETAS[1], max_grad_norm=1.0, optim="adamw_torch",
        chat_template_kwargs={"enable_thinking": False}, log_completions=False,
    )
    timer = Timer()
    trainer = TimedGRPOTrainer(model=model, reward_funcs=exact_match_reward, args=config, train_dataset=dataset,
                               processing_class=tokenizer, callbacks=[timer])
    trainer.train()
    marks = timer.marks
    steps = []
    for i in range(1, len(marks)):
        tokens = per_call["tokens"][i - 1] if i - 1 < len(per_call["tokens"]) else None
        rollout = trainer.rollout_seconds[i - 1] if i - 1 < len(trainer.rollout_seconds) else None
        seconds, cpu = marks[i][0] - marks[i - 1][0], marks[i][1] - marks[i - 1][1]
        steps.append({"step": i, "seconds": seconds, "cpu_seconds": cpu, "tokens": tokens, "rollout_seconds": rollout})
        print(f"[trl] step {i}: {seconds:.2f}s (cpu {cpu:.2f}s), {tokens} tokens, rollout {rollout:.2f}s",
              file=sys.stderr, flush=True)
    train_logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    for entry, step in zip(train_logs, steps):
        step["reward"], step["loss"] = entry.get("reward"), entry.get("loss")
    return {"steps": steps, "prompt_ids_per_step": per_call["pids"], "prompt_ids_match_cascade": prompt_ids_match,
            "generate_calls": len(per_call["tokens"]), "trl_version": trl.__version__, **_peak_rss_mb()}


# ---- parent: run the children, print the table ---------------------------------------------------------------

CHILDREN = {"prepare": child_prepare, "ours": child_ours, "trl": child_trl, "profile": child_profile}


def run_child(kind: str, args) -> dict:
    return workload.run_child(kind, args, __file__, extra_args=["--profile"] if args.profile else [])


def summarise(runs: list[dict], warmup: int) -> dict:
    """Pool the timed steps of every repeat of one side: means per step, and the spread of step times."""
    timed = timed_steps(runs, warmup)
    seconds = sum(s["seconds"] for s in timed)
    cpu = sum(s["cpu_seconds"] for s in timed)
    tokens = sum(s["tokens"] for s in timed)
    rollout = sum(s["rollout_seconds"] or 0.0 for s in timed)
    n = len(timed)
    return {"timed_steps": n, "repeats": len(runs), "seconds_per_step": seconds / n, "tokens_per_step": tokens / n,
            "tokens_per_s": tokens / seconds, "cpu_seconds_per_step": cpu / n, "tokens_per_cpu_s": tokens / cpu,
            "rollout_seconds_per_step": rollout / n, "update_seconds_per_step": (seconds - rollout) / n,
            **step_spread(timed),
            "peak_rss_mb": max(run["peak_rss_mb"] for run in runs), "ru_maxrss_mb": max(run["ru_maxrss_mb"] for run in runs)}


TABLE = [("tokens/s (rollout + update)", "tokens_per_s", "{:.1f}"),
         ("seconds/step", "seconds_per_step", "{:.2f}"),
         ("  rollout + reward s/step", "rollout_seconds_per_step", "{:.2f}"),
         ("  update s/step", "update_seconds_per_step", "{:.2f}"),
         ("  fastest / slowest step s", "step_seconds_min", "{:.2f}"),
         ("", "step_seconds_max", "{:.2f}"),
         ("tokens per CPU-second", "tokens_per_cpu_s", "{:.1f}"),
         ("generated tokens/step", "tokens_per_step", "{:.0f}"),
         ("peak RSS MB", "peak_rss_mb", "{:.0f}")]


def print_table(ours: dict, theirs: dict) -> None:
    print(f"{'':30s} {'ours':>10s} {'TRL':>10s} {'ours/TRL':>10s}")
    for label, key, fmt in TABLE:
        a, b = ours[key], theirs[key]
        print(f"{label:30s} {fmt.format(a):>10s} {fmt.format(b):>10s} {a / b:>10.2f}")


def _load_average() -> list[float]:
    return list(os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_args(parser, "rows per forward/backward (both sides)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="run the sides alternately this many times each (ours, TRL, TRL, ours, ...) and pool the steps")
    parser.add_argument("--profile", action="store_true", help="also cProfile one cascade step")
    parser.add_argument("--only", choices=["ours", "trl"], help="run one side only (no table)")
    parser.add_argument("--workdir", default="/tmp/grpo_vs_trl", help="checkpoint, prompts, child outputs")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = CHILDREN[args.child](args)
        Path(args.child_out).write_text(json.dumps(result))
        return

    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load_before = _load_average()
    prepared = run_child("prepare", args)
    print(f"checkpoint: {prepared['parameters']:,} parameters, vocab {prepared['vocab']}, "
          f"{prepared['mean_prompt_tokens']:.1f} prompt tokens on average", flush=True)
    kinds = [args.only] if args.only else ["ours", "trl"]
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for repeat in range(args.repeats):
        for kind in (kinds if repeat % 2 == 0 else kinds[::-1]):  # alternate the order: drifting load hits both
            runs[kind].append(run_child(kind, args))
    if args.only:
        print(json.dumps(summarise(runs[args.only], args.warmup), indent=2))
        return
    ours, theirs = summarise(runs["ours"], args.warmup), summarise(runs["trl"], args.warmup)
    trl_runs = runs["trl"]
    same_prompts = all(o["prompt_ids_per_step"][: len(t["prompt_ids_per_step"])] == t["prompt_ids_per_step"]
                       for o, t in zip(runs["ours"], trl_runs))
    same_ids = all(t["prompt_ids_match_cascade"] for t in trl_runs)
    print()
    print(f"GRPO on CPU (1 thread): {args.prompts} prompts x {args.group_size} completions, <= {args.max_new_tokens} new tokens, "
          f"micro-batch {args.micro_batch}, {args.steps} timed steps after {args.warmup} warm-up, x{args.repeats} per side; "
          f"TRL {trl_runs[0]['trl_version']}")
    print_table(ours, theirs)
    print(f"same prompts per step: {same_prompts}; same prompt token ids: {same_ids}; "
          f"load average before/after: {load_before[0]:.2f}/{_load_average()[0]:.2f} on {os.cpu_count()} CPUs")
    result = {
        "workload": {"steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "prompts_per_step": args.prompts,
                     "group_size": args.group_size, "max_new_tokens": args.max_new_tokens, "micro_batch": args.micro_batch,
                     "temperature": 1.0, "threads": 1, "reward": "exact match (last boxed / last number), 0 if truncated",
                     "trl_loss_type": "dapo", "trl_prompt_format": "conversational + chat template", **prepared},
        "ours": {**ours, "runs": [r["steps"] for r in runs["ours"]]},
        "trl": {**theirs, "version": trl_runs[0]["trl_version"], "runs": [r["steps"] for r in trl_runs]},
        "ratio_ours_over_trl": {key: ours[key] / theirs[key] for _, key, _ in TABLE},
        "checks": {"same_prompts_per_step": same_prompts, "same_prompt_token_ids": same_ids,
                   "load_average_before": load_before, "load_average_after": _load_average(), "cpus": os.cpu_count()},
    }
    if args.profile:
        profile = run_child("profile", args)
        result["ours_profile"] = profile
        print(f"\ncProfile of one cascade step ({profile['step_seconds_profiled']:.2f}s under the profiler), by own time:")
        for r in profile["top_tottime"][:15]:
            print(f"  {r['share']:6.1%}  {r['tottime']:7.3f}s  {r['calls']:>7d}  {r['function']}")
    result["wall_seconds"] = time.perf_counter() - started
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out} ({result['wall_seconds']:.0f}s in all)")


if __name__ == "__main__":
    main()
