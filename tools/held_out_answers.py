r"""What a checkpoint answers on a domain's held-out items: the items, answers and scores behind report.json.

    python -P tools/held_out_answers.py CHECKPOINT DOMAIN [HYDRA OVERRIDES...] [--out answers.jsonl]

Runs the domain's evaluation as the runner does (the cascade's seed for that domain, its ``eval`` options:
``n`` items, greedy unless its temperature says otherwise) and prints one line per item: its score, its
kind (the domain's ``eval.breakdown`` key), the last user message and the model's turns, shortened. The
whole conversations go to ``--out`` as JSON lines. The mean of the scores is the report's score for that
checkpoint. README, "What the default run does": on tool calling after SFT, the lines show every id and
hour copied out of the request and the same names written for every email and ticket.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def one_line(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def answer_rows(samples, episodes, values, breakdown: str | None) -> list[dict]:
    """Per item: id, kind (``meta[breakdown]``), score, the last user message and the assistant turns."""
    rows = []
    for sample, episode, value in zip(samples, episodes, values):
        asked = [m["content"] for m in sample.messages if m["role"] == "user"]
        rows.append({"id": sample.id, "kind": sample.meta.get(breakdown) if breakdown else None, "score": value,
                     "asked": asked[-1] if asked else "", "answers": [m["content"] for m in episode.messages[len(sample.messages):]
                                                                  if m["role"] == "assistant"],
                     "messages": episode.messages})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("domain")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the cascade config (the domain's options)")
    parser.add_argument("--out", default="answers.jsonl")
    parser.add_argument("--width", type=int, default=200, help="characters of the request and of the answer per line")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from cascade.components import Components
    from cascade.config import compose
    from cascade.engine.evaluate import held_out_episodes
    from cascade.engine.policy import load_policy
    from cascade.plugins import PluginManager
    from cascade.runner import eval_seed

    manager = PluginManager().load()
    config = compose(args.overrides, manager.config_searchpaths())
    components = Components(config, manager)
    options = components.eval_options(args.domain)
    samples, episodes, values, _ = held_out_episodes(load_policy(args.checkpoint), components.environment(args.domain),
                                                      components.reward(args.domain), options, eval_seed(config.seed, args.domain))
    rows = answer_rows(samples, episodes, values, options.breakdown)
    for row in rows:
        answer = " | ".join(one_line(a, args.width) for a in row["answers"])
        print(f"{row['score']:.2f}  {row['kind'] or '':14s} {one_line(row['asked'], args.width)}  ->  {answer}")
    print(f"score {sum(values) / len(values):.3f} over {len(values)} held-out {args.domain} items")
    with Path(args.out).open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    sys.exit(main())
