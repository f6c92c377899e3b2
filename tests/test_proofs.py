"""cascade.rewards.proofs: the chain format, each inequality rule on both sides, the conclusion check,
the parser's limits, and the isolated verifier's timeout. Tables read as examples of the format."""

from __future__ import annotations

import pytest

from cascade.rewards.proofs import ProofFormatError, ProofVerifier, check_proof, compose, implies, parse_claim


def chain(*lines: str) -> str:
    return "\n".join([*lines, "QED"])


SQUARE = "x**2+9 >= 6*x"
SQUARE_PROOF = chain("x**2+9", "= (x-3)**2+6*x", ">= 6*x [rule: drop_nonneg_term]")

# (claim, proof, score, status, the step verdicts: "ok" or a piece of the reason)
CASES = [
    # ---- = steps: identity of the two sides -----------------------------------------------------
    ("(a+b)**2-(a-b)**2 = 4*a*b", chain("(a+b)**2-(a-b)**2", "= (a**2+2*a*b+b**2)-(a**2-2*a*b+b**2)", "= 4*a*b"),
     1.0, "ok", ["ok", "ok"]),
    ("1/(x*(x+1))+1/((x+1)*(x+2)) = 2/(x*(x+2))",
     chain("1/(x*(x+1))+1/((x+1)*(x+2))", "= (1/x-1/(x+1))+(1/(x+1)-1/(x+2))", "= 1/x-1/(x+2)", "= 2/(x*(x+2))"),
     1.0, "ok", ["ok", "ok", "ok"]),
    ("(x+3)*(x-4) = x**2-x-12", chain("(x+3)*(x-4)", "= x*(x-4)+3*(x-4)", "= x**2-4*x+3*x-11", "= x**2-x-12"),
     pytest.approx(1 / 3), "ok", ["ok", "not equal", "not equal"]),                   # a slip, partial credit
    ("(x+3)*(x-4) = x**2-x-12", chain("(x+3)*(x-4)", "= x*(x-4)+3*(x-4)", "= x**2-4*x+3*x-12", "= x**2-x-12 [rule: am_gm]"),
     pytest.approx(2 / 3), "ok", ["ok", "ok", "rule on an = step"]),
    (SQUARE, chain("x^2+9", "= (x-3)^2+6*x", ">= 6*x [rule: drop_nonneg_term]"), 1.0, "ok", ["ok", "ok"]),  # ^ is **
    (SQUARE, chain("x**2+9", "= x**2+9", "= (x-3)**2+6*x", ">= 6*x [rule: drop_nonneg_term]"),
     pytest.approx(2 / 3), "ok", ["no change", "ok", "ok"]),
    # the claim copied back as its own proof, either way round: a true identity, but no proof
    ("(a+b)**2-(a-b)**2 = 4*a*b", chain("(a+b)**2-(a-b)**2", "= 4*a*b"), 0.0, "ok", ["restates the claim"]),
    ("(a+b)**2-(a-b)**2 = 4*a*b", chain("4*a*b", "= (a+b)**2-(a-b)**2"), 0.0, "ok", ["restates the claim"]),
    # ---- inequality steps need a rule that really gives them -------------------------------------
    (SQUARE, chain("x**2+9", "= (x-3)**2+6*x", ">= 6*x"), 0.5, "ok", ["ok", "needs [rule"]),
    (SQUARE, chain("x**2+9", "= (x-3)**2+6*x", ">= 6*x [rule: obvious]"), 0.5, "ok", ["ok", "unknown rule"]),
    # square_nonneg: the factored difference is manifestly >= 0 (> 0 for strict steps)
    ("a**2+b**2 >= 2*a*b", chain("a**2+b**2", ">= 2*a*b [rule: square_nonneg]"), 1.0, "ok", ["ok"]),
    ("x+1/x >= 2 for x > 0", chain("x+1/x", ">= 2 [rule: square_nonneg]"), 1.0, "ok", ["ok"]),
    ("x+1/x >= 2", chain("x+1/x", ">= 2 [rule: square_nonneg]"), 0.0, "ok", ["square_nonneg does not"]),  # x < 0
    ("a**2+b**2 >= 3*a*b", chain("a**2+b**2", ">= 3*a*b [rule: square_nonneg]"), 0.0, "ok", ["square_nonneg does not"]),
    ("a**2+1 > 0", chain("a**2+1", "> 0 [rule: square_nonneg]"), 1.0, "ok", ["ok"]),
    ("a**2+b**2 > 2*a*b", chain("a**2+b**2", "> 2*a*b [rule: square_nonneg]"), 0.0, "ok", ["square_nonneg does not"]),
    # drop_nonneg_term: the smaller side is the larger minus manifestly nonnegative terms
    (SQUARE, SQUARE_PROOF, 1.0, "ok", ["ok", "ok"]),
    ("x**2-4*x+7 > 0", chain("x**2-4*x+7", "= (x-2)**2+3", "> 0 [rule: drop_nonneg_term]"), 1.0, "ok", ["ok", "ok"]),
    ("x**2+x >= x**2 for x > 0", chain("x**2+x", ">= x**2 [rule: drop_nonneg_term]"), 1.0, "ok", ["ok"]),
    ("x**2+x >= x**2", chain("x**2+x", ">= x**2 [rule: drop_nonneg_term]"), 0.0, "ok", ["drop_nonneg_term does not"]),
    ("x**2+9 >= (x-3)**2", chain("x**2+9", "= (x-3)**2+6*x", ">= (x-3)**2 [rule: drop_nonneg_term]"),
     0.5, "ok", ["ok", "drop_nonneg_term does not"]),                                # 6*x may be negative
    ("x**2+9 > 6*x", chain("x**2+9", "= (x-3)**2+6*x", "> 6*x [rule: drop_nonneg_term]"),
     0.5, "ok", ["ok", "drop_nonneg_term does not"]),                                # false at x = 3
    ("x**2+9 >= 5*x", chain("x**2+9", "= (x-3)**2+6*x", ">= 5*x [rule: drop_nonneg_term]"),
     0.5, "ok", ["ok", "drop_nonneg_term does not"]),                                # true, but not by dropping
    # am_gm: u + v (both >= 0) becomes 2*sqrt(u*v), other terms kept; never strict
    ("4*x+9/x >= 12 for x > 0", chain("4*x+9/x", ">= 2*sqrt(4*x*(9/x)) [rule: am_gm]", "= 12"), 1.0, "ok", ["ok", "ok"]),
    ("(a+2*b)*(1/a+2/b) >= 9 for a, b > 0",
     chain("(a+2*b)*(1/a+2/b)", "= 2*a/b+2*b/a+5", ">= 2*sqrt(2*a/b*(2*b/a))+5 [rule: am_gm]", "= 9"),
     1.0, "ok", ["ok", "ok", "ok"]),
    ("4*x+9/x >= 12", chain("4*x+9/x", ">= 2*sqrt(4*x*(9/x)) [rule: am_gm]", "= 12"),
     0.5, "ok", ["am_gm does not", "ok"]),                                           # x < 0
    ("4*x+9/x >= 13 for x > 0", chain("4*x+9/x", ">= 2*sqrt(4*x*(9/x))+1 [rule: am_gm]", "= 13"),
     0.5, "ok", ["am_gm does not", "ok"]),
    ("x+1/x > 2 for x > 0", chain("x+1/x", "> 2*sqrt(x*(1/x)) [rule: am_gm]", "= 2"), 0.5, "ok", ["am_gm does not", "ok"]),
    # ---- the conclusion: the chain's ends and composed relation must be the claim ----------------
    (SQUARE, chain("6*x", "<= (x-3)**2+6*x [rule: drop_nonneg_term]", "= x**2+9"),        # either way round
     1.0, "ok", ["ok", "ok"]),
    (SQUARE, chain("x**2+9", "= (x-3)**2+6*x"), 0.0, "wrong_conclusion", ["ok"]),            # stops short
    (SQUARE, chain("x**2+10", "= (x-3)**2+6*x+1", ">= 6*x [rule: drop_nonneg_term]"),      # true steps, another claim
     0.0, "wrong_conclusion", ["ok", "ok"]),
    ("a**2+b**2 >= 2*a*b", chain("a**2+b**2", ">= 0 [rule: drop_nonneg_term]"), 0.0, "wrong_conclusion", ["ok"]),
    ("x**2+9 <= 6*x", SQUARE_PROOF, 0.0, "wrong_conclusion", ["ok", "ok"]),                 # the wrong direction
    ("a**2+b**2 > 2*a*b", chain("a**2+b**2", ">= 2*a*b [rule: square_nonneg]"), 0.0, "wrong_conclusion", ["ok"]),
    ("(a+b)**2 = a**2+2*a*b+b**2", chain("(a+b)**2", "<= (a+b)**2+a**2 [rule: drop_nonneg_term]",
                                          "= a**2+a**2+2*a*b+b**2", ">= a**2+2*a*b+b**2 [rule: drop_nonneg_term]"),
     0.0, "wrong_conclusion", ["ok", "ok", "ok"]),                                            # <= then >= proves nothing
]


