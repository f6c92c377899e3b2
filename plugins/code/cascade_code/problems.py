"""Seeded generator of small Python programming problems with hidden tests, sized for a tiny model.

A problem is one *base* operation on the inputs (a family: the sum of two integers, the largest
number of a list, a string reversed, a clamp, a conditional expression, a loop sum...) followed by
``difficulty - 1`` *steps* that transform its result (multiply it by 3, reverse it, take its length...),
posed in one of two forms::

    function  "Write a Python function `total(a, b)` that returns the sum of a and b."
              hidden tests call total(*args) and compare the returned values
    stdio     "Write a Python program that reads an integer n from stdin and prints n clamped to ..."
              hidden tests feed stdin and compare stdout line by line

Function and argument names and every constant vary between problems; the held-out split (fixed by a
hash of the prompt text, see :mod:`cascade.environments.generated`) differs from train in those and in
the compositions, never in the templates, so a tiny model can learn it. Each problem carries its
reference solution (one ``return`` or ``print`` expression) and hidden tests whose expected outputs come
from an independent Python function of each operation, not from running the reference code: a template
whose code disagrees with its description fails its own tests.
"""

from __future__ import annotations

import functools
import operator
import random
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from cascade.environments.generated import generate_items, item_id

FORMS = ("function", "stdio")
LEVELS = (1, 2, 3)
INSTRUCTION = "Answer with a ```python code block."
_SALT = "cascade-code"
_LETTERS = "abcdehilmnorst"


# ---- test inputs ---------------------------------------------------------------------------------


def _int(rng: random.Random, lo: int = -20, hi: int = 20) -> int:
    return rng.randint(lo, hi)


def _ints(rng: random.Random, min_len: int = 0) -> list[int]:
    return [rng.randint(-9, 30) for _ in range(rng.randint(min_len, 6))]


def _word(rng: random.Random, extra: str = "") -> str:
    """Lowercase letters, sometimes empty; ``extra`` letters are drawn more often (count tests)."""
    return "".join(rng.choice(_LETTERS + extra * 4) for _ in range(rng.randint(0, 7)))


_INPUTS: dict[str, Callable[[random.Random], Any]] = {"int": _int, "list": _ints, "str": _word}


# ---- operations ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Base:
    """A family: a noun phrase over the arguments ``{a}`` (and ``{b}``), its code and its meaning."""

    family: str
    takes: tuple[str, ...]
    gives: str
    names: tuple[str, ...]
    """Function names a problem of this family may use."""
    text: str
    code: str
    atomic: bool
    """The code is a name, call, subscript or attribute (a step may append ``.upper()`` without parentheses)."""
    value: Callable[..., Any]
    """``value(*args, **constants)``: the expected result, written independently of ``code``."""
    constants: Callable[[random.Random], dict] = lambda rng: {}
    inputs: Callable[[random.Random, dict], tuple] | None = None
    """Test arguments; default: one random value per argument type."""


@dataclass(frozen=True)
class Step:
    """A transformation of the running result ``{x}``: a verb phrase, its code and its meaning."""

    name: str
    takes: tuple[str, ...]
    gives: str | None
    """Result type; None keeps the input type."""
    text: str
    code: str
    kind: str
    """``call`` (``abs({x})``: the inner code stays bare, the result is atomic), ``postfix``
    (``{x}.upper()``: the inner code needs parentheses unless atomic) or ``binary`` (``{x} * 3``: same,
    and the result is not atomic)."""
    value: Callable[..., Any]
    constants: Callable[[random.Random], dict] = lambda rng: {}


def _k(lo: int, hi: int) -> Callable[[random.Random], dict]:
    return lambda rng: {"k": rng.randint(lo, hi)}


def _clamp_bounds(rng: random.Random) -> dict:
    lo = rng.randint(-5, 5)
    return {"lo": lo, "hi": lo + rng.randint(3, 12)}


