r"""Math answer checking: take the final `\boxed{...}` of a response and compare it with the
ground truth by value, using math-verify (so `0.5`, `1/2` and `\frac{1}{2}` all match).

* `extract_boxed` / `verify_math` are plain functions for in-process use (tests, data checks).
* `MathVerifier` scores batches of model output in an `IsolatedWorker`, so a pathological
  answer (sympy can take minutes on some inputs) costs at most its timeout, never the run.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from cascade.rewards.isolated import IsolatedWorker, Status

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
BOXED = "\\boxed"

# Gold answers are our own short strings ("7", "-3/2", "\frac{1}{2}"): read them as LaTeX,
# falling back to a plain expression.
_GOLD_CONFIG = [LatexExtractionConfig(), ExprExtractionConfig()]
# The model's answer is re-wrapped as \boxed{...}, which math-verify reads strictly: "7+" or
# "7." stay strings and do not match 7 (wrapped in $...$ instead, both would parse as 7).
_ANSWER_CONFIG = [LatexExtractionConfig(boxed_match_priority=0)]

# A number written out: 7, -3, 0.5, -3/2, \frac{-3}{2}, optionally as "x = ...".
_PLAIN_NUMBER = re.compile(
    r"""^\s*(?:[a-zA-Z]\s*=\s*)?[-+]?\s*(?:
          \d+(?:\.\d+)?                                # 7, 0.5
        | \d+\s*/\s*\d+                                 # 3/2
        | \\[dt]?frac\s*\{\s*-?\d+\s*\}\s*\{\s*\d+\s*\}   # \frac{-3}{2}
    )\s*$""",
    re.VERBOSE,
)


def strip_thinking(text: str) -> str:
    """Remove the reasoning section, which must not be graded.

    Keeps what follows the last `</think>` (this also covers chat templates that put the
    opening `<think>` in the prompt). A `<think>` that is never closed means the response
    was cut off while thinking, so everything from it on is dropped.
    """
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[1]
    if THINK_OPEN in text:
        return text.split(THINK_OPEN, 1)[0]
    return text


def extract_boxed(text: str) -> str | None:
    r"""Content of the last `\boxed{...}` outside the thinking section, or None.

    Braces are matched with nesting (`\boxed{\frac{1}{2}}` gives `\frac{1}{2}`), escaped
    braces `\{ \}` do not count. If the last box is never closed (a truncated response)
    there is no final answer and the result is None.
    """
    text = strip_thinking(text)
    start = text.rfind(BOXED)
    while start != -1:
        # Skip look-alikes such as \boxedtext; allow spaces before the brace.
        brace = start + len(BOXED)
        while brace < len(text) and text[brace] == " ":
            brace += 1
        if brace < len(text) and text[brace] == "{":
            return _balanced_group(text, brace)
        start = text.rfind(BOXED, 0, start)
    return None


def _balanced_group(text: str, open_brace: int) -> str | None:
    """The text between text[open_brace] == '{' and its matching '}', or None if unclosed."""
    depth = 0
    i = open_brace
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # an escaped character, e.g. \{ or \}, never opens or closes a group
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_brace + 1 : i]
        i += 1
    return None


def _alarm_seconds(seconds: int | None) -> int | None:
    # math-verify times itself out with signal.alarm, which only works in the main thread;
    # elsewhere it would raise, so run without (use MathVerifier for a hard limit there).
    return seconds if threading.current_thread() is threading.main_thread() else None


def verify_math(response: str, gold: str, *, timeout_seconds: int | None = 5,
                require_number: bool = False) -> float:
    r"""1.0 if the last `\boxed{}` answer of `response` equals `gold` by value, else 0.0.

    No box, an unparsable box or a box only inside `<think>` scores 0.0. math-verify
    evaluates what it reads, so `\boxed{3+4}` equals 7; with `require_number` the box must
    hold a number written out (`7`, `-3/2`, `0.5`, `\frac{-3}{2}`, `x = 7`), which is what
    you want when the question is itself an expression: otherwise copying it scores 1.

    `timeout_seconds` is math-verify's own limit (whole seconds) for each parse and
    comparison; when it fires, math-verify logs a warning and the answer counts as wrong.
    Raises ValueError if `gold` itself cannot be parsed: that is a data bug, not a wrong
    answer.
    """
    alarm = _alarm_seconds(timeout_seconds)
    gold_parsed = parse(f"${gold}$", _GOLD_CONFIG, parsing_timeout=alarm)
    if not gold_parsed:
        raise ValueError(f"gold answer {gold!r} could not be parsed")
    answer = extract_boxed(response)
    if answer is None or not answer.strip():
        return 0.0
    if require_number and not _PLAIN_NUMBER.match(answer):
        return 0.0
    answer_parsed = parse(f"{BOXED}{{{answer}}}", _ANSWER_CONFIG, parsing_timeout=alarm)
    if not answer_parsed:
        return 0.0
    return 1.0 if verify(gold_parsed, answer_parsed, timeout_seconds=alarm) else 0.0


# --------------------------------------------------------------------------------------
# Batch scoring in isolated child processes
# --------------------------------------------------------------------------------------


class _SoftTimeoutWatcher(logging.Handler):
    """Counts math-verify's own timeouts, which it reports only as a log warning.

    math-verify (0.9.0) catches its signal.alarm timeout, logs "Timeout during parsing/
    comparison" and returns "no match"; watching the log lets us report those as timeouts.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Timeout during"):
            self.count += 1


