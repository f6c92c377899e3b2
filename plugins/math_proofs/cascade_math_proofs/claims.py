"""Seeded generator of claims with known proofs, written in the chain format of :mod:`cascade.rewards.proofs`.

Kinds, and what ``difficulty`` (1..3) makes of them::

    expand       1: (x+3)*(x-4) = x**2-x-12
                 2: (2*x+3)*(x-4) = ...;  (a+2*b)**2-(a-2*b)**2 = 8*a*b
                 3: (x+2)**3 = x**3+6*x**2+12*x+8;  (2*a+b)*(a-3*b) = ...
    telescoping  1/(x*(x+1))+1/((x+1)*(x+2)) = 2/(x*(x+2))   (difficulty + 1 terms)
    inequality   1: x**2+9 >= 6*x;  x**2-4*x+7 > 0
                 2: a**2+4*b**2 >= 4*a*b;  (a+2*b)**2 >= 8*a*b
                 3: 4*x+9/x >= 12 for x > 0;  (a+2*b)*(1/a+2/b) >= 9 for a, b > 0

Every proof is a chain of 2-3 steps (``= ...``, then ``>= ... [rule: NAME]`` for inequalities) that
the verifier scores 1. A claim's split is fixed by the hash of its text.

:func:`corrupt` changes one step of a proof (a number, the direction of an inequality, the rule) for
the proof-verification task.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from cascade.environments.generated import generate_items, item_id
from cascade.rewards.proofs import QED, RULES

KINDS = ("expand", "telescoping", "inequality")
LEVELS = (1, 2, 3)
_SALT = "cascade-math-proofs"
_LETTERS = "abcmnpqrstuvwxyz"
_PAIRS = (("a", "b"), ("x", "y"), ("m", "n"), ("p", "q"), ("u", "v"), ("s", "t"))


@dataclass(frozen=True)
class ProofTask:
    id: str
    claim: str
    proof: tuple[str, ...]
    """The chain: the first expression, then one step per line (``QED`` not included)."""
    kind: str
    difficulty: int

    @property
    def proof_text(self) -> str:
        return "\n".join([*self.proof, QED])


# ---- writing expressions -------------------------------------------------------------------------


def _times(c: int, x: str) -> str:
    """``c*x`` as people write it: ``x``, ``-x``, ``3*x``, or ``0``."""
    return "0" if c == 0 else x if c == 1 else f"-{x}" if c == -1 else f"{c}*{x}"


def _sum(terms: Sequence[str]) -> str:
    """``['x**2', '-4*x', '3*x', '-12']`` -> ``x**2-4*x+3*x-12`` (zero terms left out; no spaces: the
    tiny model's rows are short)."""
    out = ""
    for term in terms:
        if term == "0":
            continue
        if not out:
            out = term
        else:
            out += term if term.startswith("-") else f"+{term}"
    return out or "0"


def _linear(k: int, x: str, p: int) -> str:
    return _sum([_times(k, x), str(p)])


def _nonzero(rng: random.Random, bound: int) -> int:
    return rng.choice([i for i in range(-bound, bound + 1) if i != 0])


# ---- the three kinds; each maker returns (claim, proof lines) -------------------------------------

_Made = tuple[str, list[str]]


def _product(k: int, x: str, p: int, m: int, q: int, y: str | None = None) -> _Made:
    """(k*x + p)*(m*x + q), or (k*x + p*y)*(m*x + q*y): distribute, spread out, collect."""
    if y is None:
        first, second = _linear(k, x, p), _linear(m, x, q)
        distributed = _sum([f"{_times(k, x)}*({second})", _times(p, f"({second})")])
        spread = [_times(k * m, f"{x}**2"), _times(k * q, x), _times(p * m, x), str(p * q)]
        final = _sum([_times(k * m, f"{x}**2"), _times(k * q + p * m, x), str(p * q)])
    else:
        first, second, xy = _sum([_times(k, x), _times(p, y)]), _sum([_times(m, x), _times(q, y)]), f"{x}*{y}"
        distributed = _sum([f"{_times(k, x)}*({second})", f"{_times(p, y)}*({second})"])
        spread = [_times(k * m, f"{x}**2"), _times(k * q, xy), _times(p * m, xy), _times(p * q, f"{y}**2")]
        final = _sum([_times(k * m, f"{x}**2"), _times(k * q + p * m, xy), _times(p * q, f"{y}**2")])
    start = f"({first})*({second})"
    return f"{start} = {final}", [start, f"= {distributed}", f"= {_sum(spread)}", f"= {final}"]


def _expand(rng: random.Random, level: int) -> _Made:
    x = rng.choice(_LETTERS)
    if level == 1:
        return _product(1, x, _nonzero(rng, 9), 1, _nonzero(rng, 9))
    if level == 2 and rng.random() < 0.5:
        return _product(rng.randint(2, 5), x, _nonzero(rng, 9), rng.randint(1, 5), _nonzero(rng, 9))
    if level == 2:  # (p*a + q*b)**2 - (p*a - q*b)**2 = 4*p*q*a*b
        a, b = rng.choice(_PAIRS)
        p, q = rng.randint(1, 5), rng.randint(1, 5)
        plus, minus = _sum([_times(p, a), _times(q, b)]), _sum([_times(p, a), _times(-q, b)])
        expanded = [_sum([_times(p * p, f"{a}**2"), _times(sign * 2 * p * q, f"{a}*{b}"), _times(q * q, f"{b}**2")])
                    for sign in (1, -1)]
        start, final = f"({plus})**2-({minus})**2", _times(4 * p * q, f"{a}*{b}")
        return f"{start} = {final}", [start, f"= ({expanded[0]})-({expanded[1]})", f"= {final}"]
    if rng.random() < 0.5:  # (x + p)**3
        p = _nonzero(rng, 6)
        square = _sum([f"{x}**2", _times(2 * p, x), str(p * p)])
        spread = _sum([f"{x}**3", _times(2 * p, f"{x}**2"), _times(p * p, x),
                       _times(p, f"{x}**2"), _times(2 * p * p, x), str(p**3)])
        final = _sum([f"{x}**3", _times(3 * p, f"{x}**2"), _times(3 * p * p, x), str(p**3)])
        start = f"({_linear(1, x, p)})**3"
        return f"{start} = {final}", [start, f"= ({_linear(1, x, p)})*({square})", f"= {spread}", f"= {final}"]
    a, b = rng.choice(_PAIRS)
    return _product(rng.randint(1, 4), a, _nonzero(rng, 5), rng.randint(1, 4), _nonzero(rng, 5), b)


def _shifted(x: str, k: int) -> str:
    return x if k == 0 else f"({x}+{k})"


def _telescoping(rng: random.Random, level: int) -> _Made:
    """sum of c/((x+k)*(x+k+1)) for k = s..s+n-1 = c*n/((x+s)*(x+s+n)): each term is a difference."""
    x, c, s, n = rng.choice(_LETTERS), rng.randint(1, 9), rng.randint(0, 5), level + 1
    ks = range(s, s + n)
    start = "+".join(f"{c}/({_shifted(x, k)}*{_shifted(x, k + 1)})" for k in ks)
    differences = "+".join(f"({c}/{_shifted(x, k)}-{c}/{_shifted(x, k + 1)})" for k in ks)
    final = f"{c * n}/({_shifted(x, s)}*{_shifted(x, s + n)})"
    ends = f"{c}/{_shifted(x, s)}-{c}/{_shifted(x, s + n)}"
    return f"{start} = {final}", [start, f"= {differences}", f"= {ends}", f"= {final}"]


def _inequality(rng: random.Random, level: int) -> _Made:
    if level == 1 and rng.random() < 0.5:  # x**2 + c**2 >= 2*c*x
        x, c = rng.choice(_LETTERS), rng.randint(1, 12)
        start, right = f"{x}**2+{c * c}", _times(2 * c, x)
        return f"{start} >= {right}", [start, f"= ({x}-{c})**2+{right}", f">= {right} [rule: drop_nonneg_term]"]
    if level == 1:  # x**2 + 2*p*x + p**2 + r > 0
        x, p, r = rng.choice(_LETTERS), _nonzero(rng, 6), rng.randint(1, 9)
        start = _sum([f"{x}**2", _times(2 * p, x), str(p * p + r)])
        return f"{start} > 0", [start, f"= ({_linear(1, x, p)})**2+{r}", "> 0 [rule: drop_nonneg_term]"]
    a, b = rng.choice(_PAIRS)
    k = rng.randint(1, 9)
    if level == 2 and rng.random() < 0.5:  # a**2 + k**2*b**2 >= 2*k*a*b
        start, right = f"{a}**2+{_times(k * k, f'{b}**2')}", _times(2 * k, f"{a}*{b}")
        return f"{start} >= {right}", [start, f"= ({_sum([a, _times(-k, b)])})**2+{right}",
                                       f">= {right} [rule: drop_nonneg_term]"]
    if level == 2:  # (a + k*b)**2 >= 4*k*a*b
        start, right = f"({a}+{_times(k, b)})**2", _times(4 * k, f"{a}*{b}")
        expanded = _sum([f"{a}**2", _times(2 * k, f"{a}*{b}"), _times(k * k, f"{b}**2")])
        return f"{start} >= {right}", [start, f"= {expanded}", f">= {right} [rule: square_nonneg]"]
    if rng.random() < 0.5:  # p*x + q/x >= 2*sqrt(p*q) for x > 0, with p*q a square
        x, root = rng.choice(_LETTERS), rng.randint(1, 6)
        p = rng.choice([d for d in range(1, 13) if (root * root) % d == 0 and root * root // d <= 12])
        q = root * root // p
        start = f"{_times(p, x)}+{q}/{x}"
        return f"{start} >= {2 * root} for {x} > 0", [start, f">= 2*sqrt({_times(p, x)}*({q}/{x})) [rule: am_gm]",
                                                      f"= {2 * root}"]
    # (a + k*b)*(1/a + k/b) = k*a/b + k*b/a + 1 + k**2 >= (k + 1)**2 for a, b > 0
    u, v = _times(k, f"{a}/{b}"), _times(k, f"{b}/{a}")
    start = f"({a}+{_times(k, b)})*(1/{a}+{k}/{b})"
    return f"{start} >= {(k + 1) ** 2} for {a}, {b} > 0", [
        start, f"= {u}+{v}+{1 + k * k}", f">= 2*sqrt({u}*({v}))+{1 + k * k} [rule: am_gm]", f"= {(k + 1) ** 2}"]


_MAKERS: dict[str, Callable[[random.Random, int], _Made]] = {
    "expand": _expand,
    "telescoping": _telescoping,
    "inequality": _inequality,
}


def generate(split: str, n: int, seed: int, difficulty: int = 1, kinds: Sequence[str] = KINDS) -> list[ProofTask]:
    """Up to ``n`` distinct claims of ``split`` at ``difficulty``, cycling through ``kinds``; same
    arguments, same list."""
    if difficulty not in LEVELS:
        raise ValueError(f"difficulty must be one of {LEVELS}, got {difficulty}")
    if not kinds or set(kinds) - set(KINDS):
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {list(kinds)}")
    counter = iter(range(10**12))

    def make(rng: random.Random) -> ProofTask:
        kind = kinds[next(counter) % len(kinds)]
        claim, proof = _MAKERS[kind](rng, difficulty)
        return ProofTask(item_id(f"proof-{kind}-d{difficulty}", claim), claim, tuple(proof), kind, difficulty)

    # the salt leaves out difficulty and kinds: a claim's split is the same whichever mix drew it
    return generate_items(make, lambda t: t.claim, split, n, seed, _SALT)


# ---- corrupting a proof for the verification task ------------------------------------------------

_STEP = re.compile(r"(<=|>=|=|<|>) (.*?)(?: \[rule: ([a-z_]+)\])?")
_FLIPPED = {"<=": ">=", ">=": "<=", "<": ">", ">": "<"}


def corrupt(proof: Sequence[str], rng: random.Random) -> tuple[str, ...]:
    """The proof with one step changed: a number in it changed by one, its inequality flipped, or another
    rule named. Whether that broke the step is the verifier's call (another rule may also hold)."""
    number = rng.choice([i for i in range(1, len(proof)) if re.search(r"\d", proof[i])])
    relation, expression, rule = _STEP.fullmatch(proof[number]).groups()
    change = rng.choice(["number", "flip", "rule"] if rule else ["number"])
    if change == "flip":
        relation = _FLIPPED[relation]
    elif change == "rule":
        rule = rng.choice([r for r in RULES if r != rule])
    else:
        target = rng.choice(list(re.finditer(r"\d+", expression)))
        value = int(target.group())
        changed = value + 1 if value == 1 or rng.random() < 0.5 else value - 1
        expression = f"{expression[:target.start()]}{changed}{expression[target.end():]}"
    step = f"{relation} {expression}" + (f" [rule: {rule}]" if rule else "")
    return (*proof[:number], step, *proof[number + 1:])