BASES: tuple[Base, ...] = (
    Base("add", ("int", "int"), "int", ("add", "total", "plus", "sum_two"), "the sum of {a} and {b}", "{a} + {b}",
         False, lambda a, b: a + b),
    Base("sub", ("int", "int"), "int", ("subtract", "minus", "diff", "take_away"), "{a} minus {b}", "{a} - {b}",
         False, lambda a, b: a - b),
    Base("mul", ("int", "int"), "int", ("multiply", "product", "times", "mul"), "the product of {a} and {b}",
         "{a} * {b}", False, lambda a, b: a * b),
    Base("max2", ("int", "int"), "int", ("larger", "bigger", "max_two", "pick"), "the larger of {a} and {b}",
         "max({a}, {b})", True, lambda a, b: a if a >= b else b),
    Base("clamp", ("int",), "int", ("clamp", "limit", "bound", "fit"), "{a} clamped to the range {lo} to {hi}",
         "min(max({a}, {lo}), {hi})", True, lambda a, lo, hi: lo if a < lo else hi if a > hi else a, _clamp_bounds),
    Base("parity", ("int",), "str", ("parity", "even_odd", "kind", "check"), "'even' if {a} is even, otherwise 'odd'",
         "'even' if {a} % 2 == 0 else 'odd'", False, lambda a: ("odd", "even")[a % 2 == 0]),
    Base("threshold", ("int",), "str", ("size", "judge", "grade", "label"),
         "'big' if {a} is greater than {k}, otherwise 'small'", "'big' if {a} > {k} else 'small'", False,
         lambda a, k: "big" if a - k > 0 else "small", _k(-5, 10)),
    Base("range_sum", ("int",), "int", ("sum_to", "triangle", "up_to", "series"),
         "the sum of the integers from 1 to {a}", "sum(range(1, {a} + 1))", True,
         lambda a: max(a, 0) * (a + 1) // 2, inputs=lambda rng, c: (rng.randint(0, 25),)),
    Base("div", ("int",), "float", ("divide", "split", "share", "ratio"), "{a} divided by {k}", "{a} / {k}", False,
         lambda a, k: a * (1.0 / k), _k(2, 8)),
    Base("list_max", ("list",), "int", ("largest", "biggest", "top", "list_max"), "the largest number in {a}",
         "max({a})", True, lambda xs: sorted(xs)[-1], inputs=lambda rng, c: (_ints(rng, 1),)),
    Base("list_min", ("list",), "int", ("smallest", "lowest", "bottom", "list_min"), "the smallest number in {a}",
         "min({a})", True, lambda xs: sorted(xs)[0], inputs=lambda rng, c: (_ints(rng, 1),)),
    Base("list_sum", ("list",), "int", ("total", "add_all", "sum_list", "list_sum"), "the sum of the numbers in {a}",
         "sum({a})", True, lambda xs: functools.reduce(operator.add, xs, 0)),
    Base("count_gt", ("list",), "int", ("count_big", "above", "how_many", "count_over"),
         "how many numbers in {a} are greater than {k}", "len([v for v in {a} if v > {k}])", True,
         lambda xs, k: sum(1 for v in xs if v - k > 0), _k(0, 12)),
    Base("nth", ("list",), "int", ("pick", "get", "item_at", "nth"), "the element at index {k} of {a}", "{a}[{k}]",
         True, lambda xs, k: xs[k - len(xs)], _k(0, 2), inputs=lambda rng, c: (_ints(rng, c["k"] + 1),)),
    Base("last", ("list",), "int", ("last", "final", "tail", "end"), "the last element of {a}", "{a}[-1]", True,
         lambda xs: xs[len(xs) - 1], inputs=lambda rng, c: (_ints(rng, 1),)),
    Base("mean", ("list",), "float", ("mean", "average", "avg", "middle"), "the average of the numbers in {a}",
         "sum({a}) / len({a})", False, lambda xs: statistics.fmean(xs), inputs=lambda rng, c: (_ints(rng, 1),)),
    Base("count_char", ("str",), "int", ("count", "occurrences", "tally", "count_char"),
         "how many times the character '{c}' occurs in {a}", "{a}.count('{c}')", True,
         lambda s, c: sum(ch == c for ch in s), lambda rng: {"c": rng.choice(_LETTERS)},
         inputs=lambda rng, c: (_word(rng, c["c"]),)),
    Base("reverse", ("str",), "str", ("reverse", "backwards", "flip", "mirror"), "{a} reversed", "{a}[::-1]", True,
         lambda s: "".join(reversed(s))),
    Base("upper", ("str",), "str", ("shout", "upper", "caps", "loud"), "{a} in upper case", "{a}.upper()", True,
         lambda s: "".join(chr(ord(ch) - 32) if "a" <= ch <= "z" else ch for ch in s)),
    Base("prefix", ("str",), "str", ("head", "prefix", "start", "first"), "the first {k} characters of {a}",
         "{a}[:{k}]", True, lambda s, k: "".join(ch for i, ch in enumerate(s) if i < k), _k(1, 4)),
)

_NUMBERS = ("int", "float")
STEPS: tuple[Step, ...] = (
    Step("add", _NUMBERS, None, "adds {k}", "{x} + {k}", "binary", lambda x, k: x + k, _k(1, 9)),
    Step("sub", _NUMBERS, None, "subtracts {k}", "{x} - {k}", "binary", lambda x, k: x - k, _k(1, 9)),
    Step("mul", _NUMBERS, None, "multiplies it by {k}", "{x} * {k}", "binary", lambda x, k: x * k, _k(2, 5)),
    Step("abs", _NUMBERS, None, "takes its absolute value", "abs({x})", "call", lambda x: -x if x < 0 else x),
    Step("square", ("int",), None, "squares it", "{x} ** 2", "binary", lambda x: x * x),
    Step("mod", ("int",), None, "takes the remainder after dividing by {k}", "{x} % {k}", "binary",
         lambda x, k: x - k * (x // k), _k(2, 7)),
    Step("upper", ("str",), None, "converts it to upper case", "{x}.upper()", "postfix", lambda s: s.upper()),
    Step("reverse", ("str",), None, "reverses it", "{x}[::-1]", "postfix", lambda s: s[::-1]),
    Step("append", ("str",), None, "appends '{c}'", "{x} + '{c}'", "binary", lambda s, c: s + c,
         lambda rng: {"c": rng.choice("!?#*")}),
    Step("length", ("str",), "int", "takes its length", "len({x})", "call", lambda s: len(s)),
)

FAMILIES = tuple(b.family for b in BASES)
_BASE = {b.family: b for b in BASES}

# argument names per type; a pair of integers takes one of the pairs
_PAIRS = (("a", "b"), ("x", "y"), ("m", "n"), ("p", "q"), ("i", "j"))
_ARG_NAMES = {"int": ("n", "x", "num", "val", "m"), "list": ("xs", "nums", "values", "items", "data"),
              "str": ("s", "text", "word", "name", "line")}
_READ_TEXT = {("int", "int"): "two integers {a} and {b} from one line of stdin", ("int",): "an integer {a} from stdin",
              ("list",): "a line of integers {a} from stdin", ("str",): "a string {a} from one line of stdin"}
_READ_CODE = {("int", "int"): "{a}, {b} = map(int, input().split())", ("int",): "{a} = int(input())",
              ("list",): "{a} = list(map(int, input().split()))", ("str",): "{a} = input()"}


def _stdin(takes: tuple[str, ...], args: tuple) -> str:
    """The stdin text that :data:`_READ_CODE` parses back into ``args``."""
    if takes == ("list",):
        return " ".join(map(str, args[0])) + "\n"
    return " ".join(map(str, args)) + "\n"


# ---- problems ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodeProblem:
    id: str
    task: str
    """The problem statement (the prompt is the task plus :data:`INSTRUCTION`)."""
    form: str
    """``function``: tests call ``entry``; ``stdio``: tests feed stdin and read stdout."""
    entry: str
    inputs: tuple
    """Per test: the argument list (function) or the stdin text (stdio)."""
    expected: tuple
    """Per test: the return value (function) or the stdout text (stdio)."""
    solution: str
    family: str
    difficulty: int
    steps: tuple[str, ...] = field(default=())

    @property
    def prompt(self) -> str:
        return f"{self.task}\n{INSTRUCTION}"

    @property
    def answer(self) -> str:
        """The reference solution in the answer format: one fenced Python block."""
        return f"```python\n{self.solution}\n```"

    def tests(self) -> dict:
        """The hidden tests as the reward reads them (``Sample.answer``)."""
        return {"form": self.form, "entry": self.entry, "inputs": [list(i) if isinstance(i, tuple) else i for i in self.inputs],
                "expected": list(self.expected)}


def _compose(code: str, atomic: bool, step: Step, constants: dict) -> tuple[str, bool]:
    if step.kind != "call" and not atomic:
        code = f"({code})"
    return step.code.format(x=code, **constants), step.kind != "binary"


def _draw_cases(draw: Callable[[], tuple], run: Callable[[tuple], Any], n_tests: int) -> tuple[list[tuple], list[Any]]:
    """``n_tests`` distinct inputs (fewer if the family has fewer) with their outputs; when all outputs
    are equal, one case is swapped for an input with another output, so a constant answer fails."""
    cases: list[tuple] = []
    for _ in range(20 * n_tests):
        case = draw()
        if case not in cases:
            cases.append(case)
        if len(cases) == n_tests:
            break
    expected = [run(c) for c in cases]
    for _ in range(20 * n_tests):
        if len(set(map(repr, expected))) > 1:
            break
        case = draw()
        if case not in cases:
            cases[-1], expected[-1] = case, run(case)
    return cases, expected


def _make(rng: random.Random, family: str, form: str, difficulty: int, n_tests: int) -> CodeProblem:
    base = _BASE[family]
    names = rng.choice(_PAIRS) if len(base.takes) == 2 else (rng.choice(_ARG_NAMES[base.takes[0]]),)
    args = dict(zip("ab", names))
    constants = base.constants(rng)
    text = base.text.format(**args, **constants)
    code, atomic = base.code.format(**args, **constants), base.atomic

    kind, steps = base.gives, []
    for _ in range(difficulty - 1):
        used = {family, *(s.name for s, _ in steps)}
        step = rng.choice([s for s in STEPS if kind in s.takes and s.name not in used])
        step_constants = step.constants(rng)
        steps.append((step, step_constants))
        code, atomic = _compose(code, atomic, step, step_constants)
        kind = step.gives or kind
    did = ", ".join(s.text.format(**c) for s, c in steps)

    if form == "function":
        entry = rng.choice(base.names)
        signature = f"{entry}({', '.join(names)})"
        task = (f"Write a Python function `{signature}` that returns {text}." if not steps else
                f"Write a Python function `{signature}` that takes {text}, {did} and returns the result.")
        solution = f"def {signature}:\n    return {code}"
    else:
        entry = ""
        reads = _READ_TEXT[base.takes].format(**args)
        task = (f"Write a Python program that reads {reads} and prints {text}." if not steps else
                f"Write a Python program that reads {reads}, takes {text}, {did} and prints the result.")
        solution = f"{_READ_CODE[base.takes].format(**args)}\nprint({code})"

    def run(case: tuple) -> Any:
        value = base.value(*case, **constants)
        for step, step_constants in steps:
            value = step.value(value, **step_constants)
        return value

    cases, expected = _draw_cases(lambda: base.inputs(rng, constants) if base.inputs else
                                  tuple(_INPUTS[t](rng) for t in base.takes), run, n_tests)
    if form == "stdio":
        inputs, outputs = tuple(_stdin(base.takes, c) for c in cases), tuple(f"{v}\n" for v in expected)
    else:
        inputs, outputs = tuple(cases), tuple(expected)
    return CodeProblem(item_id(f"code-{family}-d{difficulty}", task), task, form, entry, inputs, outputs, solution,
                       family, difficulty, tuple(s.name for s, _ in steps))


def generate(split: str, n: int, seed: int, difficulty: int = 1, families: Sequence[str] = FAMILIES,
             forms: Sequence[str] = FORMS, tests: int = 5) -> list[CodeProblem]:
    """Up to ``n`` distinct problems of ``split`` at ``difficulty`` (1..3: 0..2 steps after the base
    operation), cycling through ``forms``, families drawn at random; same arguments, same list."""
    if difficulty not in LEVELS:
        raise ValueError(f"difficulty must be one of {LEVELS}, got {difficulty!r}")
    if not families or set(families) - set(FAMILIES):
        raise ValueError(f"families must be a non-empty subset of {FAMILIES}, got {list(families)}")
    if not forms or set(forms) - set(FORMS):
        raise ValueError(f"forms must be a non-empty subset of {FORMS}, got {list(forms)}")
    if tests < 1:
        raise ValueError(f"tests must be at least 1, got {tests}")
    counter = iter(range(10**12))

    def make(rng: random.Random) -> CodeProblem:
        form = forms[next(counter) % len(forms)]
        for _ in range(100):  # a composition with one output for every input (x * 2 % 2) is redrawn
            problem = _make(rng, rng.choice(list(families)), form, difficulty, tests)
            if len(problem.expected) == 1 or len(set(map(repr, problem.expected))) > 1:
                break
        return problem

    # one salt for every setting: a task's split depends on its text alone, whatever the options
    return generate_items(make, lambda p: p.task, split, n, seed, _SALT)
