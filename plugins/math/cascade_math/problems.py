r"""Seeded generator of short math problems with exact answers, sized for a tiny model.

Three kinds, each solvable in a few short lines:

    arithmetic  "What is 12+7*3?"                                  -> "33"
    linear      "Solve for x: 3x + 5 = 20"                          -> "5"
    word        "Tom has 5 apples and gets 3 more. How many ..."    -> "8"

`difficulty` (1..5) sets operand sizes, the number of operations, and whether
parentheses, negative numbers and fractional answers appear. Train and test never share a
question: the split a question belongs to is decided by a hash of its text, and `generate`
keeps only the questions of the split it was asked for.

`solution(problem)` is a worked answer for SFT: the steps, then `\boxed{ANSWER}`. `problem.code` is a short
Python program that prints the answer from the question's numbers, for tool-integrated demonstrations.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

KINDS = ("arithmetic", "linear", "word")
SPLITS = ("train", "test")
TEST_SHARE = 0.2  # fraction of all possible questions held out for the test split
# Rejection sampling gives up after this many useless draws in a row: by then (almost)
# every question of the split has been drawn.
_MAX_MISSES = 5_000


@dataclass(frozen=True)
class MathProblem:
    id: str
    question: str
    answer: str  # exact, e.g. "7" or "-3/2"
    kind: str
    difficulty: int
    steps: tuple[str, ...] = ()  # worked lines before the boxed answer (see `solution`)
    code: str = ""  # a Python program printing the answer, e.g. "print(12+7*3)"


@dataclass(frozen=True)
class _Level:
    """What one difficulty level allows."""

    max_operand: int  # largest plain number in a question
    max_factor: int  # largest factor in a product, and largest |x| in equations
    operations: tuple[int, int]  # min and max operations in an arithmetic expression
    operators: str
    parentheses: bool
    negatives: bool  # negative numbers in equations, intermediate results and answers
    fractions: bool  # non-integer solutions of equations
    equation: str  # "x+b=d", "ax+b=d" or "ax+b=cx+d"
    word_steps: int  # most operations in a word problem


LEVELS = {
    1: _Level(20, 5, (1, 1), "+-", parentheses=False, negatives=False, fractions=False,
              equation="x+b=d", word_steps=1),
    2: _Level(30, 9, (1, 2), "+-*", parentheses=False, negatives=False, fractions=False,
              equation="ax+b=d", word_steps=1),
    3: _Level(50, 12, (2, 2), "+-*", parentheses=True, negatives=True, fractions=False,
              equation="ax+b=d", word_steps=2),
    4: _Level(100, 12, (2, 3), "+-*", parentheses=True, negatives=True, fractions=False,
              equation="ax+b=cx+d", word_steps=3),
    5: _Level(200, 20, (3, 4), "+-*", parentheses=True, negatives=True, fractions=True,
              equation="ax+b=cx+d", word_steps=3),
}


def split_of(question: str) -> str:
    """The split a question belongs to, fixed by its text alone."""
    digest = hashlib.sha256(question.encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < TEST_SHARE else "train"


def generate(split: str, n: int, seed: int, difficulty: int,
             kinds: Sequence[str] = KINDS, at_most: bool = False) -> list[MathProblem]:
    """`n` distinct problems of `split`, cycling through `kinds`; same arguments, same list.

    If the split does not hold `n` distinct questions of these kinds at this difficulty (a small
    level, such as 1 with arithmetic only, runs out first), raises ValueError, or with
    `at_most=True` returns all it found.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if difficulty not in LEVELS:
        raise ValueError(f"difficulty must be in 1..{len(LEVELS)}, got {difficulty}")
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {list(kinds)}")

    level = LEVELS[difficulty]
    rng = random.Random(f"cascade-math/{split}/{seed}/{difficulty}/{','.join(kinds)}")
    problems: list[MathProblem] = []
    seen: set[str] = set()
    misses = 0  # draws in a row that gave nothing new for this split
    while len(problems) < n:
        if misses == _MAX_MISSES:
            if at_most:
                return problems
            raise ValueError(
                f"found only {len(problems)} of {n} distinct {split} questions of kinds "
                f"{list(kinds)} at difficulty {difficulty}; ask for fewer or raise difficulty")
        kind = kinds[len(problems) % len(kinds)]
        question, answer, steps, code = _MAKERS[kind](rng, level)
        if question in seen or split_of(question) != split:
            misses += 1
            continue
        misses = 0
        seen.add(question)
        problem_id = f"{kind}-d{difficulty}-{hashlib.sha256(question.encode()).hexdigest()[:12]}"
        problems.append(MathProblem(problem_id, question, _format_number(answer), kind,
                                    difficulty, tuple(steps), code))
    return problems