@functools.cache
def _soft_timeout_watcher() -> _SoftTimeoutWatcher:
    watcher = _SoftTimeoutWatcher()
    logging.getLogger("math_verify").addHandler(watcher)
    return watcher


def _score_pair(pair: tuple[str, str], timeout_seconds: int,
                require_number: bool) -> tuple[float, bool]:
    """Runs in the child: (score, whether math-verify timed out on the way)."""
    response, gold = pair
    watcher = _soft_timeout_watcher()
    before = watcher.count
    score = verify_math(response, gold, timeout_seconds=timeout_seconds,
                        require_number=require_number)
    return score, watcher.count > before


def _warm_up() -> None:
    """Child initializer: pay math-verify's first-call costs before real calls are timed."""
    _soft_timeout_watcher()
    verify_math(f"{BOXED}{{\\frac{{1}}{{2}}}}", "0.5")


@dataclass(frozen=True)
class MathScores:
    """Scores of one batch, in input order, with how each item's check ended."""

    scores: list[float]
    statuses: list[Status]  # "ok" | "timeout" | "error" | "crashed"
    errors: list[str | None]

    def counts(self) -> dict[str, int]:
        """How many items ended with each status, e.g. {"ok": 126, "timeout": 2}."""
        return dict(Counter(self.statuses))


class MathVerifier:
    """Scores (response, gold) pairs with `verify_math` in isolated child processes.

    Each item gets a hard wall-clock `timeout` (seconds); items that time out, raise or
    crash their process score 0 and say so in `MathScores.statuses`. math-verify's internal
    timeout is set to about a third of it (at least 1 s), so slow parses usually end
    inside the child, which then stays alive, instead of costing a process restart.
    `require_number`: see `verify_math`.
    """

    def __init__(self, timeout: float = 5.0, processes: int = 1, *,
                 require_number: bool = False, context: str = "forkserver") -> None:
        self.timeout = timeout
        self._score_one = functools.partial(
            _score_pair, timeout_seconds=max(1, int(timeout // 3)), require_number=require_number)
        self._worker = IsolatedWorker(processes, context=context, initializer=_warm_up)

    def score(self, pairs: Iterable[tuple[str, str]]) -> MathScores:
        scores: list[float] = []
        statuses: list[Status] = []
        errors: list[str | None] = []
        for outcome in self._worker.map(self._score_one, pairs, self.timeout):
            if outcome.ok:
                score, soft_timeout = outcome.value
                scores.append(score)
                statuses.append("timeout" if soft_timeout else "ok")
                errors.append("math-verify timed out" if soft_timeout else None)
            else:
                scores.append(0.0)
                statuses.append(outcome.status)
                errors.append(outcome.error)
        return MathScores(scores, statuses, errors)

    def start(self) -> MathVerifier:
        """Start the child processes now, so their start-up overlaps other work."""
        self._worker.start()
        return self

    def close(self) -> None:
        self._worker.close()

    def __enter__(self) -> MathVerifier:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
