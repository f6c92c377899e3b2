r"""Checkable proofs: equational and inequality chains, every step verified with sympy.

A claim is ``LHS REL RHS``, optionally ``for x, y > 0`` (those variables are positive; every other
one is real). A proof of it is a chain: the first line is an expression, each following line a
relation and the next expression (optionally ``[rule: NAME]``), and the last line ``QED``::

    claim:  x**2 + 9 >= 6*x                    proof:  x**2 + 9
                                                       = (x - 3)**2 + 6*x
                                                       >= 6*x [rule: drop_nonneg_term]
                                                       QED

Expressions use integers, the variables ``a``..``z``, ``+ - * / ** ^`` (``^`` is ``**``), parentheses
and ``sqrt``; nothing else is parsed (no floats, no other names), and length, nesting, digits and
exponents are capped, so ``parse_expr`` never evaluates anything but arithmetic on these symbols.

Each step is checked on its own:

* ``=``: the two sides are identical (a numeric spot check rejects false steps fast; then the
  expanded numerator of the difference, or its ``simplify``, must be 0). Rules are for inequalities.
* ``<=``, ``<``, ``>=``, ``>``: the named rule must really give the step (see :data:`RULES`):

  - ``square_nonneg``: the difference of the sides, factored by sympy, is manifestly nonnegative
    (a positive multiple of even powers and positive variables): ``a**2 + b**2 >= 2*a*b``;
  - ``drop_nonneg_term``: the smaller side is the larger one with some terms left out, each manifestly
    nonnegative: ``(x - 3)**2 + 6*x >= 6*x``;
  - ``am_gm``: two terms ``u + v`` of the larger side (both manifestly nonnegative) are replaced by
    ``2*sqrt(u*v)`` on the smaller side, the other terms kept: ``a/b + b/a + 2 >= 2*sqrt(a/b*(b/a)) + 2``.

  A strict step needs a strictly positive left-out term (or factored difference); ``am_gm`` gives only
  ``<=`` / ``>=``.

A step is also invalid if it changes nothing (its two sides are written the same) or, for ``=``, if
its two sides are written as the claim's: copying the claim back is not a proof of it. The verifier
checks that each step is true, not that it is small (``= x**2 - 1 + 0`` is a true step).

The chain proves ``FIRST R LAST``, where ``R`` composes its relations (``=`` with ``<=`` gives ``<=``,
any ``<`` gives ``<``; mixing ``<`` and ``>`` proves nothing). It proves the claim if ``FIRST`` and
``LAST`` are identical to the claim's two sides (in either order, the relation flipped to match) and
``R`` is at least as strong as the claim's relation. Score: 0 if it does not, else the fraction of
valid steps (``partial=False``: 1 only if every step is valid).

Model output is untrusted and sympy can spin on a crafted expression: :class:`ProofVerifier` runs the
checks in :class:`cascade.rewards.isolated.IsolatedWorker` children with a hard timeout and a memory
cap (a timeout scores 0 with status ``"timeout"``). :func:`check_proof` runs in-process, for trusted
proofs such as generated ones.
"""

from __future__ import annotations

import functools
import random
import re
import resource
import string
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sympy import Abs, Add, Expr, Integer, Mul, Number, Pow, Rational, Symbol, expand, factor, simplify, sqrt, together
from sympy.core.numbers import nan, zoo
from sympy.core.traversal import postorder_traversal
from sympy.parsing.sympy_parser import auto_number, parse_expr

from cascade.rewards.isolated import IsolatedWorker

RELATIONS = ("<=", ">=", "=", "<", ">")  # the two-character ones first, as regex alternatives
VARIABLES = tuple(string.ascii_lowercase)
QED = "QED"

MAX_PROOF_CHARS = 2_000
MAX_STEPS = 12
MAX_EXPRESSION_CHARS = 160
MAX_NESTING = 8  # parentheses
MAX_DIGITS = 6
MAX_EXPONENT = 64

