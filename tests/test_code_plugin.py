"""cascade-code: the problem generator, answer extraction, and the `code_tests` reward run against the real
sandbox: reference solutions pass, wrong and hostile programs score 0 with the right status and never raise."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from cascade import Episode, Sample
from cascade.environments.sandbox import SandboxPool
from cascade_code import grading, problems
from cascade_code.extract import extract_code
from cascade_code.plugin import CodeEnvironment, CodeTestsReward

NT = "<think></think>"


def fenced(code: str) -> str:
    return f"{NT}```python\n{code}\n```"


def episode(sample: Sample, answer: str) -> Episode:
    return Episode(sample, list(sample.messages) + [{"role": "assistant", "content": answer}], [], [], [])


@pytest.fixture(scope="module")
def reward():
    """Short limits so the hostile cases that must time out cost about a second each."""
    reward = CodeTestsReward(wall_seconds=1.5, cpu_seconds=1)
    yield reward
    reward.close()


def scored(reward, sample, answer):
    (result,) = reward.score([episode(sample, answer)])
    return result


# ---- generator -----------------------------------------------------------------------------------


@pytest.mark.parametrize("difficulty", problems.LEVELS)
def test_generator_is_deterministic_seeded_and_sized(difficulty):
    train = problems.generate("train", 60, 0, difficulty)
    assert train == problems.generate("train", 60, 0, difficulty)
    assert [p.task for p in train] != [p.task for p in problems.generate("train", 60, 1, difficulty)]
    for p in train:
        assert len(p.steps) == difficulty - 1
        assert len(p.prompt) < 350 and len(p.answer) < 200
        assert len(p.inputs) == len(p.expected) == 5
        assert len(set(map(repr, p.expected))) > 1  # a constant answer never passes
    assert set(Counter(p.form for p in train)) == set(problems.FORMS)


@pytest.mark.parametrize("difficulty", problems.LEVELS)
def test_splits_are_disjoint(difficulty):
    train = {p.task for p in problems.generate("train", 1500, 0, difficulty)}
    test = {p.task for p in problems.generate("test", 400, 0, difficulty)}  # level 1 holds ~770 test tasks
    assert len(train) == 1500 and len(test) == 400 and train.isdisjoint(test)
    # the split of a task is its own: other options draw other problems, never a task of the other split
    only_add = {p.task for p in problems.generate("test", 200, 3, difficulty, families=["add", "reverse"])}
    assert only_add.isdisjoint(train)


@pytest.mark.parametrize("kwargs, message", [
    ({"difficulty": 4}, "difficulty"),
    ({"families": ["add", "fizzbuzz"]}, "families"),
    ({"families": []}, "families"),
    ({"forms": ["repl"]}, "forms"),
    ({"tests": 0}, "tests"),
])
def test_generator_refuses_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        problems.generate("train", 5, 0, **kwargs)


def test_environment_refuses_bad_options_at_construction():
    with pytest.raises(ValueError, match="difficulties"):
        CodeEnvironment(difficulties=[0])
    with pytest.raises(ValueError, match="families"):
        CodeEnvironment(families=["nope"])


def test_samples_carry_inputs_and_the_reward_keeps_expected_outputs_out_of_the_sandbox():
    env = CodeEnvironment([1, 2])
    env.domain = "code"
    samples = env.samples("test", 10, 0)
    assert len(samples) == 10 and [s.meta["difficulty"] for s in samples] == [1] * 5 + [2] * 5
    for sample in samples:
        assert sample.domain == "code" and sample.messages[0]["content"].endswith(problems.INSTRUCTION)
        job = grading.build_job("pass", sample.answer, CodeTestsReward().limits)
        assert set(job.files) == {"solution.py", "harness.py", "cases.json"}
        assert set(json.loads(job.files["cases.json"])) == {"form", "entry", "inputs"}
        assert job.files["harness.py"] == grading.HARNESS and job.files["solution.py"] == "pass"


def test_demonstrations_are_the_reference_solutions_in_the_answer_format():
    env = CodeEnvironment([1, 2, 3])
    demos = env.demonstrations(9, 0)
    reference = env.problems("train", 9, 1)  # demonstrations(seed) draws the train problems of seed + 1
    assert [d[0]["content"] for d in demos] == [p.prompt for p in reference]
    for demo, p in zip(demos, reference):
        assert demo[1] == {"role": "assistant", "content": NT + p.answer}
        assert extract_code(demo[1]["content"]).strip() == p.solution


def test_every_family_form_and_level_passes_its_own_hidden_tests(reward):
    """The reference code of a sample of each family, form and level passes through the real sandbox: its
    template means what its independently computed expected outputs say."""
    chosen: dict[tuple, problems.CodeProblem] = {}
    for p in problems.generate("train", 400, 7, 1):
        chosen.setdefault((p.family, p.form), p)
    for p in problems.generate("train", 300, 7, 2):  # each transformation once...
        chosen.setdefault(p.steps, p)
    for p in problems.generate("train", 300, 7, 3):  # ...and every family under two of them
        chosen.setdefault((p.family, 3), p)
    assert len(chosen) == 2 * len(problems.FAMILIES) + len(problems.STEPS) + len(problems.FAMILIES)
    samples = [Sample(p.id, "code", [{"role": "user", "content": p.prompt}], p.tests()) for p in chosen.values()]
    results = reward.score([episode(s, NT + p.answer) for s, p in zip(samples, chosen.values())])
    failed = [(p.task, r.info) for p, r in zip(chosen.values(), results) if r.value != 1.0]
    assert not failed
    assert all(r.info["tests_passed"] == r.info["tests"] == 5 for r in results)


# ---- answer extraction ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, code", [
    (fenced("print(1)"), "print(1)\n"),
    ("Draft:\n```python\nprint(1)\n```\nBetter:\n```python\nprint(2)\n```\nDone.", "print(2)\n"),   # the last block
    ("```\nprint(3)\n```", "print(3)\n"),                                                         # untagged
    ("```py\nprint(4)\n```\nRun it:\n```bash\npython main.py\n```", "print(4)\n"),               # other languages skipped
    ("print(5)", "print(5)"),                                                                     # no fence: the whole answer
    ("<think>```python\nprint(0)\n```</think>```python\nprint(6)\n```", "print(6)\n"),           # thinking removed
    ("<think>```python\nprint(0)\n```", None),                                                    # unfinished thinking
    ("```python\nprint(7)", "print(7)"),                                                          # cut off: up to the end
    ("1. code:\n   ```python\n   x = 8\n   print(x)\n   ```", "x = 8\nprint(x)\n"),               # indented fence
    ("```python\ns = '```'\nprint(s)\n```", "s = '```'\nprint(s)\n"),                             # fence inside a line
    ("```json\n{\"a\": 1}\n```", None),                                                           # fences, none Python
    ("```python print(1)```", None),
    ("```python\n\n```", None),
    ("", None),
    (NT, None),
    (None, None),
])
def test_extract_code(text, code):
    assert extract_code(text) == code


# ---- verdicts on outputs (no sandbox) ------------------------------------------------------------


@pytest.mark.parametrize("expected, got, same", [
    (3, 3, True), (3, 3.0, False), (3, "3", False), (3, True, False), (1, True, False), (True, True, True),
    (1.5, 1.5000001, True), (1.5, 1.501, False), (2.0, 2, True), (0.0, 1e-12, True), (0.0, 1e-6, False),
    (1.5, float("nan"), False), (1.5, "1.5", False), ("ab", "ab", True), ("ab", "ab ", False),
    ("ab", ["a", "b"], False), ([1, 2], [1, 2], True), ([1, 2], [1, 2, 3], False), (None, None, True),
])
def test_same_value(expected, got, same):
    assert grading.same_value(expected, got, 1e-6, 1e-9) is same


@pytest.mark.parametrize("expected, got, same", [
    ("6\n", "6\n", True), ("6\n", "6", True), ("6\n", "6   \n\n\n", True), ("6\n", "6\r\n", True),
    ("6\n", " 6\n", False), ("6\n", "6.0\n", False), ("6\n", "result: 6\n", False), ("6\n", "6\n7\n", False),
    ("6\n", "", False), ("\n", "", True), ("ab\n", "AB\n", False),
    ("2.5\n", "2.5000001\n", True), ("2.5\n", "2.500\n", True), ("2.5\n", "2.51\n", False), ("2.5\n", "5/2\n", False),
    ("2.5\n", "2.5e0\n", True), ("13.333333333333334\n", "13.333333333333332\n", True), ("2.5\n", "nan\n", False),
    ("-3.0\n", "-3\n", True), ("1_0.0\n", "10.0\n", False),
])
def test_same_stdout(expected, got, same):
    assert grading.same_stdout(expected, got, 1e-6, 1e-9) is same


# ---- the reward on the real sandbox: right, wrong and hostile programs ---------------------------

ADD = Sample("add", "code", [{"role": "user", "content": "Write a Python function `add(a, b)` ..."}],
             {"form": "function", "entry": "add", "inputs": [[1, 2], [0, 0], [-3, 5]], "expected": [3, 0, 2]})
MEAN = Sample("mean", "code", [{"role": "user", "content": "Write a Python function `mean(xs)` ..."}],
              {"form": "function", "entry": "mean", "inputs": [[[1, 2]], [[1, 2, 2]]], "expected": [1.5, 5 / 3]})
PRODUCT = Sample("product", "code", [{"role": "user", "content": "Write a Python program that reads ..."}],
                 {"form": "stdio", "entry": "", "inputs": ["2 3\n", "-1 4\n"], "expected": ["6\n", "-4\n"]})
HALF = Sample("half", "code", [{"role": "user", "content": "Write a Python program that reads ..."}],
              {"form": "stdio", "entry": "", "inputs": ["5\n", "1\n"], "expected": ["2.5\n", "0.5\n"]})


@pytest.mark.parametrize("sample, code, status", [
    (ADD, "def add(a, b):\n    return a + b", "passed"),
    (ADD, "def add(a, b):\n    return a + b + 1", "wrong_answer"),                          # off by one
    (ADD, "def add(a, b):\n    return str(a + b)", "wrong_answer"),                         # wrong type
    (ADD, "def add(a, b):\n    return float(a + b)", "wrong_answer"),                       # 3.0 is not the int 3
    (ADD, "def add(a, b):\n    print(a + b)", "wrong_answer"),                              # prints instead of returning
    (ADD, "def add(a, b):\n    return 3", "wrong_answer"),                                  # some tests pass, not all
    (ADD, "def plus(a, b):\n    return a + b", "runtime_error"),                                    # wrong name
    (ADD, "def add(a, b)\n    return a + b", "runtime_error"),                                      # syntax error
    (ADD, "def add(a, b):\n    return a + b + 0 // (a + b)", "runtime_error"),                      # raises on one test
    (ADD, "import sys\nsys.exit(0)\ndef add(a, b):\n    return a + b", "runtime_error"),            # exits while loading
    (ADD, "def add(a, b):\n    return a + b\nif __name__ == '__main__':\n    print(add(int(input()), 1))", "passed"),
    (ADD, "x = bytearray(2 * 1024 ** 3)", "runtime_error"),                                        # MemoryError under RLIMIT_AS
    (MEAN, "def mean(xs):\n    return sum(xs) / len(xs)", "passed"),
    (MEAN, "def mean(xs):\n    return round(sum(xs) / len(xs), 9)", "passed"),              # within the tolerance
    (MEAN, "def mean(xs):\n    return round(sum(xs) / len(xs), 2)", "wrong_answer"),        # outside it
    (MEAN, "def mean(xs):\n    return sum(xs) // len(xs)", "wrong_answer"),
    (PRODUCT, "a, b = map(int, input().split())\nprint(a * b)", "passed"),
    (PRODUCT, "a, b = map(int, open(0).read().split())\nprint(a * b, end='  \\n')", "passed"),  # fd 0, trailing space
    (PRODUCT, "import sys\na, b = map(int, sys.stdin.readline().split())\nprint(a * b)\nsys.exit(0)", "passed"),
    (PRODUCT, "a, b = map(int, input().split())\nprint('result:')\nprint(a * b)", "wrong_answer"),  # extra output
    (PRODUCT, "a, b = map(int, input().split())\nprint(a * b, a)", "wrong_answer"),
    (PRODUCT, "a, b = map(int, input().split())", "wrong_answer"),                          # prints nothing
    (PRODUCT, "a, b = map(int, input().split())\nprint(a * b)\nimport sys\nsys.exit(1)", "runtime_error"),  # non-zero exit
    (PRODUCT, "print(int(input()) * 2)", "runtime_error"),                                          # ValueError: exit 1
    (PRODUCT, "raise SystemExit('boom')", "runtime_error"),
    (HALF, "print(int(input()) / 2)", "passed"),
    (HALF, "print(f'{int(input()) / 2:.4f}')", "passed"),                                   # 2.5000: same number
    (HALF, "print(round(int(input()) / 2))", "wrong_answer"),                               # 2 is not 2.5
])
def test_right_and_wrong_programs(reward, sample, code, status):
    result = scored(reward, sample, fenced(code))
    assert (result.value, result.info["status"]) == (float(status == "passed"), status), result.info
    assert result.info["tests"] == len(sample.answer["expected"])


@pytest.mark.parametrize("sample, code, status", [
    (ADD, "while True:\n    pass", "timeout"),                                             # CPU limit
    (ADD, "import time\ntime.sleep(60)", "timeout"),                                       # wall clock
    (PRODUCT, "while True:\n    pass", "timeout"),                                         # CPU limit in a test's process
    (ADD, "import os\nos._exit(0)", "runtime_error"),                                              # ends before the harness reports
    (PRODUCT, "import os\nprint(6)\nos._exit(0)", "wrong_answer"),                         # its buffered output is lost
    (ADD, 'print(\'{"cases": [{"value": 3}, {"value": 0}, {"value": 2}]}\')\nprint("all tests passed")', "runtime_error"),
    (ADD, "import json, os\njson.dump({'passed': True}, open('report.json', 'w'))\nos._exit(0)", "runtime_error"),
    (ADD, "import json, os\njson.dump({'cases': [{'value': 0}] * 3}, open('report.json', 'w'))\nos._exit(0)", "wrong_answer"),
    (ADD, "import json\ndef add(a, b):\n    return json.load(open('cases.json')).get('expected')", "wrong_answer"),
    (ADD, "H = open('harness.py').read()\ndef add(a, b):\n    return H", "wrong_answer"),
    (PRODUCT, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", "crashed"),     # kills the harness
    (PRODUCT, "import ctypes\nctypes.string_at(0)", "crashed"),                            # segfault in a test
    (ADD, "import ctypes\nctypes.string_at(0)", "crashed"),                                # segfault while loading
    (ADD, "print('x' * 10 ** 6)", "runtime_error"),                                                # floods stdout
    (PRODUCT, "import sys\nsys.stdout.write('x' * 10 ** 7)", "runtime_error"),                     # past the 4 MB file limit: EFBIG
])
def test_hostile_programs_score_zero(reward, sample, code, status):
    result = scored(reward, sample, fenced(code))
    assert (result.value, result.info["status"]) == (0.0, status), result.info


@pytest.mark.parametrize("answer", ["", NT, "   \n", f"{NT}```python\n\n```", f"{NT}```text\nsum\n```", "<think>def add(a, b):"])
def test_answers_without_a_program_score_no_code(reward, answer):
    result = scored(reward, ADD, answer)
    assert (result.value, result.info["status"]) == (0.0, "no_code")


@pytest.mark.parametrize("answer, status", [
    (NT + "def add(a, b):\n    return a + b", "passed"),
    (NT + "I think you should add a and b.", "runtime_error"),  # no fence: the whole answer is the program
])
def test_an_answer_without_a_fence_runs_whole(reward, answer, status):
    assert scored(reward, ADD, answer).info["status"] == status


def test_a_group_is_scored_in_order_and_bad_samples_never_raise(reward):
    broken = Sample("broken", "code", ADD.messages, answer=None)
    missing = Sample("missing", "code", ADD.messages, answer={"form": "function", "entry": "add", "inputs": [[1, 2]]})
    group = [episode(ADD, fenced("def add(a, b):\n    return a + b")), episode(ADD, fenced("def add(a, b):\n    return 0")),
             episode(broken, fenced("def add(a, b):\n    return a + b")), episode(missing, fenced("def add(a, b):\n    return a + b")),
             episode(ADD, "")]
    statuses = [r.info["status"] for r in reward.score(group)]
    assert statuses == ["passed", "wrong_answer", "error", "error", "no_code"]
    assert reward.score([]) == []


def test_a_failing_sandbox_scores_sandbox_error():
    class BrokenPool:
        def map(self, jobs):
            raise RuntimeError("no jail today")

    reward = CodeTestsReward()
    reward._pool = BrokenPool()
    (result,) = reward.score([episode(ADD, fenced("def add(a, b):\n    return a + b"))])
    assert (result.value, result.info["status"]) == (0.0, "sandbox_error") and "no jail today" in result.info["detail"]


def test_rollouts_with_the_same_program_share_one_run():
    class CountingPool:
        def __init__(self):
            self.jobs = 0
            self.real = SandboxPool(2)

        def map(self, jobs):
            self.jobs += len(jobs)
            return self.real.map(jobs)

    reward, pool = CodeTestsReward(), CountingPool()
    reward._pool = pool
    right, wrong = fenced("def add(a, b):\n    return a + b"), fenced("def add(a, b):\n    return a - b")
    results = reward.score([episode(ADD, a) for a in (right, wrong, right, "print(1)", right, wrong)])
    pool.real.close()
    assert pool.jobs == 3
    assert [r.value for r in results] == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]


def test_reward_starts_its_pool_lazily_and_closes_it():
    reward = CodeTestsReward()
    assert reward._pool is None
    reward.close()  # nothing to close
    assert reward.score([episode(ADD, fenced("def add(a, b):\n    return a + b"))])[0].value == 1.0
    assert reward._pool is not None
    reward.close()
    assert reward._pool is None


# ---- registration and presets --------------------------------------------------------------------


def test_plugin_is_registered_with_its_presets():
    from cascade.config import compose, to_container, validate_options
    from cascade.engine.grpo import GRPOStage
    from cascade.plugins import PluginManager

    plugins = PluginManager().load()
    assert "code" in plugins.components["environments"] and "code_tests" in plugins.components["rewards"]
    assert "pkg://cascade_code.conf" in plugins.config_searchpaths()
    cfg = to_container(compose(["cascade=math", "+domain@cascade.domains.code=code", "+stage@cascade.stages.code_rl=code_rl"],
                               plugins.config_searchpaths()))["cascade"]
    domain, stage = cfg["domains"]["code"], cfg["stages"]["code_rl"]
    assert domain["environment"] == "code" and domain["reward"] == "code_tests"
    assert CodeEnvironment(**domain["environment_options"]).families == list(problems.FAMILIES)
    assert CodeTestsReward(**domain["reward_options"]).limits.wall_seconds == 3.0
    assert len(CodeEnvironment(**domain["environment_options"]).samples("test", domain["eval"]["n"], 0)) == domain["eval"]["n"]
    assert stage["type"] == "grpo" and stage["domains"] == ["code"]
    assert stage["params"]["prefilter_samples"] == 4 and stage["params"]["prompt_pool"] == 256
    assert stage["params"]["kl_coef"] == 0.0  # inherited from the shared GRPO preset
    params = validate_options(GRPOStage.Config, stage["params"], "stages.code_rl.params")  # every key is a GRPO option
    assert params.prefilter_samples == 4
