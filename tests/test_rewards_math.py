"""Math answer checking (extract_boxed, verify_math, MathVerifier) and the IsolatedWorker under it."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cascade.rewards.isolated import IsolatedWorker, WorkerStartError
from cascade.rewards.math import MathVerifier, extract_boxed, strip_thinking, verify_math

# --------------------------------------------------------------------------------------
# extract_boxed
# --------------------------------------------------------------------------------------

EXTRACT_CASES = [
    # (text, expected content or None)
    (r"The answer is \boxed{7}.", "7"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"\boxed{\frac{\sqrt{3}}{2}} done", r"\frac{\sqrt{3}}{2}"),
    (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces do not close the box
    (r"\boxed {7}", "7"),
    (r"first \boxed{3}, then \boxed{7}", "7"),  # the last box is the final answer
    (r"\boxed{7} apples, and that is final.", "7"),
    (r"<think>try \boxed{3}</think>so \boxed{7}", "7"),
    (r"<think>only \boxed{3}</think> no answer", None),  # box inside thinking is ignored
    (r"reasoning in the prompt's <think>... \boxed{3}</think>\boxed{5}", "5"),
    (r"<think>cut off while thinking \boxed{3}", None),
    (r"The answer is 7.", None),
    (r"\boxed{7", None),  # unclosed: truncated response
    (r"\boxed{3} and then \boxed{7", None),  # the final box is cut off
    (r"\boxedx{3}", None),
    (r"\boxed{}", ""),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACT_CASES)
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


def test_strip_thinking_keeps_text_after_last_close() -> None:
    assert strip_thinking("<think>a</think>b</think>c") == "c"
    assert strip_thinking("plain") == "plain"


# --------------------------------------------------------------------------------------
# verify_math
# --------------------------------------------------------------------------------------

CORRECT = [
    (r"The answer is \boxed{7}.", "7"),
    (r"\boxed{0.5}", "1/2"),
    (r"\boxed{\frac{1}{2}}", "0.5"),
    (r"\boxed{1/2}", r"\frac{1}{2}"),
    (r"\boxed{\frac{3}{6}}", "1/2"),
    (r"\boxed{-1.5}", "-3/2"),
    (r"\boxed{\dfrac{-3}{2}}", "-3/2"),
    (r"\boxed{-\frac{3}{2}}", "-3/2"),
    (r"\boxed{x = -\frac{3}{2}}", "-3/2"),
    (r"\boxed{07}", "7"),
    (r"\boxed{7.0}", "7"),
    (r"\boxed{1,000}", "1000"),
    (r"\boxed{\frac{\sqrt{4}}{4}}", "1/2"),  # nested braces
    (r"first \boxed{3}, on second thought \boxed{7}", "7"),
    (r"\boxed{7} apples are left. Done!", "7"),
    (r"<think>maybe \boxed{3}</think> so \boxed{7}", "7"),
    (r"\boxed{7}", "x = 7"),
]

WRONG = [
    (r"\boxed{3/2}", "-3/2"),
    (r"\boxed{8}", "7"),
    (r"The answer is 7.", "7"),  # no box
    (r"<think>\boxed{7}</think> not sure", "7"),  # box only inside thinking
    (r"<think>so it is \boxed{7}", "7"),  # never left thinking
    (r"\boxed{7} wait, no: \boxed{8}", "7"),  # the last box counts
    (r"\boxed{}", "7"),
    (r"\boxed{7", "7"),
    (r"\boxed{6.9999}", "7"),
    (r"\boxed{7+}", "7"),
    (r"\boxed{seven}", "7"),
    (r"\boxed{\frac{1}{2}", "1/2"),
]


@pytest.mark.parametrize(("response", "gold"), CORRECT)
def test_verify_math_accepts_equal_values(response: str, gold: str) -> None:
    assert verify_math(response, gold) == 1.0


@pytest.mark.parametrize(("response", "gold"), WRONG)
def test_verify_math_rejects(response: str, gold: str) -> None:
    assert verify_math(response, gold) == 0.0


def test_require_number_refuses_unevaluated_expressions() -> None:
    # math-verify evaluates the box: copying "What is 3+4?" into it would score.
    assert verify_math(r"\boxed{3+4}", "7") == 1.0
    assert verify_math(r"\boxed{3+4}", "7", require_number=True) == 0.0
    assert verify_math(r"\boxed{\sqrt{49}}", "7", require_number=True) == 0.0
    for written in ["7", "x = 7", "7.0", r"\frac{14}{2}", "14/2"]:
        assert verify_math(rf"\boxed{{{written}}}", "7", require_number=True) == 1.0, written


def test_unparsable_gold_is_an_error_not_a_wrong_answer() -> None:
    with pytest.raises(ValueError, match="gold"):
        verify_math(r"\boxed{7}", "")


# --------------------------------------------------------------------------------------
# IsolatedWorker. The functions it runs are picklable stdlib ones (eval, time.sleep, ...),
# so children never import this module (and the sympy it pulls in): they start in ms.
# --------------------------------------------------------------------------------------


def gone(pid: int) -> bool:
    """True once `pid` no longer runs (a zombie waiting for a reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until_gone(pids: list[int], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if all(gone(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def worker():
    with IsolatedWorker(processes=2) as w:
        yield w


def test_map_returns_values_in_order(worker: IsolatedWorker) -> None:
    outcomes = worker.map(abs, range(-10, 10), timeout=5)
    assert [o.status for o in outcomes] == ["ok"] * 20
    assert [o.value for o in outcomes] == [abs(x) for x in range(-10, 10)]


def test_timeout_kills_the_call_and_the_worker_recovers(worker: IsolatedWorker) -> None:
    worker.call(time.sleep, 0, timeout=30)  # load the function outside the timed call
    pids_before = worker.pids
    start = time.monotonic()
    outcome = worker.call(time.sleep, 3600, timeout=0.5)
    elapsed = time.monotonic() - start
    assert outcome.status == "timeout"
    assert 0.5 <= outcome.seconds <= elapsed < 0.5 + 1.5
    assert wait_until_gone([pid for pid in pids_before if pid not in worker.pids])
    assert worker.call(abs, -7, timeout=5).value == 7


def test_timeout_kills_what_the_call_spawned(worker: IsolatedWorker, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    command = ["sh", "-c", f"sleep 600 & echo $! > {pid_file}; wait"]
    outcome = worker.call(subprocess.run, command, timeout=1.0)
    assert outcome.status == "timeout"
    assert wait_until_gone([int(pid_file.read_text())])


def test_error_reports_the_exception(worker: IsolatedWorker) -> None:
    outcome = worker.call(int, "boom", timeout=5)
    assert outcome.status == "error"
    assert "ValueError: invalid literal" in outcome.error
    assert worker.call(abs, -3, timeout=5).value == 3


@pytest.mark.parametrize(("fn", "item", "reason"), [
    (os._exit, 3, "exited with code 3"),
    (ctypes.string_at, 0, "SIGSEGV"),  # reads address 0
])
def test_crash_is_reported_and_the_worker_restarts(worker: IsolatedWorker, fn, item, reason) -> None:
    outcome = worker.call(fn, item, timeout=5)
    assert outcome.status == "crashed"
    assert reason in outcome.error
    assert worker.call(abs, -4, timeout=5).value == 4


def test_mixed_batch_keeps_each_outcome_in_place(worker: IsolatedWorker) -> None:
    snippets = ["2*2", "__import__('time').sleep(3600)", "int('x')", "__import__('os')._exit(1)",
                "__import__('time').sleep(0.1) or 5"]
    outcomes = worker.map(eval, snippets, timeout=1.0)
    assert [o.status for o in outcomes] == ["ok", "timeout", "error", "crashed", "ok"]
    assert outcomes[0].value == 4 and outcomes[4].value == 5


def test_unpicklable_result_is_an_error(worker: IsolatedWorker) -> None:
    outcome = worker.call(open, os.devnull, timeout=5)  # a file object cannot travel back
    assert outcome.status == "error" and "could not send the result back" in outcome.error


def test_fn_must_be_picklable(worker: IsolatedWorker) -> None:
    with pytest.raises(TypeError, match="picklable"):
        worker.map(lambda x: x, [1], timeout=1)


def test_failing_initializer_raises_instead_of_hanging() -> None:
    with IsolatedWorker(initializer=int, initargs=("no luck",)) as w:
        with pytest.raises(WorkerStartError, match="no luck"):
            w.call(abs, 2, timeout=5)


def test_close_leaves_no_process_behind() -> None:
    w = IsolatedWorker(processes=2).start()
    assert w.call(abs, -5, timeout=5).value == 5
    pids = w.pids
    assert len(pids) == 2 and all(psutil.pid_exists(pid) for pid in pids)
    w.close()
    assert wait_until_gone(pids)
    descendants = {p.pid for p in psutil.Process().children(recursive=True)}
    assert not descendants & set(pids)
    with pytest.raises(RuntimeError, match="closed"):
        w.call(abs, 1, timeout=1)
    w.close()  # closing twice is fine


MAIN_SCRIPT = """
import os
from cascade.rewards.isolated import IsolatedWorker

with open(os.environ["RUN_LOG"], "a") as log:  # runs once per process that executes this script
    log.write(f"{os.getpid()}\\n")

if __name__ == "__main__":
    with IsolatedWorker() as plain, IsolatedWorker(inherit_main=True) as inheriting:
        assert plain.call(abs, -2, timeout=30).value == 2
        assert inheriting.call(abs, -3, timeout=30).value == 3
"""


def test_children_do_not_rerun_the_parents_main_script(tmp_path: Path) -> None:
    # Otherwise every (re)started child would import whatever the main script imports.
    script, log = tmp_path / "main_script.py", tmp_path / "runs.log"
    script.write_text(MAIN_SCRIPT)
    env = {**os.environ, "RUN_LOG": str(log), "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, str(script)], env=env, check=True, timeout=60)
    assert len(log.read_text().split()) == 2  # the parent, and the inherit_main child only


# --------------------------------------------------------------------------------------
# MathVerifier
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def verifier():
    with MathVerifier(timeout=3.0, processes=2) as v:
        yield v


def test_math_verifier_scores_a_batch_with_statuses(verifier: MathVerifier) -> None:
    pairs = [(r"\boxed{0.5}", "1/2"), (r"\boxed{3}", "4"), (r"no box", "4"),
             (r"\boxed{7}", ""), (r"<think>\boxed{2}</think>\boxed{-3/2}", "-1.5")]
    result = verifier.score(pairs)
    assert result.scores == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert result.statuses == ["ok", "ok", "ok", "error", "ok"]
    assert "gold" in result.errors[3]
    assert result.counts() == {"ok": 4, "error": 1}


def test_math_verifier_require_number() -> None:
    with MathVerifier(timeout=5.0, require_number=True) as verifier:
        assert verifier.score([(r"\boxed{3+4}", "7"), (r"\boxed{7}", "7")]).scores == [0.0, 1.0]


# 9^(9^9) has ~370 million digits: sympy would grind on it far past any timeout.
HUGE = (r"\boxed{9^{9^{9}}}", "7")


def test_math_verifier_reports_math_verifys_own_timeout(verifier: MathVerifier) -> None:
    # timeout 3 s: math-verify's internal limit (1 s) fires first and the child survives.
    pids = verifier._worker.pids
    result = verifier.score([HUGE, (r"\boxed{7}", "7")])
    assert verifier._worker.pids == pids
    assert result.statuses == ["timeout", "ok"] and result.scores == [0.0, 1.0]


def test_math_verifier_hard_timeout_kills_and_recovers() -> None:
    # timeout 0.5 s is below math-verify's smallest internal limit (1 s): the child is killed.
    with MathVerifier(timeout=0.5) as verifier:
        start = time.monotonic()
        result = verifier.score([HUGE, (r"\boxed{7}", "7")])
        assert time.monotonic() - start < 10  # includes starting the replacement child
    assert result.statuses == ["timeout", "ok"] and result.scores == [0.0, 1.0]