_FUNCTIONS = {"sqrt": sqrt}
_ALLOWED_CHARS = re.compile(r"[0-9a-z_+\-*/^() ]+")
_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_DIGITS = re.compile(r"\d+")
# parse_expr evaluates the code it builds in this namespace: only what arithmetic on symbols needs.
_PARSER_GLOBALS = {"__builtins__": {}, "Integer": Integer, "Add": Add, "Mul": Mul, "Pow": Pow}
_STEP = re.compile(rf"({'|'.join(RELATIONS)})\s*(.*?)\s*(?:\[\s*rule\s*:\s*([a-z_]+)\s*\])?")
_CLAIM = re.compile(rf"(.+?)\s*({'|'.join(RELATIONS)})\s*(.+?)(?:\s+for\s+([a-z](?:\s*,\s*[a-z])*)\s*>\s*0)?")
_DIRECTION = {"=": 0, "<=": 1, "<": 1, ">=": -1, ">": -1}
_FLIP = {"=": "=", "<=": ">=", "<": ">", ">=": "<=", ">": "<"}


class ProofFormatError(ValueError):
    """The text is not in the proof format (or breaks a limit); the message says where and why."""


# ---- parsing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expression:
    """One expression of a chain: as written (unevaluated, for "did the step change anything") and its
    value (sympy's automatic evaluation, for everything else)."""

    text: str
    written: Expr
    value: Expr


def symbol_table(positive: Iterable[str] = ()) -> dict[str, object]:
    """The names an expression may use: every variable (real, or positive if listed) and ``sqrt``."""
    positive = set(positive)
    table: dict[str, object] = {v: Symbol(v, positive=True) if v in positive else Symbol(v, real=True)
                                for v in VARIABLES}
    return table | _FUNCTIONS


def parse_expression(text: str, table: dict[str, object]) -> Expression:
    """Parse one expression of the format; raise ProofFormatError for anything outside it."""
    text = text.strip()
    if not text:
        raise ProofFormatError("empty expression")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ProofFormatError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    if not _ALLOWED_CHARS.fullmatch(text):
        bad = next(c for c in text if not _ALLOWED_CHARS.fullmatch(c))
        raise ProofFormatError(f"character {bad!r} is not allowed")
    for name in _NAME.findall(text):
        if name not in table:
            raise ProofFormatError(f"name {name!r} is not allowed (variables a..z and sqrt only)")
    if any(len(digits) > MAX_DIGITS for digits in _DIGITS.findall(text)):
        raise ProofFormatError(f"number with more than {MAX_DIGITS} digits")
    depth = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth > MAX_NESTING:
            raise ProofFormatError(f"parentheses nested deeper than {MAX_NESTING}")
    code = text.replace("^", "**")
    written = _parse(code, table, evaluate=False)
    _check_tree(written)  # before evaluating: 9**9**9 must not be computed
    value = _parse(code, table, evaluate=True)
    if value.has(zoo, nan):  # 1/0
        raise ProofFormatError(f"{text} is undefined")
    return Expression(text, written, value)


def _parse(code: str, table: dict[str, object], evaluate: bool) -> Expr:
    try:
        expr = parse_expr(code, local_dict=dict(table), global_dict=dict(_PARSER_GLOBALS),
                          transformations=(auto_number,), evaluate=evaluate)
    except Exception as exc:  # noqa: BLE001 - any parser failure means "not an expression"
        raise ProofFormatError(f"not an expression: {code}") from exc
    if not isinstance(expr, Expr):
        raise ProofFormatError(f"not an expression: {code}")
    return expr


def _check_tree(written: Expr) -> None:
    """Only numbers, variables, +, *, ** with small constant exponents (sqrt is ``** (1/2)``; the square
    root of a square is already ``Abs``)."""
    for node in postorder_traversal(written):  # inner powers first, so an exponent is small to evaluate
        if isinstance(node, (Symbol, Number)):
            continue
        if not isinstance(node, (Add, Mul, Pow, Abs)):
            raise ProofFormatError(f"{node} is not arithmetic")
        if isinstance(node, Pow):
            if node.exp.free_symbols:
                raise ProofFormatError("exponents must be numbers")
            exponent = node.exp.doit()
            if not isinstance(exponent, Rational) or abs(exponent) > MAX_EXPONENT:
                raise ProofFormatError(f"exponent {node.exp} is not a fraction of size at most {MAX_EXPONENT}")


@dataclass(frozen=True)
class Claim:
    """``lhs relation rhs``, with the variables listed in ``positive`` taken as positive."""

    text: str
    lhs: Expression
    relation: str
    rhs: Expression
    positive: tuple[str, ...]