@pytest.mark.parametrize("claim, proof, score, status, verdicts", CASES)
def test_check_proof(claim, proof, score, status, verdicts):
    report = check_proof(claim, proof)
    assert (report.score, report.status) == (score, status), report
    assert len(report.steps) == len(verdicts)
    for step, expected in zip(report.steps, verdicts):
        assert step.valid if expected == "ok" else (not step.valid and expected in step.reason), report.steps


def test_all_or_nothing_and_verdicts():
    partial = chain("(x+3)*(x-4)", "= x*(x-4)+3*(x-4)", "= x**2-4*x+3*x-11", "= x**2-x-12")
    assert check_proof("(x+3)*(x-4) = x**2-x-12", partial, partial=False).score == 0.0
    assert check_proof("(x+3)*(x-4) = x**2-x-12", partial).verdict == "invalid at step 2"
    assert check_proof(SQUARE, SQUARE_PROOF, partial=False).score == 1.0
    assert check_proof(SQUARE, SQUARE_PROOF).verdict == "valid"
    assert check_proof(SQUARE, chain("x**2+9", "= (x-3)**2+6*x")).verdict == "invalid at step 1"  # ends elsewhere
    assert check_proof(SQUARE, "QED").verdict == "invalid"


# Not a proof in the format: 0, status "format", whatever the rest says; the text names the problem.
FORMAT_CASES = [
    (chain("x**2+9", "= __import__"), "name '__import__'"),
    (chain("x**2+9", "= __import__('os').system('true')"), "not allowed"),
    (chain("x**2+9", "= x.conjugate()"), "'.'"),
    (chain("x**2+9", "= (lambda: 6*x)()"), "':'"),
    (chain("x**2+9", "= exp(x)"), "name 'exp'"),
    (chain("x**2+9", "= 0.5*x"), "'.'"),
    (chain("x**2+9", "= 2x"), "not an expression"),
    (chain("x**2+9", "= x(2)"), "not an expression"),
    (chain("x**2+9", "= x**y"), "exponents must be numbers"),
    (chain("x**2+9", "= (x+1)**(10**6)"), "exponent"),                  # would expand for ever
    (chain("x**2+9", "= 9**9**9"), "exponent"),                         # a power tower is never computed
    (chain("x**2+9", "= 1234567*x"), "digits"),
    (chain("x**2+9", "= " + "(" * 9 + "x" + ")" * 9), "nested"),
    (chain("x**2+9", "= " + "+".join(["x"] * 90)), "longer than"),
    (chain("x**2+9", "= 1/0"), "undefined"),
    (chain("x**2+9", "== 6*x"), "'='"),
    (chain("= x**2+9", ">= 6*x [rule: square_nonneg]"), "starts with an expression"),
    (chain("x**2+9"), "no steps"),
    ("x**2+9\n>= 6*x [rule: square_nonneg]", "must end with"),
    ("x**2+9\n>= 6*x [rule: square_nonneg]\nQED\nso it holds", "must end with"),
    ("x**2+9\nQED\n>= 6*x [rule: square_nonneg]\nQED", "after QED"),
    ("", "must end with"),
    (chain("x**2+9", *[">= 6*x [rule: square_nonneg]"] * 13), "more than 12 steps"),
]


