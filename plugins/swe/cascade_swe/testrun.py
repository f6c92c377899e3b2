"""Running a repository's tests in the sandbox and grading them like SWE-bench.

:func:`suite_job` packs a repository (after the model's edits, with the hidden test files written last,
so no edit can touch them), the stdlib test runner (``sandbox_runner.py``) and a fresh nonce into one
sandbox :class:`~cascade.environments.sandbox.Job`. :func:`read_report` trusts a report only if the job
exited 0, the runner wrote it (it carries the nonce) and nothing else wrote it first; anything else is a
status (``timeout``, ``crashed``, ``no_report``, ``tampered``...) and no test outcome. :func:`grade`
then says *resolved* only if every FAIL_TO_PASS and every PASS_TO_PASS test passed.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from cascade.environments.sandbox import ExecResult, Job, Limits

RUNNER = "_swe_runner.py"
REPORT = "_swe_report.json"
RUNNER_SOURCE = Path(__file__).with_name("sandbox_runner.py").read_text()


@dataclass(frozen=True)
class SuiteJob:
    job: Job
    nonce: str


def suite_job(files: Mapping[str, str], test_files: Sequence[str], limits: Limits,
              hidden: Mapping[str, str] | None = None) -> SuiteJob:
    """A job running ``test_files`` over ``files`` with ``hidden`` written over them last."""
    nonce = secrets.token_hex(16)
    job = Job(files={**files, **(hidden or {}), RUNNER: RUNNER_SOURCE}, command=(RUNNER, REPORT, *test_files),
              stdin=nonce + "\n", limits=limits, collect=(REPORT,))
    return SuiteJob(job, nonce)


@dataclass
class Report:
    status: str
    """``ran`` (outcomes below are the runner's), else why not: ``timeout``, ``crashed``, ``failed``
    (non-zero exit), ``sandbox_error``, ``no_report``, ``tampered``."""
    tests: dict[str, dict] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    """Test files that could not be imported, with the error."""
    detail: str = ""

    def passed(self, test_id: str) -> bool:
        return self.tests.get(test_id, {}).get("outcome") == "passed"

    def summary(self) -> str:
        """A short line for a model: ``3 passed`` or ``1 passed, 1 failed: test_x (AssertionError: ...)``."""
        if self.status != "ran":
            return f"tests did not run: {self.status}" + (f" ({self.detail})" if self.detail else "")
        failed = [(k.split("::")[-1], v["message"]) for k, v in self.tests.items() if v["outcome"] != "passed"]
        parts = [f"{len(self.tests) - len(failed)} passed"] + ([f"{len(failed)} failed"] if failed else [])
        notes = [f"{name} ({message})" for name, message in failed] + [f"{f}: {e}" for f, e in self.errors.items()]
        return ", ".join(parts) + (": " + "; ".join(notes) if notes else "")


def read_report(result: ExecResult, nonce: str) -> Report:
    if result.status != "passed":
        return Report(result.status, detail=result.detail)
    text = result.files.get(REPORT)
    if text is None:
        return Report("no_report", detail="the test run ended before the runner wrote its report")
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("nonce") != nonce or data.get("tampered") is not False:
            raise ValueError
        tests, errors = data["tests"], data["errors"]
        if not all(isinstance(v, dict) and v.get("outcome") in ("passed", "failed") for v in tests.values()):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        return Report("tampered", detail="the report was not written by the test runner")
    return Report("ran", tests, errors)


@dataclass(frozen=True)
class Grade:
    resolved: bool
    status: str
    """``resolved``, ``unresolved`` (the tests ran, some failed) or the report's status."""
    fail_to_pass: float
    pass_to_pass: float
    """Share of each list that passed (0 when the tests did not run)."""


def grade(report: Report, fail_to_pass: Sequence[str], pass_to_pass: Sequence[str]) -> Grade:
    def share(ids: Sequence[str]) -> float:
        return sum(report.passed(t) for t in ids) / len(ids) if ids else 1.0

    if report.status != "ran":
        return Grade(False, report.status, 0.0, 0.0)
    f2p, p2p = share(fail_to_pass), share(pass_to_pass)
    resolved = f2p == 1.0 and p2p == 1.0
    return Grade(resolved, "resolved" if resolved else "unresolved", f2p, p2p)
