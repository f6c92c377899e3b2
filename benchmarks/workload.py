r"""The workload and child-process plumbing shared by ``grpo_vs_trl.py`` and ``mopd_overhead.py``.

One tiny NemotronH checkpoint (random weights, fp32) and the math plugin's train prompts, built once by a
``prepare`` child; cascade's GRPO stage set up on them with a fixed prompt order and a cheap exact-match reward;
and ``run_child``, which re-runs a benchmark script as a fresh one-thread child process for one side.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

SEED = 0
LR = 3e-6
BETAS = (0.9, 0.98)
DOMAIN = "math"

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_NUMBER = re.compile(r"-?\d+(?:\s*/\s*\d+)?(?:\.\d+)?")


def exact_match(text: str, answer: str) -> float:
    """1.0 if the last ``\\boxed{...}`` (or, without one, the last number) of ``text`` equals ``answer``."""
    boxed = _BOXED.findall(text)
    if boxed:
        guess = boxed[-1]
    else:
        numbers = _NUMBER.findall(text)
        guess = numbers[-1] if numbers else None
    return float(guess is not None and guess.replace(" ", "") == str(answer).replace(" ", ""))


def _one_thread() -> None:
    """Pin this process (OpenMP and torch) to one thread."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(1)


def _peak_rss_mb() -> dict[str, float]:
    """Peak resident memory of this process: VmHWM (this exec's own) and ru_maxrss (kernel's max)."""
    import resource

    hwm = None
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return {"peak_rss_mb": hwm, "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _load_prompts(workdir: Path) -> list[dict]:
    """The prompt list ``child_prepare`` wrote to ``workdir``."""
    return json.loads((Path(workdir) / "prompts.json").read_text())


def add_workload_args(parser, micro_batch_help: str | None = None) -> None:
    """The workload's size flags, the same in every benchmark script."""
    parser.add_argument("--steps", type=int, default=5, help="timed steps per side and repeat (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--micro-batch", type=int, default=32, help=micro_batch_help)


# ---- child: build the checkpoint and the prompt list once ---------------------------------------------------


def child_prepare(args, total: int, teacher: bool = False, model_options: dict | None = None) -> dict:
    """Build the tiny checkpoint in ``workdir/checkpoint`` and write ``total`` rendered prompts to ``prompts.json``.

    With ``teacher``, start from empty folders and copy the checkpoint to ``workdir/teacher`` (same weights).
    ``model_options`` are ``model.options`` of the config (e.g. ``hybrid_override_pattern``).
    """
    _one_thread()
    from omegaconf import OmegaConf

    from cascade.engine.policy import init_checkpoint, load_policy
    from cascade.engine.rollout import render_prompt
    from cascade_math.plugin import MathEnvironment

    env = MathEnvironment()
    env.domain = DOMAIN
    workdir = Path(args.workdir)
    path, teacher_path = workdir / "checkpoint", workdir / "teacher"
    if teacher:
        shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(teacher_path, ignore_errors=True)
    model_config = OmegaConf.create({"path": None, "arch": "tiny_nemotron_h", "options": model_options or {},
                                     "dtype": "float32"})
    init_checkpoint(model_config, str(path), seed=SEED, environments={DOMAIN: env})
    if teacher:
        shutil.copytree(path, teacher_path)  # the teacher: a second copy of the same weights
    policy = load_policy(path)
    samples = env.samples("train", total, SEED)
    if len(samples) < total:
        raise SystemExit(f"the math environment gave {len(samples)} prompts, {total} needed")
    prompts = []
    for s in samples:
        text = render_prompt(policy.tokenizer, s.messages, thinking=False)
        prompts.append({"id": s.id, "messages": s.messages, "answer": str(s.answer),
                        "ids": policy.tokenizer(text, add_special_tokens=False)["input_ids"]})
    (workdir / "prompts.json").write_text(json.dumps(prompts))
    return {"checkpoint": str(path), **({"teacher_checkpoint": str(teacher_path)} if teacher else {}),
            "parameters": sum(p.numel() for p in policy.model.parameters()),
            "vocab": len(policy.tokenizer), "prompts": len(prompts),
            "mean_prompt_tokens": sum(len(p["ids"]) for p in prompts) / len(prompts)}


# ---- child: cascade's GRPO stage on the workload -------------------------------------------------------------


def _cascade_setup(args):
    """Cascade's GRPO stage, policy, trainer, hf rollout engine, prompt pools and context for ``train_step``."""
    from types import SimpleNamespace

    from cascade import Reward, RewardResult, Sample
    from cascade.engine.grpo import GRPOStage
    from cascade.engine.moe import freeze_routers
    from cascade.engine.policy import load_policy
    from cascade.engine.rollout import HFRolloutEngine
    from cascade.engine.trainer import OptimConfig, Trainer
    from cascade_math.plugin import MathEnvironment

    class ExactMatch(Reward):
        def score(self, episodes_G):
            return [RewardResult(exact_match(e.messages[-1]["content"], e.sample.answer)) for e in episodes_G]

    class FixedOrderGRPO(GRPOStage):
        """Step k takes prompts [(k-1)P, kP) of the pool, in order: every side sees the same prompts at step k."""

        seen: list[list[str]] = []

        def draw(self, pools, n, seed, step, round_):
            first = (step - 1) * self.config.prompts_per_step
            drawn = pools[DOMAIN][first:first + n]
            self.seen.append([s.id for s in drawn])
            return {DOMAIN: drawn}

    env = MathEnvironment()
    env.domain = DOMAIN
    n = args.prompts * args.group_size
    config = GRPOStage.Config(
        steps=args.warmup + args.steps + 1, prompts_per_step=args.prompts, group_size=args.group_size,
        temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens,
        optim=OptimConfig(lr=LR, weight_decay=0.0, betas=list(BETAS), grad_clip=1.0),
        updates_per_batch=1, clip_eps=0.2, kl_coef=0.0, dynamic_filter=False, micro_batch=args.micro_batch,
    )
    stage = FixedOrderGRPO("grpo", config, [DOMAIN])
    stage.reference = None  # what run() sets with kl_coef == 0
    policy = load_policy(Path(args.workdir) / "checkpoint", "float32")
    if config.freeze_router:
        freeze_routers(policy.model)
    trainer = Trainer(policy, config.optim, config.steps)
    engine = HFRolloutEngine(policy, batch_size=max(64, n))  # conf/rollout/hf.yaml: 64
    pools = {DOMAIN: [Sample(p["id"], DOMAIN, p["messages"], p["answer"]) for p in _load_prompts(Path(args.workdir))]}
    reward = ExactMatch()
    context = SimpleNamespace(environment=lambda d: env, reward=lambda d: reward, seed=SEED)
    return stage, policy, trainer, engine, pools, context


# ---- parent ---------------------------------------------------------------------------------------------------


def run_child(kind: str, args, script: str | Path, extra_env: dict[str, str] | None = None,
              extra_args: list[str] | tuple[str, ...] = ()) -> dict:
    """Re-run ``script`` as ``python -P script --child KIND ...`` (one thread, offline) and return its JSON result."""
    out = Path(args.workdir) / f"{kind}.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
           "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore",
           **(extra_env or {})}
    cmd = [sys.executable, "-P", str(Path(script).resolve()), "--child", kind, "--child-out", str(out),
           "--workdir", args.workdir, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--group-size", str(args.group_size), "--prompts", str(args.prompts),
           "--max-new-tokens", str(args.max_new_tokens), "--micro-batch", str(args.micro_batch), *extra_args]
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"the {kind} child failed (exit {proc.returncode})")
    result = json.loads(out.read_text())
    result["process_seconds"] = time.perf_counter() - started
    return result


def timed_steps(runs: list[dict], warmup: int) -> list[dict]:
    """The steps after the warm-up of every run of one side, pooled."""
    return [s for run in runs for s in run["steps"] if s["step"] > warmup]


def step_spread(timed: list[dict]) -> dict[str, float]:
    """The fastest and the slowest step's wall time."""
    return {"step_seconds_min": min(s["seconds"] for s in timed), "step_seconds_max": max(s["seconds"] for s in timed)}