def parse_claim(text: str) -> Claim:
    """``"LHS REL RHS"`` or ``"LHS REL RHS for x, y > 0"``."""
    match = _CLAIM.fullmatch(text.strip())
    if not match:
        raise ProofFormatError(f"not a claim: {text!r}")
    lhs, relation, rhs, positive_list = match.groups()
    positive = tuple(v.strip() for v in positive_list.split(",")) if positive_list else ()
    table = symbol_table(positive)
    return Claim(text.strip(), parse_expression(lhs, table), relation, parse_expression(rhs, table), positive)


@dataclass(frozen=True)
class Step:
    relation: str
    expression: Expression
    rule: str | None


def parse_proof(text: str, claim: Claim) -> tuple[Expression, list[Step]]:
    """The first expression of the chain and its steps; raise ProofFormatError if ``text`` is not one."""
    if len(text) > MAX_PROOF_CHARS:
        raise ProofFormatError(f"proof longer than {MAX_PROOF_CHARS} characters")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines or lines[-1] != QED:
        raise ProofFormatError(f"the proof must end with a line {QED}")
    lines = lines[:-1]
    if QED in lines:
        raise ProofFormatError(f"text after {QED}")
    if len(lines) < 2:
        raise ProofFormatError("no steps: write the first expression, then one step per line")
    if len(lines) - 1 > MAX_STEPS:
        raise ProofFormatError(f"more than {MAX_STEPS} steps")
    table = symbol_table(claim.positive)
    if lines[0].startswith(RELATIONS):
        raise ProofFormatError("line 1: the chain starts with an expression, not a relation")
    first = _expression_at(1, lines[0], table)
    steps = []
    for number, line in enumerate(lines[1:], start=2):
        match = _STEP.fullmatch(line)
        if not match:
            raise ProofFormatError(f"line {number}: a step is RELATION EXPRESSION [rule: NAME]")
        relation, expression, rule = match.groups()
        steps.append(Step(relation, _expression_at(number, expression, table), rule))
    return first, steps


def _expression_at(number: int, text: str, table: dict[str, object]) -> Expression:
    try:
        return parse_expression(text, table)
    except ProofFormatError as exc:
        raise ProofFormatError(f"line {number}: {exc}") from None


# ---- checking ------------------------------------------------------------------------------------


def _spot_values(symbols: Iterable[Symbol], rng: random.Random) -> dict[Symbol, Integer]:
    return {s: Integer(rng.randint(1, 9) if s.is_positive else rng.choice([-9, -7, -5, -3, 2, 4, 6, 8]))
            for s in sorted(symbols, key=str)}


def identical(left: Expr, right: Expr) -> bool:
    """``left`` and ``right`` are the same expression (sympy shows their difference is 0)."""
    difference = left - right
    if difference == 0:
        return True
    try:
        rng = random.Random(0)
        for _ in range(3):  # exact values at a few points: a false identity usually fails here, cheaply
            at_point = difference.xreplace(_spot_values(difference.free_symbols, rng))
            if at_point.is_finite and at_point.is_zero is False:
                return False
        numerator, _ = together(difference).as_numer_denom()  # the cheap certificate, then the thorough one
        return expand(numerator) == 0 or simplify(difference) == 0
    except Exception:  # noqa: BLE001 - sympy failing on it leaves the identity unproven
        return False


def sign(expr: Expr) -> int | None:
    """1 if ``expr`` is manifestly positive, 0 if manifestly nonnegative, None if its form does not say.

    Manifest means by structure: positive numbers and variables, even powers of real expressions,
    ``Abs``, and sums and products of such.
    """
    if expr.is_number:
        return 1 if expr.is_positive else 0 if expr.is_zero else None
    if isinstance(expr, Symbol):
        return 1 if expr.is_positive else None
    if isinstance(expr, Abs):
        return 1 if sign(expr.args[0]) == 1 else 0
    if isinstance(expr, Pow):
        base = sign(expr.base)
        if base == 1:
            return 1
        if expr.exp.is_integer and expr.exp.is_even and expr.base.is_extended_real:
            return 0
        return 0 if base == 0 and expr.exp.is_positive else None
    if isinstance(expr, (Add, Mul)):
        signs = [sign(arg) for arg in expr.args]
        if None in signs:
            return None
        return max(signs) if isinstance(expr, Add) else min(signs)
    return None


def _terms(expression: Expression) -> Counter:
    """The terms of a sum as written, each evaluated: ``(x - 3)**2 + 6*x`` -> {(x - 3)**2, 6*x}."""
    terms, todo = [], [expression.written]
    while todo:
        node = todo.pop()
        if isinstance(node, Add):
            todo.extend(node.args)
        else:
            terms.append(node.doit())
    return Counter(t for t in terms if t != 0)