def solution(problem: MathProblem) -> str:
    r"""The worked answer a tiny model can imitate: a few short lines, then \boxed{answer}."""
    return "\n".join([*problem.steps, f"\\boxed{{{problem.answer}}}"])


# --------------------------------------------------------------------------------------
# Numbers and expression trees (shared by arithmetic and word problems)
# --------------------------------------------------------------------------------------


def _format_number(value: Fraction | int) -> str:
    """'7', '-3', '-3/2' (str of a Fraction already reduces and puts the sign in front)."""
    return str(Fraction(value))


def _signed(value: Fraction | int) -> str:
    """A number as the right operand of a step: negative ones in parentheses, '5-(-3)'."""
    text = _format_number(value)
    return f"({text})" if value < 0 else text


@dataclass(frozen=True)
class _Num:
    value: int


@dataclass(frozen=True)
class _Op:
    op: str  # one of + - * /
    left: _Num | _Op
    right: _Num | _Op


_Node = _Num | _Op
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


def _value(node: _Node) -> Fraction:
    if isinstance(node, _Num):
        return Fraction(node.value)
    left, right = _value(node.left), _value(node.right)
    if node.op == "+":
        return left + right
    if node.op == "-":
        return left - right
    if node.op == "*":
        return left * right
    return left / right  # "/" only appears where it divides exactly


def _render(node: _Node) -> str:
    """Compact text, '12+7*3', with only the parentheses the tree needs."""
    if isinstance(node, _Num):
        return str(node.value)
    left, right = _render(node.left), _render(node.right)
    if isinstance(node.left, _Op) and _PRECEDENCE[node.left.op] < _PRECEDENCE[node.op]:
        left = f"({left})"
    if isinstance(node.right, _Op) and _PRECEDENCE[node.right.op] <= _PRECEDENCE[node.op]:
        right = f"({right})"
    return f"{left}{node.op}{right}"


def _python(node: _Node) -> str:
    """The expression as Python: '/' (only ever an exact division) becomes '//', which prints 4, not 4.0."""
    return _render(node).replace("/", "//")


def _steps(node: _Node) -> list[str]:
    """One line per operation, innermost first: ['7*3=21', '12+21=33']."""
    if isinstance(node, _Num):
        return []
    lines = _steps(node.left) + _steps(node.right)
    left, right = _value(node.left), _value(node.right)
    lines.append(f"{_format_number(left)}{node.op}{_signed(right)}={_format_number(_value(node))}")
    return lines


def _intermediates(node: _Node) -> list[Fraction]:
    if isinstance(node, _Num):
        return []
    return _intermediates(node.left) + _intermediates(node.right) + [_value(node)]


def _random_tree(rng: random.Random, operations: int, level: _Level, factor: bool = False) -> _Node:
    """A random expression with `operations` operators; every leaf below a '*' stays small."""
    if operations == 0:
        return _Num(rng.randint(2, level.max_factor) if factor else rng.randint(1, level.max_operand))
    op = rng.choice(level.operators)
    factor = factor or op == "*"
    left_ops = rng.randint(0, operations - 1)
    return _Op(op, _random_tree(rng, left_ops, level, factor),
               _random_tree(rng, operations - 1 - left_ops, level, factor))


# --------------------------------------------------------------------------------------
# The three kinds. Each maker returns (question, answer, steps, code).
# --------------------------------------------------------------------------------------

_Made = tuple[str, Fraction, list[str], str]


def _arithmetic(rng: random.Random, level: _Level) -> _Made:
    while True:  # resample until the expression fits the level
        tree = _random_tree(rng, rng.randint(*level.operations), level)
        text = _render(tree)
        if not level.parentheses and "(" in text:
            continue
        if not level.negatives and min(_intermediates(tree)) < 0:
            continue
        return f"What is {text}?", _value(tree), _steps(tree), f"print({_python(tree)})"


def _x_term(coefficient: int) -> str:
    return {1: "x", -1: "-x"}.get(coefficient, f"{coefficient}x")


def _side(coefficient: int, constant: int) -> str:
    """'3x + 5', '-x - 2', '4x' or '7' (coefficient 0)."""
    if coefficient == 0:
        return str(constant)
    if constant == 0:
        return _x_term(coefficient)
    return f"{_x_term(coefficient)} {'+' if constant > 0 else '-'} {abs(constant)}"


