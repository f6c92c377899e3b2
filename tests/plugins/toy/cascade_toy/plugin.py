"""Hook implementations of the toy plugin."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from cascade import Checkpoint, Environment, Reward, RewardResult, Sample, Stage, hookimpl

TABLE = "table.json"


class ModularArithmetic(Environment):
    """Questions ``a OP b`` mod ``base``; the test split spans all pairs, training sees three quarters."""

    def __init__(self, op: str = "add", base: int = 10):
        self.op, self.base = op, base

    def samples(self, split, n, seed):
        pairs = [(a, b) for a in range(self.base) for b in range(self.base) if split == "test" or (a * 7 + b) % 4]
        rng = random.Random(seed)
        chosen = [rng.choice(pairs) for _ in range(n)]
        return [Sample(id=f"{self.op}-{a}-{b}", domain=self.domain, messages=[{"role": "user", "content": f"{a} {self.op} {b}"}],
                       answer=(a + b if self.op == "add" else a * b) % self.base, meta={"key": f"{self.op}:{a}:{b}"}) for a, b in chosen]


class ExactAnswer(Reward):
    def score(self, episodes_G):
        return [RewardResult(float(e.messages[-1]["content"] == str(e.sample.answer))) for e in episodes_G]


def load_table(path) -> dict:
    return json.loads((Path(path) / TABLE).read_text())


def save_table(table: dict, path) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)
    (Path(path) / TABLE).write_text(json.dumps(table, sort_keys=True))


def answer(table: dict, sample: Sample) -> str:
    return str(table.get(sample.meta["key"], 0))


class Memorize(Stage):
    """Each step: answer a few training questions, and remember the right answer where reward was 0."""

    @dataclass
    class Config:
        steps: int = 10
        batch: int = 4
        checkpoint_every: int = 3

    def run(self, start, context):
        from cascade import Episode

        context.stage.total_steps = self.config.steps
        table, first = load_table(start.path), 1
        resumed = context.last_step()
        if resumed is not None:
            step, path = resumed
            table, first = load_table(path), step + 1
        for step in range(first, self.config.steps + 1):
            rewards = []
            for domain in self.domains:
                env, reward = context.environment(domain), context.reward(domain)
                pool = env.samples("train", 32, seed=context.seed)
                for sample in random.sample(pool, self.config.batch):
                    episode = Episode(sample, sample.messages + [{"role": "assistant", "content": answer(table, sample)}], [], [], [])
                    r = reward.score([episode])[0].value
                    rewards.append(r)
                    if r == 0:
                        table[sample.meta["key"]] = sample.answer
            context.log(step, {"reward": sum(rewards) / len(rewards), "table_size": len(table)})
            if step % self.config.checkpoint_every == 0:
                context.save_step(step, lambda d: save_table(table, d))
        out = context.stage_dir / "checkpoint"
        save_table(table, out)
        return Checkpoint(self.name, str(out))


@hookimpl
def cascade_stage_types():
    return {"memorize": Memorize}


@hookimpl
def cascade_environments():
    return {"modular_arithmetic": ModularArithmetic}


@hookimpl
def cascade_rewards():
    return {"exact_answer": ExactAnswer}


@hookimpl
def cascade_config_searchpaths():
    return ["pkg://cascade_toy.conf"]


@hookimpl
def cascade_init_checkpoint(model_config, path, seed):
    if model_config.arch != "toy_table":
        return None
    save_table({}, path)
    return Checkpoint("init", path, lineage=f"toy_table-seed{seed}")


@hookimpl
def cascade_evaluate(checkpoint, environment, reward, options, seed):
    if not (Path(checkpoint.path) / TABLE).exists():
        return None
    table = load_table(checkpoint.path)
    from cascade import Episode

    samples = environment.samples("test", options.n, seed)
    episodes = [Episode(s, s.messages + [{"role": "assistant", "content": answer(table, s)}], [], [], []) for s in samples]
    scores = [r.value for r in reward.score(episodes)]
    return {"score": sum(scores) / len(scores), "n": len(scores)}
