"""Math proofs: prove generated identities and inequalities as chains of steps, and check given proofs.

Registered through the ``cascade`` entry-point group like any third-party plugin; provides the
environments ``proofs`` (write the proof) and ``proof_check`` (say whether a shown proof is valid and
where it fails), the rewards ``proof_steps`` (every step checked with sympy by
:mod:`cascade.rewards.proofs`, in a killable worker), ``proof_verdict`` and ``proof_judge`` (a judge
model, for proofs outside the checkable format), and the presets ``domain=proofs``,
``domain=proof_check`` and ``stage=proofs_rl``.
"""

from __future__ import annotations

import functools
import random
import re
from typing import Sequence

from cascade import Environment, Episode, Reward, RewardResult, Sample, hookimpl
from cascade.environments.generated import NO_THINKING, spread, strip_think
from cascade.rewards.proofs import QED, ProofVerifier, check_proof
from cascade_math_proofs.claims import KINDS, LEVELS, ProofTask, corrupt, generate
from cascade_math_proofs.judge import JudgeReward

PROVE = f"Prove it from the left side, one step per line, then {QED}."
CHECK = 'Reply "Verdict: valid" or "Verdict: invalid at step N" (step 1 is the second line).'
_CORRUPTION_TRIES = 5


class ProofEnvironment(Environment):
    """Single-turn: a claim, the model's proof. ``difficulties`` mixes levels 1..3; ``kinds`` picks claim kinds."""

    def __init__(self, difficulties: Sequence[int] = (1,), kinds: Sequence[str] = KINDS):
        self.difficulties = [int(d) for d in difficulties]
        if not self.difficulties or set(self.difficulties) - set(LEVELS):
            raise ValueError(f"difficulties must be a non-empty subset of {LEVELS}, got {list(difficulties)}")
        self.kinds = list(kinds)
        if not self.kinds or set(self.kinds) - set(KINDS):
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {self.kinds}")

    def tasks(self, split: str, n: int, seed: int) -> list[ProofTask]:
        tasks: list[ProofTask] = []
        for level, count in zip(self.difficulties, spread(n, self.difficulties)):
            tasks += generate(split, count, seed, level, self.kinds)
        return tasks

    def samples(self, split, n, seed):
        return [
            Sample(id=t.id, domain=self.domain, messages=[{"role": "user", "content": f"Claim: {t.claim}\n{PROVE}"}],
                   answer=t.claim, meta={"kind": t.kind, "difficulty": t.difficulty})
            for t in self.tasks(split, n, seed)
        ]

    def demonstrations(self, n, seed):
        return [
            [{"role": "user", "content": f"Claim: {t.claim}\n{PROVE}"},
             {"role": "assistant", "content": NO_THINKING + t.proof_text}]
            for t in self.tasks("train", n, seed + 1)
        ]


@functools.lru_cache(maxsize=None)
def verdict_of(claim: str, proof: str) -> str:
    """The verifier's verdict on a generated proof (in-process: generated proofs are small and trusted;
    cached: the same items are drawn for the tokenizer, SFT and RL)."""
    return check_proof(claim, proof).verdict


class ProofCheckEnvironment(ProofEnvironment):
    """Single-turn proof verification: a claim and a proof, every other one with a step changed; the
    answer is ``Verdict: valid`` or ``Verdict: invalid at step N``. The generator's own proofs are
    valid (tested); a changed one gets the verifier's verdict (a change that leaves the proof valid is
    retried a few times, then the proof is shown unchanged)."""

    def shown(self, split: str, n: int, seed: int) -> list[tuple[ProofTask, str, str]]:
        """(task, the proof shown, its verdict) for ``n`` claims of ``split``."""
        shown = []
        for index, task in enumerate(self.tasks(split, n, seed)):
            proof, verdict = task.proof_text, "valid"
            rng = random.Random(f"{seed}/{task.id}")
            for _ in range(_CORRUPTION_TRIES if index % 2 else 0):  # a change may leave the proof valid
                broken = "\n".join([*corrupt(task.proof, rng), QED])
                verdict = verdict_of(task.claim, broken)
                if verdict != "valid":
                    proof = broken
                    break
            shown.append((task, proof, verdict))
        return shown

    @staticmethod
    def prompt(task: ProofTask, proof: str) -> str:
        return f"Claim: {task.claim}\nProof:\n{proof}\n{CHECK}"

    def samples(self, split, n, seed):
        return [
            Sample(id=f"{task.id}-check", domain=self.domain,
                   messages=[{"role": "user", "content": self.prompt(task, proof)}], answer=verdict,
                   meta={"kind": task.kind, "difficulty": task.difficulty, "valid": verdict == "valid"})
            for task, proof, verdict in self.shown(split, n, seed)
        ]

    def demonstrations(self, n, seed):
        return [
            [{"role": "user", "content": self.prompt(task, proof)},
             {"role": "assistant", "content": f"{NO_THINKING}Verdict: {verdict}"}]
            for task, proof, verdict in self.shown("train", n, seed + 1)
        ]


class ProofStepsReward(Reward):
    """The proof in the final answer (``<think>`` sections removed), checked against the sample's claim:
    0 unless the chain proves the claim, else the share of valid steps (``partial: false``: 1 only if
    every step is valid). ``info`` holds the status and each step's verdict.

    Checks run in a killable child process with a hard ``timeout`` and ``memory_mb`` of address space:
    sympy can spin on a crafted expression, and a hang scores 0 with ``info["status"] == "timeout"``.
    """

    def __init__(self, timeout: float = 5.0, processes: int = 1, partial: bool = True, memory_mb: int = 1024):
        self.verifier = ProofVerifier(timeout, processes, partial=partial, memory_mb=memory_mb)

    def score(self, episodes_G: Sequence[Episode]) -> list[RewardResult]:
        reports = self.verifier.check([(e.sample.answer, strip_think(e.messages[-1]["content"])) for e in episodes_G])
        return [RewardResult(report.score, info=report.info()) for report in reports]

    def close(self) -> None:
        """Stop the worker processes (the runner calls this when the run ends)."""
        self.verifier.close()


_VERDICT = re.compile(r"verdict\s*:\s*(?:(valid)|invalid\s+at\s+step\s+(\d+))\b", re.IGNORECASE)


def parse_verdict(text: str) -> str | None:
    """The last ``Verdict: valid`` / ``Verdict: invalid at step N`` of ``text``, normalised, or None."""
    matches = _VERDICT.findall(strip_think(text))
    if not matches:
        return None
    valid, step = matches[-1]
    return "valid" if valid else f"invalid at step {int(step)}"


class ProofVerdictReward(Reward):
    """1 if the final answer's verdict is the verifier's verdict on the shown proof, else 0."""

    def score(self, episodes_G: Sequence[Episode]) -> list[RewardResult]:
        results = []
        for e in episodes_G:
            verdict = parse_verdict(e.messages[-1]["content"])
            if verdict is None:
                results.append(RewardResult(0.0, info={"status": "no_verdict"}))
            else:
                results.append(RewardResult(float(verdict == e.sample.answer), info={"status": "ok"}))
        return results


@hookimpl
def cascade_environments():
    return {"proofs": ProofEnvironment, "proof_check": ProofCheckEnvironment}


@hookimpl
def cascade_rewards():
    return {"proof_steps": ProofStepsReward, "proof_verdict": ProofVerdictReward, "proof_judge": JudgeReward}


@hookimpl
def cascade_config_searchpaths():
    return ["pkg://cascade_math_proofs.conf"]