def square_nonneg(small: Expression, big: Expression, strict: bool) -> bool:
    """``big - small`` factored is manifestly nonnegative (positive, if strict)."""
    factored = sign(factor(big.value - small.value))
    return factored == 1 if strict else factored is not None


def drop_nonneg_term(small: Expression, big: Expression, strict: bool) -> bool:
    """``small`` is ``big`` with some terms left out, each manifestly nonnegative (one positive, if strict)."""
    big_terms, small_terms = _terms(big), _terms(small)
    if any(small_terms[t] > big_terms[t] for t in small_terms):
        return False
    left_out = [sign(t) for t in (big_terms - small_terms).elements()]
    if not left_out or None in left_out:
        return False
    return 1 in left_out if strict else True


def am_gm(small: Expression, big: Expression, strict: bool) -> bool:
    """Two terms ``u + v`` of ``big``, both manifestly nonnegative, become ``2*sqrt(u*v)`` in ``small``."""
    if strict:
        return False
    big_terms, small_terms = _terms(big), _terms(small)
    common = big_terms & small_terms
    pair = list((big_terms - common).elements())
    if len(pair) != 2 or None in (sign(pair[0]), sign(pair[1])):
        return False
    replaced = Add(*(small_terms - common).elements())
    return identical(replaced, 2 * sqrt(pair[0] * pair[1]))


RULES: dict[str, Callable[[Expression, Expression, bool], bool]] = {
    "square_nonneg": square_nonneg,
    "drop_nonneg_term": drop_nonneg_term,
    "am_gm": am_gm,
}
"""Inequality rules by name: ``rule(smaller_side, larger_side, strict) -> bool``."""


@dataclass(frozen=True)
class StepVerdict:
    valid: bool
    reason: str
    """What made it valid (``identity`` or the rule) or why it is not."""


def check_step(left: Expression, step: Step, claim: Claim) -> StepVerdict:
    """Is ``left step.relation step.expression`` true, by identity (``=``) or by its rule?"""
    try:
        return _check_step(left, step, claim)
    except Exception as exc:  # noqa: BLE001 - sympy failing on a step leaves that step unproven
        return StepVerdict(False, f"sympy could not check it ({type(exc).__name__})")


def _check_step(left: Expression, step: Step, claim: Claim) -> StepVerdict:
    right = step.expression
    if left.written == right.written:
        return StepVerdict(False, "no change")
    if step.relation == "=":
        if step.rule is not None:
            return StepVerdict(False, "a rule on an = step (= steps are checked as identities)")
        if {left.written, right.written} == {claim.lhs.written, claim.rhs.written}:
            return StepVerdict(False, "restates the claim")
        return StepVerdict(True, "identity") if identical(left.value, right.value) else StepVerdict(False, "not equal")
    if step.rule is None:
        return StepVerdict(False, "an inequality step needs [rule: NAME]")
    if step.rule not in RULES:
        return StepVerdict(False, f"unknown rule {step.rule}")
    small, big = (left, right) if _DIRECTION[step.relation] == 1 else (right, left)
    if RULES[step.rule](small, big, step.relation in ("<", ">")):
        return StepVerdict(True, step.rule)
    return StepVerdict(False, f"{step.rule} does not give this step")


def compose(relations: Iterable[str]) -> str | None:
    """The relation a chain proves between its ends: ``=``, ``<=``, ``<``, ``>=``, ``>``, or None if mixed."""
    relations = list(relations)
    directions = {_DIRECTION[r] for r in relations} - {0}
    if len(directions) > 1:
        return None
    strict = any(r in ("<", ">") for r in relations)
    if directions == {1}:
        return "<" if strict else "<="
    if directions == {-1}:
        return ">" if strict else ">="
    return "="


def implies(proved: str, claimed: str) -> bool:
    """``a proved b`` implies ``a claimed b``."""
    return proved == claimed or (claimed in ("<=", ">=") and proved in ("=", claimed[0]))


