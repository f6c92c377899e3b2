"""Code RL: generated Python problems with hidden tests, run in the sandbox, strict binary reward.

Registered through the ``cascade`` entry-point group like any third-party plugin; provides the
``code`` environment, the ``code_tests`` reward, and the config presets ``domain=code`` and
``stage=code_rl``.
"""

from __future__ import annotations

from typing import Sequence

from cascade import Environment, Episode, Reward, RewardResult, Sample, hookimpl
from cascade.environments.generated import NO_THINKING, spread
from cascade.environments.sandbox import Limits, SandboxPool
from cascade_code.extract import extract_code
from cascade_code.grading import build_job, verdict
from cascade_code.problems import FAMILIES, FORMS, LEVELS, CodeProblem, generate


class CodeEnvironment(Environment):
    """Single-turn: a problem statement, the model's program in a ```python block.

    ``difficulties`` mixes levels 1..3 (0, 1 or 2 transformations after the base operation);
    ``families`` (None: all) and ``forms`` (``function``, ``stdio``) restrict the problems; ``tests`` hidden tests each.
    """

    def __init__(self, difficulties: Sequence[int] = (1,), families: Sequence[str] | None = None,
                 forms: Sequence[str] = FORMS, tests: int = 5):
        self.difficulties = [int(d) for d in difficulties]
        if not self.difficulties or set(self.difficulties) - set(LEVELS):
            raise ValueError(f"difficulties must be a non-empty subset of {LEVELS}, got {list(difficulties)}")
        self.families = list(FAMILIES if families is None else families)
        self.forms, self.tests = list(forms), int(tests)
        generate("train", 0, 0, 1, self.families, self.forms, self.tests)  # bad options fail here, not mid-run

    def problems(self, split: str, n: int, seed: int) -> list[CodeProblem]:
        per_level = spread(n, self.difficulties)
        problems: list[CodeProblem] = []
        for level, count in zip(self.difficulties, per_level):
            problems += generate(split, count, seed, level, self.families, self.forms, self.tests)
        return problems

    def samples(self, split, n, seed):
        return [
            Sample(id=p.id, domain=self.domain, messages=[{"role": "user", "content": p.prompt}], answer=p.tests(),
                   meta={"family": p.family, "form": p.form, "difficulty": p.difficulty})
            for p in self.problems(split, n, seed)
        ]

    def demonstrations(self, n, seed):
        return [
            [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": NO_THINKING + p.answer}]
            for p in self.problems("train", n, seed + 1)
        ]


class CodeTestsReward(Reward):
    """1 if the answer's program passes every hidden test of the sample, else 0.

    Each distinct program of the group runs once in the sandbox (a fresh jail per program, through one
    :class:`SandboxPool` of ``workers``; rollouts that wrote the same program share its run) with small
    limits. ``info``: ``status`` (``passed``, ``wrong_answer``, ``runtime_error``, ``timeout``, ``crashed``,
    ``no_code``, ``sandbox_error``; ``error`` only for a malformed sample, which GRPO counts as a reward
    error), ``tests_passed``, ``tests`` and a short ``detail``. Never raises.
    """

    per_episode = True  # several groups are scored in one call: their programs share the pool

    def __init__(self, wall_seconds: float = 3.0, cpu_seconds: int = 2, memory_mb: int = 256, workers: int = 2,
                 rel_tol: float = 1e-6, abs_tol: float = 1e-9):
        self.limits = Limits(cpu_seconds=cpu_seconds, wall_seconds=wall_seconds, memory_mb=memory_mb, processes=16,
                             file_size_mb=4, open_files=64, output_bytes=1 << 16)
        self.workers = workers
        self.rel_tol, self.abs_tol = rel_tol, abs_tol
        self._pool: SandboxPool | None = None

    @property
    def pool(self) -> SandboxPool:
        if self._pool is None:  # made on first use: building the reward (config checks) starts nothing
            self._pool = SandboxPool(self.workers)
        return self._pool

    def score(self, episodes_G: Sequence[Episode]) -> list[RewardResult]:
        results: list[RewardResult | None] = [None] * len(episodes_G)
        jobs, waiting, run_of = [], [], {}  # rollouts with the same program (of the same sample) share one run
        for index, episode in enumerate(episodes_G):
            code = extract_code(episode.response)
            if code is None:
                results[index] = self._result("no_code", episode, 0, "no program in the answer")
                continue
            key = (code, episode.sample.id)
            if key not in run_of:
                try:
                    jobs.append(build_job(code, episode.sample.answer, self.limits))
                except Exception as error:  # noqa: BLE001 - a malformed sample costs its episode, not the run
                    results[index] = self._result("error", episode, 0, f"bad sample: {type(error).__name__}: {error}")
                    continue
                run_of[key] = len(jobs) - 1
            waiting.append((index, run_of[key]))
        try:
            runs: list = self.pool.map(jobs) if jobs else []
        except Exception as error:  # noqa: BLE001 - the sandbox failing is scored, never raised
            runs = [error] * len(jobs)
        for index, run in ((index, runs[job]) for index, job in waiting):
            episode = episodes_G[index]
            if isinstance(run, Exception):
                results[index] = self._result("sandbox_error", episode, 0, f"{type(run).__name__}: {run}")
                continue
            try:
                status, passed, detail = verdict(episode.sample.answer, run, self.rel_tol, self.abs_tol)
            except Exception as error:  # noqa: BLE001 - same as above: a bad sample scores 0
                status, passed, detail = "error", 0, f"bad sample: {type(error).__name__}: {error}"
            results[index] = self._result(status, episode, passed, detail)
        return results  # type: ignore[return-value]

    @staticmethod
    def _result(status: str, episode: Episode, passed: int, detail: str) -> RewardResult:
        answer = episode.sample.answer
        tests = len(answer["expected"]) if isinstance(answer, dict) and isinstance(answer.get("expected"), list) else 0
        return RewardResult(float(status == "passed"),
                            info={"status": status, "tests_passed": passed, "tests": tests, "detail": detail[:300]})

    def close(self) -> None:
        """Stop the sandbox pool (the runner calls this when the run ends)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None


@hookimpl
def cascade_environments():
    return {"code": CodeEnvironment}


@hookimpl
def cascade_rewards():
    return {"code_tests": CodeTestsReward}


@hookimpl
def cascade_config_searchpaths():
    return ["pkg://cascade_code.conf"]