@pytest.mark.parametrize("proof, message", FORMAT_CASES)
def test_not_in_the_format_scores_zero(proof, message):
    report = check_proof(SQUARE, proof)
    assert (report.score, report.status, report.verdict) == (0.0, "format", "invalid")
    assert message in report.detail


def test_a_malformed_claim_is_a_data_bug():
    with pytest.raises(ProofFormatError):
        parse_claim("x**2 + 9")
    assert parse_claim("a/b+b/a >= 2 for a, b > 0").positive == ("a", "b")


@pytest.mark.parametrize("relations, composed", [
    (["="], "="), (["=", "<="], "<="), (["<=", "<", "="], "<"), ([">=", "="], ">="), ([">", ">="], ">"),
    (["<=", ">="], None), (["<", "=", ">"], None)])
def test_compose(relations, composed):
    assert compose(relations) == composed


@pytest.mark.parametrize("proved, claimed, holds", [
    ("=", "=", True), ("=", "<=", True), ("=", ">=", True), ("<", "<=", True), ("<", "<", True), (">", ">=", True),
    ("<=", "<", False), ("<=", "=", False), ("<", ">=", False), ("=", "<", False), (">=", "<=", False)])
def test_implies(proved, claimed, holds):
    assert implies(proved, claimed) is holds


# ---- the isolated verifier ---------------------------------------------------------------------------

S = "(a+b+c+d+e+f+g)"
HEAVY = (f"{S}**40 >= 0",  # a true step whose check expands ~10^7 terms: sympy would spin for minutes
         chain(f"{S}**40", f"= {S}**38*(a**2+2*a*(b+c+d+e+f+g)+(b+c+d+e+f+g)**2)", ">= 0 [rule: square_nonneg]"))


def test_verifier_times_out_a_hang_scores_zero_and_recovers():
    with ProofVerifier(timeout=2.0) as verifier:
        heavy, square, unparsable = verifier.check([HEAVY, (SQUARE, SQUARE_PROOF), (SQUARE, "import os")])
    assert (heavy.score, heavy.status) == (0.0, "timeout")
    assert (square.score, square.status, square.verdict) == (1.0, "ok", "valid")
    assert (unparsable.score, unparsable.status) == (0.0, "format")
    assert heavy.info()["status"] == "timeout" and square.info()["verdicts"] == ["ok", "ok"]