@dataclass(frozen=True)
class ProofReport:
    """The outcome of checking one proof.

    ``status``: ``ok`` (the chain proves the claim; ``score`` is the share of valid steps),
    ``wrong_conclusion`` (it does not: 0), ``format`` (not a proof in the format: 0), or how the
    isolated check ended (``timeout``, ``error``, ``crashed``: 0).
    """

    score: float
    status: str
    steps: tuple[StepVerdict, ...] = ()
    detail: str = ""

    @property
    def valid_steps(self) -> int:
        return sum(step.valid for step in self.steps)

    @property
    def verdict(self) -> str:
        """``valid``, or ``invalid at step N``: the first invalid step, or the last step when every step
        holds but the chain ends somewhere else than the claim; ``invalid`` if it was never checked."""
        if self.status not in ("ok", "wrong_conclusion"):
            return "invalid"
        if self.status == "ok" and self.valid_steps == len(self.steps):
            return "valid"
        first = next((i for i, step in enumerate(self.steps, start=1) if not step.valid), len(self.steps))
        return f"invalid at step {first}"

    def info(self) -> dict:
        """What a reward logs: status, step counts, each step's verdict, the detail."""
        return {"status": self.status, "valid_steps": self.valid_steps, "steps": len(self.steps),
                "verdicts": [step.reason if not step.valid else "ok" for step in self.steps], "detail": self.detail}


def check_proof(claim: str, proof: str, partial: bool = True) -> ProofReport:
    """Check ``proof`` (the chain text) of ``claim`` in this process; see the module docstring.

    Raises ProofFormatError if the claim itself is malformed: that is a data bug, not a wrong proof.
    """
    parsed_claim = parse_claim(claim)
    try:
        first, steps = parse_proof(proof, parsed_claim)
    except ProofFormatError as exc:
        return ProofReport(0.0, "format", detail=str(exc))
    lefts = [first] + [step.expression for step in steps[:-1]]
    verdicts = tuple(check_step(left, step, parsed_claim) for left, step in zip(lefts, steps))
    proved = compose(step.relation for step in steps)
    last = steps[-1].expression
    if not _proves(parsed_claim, first, proved, last):
        detail = (f"the chain proves {first.text} {proved} {last.text}, not the claim" if proved
                  else "the chain mixes < and > steps")
        return ProofReport(0.0, "wrong_conclusion", verdicts, detail)
    valid = sum(v.valid for v in verdicts)
    score = valid / len(verdicts) if partial else float(valid == len(verdicts))
    return ProofReport(score, "ok", verdicts)


def _proves(claim: Claim, first: Expression, proved: str | None, last: Expression) -> bool:
    if proved is None:
        return False
    for left, relation, right in ((claim.lhs, claim.relation, claim.rhs), (claim.rhs, _FLIP[claim.relation], claim.lhs)):
        if implies(proved, relation) and identical(first.value, left.value) and identical(last.value, right.value):
            return True
    return False


# ---- batch checking in isolated child processes --------------------------------------------------


def _check_pair(pair: tuple[str, str], partial: bool) -> ProofReport:
    """Runs in the child."""
    return check_proof(*pair, partial=partial)


def _prepare_child(memory_mb: int) -> None:
    """Child initializer: cap the address space (a blown-up expansion fails with MemoryError instead of
    eating the machine before its timeout) and pay sympy's first-call costs outside any timed call."""
    limit = memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    check_proof("(a + b)**2 >= 4*a*b", "(a + b)**2\n= (a - b)**2 + 4*a*b\n>= 4*a*b [rule: drop_nonneg_term]\nQED")


class ProofVerifier:
    """Checks (claim, proof) pairs with :func:`check_proof` in isolated child processes.

    Each pair gets a hard wall-clock ``timeout`` (seconds) and each child at most ``memory_mb`` of
    address space; a pair that times out, raises or crashes its child scores 0 with that status.
    """

    def __init__(self, timeout: float = 5.0, processes: int = 1, *, partial: bool = True,
                 memory_mb: int = 1024, context: str = "forkserver") -> None:
        self.timeout = timeout
        self._check_one = functools.partial(_check_pair, partial=partial)
        self._worker = IsolatedWorker(processes, context=context, initializer=_prepare_child, initargs=(memory_mb,))

    def check(self, pairs: Iterable[tuple[str, str]]) -> list[ProofReport]:
        reports = []
        for outcome in self._worker.map(self._check_one, pairs, self.timeout):
            reports.append(outcome.value if outcome.ok else ProofReport(0.0, outcome.status, detail=outcome.error or ""))
        return reports

    def start(self) -> ProofVerifier:
        """Start the child processes now, so their start-up overlaps other work."""
        self._worker.start()
        return self

    def close(self) -> None:
        self._worker.close()

    def __enter__(self) -> ProofVerifier:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
