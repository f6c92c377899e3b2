r"""Where a checkpoint's answers go wrong: its loss on each token of a domain's reference answers.

    python -P tools/answer_loss.py CHECKPOINT DOMAIN [HYDRA OVERRIDES...] [--n 200] [--seed 12345]

Teacher-forces the domain's demonstrations (the SFT conversations, drawn with a seed SFT never uses, so unseen
prompts) through the checkpoint and prints the mean loss in nats at each position of the assistant's answer,
with the token found there in the first one, and writes the table as JSON (``--out``). A position whose loss
stays at ln k while the others are near 0 is a k-way guess the model makes there and nowhere else: on the
retrieval domain (two keyed numbers) the first digit sits at ln 2 = 0.69 and the rest near 0, which says the
model copies a number out of the prompt exactly but not the one the key asks for (README, "What retrieval
0.5 was"). Answers are aligned from their first token, so the table is meant for short fixed-shape answers.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch


def answer_token_losses(policy, conversations: list[list[dict]]) -> list[list[tuple[str, float]]]:
    """Per conversation, (token, loss in nats) for every token of its last (assistant) message."""
    from cascade.engine.sft import tokenize_conversation
    from cascade.engine.trainer import token_logprobs

    rows = []
    for conversation in conversations:
        token_ids, loss_mask = tokenize_conversation(policy.tokenizer, conversation)
        with torch.no_grad():
            logp = token_logprobs(policy.model, torch.tensor([token_ids]))[0][0]  # [t - 1]: log p(token t)
        trained = [t for t in range(1, len(token_ids)) if loss_mask[t]]
        rows.append([(policy.tokenizer.decode([token_ids[t]]), -logp[t - 1].item()) for t in trained])
    return rows


def by_position(rows: list[list[tuple[str, float]]]) -> list[dict]:
    table = []
    for position in range(max(len(r) for r in rows)):
        at = [r[position] for r in rows if len(r) > position]
        table.append({"position": position, "token": at[0][0], "mean_nats": sum(x for _, x in at) / len(at), "answers": len(at)})
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("domain")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the cascade config (the domain's options)")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--out", default="answer_loss.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from cascade.components import Components
    from cascade.config import compose
    from cascade.engine.policy import load_policy
    from cascade.plugins import PluginManager

    manager = PluginManager().load()
    config = compose(args.overrides, manager.config_searchpaths())
    environment = Components(config, manager).environment(args.domain)
    policy = load_policy(args.checkpoint, "float32")
    table = by_position(answer_token_losses(policy, environment.demonstrations(args.n, args.seed)))
    print(f"{'position':>8s}  {'token':12s} {'nats':>6s}")
    for row in table:
        print(f"{row['position']:>8d}  {row['token']!r:12s} {row['mean_nats']:6.3f}")
    print(f"(ln 2 = {math.log(2):.3f}, ln 4 = {math.log(4):.3f}; {args.n} {args.domain} answers)")
    Path(args.out).write_text(json.dumps({"checkpoint": args.checkpoint, "domain": args.domain, "overrides": args.overrides,
                                          "n": args.n, "seed": args.seed, "positions": table}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