def _minus(left: str, value: int, unit: str = "") -> str:
    """'left - value' written without a double sign: '9 - 5', '9 + 5', '3x - 2x', '3x + 2x'."""
    magnitude = f"{abs(value)}{unit}" if not (unit and abs(value) == 1) else unit
    return f"{left} {'-' if value >= 0 else '+'} {magnitude}"


def _linear(rng: random.Random, level: _Level) -> _Made:
    """a*x + b = c*x + d, in the form the level allows; integer x unless fractions are."""
    big, small = level.max_operand, level.max_factor
    while True:  # resample until every number fits the level
        a, c = 1, 0
        if level.equation != "x+b=d":
            a = rng.randint(2, small) * (rng.choice((1, -1)) if level.negatives else 1)
        if level.equation == "ax+b=cx+d":
            c = rng.randint(-small, small)
        if a == c:
            continue
        if level.negatives:
            b = rng.randint(-big // 2, big // 2)
        else:
            b = rng.choice((1, -1)) * rng.randint(1, big)
        if level.fractions and rng.random() < 0.5:
            d = rng.randint(-big, big)
            x = Fraction(d - b, a - c)
        else:
            x_max = big if level.equation == "x+b=d" else small
            x = Fraction(rng.randint(-x_max, x_max) if level.negatives else rng.randint(0, x_max))
            d = int(a * x + b - c * x)
        if not level.negatives and d < 0:
            continue
        if max(abs(a), abs(b), abs(c), abs(d)) <= big:
            break

    question = f"Solve for x: {_side(a, b)} = {_side(c, d)}"
    k, v = a - c, d - b  # k*x = v
    steps = []
    if b != 0 or c != 0:  # move x terms left and numbers right
        left = _minus(_x_term(a), c, "x") if c != 0 else _x_term(a)
        right = _minus(str(d), b) if b != 0 else str(d)
        steps.append(f"{left} = {right}")
    steps.append(f"{_x_term(k)} = {v}")
    if k != 1:
        quotient = f"{v}/{_signed(k)}"
        steps.append(f"x = {quotient}" + ("" if quotient == _format_number(x) else f" = {_format_number(x)}"))
    code = f"from fractions import Fraction\na, b, c, d = {a}, {b}, {c}, {d}\nprint(Fraction(d - b, a - c))"
    return question, x, steps, code


_NAMES = ("Tom", "Ann", "Sam", "Mia", "Ben", "Eva", "Leo", "Zoe", "Max", "Ivy", "Kim", "Raj")
_ITEMS = ("apples", "pencils", "marbles", "stickers", "cookies", "books", "coins", "cards")


def _word(rng: random.Random, level: _Level) -> _Made:
    """A one- to three-step story; its arithmetic is an expression tree, like `_arithmetic`."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    big, small = level.max_operand, level.max_factor
    a, b = rng.randint(1, big), rng.randint(1, big)
    f, g = rng.randint(2, small), rng.randint(2, small)
    templates = ["add", "sub"]
    if "*" in level.operators:
        templates += ["mul", "div"]
    if level.word_steps >= 2:
        templates += ["add_mul"]
    if level.word_steps >= 3:
        templates += ["add_mul_sub"]
    template = rng.choice(templates)

    if template == "add":
        question = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
        tree: _Node = _Op("+", _Num(a), _Num(b))
    elif template == "sub":
        a, b = max(a, b), min(a, b)
        question = f"{name} has {a} {item} and gives away {b}. How many {item} are left?"
        tree = _Op("-", _Num(a), _Num(b))
    elif template == "mul":
        question = f"{name} has {f} bags with {g} {item} in each bag. How many {item} are there?"
        tree = _Op("*", _Num(f), _Num(g))
    elif template == "div":
        question = (f"{name} shares {f * g} {item} equally among {f} friends. "
                    f"How many {item} does each friend get?")
        tree = _Op("/", _Num(f * g), _Num(f))
    elif template == "add_mul":
        question = (f"{name} has {a} {item} and buys {f} packs of {g}. "
                    f"How many {item} does {name} have now?")
        tree = _Op("+", _Num(a), _Op("*", _Num(f), _Num(g)))
    else:  # add_mul_sub
        b = min(b, a + f * g)  # cannot give away more than there is
        question = (f"{name} has {a} {item}, buys {f} packs of {g} and gives away {b}. "
                    f"How many {item} are left?")
        tree = _Op("-", _Op("+", _Num(a), _Op("*", _Num(f), _Num(g))), _Num(b))
    return question, _value(tree), _steps(tree), f"print({_python(tree)})"


_MAKERS: dict[str, Callable[[random.Random, _Level], _Made]] = {
    "arithmetic": _arithmetic,
    "linear": _linear,
    "word": _word,
}
