"""Generated repositories with one bug, an issue describing its symptom, and tests graded like SWE-bench.

A repository is one small module (``shop.py``: 3-4 functions of one or two lines) and its visible test
file (``test_shop.py``: one ``def test_*`` with plain ``assert`` per function). One function carries a
bug made by mutating the correct function's syntax tree (so the buggy and the fixed module differ in
exactly one line):

* ``operator``: ``+`` <-> ``-``, ``*`` -> ``+``, ``//`` -> ``*``;
* ``comparison``: ``>`` <-> ``>=``, ``<`` <-> ``<=``;
* ``off_by_one``: an integer constant moved by one;
* ``constant``: an integer constant replaced by a wrong value;
* ``swapped_args``: the operands of ``-``, ``//`` or a comparison swapped.

The mutant must change an output on the inputs drawn for the function; the first input where it does
becomes the issue (``with_tax(200) returns 240, expected 230.``). The hidden test file ``test_issue.py``
(FAIL_TO_PASS) tests the issue's function on that input and one more; the visible tests of the other
functions are PASS_TO_PASS. Expected values are computed by running the correct functions here, on
code this module generated itself.

``difficulty``: 1 = the bug is in the function the issue names; 2 = it is in a helper that function
calls (one more function in the module); 3 = that helper lives in a second file, ``util.py``.

The split is fixed by the bug site (the issue's function, the buggy and the fixed line), so a held-out
repository never shares its bug with a training one: held-out repositories differ in names, constants
and bug sites, built from the same templates.
"""

from __future__ import annotations

import ast
import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from cascade import Message, Sample
from cascade.environments.generated import generate_items, item_id, spread

BUG_KINDS = ("operator", "comparison", "off_by_one", "constant", "swapped_args")
ISSUE_TESTS = "test_issue.py"
HELPER_MODULE = "util"
_SALT = "cascade-swe/repos"
_TRIES = 40


@dataclass(frozen=True)
class Template:
    """A function to generate: ``source`` with ``{f}`` (its name), ``{h}`` (its helper's name) and
    upper-case constants (``{K}``) drawn from ``choices``; ``args(rng, drawn)`` draws one call's arguments."""

    source: str
    choices: dict[str, tuple]
    args: Callable[[random.Random, dict], tuple]
    helper: str = ""
    """Level 2+: a helper ``{h}`` the function calls, where the bug goes."""


def _t(source: str, args: Callable, helper: str = "", **choices: tuple) -> Template:
    return Template(source, choices, args, helper)


def _r(lo: int, hi: int, step: int = 1) -> Callable[[random.Random], int]:
    return lambda rng: rng.randrange(lo, hi + 1, step)


def _near(key: str, width: int) -> Callable[[random.Random, dict], tuple]:
    """One argument on, just below or around the drawn constant ``key`` (boundaries catch comparison bugs)."""
    return lambda rng, d: (rng.choice([d[key], d[key] - 1, d[key] + 1, d[key] + rng.randint(2, width), d[key] - rng.randint(2, width)]),)


@dataclass(frozen=True)
class Theme:
    modules: tuple[str, ...]
    functions: tuple[Template, ...]
    """Single functions (every level) ..."""
    pairs: tuple[Template, ...]
    """... and functions with a helper (the buggy unit at level 2+)."""


