"""Trusted side of the hidden tests: the sandbox job for one program, and the verdict on its report.

:func:`build_job` ships the program, the harness (:mod:`cascade_code.harness`) and the test *inputs*
into a sandbox job; the expected outputs stay here. :func:`verdict` reads the harness's report and
compares each output with the expected one:

* function tests: JSON values with their types (``5`` is not ``"5"``, ``5.0`` or ``True``); where the
  expected value is a float, any number within ``rel_tol``/``abs_tol`` matches;
* stdio tests: stdout line by line, trailing whitespace and trailing blank lines ignored; a line whose
  expected text is a float literal matches any number within the tolerance, every other line exactly.

Statuses, worst first: ``sandbox_error`` (not the program's fault), ``timeout`` (wall clock or CPU),
``crashed`` (killed by a signal), ``error`` (does not load, raises, exits non-zero or ends the process
before the harness reports), ``wrong_answer``, ``passed`` (every test matches).
"""

from __future__ import annotations

import json
import math
import re
import signal
from importlib import resources
from typing import Any

from cascade.environments.sandbox import ExecResult, Job, Limits

HARNESS = resources.files("cascade_code").joinpath("harness.py").read_text()
REPORT = "report.json"
_FLOAT_LITERAL = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+(?=[eE]))(?:[eE][-+]?\d+)?")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_TIMEOUT_SIGNALS = {signal.SIGXCPU}


def build_job(code: str, tests: dict, limits: Limits) -> Job:
    spec = {"form": tests["form"], "entry": tests["entry"], "inputs": tests["inputs"]}
    return Job(files={"solution.py": code, "harness.py": HARNESS, "cases.json": json.dumps(spec)},
               command=("harness.py",), limits=limits, collect=(REPORT,))


def same_value(expected: Any, got: Any, rel_tol: float, abs_tol: float) -> bool:
    """Equal as JSON values of the same type; floats within the tolerance (an int may match a float)."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return type(expected) is type(got) and expected == got
    if isinstance(expected, float):
        return isinstance(got, (int, float)) and math.isclose(got, expected, rel_tol=rel_tol, abs_tol=abs_tol)
    if isinstance(expected, list):
        return (isinstance(got, list) and len(got) == len(expected)
                and all(same_value(e, g, rel_tol, abs_tol) for e, g in zip(expected, got)))
    return type(expected) is type(got) and expected == got


def _lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def same_stdout(expected: str, got: str, rel_tol: float, abs_tol: float) -> bool:
    want, have = _lines(expected), _lines(got)
    return len(want) == len(have) and all(
        w == h or (_FLOAT_LITERAL.fullmatch(w) is not None and _NUMBER.fullmatch(h) is not None
                   and math.isclose(float(h), float(w), rel_tol=rel_tol, abs_tol=abs_tol))
        for w, h in zip(want, have))


def _tail(text: str, chars: int = 300) -> str:
    return text.strip()[-chars:]


def verdict(tests: dict, result: ExecResult, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> tuple[str, int, str]:
    """``(status, tests passed, detail)`` of one program's run against its hidden tests."""
    if result.status in ("sandbox_error", "timeout", "crashed"):
        return result.status, 0, result.detail
    if result.status != "passed":
        return "runtime_error", 0, f"the harness exited with {result.returncode}: {_tail(result.stderr)}"
    if REPORT not in result.files:
        return "runtime_error", 0, "no report: the program ended the process before the harness reported"
    try:
        report = json.loads(result.files[REPORT])
    except ValueError:
        return "runtime_error", 0, "unreadable report"
    if isinstance(report, dict) and isinstance(report.get("load_error"), str):
        return "runtime_error", 0, report["load_error"]
    cases = report.get("cases") if isinstance(report, dict) else None
    expected = tests["expected"]
    if not isinstance(cases, list) or len(cases) != len(expected) or not all(isinstance(c, dict) for c in cases):
        return "runtime_error", 0, "malformed report"

    verdicts = [_case(tests["form"], case, want, rel_tol, abs_tol) for case, want in zip(cases, expected)]
    passed = sum(v == "passed" for v in verdicts)
    for status in ("timeout", "crashed", "runtime_error", "wrong_answer"):
        if status in verdicts:
            index = verdicts.index(status)
            return status, passed, f"test {index + 1}: {_describe_case(cases[index])}"
    return "passed", passed, ""


def _case(form: str, case: dict, want: Any, rel_tol: float, abs_tol: float) -> str:
    if form == "function":
        if "error" in case:
            return "runtime_error"
        return "passed" if "value" in case and same_value(want, case["value"], rel_tol, abs_tol) else "wrong_answer"
    if "signal" in case:
        return "timeout" if case["signal"] in _TIMEOUT_SIGNALS else "crashed"
    if case.get("exit") != 0:
        return "runtime_error"
    stdout = case.get("stdout")
    return "passed" if isinstance(stdout, str) and same_stdout(want, stdout, rel_tol, abs_tol) else "wrong_answer"


def _describe_case(case: dict) -> str:
    if "error" in case:
        return str(case["error"])[:300]
    if "signal" in case:
        return f"killed by signal {case['signal']}"
    if case.get("exit", 0) != 0:
        return f"exited with {case['exit']}"
    return "wrong output"
