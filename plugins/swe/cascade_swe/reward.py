"""The SWE reward: the repository an episode leaves, graded by its tests like SWE-bench.

For each episode the patched repository is rebuilt from the model's text (agentless: the answer's
edits; agentic: every edit call of the episode, replayed), the hidden FAIL_TO_PASS test file is written
over it, and the tests run in the sandbox (one :class:`~cascade.environments.sandbox.SandboxPool` per
reward, shared by the whole group). Reward 1 if the repository is *resolved* (every FAIL_TO_PASS and
every PASS_TO_PASS test passed), else 0. An edit that does not apply scores 0 with its kind as
``info["status"]`` (``no_match``, ``ambiguous``, ``test_file``, ``bad_diff``...); so do runs that time
out, crash or tamper with the report. Nothing raises into training.

``similarity: true`` swaps the tests for an execution-free reward in the manner of SWE-RL: difflib
sequence similarity of the model's change to the reference fix's change, both taken from the buggy
repository. It is the agreement of the lines they remove (over whole lines, path included) times the
similarity of the text they add (over characters): the reference scores 1, the right line changed to
nearly the right text just under 1, an unrelated or empty change 0. (The ratio of whole patched files
would score any patch ~1, as the files differ in one line; the ratio of raw diff texts gives an
unrelated one-line change ~0.7, as every change here reads ``-    return ...``.)
"""

from __future__ import annotations

import difflib
from typing import Mapping, Sequence

from cascade import Episode, Reward, RewardResult, Sample
from cascade.environments.sandbox import Limits, SandboxPool
from cascade.environments.tool_calls import assistant_turns
from cascade_swe import agentic
from cascade_swe.edits import EditError, apply_answer, is_test_file
from cascade_swe.testrun import grade, read_report, suite_job


def patched_files(sample: Sample, messages: Sequence[dict]) -> dict[str, str]:
    """The repository after the episode's edits; EditError when an agentless answer does not apply."""
    turns = assistant_turns(sample, messages)
    if sample.meta.get("mode") == "agentic":
        return agentic.replay(sample.answer["files"], turns).files
    return apply_answer(sample.answer["files"], turns[-1] if turns else "")


def _changed_lines(before: Mapping[str, str], after: Mapping[str, str]) -> tuple[list[str], str]:
    """(the removed lines, each as ``path:line``; the added text) of the change ``before`` -> ``after``."""
    removed, added = [], []
    for path in sorted(set(before) | set(after)):
        for line in difflib.unified_diff(before.get(path, "").splitlines(), after.get(path, "").splitlines(), lineterm="", n=0):
            if line.startswith("-") and not line.startswith("---"):
                removed.append(f"{path}:{line[1:].strip()}")
            elif line.startswith("+") and not line.startswith("+++"):
                added.append(line[1:].strip())
    return removed, "\n".join(added)


def change_similarity(before: Mapping[str, str], after: Mapping[str, str], reference: Mapping[str, str]) -> float:
    """How close the change ``before`` -> ``after`` is to ``before`` -> ``reference``: the agreement of the
    lines they remove (difflib over whole lines) times the similarity of the text they add (over characters)."""
    (ours_removed, ours_added), (ref_removed, ref_added) = _changed_lines(before, after), _changed_lines(before, reference)
    if (ours_removed, ours_added) == ([], ""):
        return 0.0
    where = difflib.SequenceMatcher(None, ours_removed, ref_removed, autojunk=False).ratio()
    what = difflib.SequenceMatcher(None, ours_added, ref_added, autojunk=False).ratio()
    return where * what


class SweTestsReward(Reward):
    """1 if the episode's repository passes every FAIL_TO_PASS and PASS_TO_PASS test (see the module docstring)."""

    per_episode = True  # several groups are scored in one call: their test runs share the pool

    def __init__(self, similarity: bool = False, workers: int = 2, cpu_seconds: int = 2, wall_seconds: float = 5.0):
        self.similarity = similarity
        self.workers = workers
        self.limits = Limits(cpu_seconds=cpu_seconds, wall_seconds=wall_seconds)
        self._pool: SandboxPool | None = None

    def _patch(self, episode: Episode) -> tuple[dict[str, str] | None, RewardResult | None]:
        try:
            return patched_files(episode.sample, episode.messages), None
        except EditError as err:
            return None, RewardResult(0.0, info={"status": err.status, "message": str(err)})
        except Exception as err:  # noqa: BLE001 - the model's text must never crash training
            return None, RewardResult(0.0, info={"status": "error", "message": f"{type(err).__name__}: {err}"})

    def score(self, episodes_G: Sequence[Episode]) -> list[RewardResult]:
        patched = [self._patch(e) for e in episodes_G]
        if self.similarity:
            return [failure or self._similarity(e.sample, files) for e, (files, failure) in zip(episodes_G, patched)]
        runs, same = {}, {}  # rollouts of a task that wrote the same patch share one run (the tests are deterministic)
        for i, (episode, (files, _)) in enumerate(zip(episodes_G, patched)):
            if files is not None:
                key = (episode.sample.id, tuple(sorted(files.items())))
                if key in same:
                    continue
                same[key] = i
                hidden = episode.sample.answer["hidden"]
                runs[i] = suite_job(files, sorted({*(p for p in files if is_test_file(p)), *hidden}), self.limits, hidden)
        try:
            self._pool = self._pool or SandboxPool(self.workers)
            results = dict(zip(runs, self._pool.map([r.job for r in runs.values()]))) if runs else {}
        except Exception as err:  # noqa: BLE001 - a broken sandbox scores 0, it does not stop training
            failed = RewardResult(0.0, info={"status": "sandbox_error", "message": f"{type(err).__name__}: {err}"})
            return [failure or failed for _, failure in patched]
        out = []
        for i, (episode, (files, failure)) in enumerate(zip(episodes_G, patched)):
            if failure:
                out.append(failure)
                continue
            first = same[(episode.sample.id, tuple(sorted(files.items())))]
            report = read_report(results[first], runs[first].nonce)
            verdict = grade(report, episode.sample.answer["fail_to_pass"], episode.sample.answer["pass_to_pass"])
            out.append(RewardResult(float(verdict.resolved), info={
                "status": verdict.status, "fail_to_pass": verdict.fail_to_pass, "pass_to_pass": verdict.pass_to_pass,
                "message": report.summary()}))
        return out

    @staticmethod
    def _similarity(sample: Sample, files: dict[str, str]) -> RewardResult:
        before = sample.answer["files"]
        value = change_similarity(before, files, {**before, **sample.answer["fixed"]})
        return RewardResult(value, info={"status": "similarity", "similarity": value})

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