THEMES: dict[str, Theme] = {
    "shop": Theme(("shop", "store", "cart"), (
        _t("def {f}(price, qty):\n    return price * qty", lambda r, d: (_r(1, 50)(r), _r(2, 9)(r)), f=("total", "line_total", "cost")),
        _t("def {f}(price):\n    return price + price * {K} // 100", lambda r, d: (_r(10, 300, 10)(r),),
           f=("with_tax", "add_tax", "gross"), K=(5, 10, 15, 20, 25)),
        _t("def {f}(price, pct):\n    return price - price * pct // 100", lambda r, d: (_r(20, 400, 20)(r), _r(5, 50, 5)(r)),
           f=("discount", "sale_price", "reduced")),
        _t("def {f}(total):\n    return total >= {K}", _near("K", 30), f=("free_shipping", "ships_free", "big_order"),
           K=(30, 40, 50, 60, 80, 100)),
        _t("def {f}(items, size):\n    return (items + size - 1) // size", lambda r, d: (_r(1, 60)(r), _r(2, 12)(r)),
           f=("boxes", "packs_needed", "crates")),
    ), (
        _t("def {f}(price):\n    return price + {h}(price)", lambda r, d: (_r(10, 300, 10)(r),),
           helper="def {h}(price):\n    return price * {K} // 100", f=("price_with_tax", "final_price"), h=("tax", "tax_of"),
           K=(5, 10, 15, 20, 25)),
        _t("def {f}(price, pct, qty):\n    return {h}(price, pct) * qty", lambda r, d: (_r(20, 400, 20)(r), _r(5, 50, 5)(r), _r(2, 6)(r)),
           helper="def {h}(price, pct):\n    return price - price * pct // 100", f=("order_total", "bill"), h=("unit_price", "net")),
    )),
    "bank": Theme(("bank", "account", "wallet"), (
        _t("def {f}(balance, amount):\n    return balance - amount", lambda r, d: (_r(50, 500)(r), _r(1, 49)(r)),
           f=("withdraw", "pay", "debit")),
        _t("def {f}(balance):\n    return balance * {K} // 100", lambda r, d: (_r(100, 2000, 100)(r),),
           f=("interest", "yearly_interest", "yield_of"), K=(2, 3, 4, 5, 6, 8)),
        _t("def {f}(balance, amount):\n    return amount <= balance", lambda r, d: (lambda b: (b, r.choice([b, b - 1, b + 1, b + 9, b - 9])))(_r(20, 300)(r)),
           f=("can_withdraw", "covers", "affordable")),
        _t("def {f}(amount):\n    if amount > {K}:\n        return 0\n    return {D}", _near("K", 80),
           f=("fee", "charge", "transfer_fee"), K=(100, 200, 500), D=(2, 3, 5, 7)),
        _t("def {f}(deposit, weeks):\n    return deposit * weeks + {K}", lambda r, d: (_r(5, 50, 5)(r), _r(2, 12)(r)),
           f=("savings", "saved_after", "stash"), K=(10, 20, 25, 50)),
    ), (
        _t("def {f}(balance):\n    return balance + {h}(balance)", lambda r, d: (_r(100, 2000, 100)(r),),
           helper="def {h}(balance):\n    return balance * {K} // 100", f=("after_year", "grown"), h=("interest", "gain"),
           K=(2, 3, 4, 5, 6, 8)),
        _t("def {f}(amount):\n    return amount + {h}(amount)", _near("K", 80),
           helper="def {h}(amount):\n    if amount > {K}:\n        return 0\n    return {D}", f=("total_cost", "to_pay"),
           h=("fee", "charge"), K=(100, 200, 500), D=(2, 3, 5, 7)),
    )),
    "grades": Theme(("grades", "school", "scores"), (
        _t("def {f}(total, count):\n    return total // count", lambda r, d: (_r(10, 400)(r), _r(2, 6)(r)), f=("average", "mean_score")),
        _t("def {f}(score):\n    return score >= {K}", _near("K", 20), f=("passed", "is_pass", "made_it"), K=(40, 45, 50, 55, 60, 70)),
        _t("def {f}(score, out_of):\n    return score * 100 // out_of", lambda r, d: (lambda o: (r.randint(0, o), o))(_r(10, 80, 10)(r)),
           f=("percent", "pct", "ratio")),
        _t("def {f}(score):\n    return min(score + {K}, 100)", lambda r, d: (_r(40, 99)(r),), f=("curved", "with_bonus", "boosted"),
           K=(3, 5, 8, 10)),
        _t("def {f}(scores, cutoff):\n    return len([s for s in scores if s > cutoff])",
           lambda r, d: (lambda s: (s, r.choice(s + [r.randint(0, 100)])))([r.randint(0, 100) for _ in range(4)]),
           f=("above", "count_above", "top")),
    ), (
        _t("def {f}(scores):\n    return len([s for s in scores if {h}(s)])",
           lambda r, d: ([r.choice([d["K"], d["K"] - 1, d["K"] + 3, r.randint(0, 100)]) for _ in range(4)],),
           helper="def {h}(score):\n    return score >= {K}", f=("count_passed", "passes"), h=("is_pass", "ok"), K=(40, 50, 60, 70)),
        _t("def {f}(score, out_of):\n    return {h}(score, out_of) >= 90", lambda r, d: (lambda o: (r.randint(o * 8 // 10, o), o))(_r(10, 80, 10)(r)),
           helper="def {h}(score, out_of):\n    return score * 100 // out_of", f=("top_grade", "excellent"), h=("percent", "pct")),
    )),
    "units": Theme(("units", "convert", "measure"), (
        _t("def {f}(c):\n    return c * 9 // 5 + 32", lambda r, d: (_r(-20, 40, 5)(r),), f=("to_fahrenheit", "c_to_f")),
        _t("def {f}(hours, mins):\n    return hours * 60 + mins", lambda r, d: (_r(0, 9)(r), _r(1, 59)(r)), f=("total_minutes", "to_minutes")),
        _t("def {f}(meters):\n    return meters // {K}", lambda r, d: (_r(500, 9000, 250)(r),), f=("to_km", "km"), K=(1000,)),
        _t("def {f}(width, height):\n    return width * height", lambda r, d: (_r(2, 30)(r), _r(2, 30)(r)), f=("area", "rect_area", "surface")),
        _t("def {f}(width, height):\n    return 2 * (width + height)", lambda r, d: (_r(2, 30)(r), _r(2, 30)(r)),
           f=("perimeter", "border", "fence")),
    ), (
        _t("def {f}(hours, mins, due):\n    return {h}(hours, mins) - due", lambda r, d: (_r(0, 9)(r), _r(1, 59)(r), _r(0, 300)(r)),
           helper="def {h}(hours, mins):\n    return hours * 60 + mins", f=("late_by", "overtime"), h=("to_minutes", "minutes")),
        _t("def {f}(c):\n    return {h}(c) > {K}", lambda r, d: (_r(-20, 45, 1)(r),),
           helper="def {h}(c):\n    return c * 9 // 5 + 32", f=("is_hot", "too_warm"), h=("c_to_f", "fahrenheit"), K=(80, 86, 90)),
    )),
}


# ---- bugs ----------------------------------------------------------------------------------------

_OPERATORS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.FloorDiv: ast.Mult}
_COMPARISONS = {ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Lt: ast.LtE, ast.LtE: ast.Lt}
_NOT_COMMUTATIVE = (ast.Sub, ast.FloorDiv)


def _wrong_constant(value: int, rng: random.Random) -> int:
    return rng.choice([v for v in (value * 2, value + 10, value - 5, value // 2) if abs(v - value) > 1 and v >= 0])


def _sites(tree: ast.AST) -> list[tuple[str, int]]:
    """(bug kind, index of the node in ``ast.walk`` order) for every place a bug can go."""
    sites = []
    for index, node in enumerate(ast.walk(tree)):
        if isinstance(node, ast.BinOp):
            if type(node.op) in _OPERATORS:
                sites.append(("operator", index))
            if isinstance(node.op, _NOT_COMMUTATIVE):
                sites.append(("swapped_args", index))
        elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _COMPARISONS:
            sites += [("comparison", index), ("swapped_args", index)]
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            sites += [("off_by_one", index), ("constant", index)]
    return sites


def _mutate(source: str, kind: str, index: int, rng: random.Random) -> str:
    tree = ast.parse(source)
    node: Any = next(n for i, n in enumerate(ast.walk(tree)) if i == index)
    if kind == "operator":
        node.op = _OPERATORS[type(node.op)]()
    elif kind == "comparison":
        node.ops = [_COMPARISONS[type(node.ops[0])]()]
    elif kind == "swapped_args" and isinstance(node, ast.BinOp):
        node.left, node.right = node.right, node.left
    elif kind == "swapped_args":
        node.left, node.comparators = node.comparators[0], [node.left]
    elif kind == "off_by_one":
        node.value += rng.choice([-1, 1]) if node.value > 0 else 1
    else:
        node.value = _wrong_constant(node.value, rng)
    return ast.unparse(tree)


def _namespace(sources: list[str]) -> dict:
    namespace: dict = {}
    exec("\n\n".join(sources), namespace)  # noqa: S102 - code this module generated from its templates
    return namespace


def _run(namespace: dict, name: str, args: tuple) -> tuple[str, Any]:
    """("ok", value) or ("raises", exception name) for ``name(*args)`` over the generated functions."""
    try:
        return "ok", namespace[name](*args)
    except Exception as err:  # noqa: BLE001 - a mutant may divide by zero
        return "raises", type(err).__name__


# ---- tasks ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweTask:
    id: str
    difficulty: int
    bug_kind: str
    issue: str
    files: dict[str, str]
    """The buggy repository: source files and the visible test file."""
    fixed: dict[str, str]
    """The reference fix: the changed file's full text."""
    hidden: dict[str, str]
    """Test files written after the model's edits (FAIL_TO_PASS)."""
    fail_to_pass: tuple[str, ...]
    pass_to_pass: tuple[str, ...]
    bug_file: str
    buggy_line: str
    fixed_line: str
    sources: tuple[str, ...]
    """The source files in reading order (the module the issue is about first)."""

    @property
    def bug_site(self) -> str:
        return f"{self.issue.split('(')[0]}\n{self.buggy_line.strip()}\n{self.fixed_line.strip()}"


@dataclass
class _Function:
    name: str
    source: str
    args: Callable[[random.Random], tuple]


def _draw(rng: random.Random, template: Template) -> tuple[list[_Function], dict]:
    """The template's functions (helper first) with names and constants drawn, canonicalised by ast."""
    drawn = {k: rng.choice(v) for k, v in template.choices.items()}
    fill = {k: str(v) for k, v in drawn.items()}
    functions = []
    if template.helper:
        functions.append(_Function(drawn["h"], ast.unparse(ast.parse(template.helper.format(**fill))), lambda r: ()))
    functions.append(_Function(drawn["f"], ast.unparse(ast.parse(template.source.format(**fill))),
                               lambda r, t=template, d=drawn: t.args(r, d)))
    return functions, drawn


def _call(name: str, args: tuple) -> str:
    return f"{name}({', '.join(repr(a) for a in args)})"


def _test(module: str, name: str, cases: list[tuple[tuple, Any]]) -> str:
    return f"def test_{name}():\n" + "".join(f"    assert {module}.{_call(name, a)} == {v!r}\n" for a, v in cases)


def _cases(rng: random.Random, namespace: dict, fn: _Function, n: int) -> list[tuple[tuple, Any]]:
    cases: list[tuple[tuple, Any]] = []
    while len(cases) < n:
        args = fn.args(rng)
        outcome, value = _run(namespace, fn.name, args)
        if outcome == "ok" and all(a != args for a, _ in cases):
            cases.append((args, value))
    return cases


def _make(rng: random.Random, difficulty: int, distractors: int, bug_kinds: Sequence[str]) -> SweTask | None:
    theme = THEMES[rng.choice(sorted(THEMES))]
    module = rng.choice(theme.modules)
    buggy_template = rng.choice(theme.pairs if difficulty >= 2 else theme.functions)
    others = rng.sample([t for t in theme.functions if t is not buggy_template], distractors)
    units = [_draw(rng, t)[0] for t in [buggy_template, *others]]
    names = [f.name for unit in units for f in unit]
    if len(set(names)) != len(names):
        return None
    target, tested = units[0][0], units[0][-1]  # the function the bug goes in, the one the issue names
    correct = [f.source for unit in units for f in unit]

    tree = ast.parse(target.source)
    sites = [(k, i) for k, i in _sites(tree) if k in bug_kinds]
    if not sites:
        return None
    kind = rng.choice(sorted({k for k, _ in sites}))
    index = rng.choice([i for k, i in sites if k == kind])
    mutant = _mutate(target.source, kind, index, rng)
    buggy = [mutant if s == target.source else s for s in correct]
    correct_ns, buggy_ns = _namespace(correct), _namespace(buggy)
    for _ in range(_TRIES):
        args = tested.args(rng)
        want, got = _run(correct_ns, tested.name, args), _run(buggy_ns, tested.name, args)
        if want[0] == "ok" and want != got:
            break
    else:
        return None  # the mutant behaves like the original on every input drawn: no bug to report
    call = _call(tested.name, args)
    issue = f"{call} returns {got[1]!r}, expected {want[1]!r}." if got[0] == "ok" else f"{call} raises {got[1]}, expected {want[1]!r}."
    changed = [(a, b) for a, b in zip(target.source.splitlines(), mutant.splitlines()) if a != b]
    if len(changed) != 1 or len(target.source.splitlines()) != len(mutant.splitlines()):
        return None
    fixed_line, buggy_line = changed[0]
    if "\n\n".join(buggy).count(buggy_line.strip()) != 1:
        return None  # an edit naming the buggy line must find it once

    # files: the tested function's unit first, in a shuffled module; at level 3 the helper in util.py
    order = [units[0]] + rng.sample(units[1:], len(units) - 1)
    helper_in_util = difficulty >= 3
    main_functions = [f for unit in order for f in unit if not (helper_in_util and f is target)]
    header = f"from {HELPER_MODULE} import {target.name}\n\n" if helper_in_util else ""

    def layout(sources_by_name: dict[str, str]) -> dict[str, str]:
        files = {f"{module}.py": header + "\n\n".join(sources_by_name[f.name] for f in main_functions) + "\n"}
        if helper_in_util:
            files[f"{HELPER_MODULE}.py"] = sources_by_name[target.name] + "\n"
        return files

    fixed_by_name = {f.name: f.source for unit in units for f in unit}
    buggy_files = layout({**fixed_by_name, target.name: mutant})
    fixed_files = layout(fixed_by_name)
    bug_file = f"{HELPER_MODULE}.py" if helper_in_util else f"{module}.py"

    tests_file = f"test_{module}.py"
    visible = [_test(module, unit[-1].name, _cases(rng, correct_ns, unit[-1], 2)) for unit in order[1:]]
    extra = _cases(rng, correct_ns, tested, 2)
    issue_cases = [(args, want[1])] + [c for c in extra if c[0] != args][:1]
    buggy_files[tests_file] = f"import {module}\n\n\n" + "\n\n".join(visible)
    hidden = {ISSUE_TESTS: f"import {module}\n\n\n" + _test(module, tested.name, issue_cases)}
    sources = (f"{module}.py",) + ((f"{HELPER_MODULE}.py",) if helper_in_util else ())
    key = f"{difficulty}\n{issue}\n{buggy_line}"
    return SweTask(
        id=item_id(f"swe-d{difficulty}", key + "\n" + "\n".join(buggy_files.values())),
        difficulty=difficulty, bug_kind=kind, issue=issue, files=buggy_files, fixed={bug_file: fixed_files[bug_file]},
        hidden=hidden, fail_to_pass=(f"{ISSUE_TESTS}::test_{tested.name}",),
        pass_to_pass=tuple(f"{tests_file}::test_{unit[-1].name}" for unit in order[1:]),
        bug_file=bug_file, buggy_line=buggy_line, fixed_line=fixed_line, sources=sources)


HELD_OUT = ("sites", "repos")


def generate(split: str, n: int, seed: int, difficulty: int = 1, distractors: int = 2,
             bug_kinds: Sequence[str] = BUG_KINDS, held_out: str = "sites") -> list[SweTask]:
    """Up to ``n`` tasks of ``split`` at ``difficulty`` (1..3); same arguments, same list.

    ``distractors``: correct functions beside the buggy one (1..3; their tests are the pass-to-pass tests);
    ``bug_kinds``: the mutations drawn from (a subset of :data:`BUG_KINDS`); ``held_out``: "sites" keys the
    split by bug site (a held-out bug -- function, buggy line, fix -- never appears in training, one task per
    site), "repos" by the whole repository and issue (a held-out task may repeat a training bug site among
    other functions, names and inputs: what a model trained from scratch can be measured on)."""
    if held_out not in HELD_OUT:
        raise ValueError(f"held_out must be one of {HELD_OUT}, got {held_out!r}")
    if difficulty not in (1, 2, 3):
        raise ValueError(f"difficulty must be 1, 2 or 3, got {difficulty}")
    if distractors not in (1, 2, 3):
        raise ValueError(f"distractors must be 1, 2 or 3 (pass-to-pass tests need one), got {distractors}")
    unknown = set(bug_kinds) - set(BUG_KINDS)
    if unknown or not bug_kinds:
        raise ValueError(f"bug_kinds must be a non-empty subset of {BUG_KINDS}, got {list(bug_kinds)}")
    kinds = tuple(sorted(bug_kinds))

    def make(rng: random.Random) -> SweTask:
        while (task := _make(rng, difficulty, distractors, kinds)) is None:
            pass
        return task

    if (distractors, kinds, held_out) == (2, tuple(sorted(BUG_KINDS)), "sites"):
        salt = f"{_SALT}/{difficulty}"
    else:
        salt = f"{_SALT}/{difficulty}/{distractors}/{','.join(kinds)}/{held_out}"
    key = (lambda t: t.bug_site) if held_out == "sites" else (lambda t: t.id)
    return generate_items(make, key, split, n, seed, salt)


def tasks(difficulties: Sequence[int], split: str, n: int, seed: int, distractors: int = 2,
          bug_kinds: Sequence[str] = BUG_KINDS, held_out: str = "sites") -> list[SweTask]:
    """``n`` tasks spread over the difficulty levels."""
    out: list[SweTask] = []
    for level, count in zip(difficulties, spread(n, list(difficulties))):
        out += generate(split, count, seed, level, distractors, bug_kinds, held_out)
    return out


def swe_sample(task: SweTask, domain: str, messages: list[Message], mode: str) -> Sample:
    """The sample every SWE environment and the reward share: the repository, the hidden tests, the fix."""
    answer = {"files": task.files, "hidden": task.hidden, "fixed": task.fixed,
              "fail_to_pass": list(task.fail_to_pass), "pass_to_pass": list(task.pass_to_pass)}
    return Sample(task.id, domain, messages, answer, {"mode": mode, "difficulty": task.difficulty, "bug_kind": task.bug_kind})
