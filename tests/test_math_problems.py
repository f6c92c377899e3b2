"""The generated math problems: deterministic, disjoint splits, right answers, imitable solutions."""

from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction

import pytest

from cascade.rewards.math import verify_math
from cascade_math.problems import KINDS, LEVELS, generate, solution, split_of

NUMBER = re.compile(r"\d+")


def test_same_arguments_give_the_same_problems() -> None:
    assert generate("train", 60, seed=1, difficulty=3) == generate("train", 60, seed=1, difficulty=3)
    assert generate("train", 60, seed=1, difficulty=3) != generate("train", 60, seed=2, difficulty=3)


@pytest.mark.parametrize("difficulty", sorted(LEVELS))
def test_train_and_test_never_share_a_question(difficulty: int) -> None:
    train = {p.question for seed in range(3) for p in generate("train", 200, seed, difficulty)}
    test = {p.question for seed in range(3) for p in generate("test", 100, seed, difficulty)}
    assert not train & test
    assert all(split_of(q) == "train" for q in train)
    assert all(split_of(q) == "test" for q in test)


def test_questions_and_ids_are_unique_and_kinds_balanced() -> None:
    problems = generate("train", 300, seed=0, difficulty=2)
    assert len({p.question for p in problems}) == 300
    assert len({p.id for p in problems}) == 300
    assert Counter(p.kind for p in problems) == {kind: 100 for kind in KINDS}
    assert all(p.difficulty == 2 for p in problems)


def test_difficulty_raises_operand_size() -> None:
    def largest_numbers(difficulty: int) -> list[int]:
        problems = generate("train", 150, seed=0, difficulty=difficulty)
        return [max(int(n) for n in NUMBER.findall(p.question)) for p in problems]

    means = [sum(ns) / len(ns) for ns in map(largest_numbers, sorted(LEVELS))]
    assert means == sorted(means) and means[0] < means[-1] / 4
    assert max(largest_numbers(1)) <= LEVELS[1].max_operand


def test_difficulty_one_is_short() -> None:
    for p in generate("train", 90, seed=0, difficulty=1):
        assert len(p.question) < 90
        assert len(solution(p).splitlines()) <= 3
        assert Fraction(p.answer) >= 0


def test_fractional_answers_appear_only_when_allowed() -> None:
    hard = generate("train", 300, seed=0, difficulty=5, kinds=["linear"])
    assert any("/" in p.answer for p in hard)
    easy = generate("train", 300, seed=0, difficulty=3, kinds=["linear"])
    assert not any("/" in p.answer for p in easy)


def test_bad_arguments_and_an_exhausted_split_raise() -> None:
    with pytest.raises(ValueError, match="split"):
        generate("validation", 1, 0, 1)
    with pytest.raises(ValueError, match="difficulty"):
        generate("train", 1, 0, 6)
    with pytest.raises(ValueError, match="kinds"):
        generate("train", 1, 0, 1, kinds=["geometry"])
    with pytest.raises(ValueError, match="distinct"):  # difficulty 1 arithmetic has ~600 questions
        generate("test", 1000, 0, 1, kinds=["arithmetic"])


# --------------------------------------------------------------------------------------
# Answers are right (checked independently of the generator) and solutions verify.
# --------------------------------------------------------------------------------------


def _evaluate_linear_side(side: str, x: Fraction) -> Fraction:
    # Sides look like "3x + 5", "-x - 2", "4x" or "7": make them Python and evaluate exactly.
    expr = re.sub(r"(\d)x", r"\1*x", side.replace(" ", ""))
    return eval(expr, {"__builtins__": {}}, {"x": x})  # noqa: S307 - our own generated text


def _check_answer(problem) -> None:
    answer = Fraction(problem.answer)
    if problem.kind == "arithmetic":
        expression = problem.question.removeprefix("What is ").removesuffix("?")
        assert Fraction(eval(expression, {"__builtins__": {}})) == answer  # noqa: S307
    elif problem.kind == "linear":
        left, right = problem.question.removeprefix("Solve for x: ").split(" = ")
        assert _evaluate_linear_side(left, answer) == _evaluate_linear_side(right, answer)
    else:  # word problems: every step line "a op b=c" is true and the last one is the answer
        results = []
        for line in problem.steps:
            expression, result = line.split("=")
            assert Fraction(eval(expression, {"__builtins__": {}})) == Fraction(result)  # noqa: S307
            results.append(Fraction(result))
        assert results[-1] == answer


@pytest.mark.parametrize("difficulty", sorted(LEVELS))
def test_answers_are_right_and_solutions_verify(difficulty: int) -> None:
    problems = generate("train", 60, seed=7, difficulty=difficulty) + generate(
        "test", 30, seed=7, difficulty=difficulty)
    for problem in problems:
        _check_answer(problem)
        worked = solution(problem)
        assert worked.endswith(f"\\boxed{{{problem.answer}}}")
        assert verify_math(worked, problem.answer, require_number=True) == 1.0, worked
        wrong = worked.replace(f"\\boxed{{{problem.answer}}}", f"\\boxed{{{Fraction(problem.answer) + 1}}}")
        assert verify_math(wrong, problem.answer) == 0.0, wrong
