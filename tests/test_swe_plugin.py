"""cascade-swe: generated buggy repositories, edit parsing and applying, SWE-bench grading through the real
sandbox (hostile patches included), the agentic environment driven turn by turn with scripted assistant
messages, and the presets (no model needed)."""

from __future__ import annotations

import functools
import re

import pytest

from cascade import Episode
from cascade.environments import tool_calls
from cascade.environments.generated import split_of
from cascade.environments.sandbox import Limits, SandboxPool
from cascade.environments.tool_calls import render_call
from cascade_swe import repos
from cascade_swe.agentic import TOOLS, SweAgenticEnvironment, replay
from cascade_swe.agentless import SweAgentlessEnvironment, search_replace
from cascade_swe.edits import EditError, apply_answer
from cascade_swe.repos import SweTask, swe_sample
from cascade_swe.reward import SweTestsReward, change_similarity
from cascade_swe.testrun import grade, read_report, suite_job
from conftest import drive

NT = "<think></think>"


@functools.cache
def level_tasks(difficulty: int) -> tuple[SweTask, ...]:
    return tuple(repos.generate("train", 6, 7, difficulty))


@pytest.fixture(scope="module")
def reward():
    r = SweTestsReward(cpu_seconds=1, wall_seconds=2.0)
    yield r
    r.close()


def agentless(task: SweTask, answer: str) -> Episode:
    sample = swe_sample(task, "swe", SweAgentlessEnvironment.prompt(task), "agentless")
    return Episode(sample, sample.messages + [{"role": "assistant", "content": NT + answer}], [], [], [])


def fix(task: SweTask) -> str:
    return search_replace(task.bug_file, task.buggy_line, task.fixed_line)


# ---- generator -----------------------------------------------------------------------------------


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_generator_is_seeded_and_splits_are_disjoint(difficulty):
    train = repos.generate("train", 40, 0, difficulty)
    assert [t.id for t in train] == [t.id for t in repos.generate("train", 40, 0, difficulty)]
    assert [t.id for t in train] != [t.id for t in repos.generate("train", 40, 1, difficulty)]
    test = repos.generate("test", 25, 0, difficulty)
    assert len(train) == 40 and len(test) == 25
    assert {t.bug_site for t in train}.isdisjoint(t.bug_site for t in test)
    salt = f"cascade-swe/repos/{difficulty}"
    assert all(split_of(t.bug_site, salt) == "train" for t in train) and all(split_of(t.bug_site, salt) == "test" for t in test)
    for t in train + test:
        fixed_repo = {**t.files, **t.fixed}
        changed = [(a, b) for p in t.fixed for a, b in zip(t.files[p].splitlines(), fixed_repo[p].splitlines()) if a != b]
        assert changed == [(t.buggy_line, t.fixed_line)]            # the bug is one line
        assert "".join(t.files[p] for p in t.sources).count(t.buggy_line.strip()) == 1
        assert t.bug_kind in repos.BUG_KINDS and t.difficulty == difficulty
        assert len(t.issue) < 80 and sum(len(t.files[p]) for p in t.sources) < 330
        named = t.issue.split("(")[0]
        fixed_text = t.fixed[t.bug_file]
        bug_function = re.findall(r"def (\w+)\(", fixed_text[: fixed_text.index(t.fixed_line)])[-1]
        assert (bug_function == named) == (difficulty == 1)         # level 2+: the bug is in a helper
        assert (t.bug_file == "util.py") == (difficulty == 3) and ("util.py" in t.files) == (difficulty == 3)
        assert all(f.startswith("test_issue.py::") for f in t.fail_to_pass) and t.pass_to_pass
        assert not any(p in t.files for p in t.hidden)               # hidden tests are not in the repository
    assert len({t.bug_kind for t in train}) >= 4


def test_bad_difficulty_is_refused():
    with pytest.raises(ValueError, match="difficulty"):
        repos.generate("train", 1, 0, 4)


@pytest.mark.parametrize("kwargs, message", [({"distractors": 0}, "distractors"), ({"bug_kinds": ["typo"]}, "bug_kinds"),
                                             ({"bug_kinds": []}, "bug_kinds"), ({"held_out": "files"}, "held_out")])
def test_bad_generator_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        repos.generate("train", 1, 0, **kwargs)


def test_distractors_bug_kinds_and_held_out_repos():
    """One correct function beside the buggy one, only the asked mutations; held out by repository, a test task may
    repeat a training bug site but never a training repository."""
    options = {"distractors": 1, "bug_kinds": ["operator", "comparison"], "held_out": "repos"}
    train, test = (repos.generate(split, 300, 0, 1, **options) for split in ("train", "test"))
    assert len(train) == len(test) == 300
    assert {t.bug_kind for t in train + test} == {"operator", "comparison"}
    assert all(len(re.findall(r"^def ", t.files[t.bug_file], re.M)) == 2 and len(t.pass_to_pass) == 1 for t in train + test)
    assert {t.id for t in train}.isdisjoint(t.id for t in test)
    assert {t.bug_site for t in train} & {t.bug_site for t in test}
    env = SweAgentlessEnvironment(**options)
    assert [s.id for s in env.samples("test", 5, 0)] == [t.id for t in test[:5]]


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_buggy_repo_fails_exactly_fail_to_pass_and_the_fix_resolves(difficulty):
    tasks = level_tasks(difficulty)
    limits = Limits(cpu_seconds=2, wall_seconds=5.0)
    runs = []
    for t in tasks:
        tests = sorted({*(p for p in t.files if p.startswith("test_")), *t.hidden})
        runs += [suite_job(t.files, tests, limits, t.hidden), suite_job({**t.files, **t.fixed}, tests, limits, t.hidden)]
    with SandboxPool(2) as pool:
        results = pool.map([r.job for r in runs])
    for i, t in enumerate(tasks):
        buggy, fixed = (read_report(results[2 * i + k], runs[2 * i + k].nonce) for k in (0, 1))
        assert buggy.status == fixed.status == "ran"
        assert {k for k, v in buggy.tests.items() if v["outcome"] == "failed"} == set(t.fail_to_pass)
        assert set(buggy.tests) == set(t.fail_to_pass) | set(t.pass_to_pass)
        assert grade(buggy, t.fail_to_pass, t.pass_to_pass).status == "unresolved"
        assert grade(fixed, t.fail_to_pass, t.pass_to_pass).resolved


# ---- edits ---------------------------------------------------------------------------------------

REPO = {
    "shop.py": "def total(price, qty):\n    return price * qty\n\ndef with_tax(price):\n    return price * 90 // 100\n\ndef half(price):\n    return price * 90 // 100 // 2\n",
    "test_shop.py": "import shop\n\n\ndef test_total():\n    assert shop.total(2, 3) == 6\n",
}
SR = "<<<<<<< SEARCH\n{}\n=======\n{}\n>>>>>>> REPLACE"
GOOD_DIFF = """--- a/shop.py
+++ b/shop.py
@@ -4,2 +4,2 @@
 def with_tax(price):
-    return price * 90 // 100
+    return price * 110 // 100
"""
FIXED = REPO["shop.py"].replace("def with_tax(price):\n    return price * 90", "def with_tax(price):\n    return price * 110")


@pytest.mark.parametrize("answer, expected", [
    ("shop.py\n" + SR.format("    return price * qty", "    return price + qty"), REPO["shop.py"].replace("price * qty", "price + qty")),
    ("### shop.py\n```python\n" + SR.format("def with_tax(price):\n    return price * 90 // 100", "def with_tax(price):\n    return price * 110 // 100") + "\n```", FIXED),
    ("shop.py\n" + SR.format("return price * qty", "return price + qty"), REPO["shop.py"].replace("price * qty", "price + qty")),   # inside a line
    ("shop.py\n" + SR.format("def with_tax(price):  \nreturn price * 90 // 100", "def with_tax(price):\n    return price * 110 // 100"), FIXED),  # whitespace
    ("shop.py\n" + SR.format("  def total(price, qty):\n      return price * qty", "  def total(price, qty):\n      return qty * price"),
     REPO["shop.py"].replace("price * qty", "qty * price")),                                                # re-indented
    ("shop.py\n" + SR.format("price * qty", "price + qty") + "\nshop.py\n" + SR.format("price + qty", "qty + price"),
     REPO["shop.py"].replace("price * qty", "qty + price")),                                                # blocks apply in order
    ("```diff\n" + GOOD_DIFF + "```", FIXED),
    ("Here is the patch:\n" + GOOD_DIFF, FIXED),
    ("```diff\n" + GOOD_DIFF.replace("@@ -4,2 +4,2 @@", "@@ -2,2 +2,2 @@") + "```", FIXED),            # wrong line, unique context
])
def test_edits_apply(answer, expected):
    files = dict(REPO)
    assert apply_answer(files, NT + answer) == {**REPO, "shop.py": expected}
    assert files == REPO                                                                            # the input is a copy


@pytest.mark.parametrize("answer, status, message", [
    ("shop.py\n" + SR.format("return price * 9 // 100", "x"), "no_match", "not found in shop.py"),
    ("shop.py\n" + SR.format("return price * 90 // 100", "x"), "ambiguous", "occurs 2 times"),
    ("test_shop.py\n" + SR.format("== 6", "== 7"), "test_file", "test file"),
    ("tests/helpers.py\n" + SR.format("a", "b"), "test_file", "test file"),
    ("../shop.py\n" + SR.format("price * qty", "price + qty"), "bad_path", "outside the repository"),
    ("/etc/passwd\n" + SR.format("root", "x"), "bad_path", "outside the repository"),
    ("cart.py\n" + SR.format("price * qty", "price + qty"), "bad_path", "no file cart.py; editable: shop.py"),
    (SR.format("price * qty", "price + qty"), "bad_block", "no file path"),
    ("shop.py\n<<<<<<< SEARCH\nprice * qty\n>>>>>>> REPLACE", "bad_block", "malformed block"),
    ("shop.py\n" + SR.format("", "x"), "bad_block", "empty SEARCH"),
    ("shop.py\n" + SR.format("price * qty", "price + qty") + "\nshop.py\n" + SR.format("nothing", "x"), "no_match", "not found"),
    ("The bug is in with_tax.", "no_edits", "no SEARCH/REPLACE block"),
    ("```diff\n--- a/shop.py\n+++ b/shop.py\n@@ -4,3 +4,3 @@\n def with_tax(price):\n-    return 1\n```", "bad_diff", "malformed diff"),
    ("```diff\nthis is not a diff\n```", "bad_diff", "no file header"),
    ("```diff\n" + GOOD_DIFF.replace(" def with_tax", " def without_tax") + "```", "diff_mismatch", "does not match shop.py"),
    ("```diff\n" + GOOD_DIFF.replace("shop.py", "test_shop.py") + "```", "test_file", "test file"),
    ("```diff\n--- /dev/null\n+++ b/new.py\n@@ -0,0 +1 @@\n+x = 1\n```", "bad_path", "adds or removes a file"),
    ("```diff\n" + GOOD_DIFF.replace("a/shop.py", "a/../../etc/shop.py").replace("b/shop.py", "b/../../etc/shop.py") + "```", "bad_path", "outside"),
])
def test_bad_edits_are_reported_and_change_nothing(answer, status, message):
    files = dict(REPO)
    with pytest.raises(EditError, match=re.escape(message)) as err:
        apply_answer(files, answer)
    assert err.value.status == status and files == REPO


# ---- graded rewards ------------------------------------------------------------------------------


def _issue_call(task: SweTask) -> tuple[str, str, str]:
    name, args, want = re.fullmatch(r"(\w+)\((.*)\) (?:returns|raises) .*, expected (.*)\.", task.issue).groups()
    return name, args, want


def special_case(task: SweTask) -> str:
    """A 'fix' that only returns the issue's expected value for the issue's input (a partial fix)."""
    name, args, want = _issue_call(task)
    module = task.sources[0]
    params = re.search(rf"def {name}\((.*)\):", task.files[module]).group(1)
    return search_replace(module, f"def {name}({params}):", f"def {name}({params}):\n    if ({params},) == ({args},):\n        return {want}")


def break_passing(task: SweTask) -> str:
    """SEARCH/REPLACE turning a pass-to-pass function's body into ``return None``."""
    name = task.pass_to_pass[0].split("::test_")[1]
    module = task.sources[0]
    line = re.search(rf"def {name}\(.*\):\n(    return .*)\n", task.files[module]).group(1)
    return search_replace(module, line, "    return None")


def test_graded_rewards(reward):
    task = level_tasks(1)[0]
    answers = {
        "fix": fix(task),
        "partial": special_case(task),
        "fix_and_break": fix(task) + "\n" + break_passing(task),
        "nothing": "The code looks fine.",
    }
    results = dict(zip(answers, reward.score([agentless(task, a) for a in answers.values()])))
    assert results["fix"].value == 1.0 and results["fix"].info["status"] == "resolved"
    assert results["partial"].value == 0.0 and results["partial"].info["status"] == "unresolved"
    assert results["fix_and_break"].value == 0.0
    assert results["fix_and_break"].info["fail_to_pass"] == 1.0 and results["fix_and_break"].info["pass_to_pass"] < 1.0
    assert "failed" in results["fix_and_break"].info["message"]
    assert results["nothing"].value == 0.0 and results["nothing"].info["status"] == "no_edits"


def test_similarity_reward_orders_patches():
    task = level_tasks(1)[1]
    near = search_replace(task.bug_file, task.buggy_line, task.fixed_line + " + 0")
    similarity = SweTestsReward(similarity=True)
    ref, near_miss, unrelated, nothing = similarity.score(
        [agentless(task, a) for a in (fix(task), near, break_passing(task), "no patch")])
    assert ref.value == 1.0 > near_miss.value > 0.5 > unrelated.value
    assert nothing.value == 0.0 and nothing.info["status"] == "no_edits"
    before, reference = {"a.py": "x = 1\ny = 2\n"}, {"a.py": "x = 1\ny = 3\n"}
    assert change_similarity(before, before, reference) == 0.0                        # doing nothing is not similar
    assert change_similarity(before, {"a.py": "x = 1\ny = 4\n"}, reference) == pytest.approx(0.8)  # right line, 4/5 of its text
    assert change_similarity(before, {"a.py": "x = 3\ny = 2\n"}, reference) == 0.0   # wrong line


HOSTILE = {
    "infinite_loop": ("while True:\n    pass\n", "timeout"),
    "exit_at_import": ("import os\nos._exit(0)\n", "no_report"),
    "forged_report_and_exit": ("import os\nopen('_swe_report.json', 'w').write('{\"nonce\": \"0\", \"tampered\": false, "
                               "\"tests\": {}, \"errors\": {}}')\nos._exit(0)\n", "tampered"),
    "forged_report": ("open('_swe_report.json', 'w').write('{}')\n", "tampered"),
    "sys_exit_at_import": ("import sys\nsys.exit(0)\n", "unresolved"),
    "patched_json": ("import json\njson.dumps = lambda *a, **k: '{}'\n", "unresolved"),
    "flood": ("print('x' * 3000000)\n", "failed"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_patches_score_zero(reward, name):
    """Each prefix goes at the top of the module, with the real fix applied too where it can be."""
    prefix, status = HOSTILE[name]
    task = level_tasks(1)[2]
    module = task.sources[0]
    first = task.files[module].split("\n", 1)[0]
    answer = search_replace(module, first, prefix + first)
    if name not in ("sys_exit_at_import", "patched_json"):  # those two leave the bug: it must still be found
        answer = fix(task) + "\n" + answer
    (result,) = reward.score([agentless(task, answer)])
    assert result.value == 0.0 and result.info["status"] == status, result.info


def test_agentless_demonstrations_score_one(reward):
    env = SweAgentlessEnvironment(difficulties=[1, 2, 3])
    env.domain = "swe_agentless"
    demos = env.demonstrations(6, 3)
    samples = {s.messages[0]["content"]: s for s in env.samples("train", 6, 4)}
    episodes = [Episode(samples[d[0]["content"]], d, [], [], []) for d in demos]
    assert len(episodes) == 6 and all(len(d[0]["content"]) < 420 and len(d[1]["content"]) < 200 for d in demos)
    assert [r.value for r in reward.score(episodes)] == [1.0] * 6


def test_identical_patches_share_one_sandboxed_run(monkeypatch):
    """Rollouts of a group that wrote the same patch are graded by one test run, each getting its verdict."""
    from cascade.environments.sandbox import SandboxPool

    jobs = []
    original = SandboxPool.map
    monkeypatch.setattr(SandboxPool, "map", lambda self, js: jobs.append(len(js)) or original(self, js))
    task = level_tasks(1)[1]
    fresh = SweTestsReward(cpu_seconds=1, wall_seconds=2.0)
    try:
        results = fresh.score([agentless(task, a) for a in (fix(task), fix(task) + "\n" + break_passing(task), fix(task), fix(task))])
    finally:
        fresh.close()
    assert jobs == [2]
    assert [r.value for r in results] == [1.0, 0.0, 1.0, 1.0]


def test_agentic_run_tests_answers_a_repeated_state_from_the_cache(monkeypatch):
    from cascade_swe import agentic

    env, task = SweAgenticEnvironment(), level_tasks(1)[0]
    calls = []
    original = agentic.sandbox.run
    monkeypatch.setattr(agentic.sandbox, "run", lambda job: calls.append(job) or original(job))
    first = env.run_tests(task.files)
    assert env.run_tests(dict(task.files)) == first == f"{len(task.pass_to_pass)} passed"
    assert len(calls) == 1


# ---- agentic -------------------------------------------------------------------------------------


def agentic_sample(task):
    return swe_sample(task, "swe_agentic", SweAgenticEnvironment.prompt(task), "agentic")


def test_agentic_episode_view_edit_run_tests_submit(reward):
    env, task = SweAgenticEnvironment(max_turns=6), level_tasks(1)[0]
    sample, module = agentic_sample(task), task.sources[0]
    tests = next(p for p in task.files if p.startswith("test_"))
    turns = [
        render_call("view", path=module),
        render_call("search", query=task.buggy_line.strip()),
        "<tool_call><function=edit><parameter=path>" + module + "</parameter></function></tool_call>",  # missing parameters
        render_call("edit", path=tests, search="assert", replace="pass"),
        render_call("edit", path=module, search="no such text", replace="x"),
        render_call("edit", path=module, search=task.buggy_line.strip(), replace=task.fixed_line.strip())
        + render_call("run_tests") + render_call("view", path="../" + module) + render_call("submit"),
    ]
    messages, steps = drive(env, sample, turns)
    tool = [m["content"] for m in messages if m["role"] == "tool"]
    assert tool[0] == task.files[module]
    assert tool[1] == f"{module}:{task.files[module].splitlines().index(task.buggy_line) + 1}: {task.buggy_line.strip()}"
    assert tool[2].startswith("error: edit: missing parameter(s) search, replace")
    assert tool[3].startswith("error:") and "test file" in tool[3]
    assert tool[4] == f"error: SEARCH text not found in {module}"
    assert steps[-1].done and steps[-1].metrics == {"tool_calls": 4.0, "tool_errors": 1.0}
    edited, ran, viewed, submitted = (m["content"] for m in steps[-1].messages)
    assert edited == f"edited {module}" and ran == f"{len(task.pass_to_pass)} passed"
    assert viewed.startswith("error: no file ../") and submitted == "submitted"
    assert reward.score([Episode(sample, messages, [], [], [])])[0].value == 1.0


def test_agentic_run_tests_reports_failures_and_edits_replay(reward):
    env, task = SweAgenticEnvironment(max_turns=3), level_tasks(1)[3]
    sample, module = agentic_sample(task), task.sources[0]
    breaking = re.search(r"<<<<<<< SEARCH\n(.*)\n=======", break_passing(task)).group(1).strip()
    turns = [render_call("edit", path=module, search=breaking, replace="return None"), render_call("run_tests"), "I give up."]
    messages, steps = drive(env, sample, turns)
    broken = task.pass_to_pass[0].split("::")[1]
    assert steps[1].messages[0]["content"].startswith(f"{len(task.pass_to_pass) - 1} passed, 1 failed: {broken} (AssertionError: assert ")
    assert steps[-1].done and steps[-1].messages == []                    # a turn without a tool call ends the episode
    assert replay(task.files, [NT + turns[0]]).files[module] != task.files[module]
    assert task.files == agentic_sample(task).answer["files"]             # episodes never write into the sample
    assert reward.score([Episode(sample, messages, [], [], [])])[0].value == 0.0


def test_agentic_turn_limit_and_unsubmitted_fix(reward):
    env, task = SweAgenticEnvironment(max_turns=2), level_tasks(1)[4]
    sample, module = agentic_sample(task), task.sources[0]
    turns = [render_call("view", path=module),
             render_call("edit", path=module, search=task.buggy_line.strip(), replace=task.fixed_line.strip()),
             render_call("submit")]
    messages, steps = drive(env, sample, turns)
    assert len(steps) == 2 and steps[-1].done and not any("submitted" in m["content"] for m in steps[-1].messages)
    assert reward.score([Episode(sample, messages, [], [], [])])[0].value == 1.0   # graded on the edits, submitted or not
    # malformed markup is answered with an error, never raised
    step = env.step(sample, sample.messages + [{"role": "assistant", "content": NT + "<tool_call><function=view>"}])
    assert step.messages[0]["content"].startswith("error: malformed tool call") and not step.done


def test_agentic_demonstrations_score_one_through_step(reward):
    env = SweAgenticEnvironment(difficulties=[1, 3])
    env.domain = "swe_agentic"
    demos = env.demonstrations(4, 0)
    assert demos == SweAgenticEnvironment(difficulties=[1, 3], parallel_steps=1).demonstrations(4, 0)  # threads: same
    samples = {s.messages[1]["content"]: s for s in env.samples("train", 4, 1)}
    episodes = []
    for demo in demos:
        sample = samples[demo[1]["content"]]
        calls = [m["content"] for m in demo if m["role"] == "assistant"]
        assert calls[-2:] == [NT + render_call("run_tests"), NT + render_call("submit")]
        assert not any(m["content"].startswith("error") for m in demo if m["role"] == "tool")
        messages, steps = drive(env, sample, [c[len(NT):] for c in calls])
        assert messages == demo and steps[-1].done
        episodes.append(Episode(sample, demo, [], [], []))
    assert [r.value for r in reward.score(episodes)] == [1.0] * 4


# ---- shared tool calls and presets ----------------------------------------------------------------


def test_workplace_uses_the_shared_tool_call_parser():
    from cascade_multidomain import workplace

    assert workplace.parse_tool_calls is tool_calls.parse_tool_calls and workplace.ToolCall is tool_calls.ToolCall
    (call,) = tool_calls.parse_tool_calls(render_call("edit", path="a.py", search="x", replace="y"))
    specs = tool_calls.parameter_specs(TOOLS)
    assert tool_calls.typed_arguments(call, specs) == {"path": "a.py", "search": "x", "replace": "y"}
    with pytest.raises(ValueError, match="unknown tool 'edit'"):
        workplace.typed_arguments(call)


def test_presets_compose_and_plugin_registers(tmp_path):
    from cascade.config import compose
    from cascade.plugins import PluginManager
    from cascade.runner import CascadeRunner

    plugins = PluginManager().load()
    assert "pkg://cascade_swe.conf" in plugins.config_searchpaths()
    assert plugins.component("environments", "swe_agentic").factory is SweAgenticEnvironment
    cfg = compose(["cascade=math", "+domain@cascade.domains.swe_agentless=swe_agentless",
                   "+domain@cascade.domains.swe_agentic=swe_agentic",
                   "+stage@cascade.stages.swe_agentless=swe_agentless", "+stage@cascade.stages.swe_agentic=swe_agentic"],
                  plugins.config_searchpaths())
    agentless_stage, agentic_stage = cfg.cascade.stages.swe_agentless, cfg.cascade.stages.swe_agentic
    assert agentless_stage.type == agentic_stage.type == "grpo" and agentless_stage.params.kl_coef == 0.0
    assert list(agentless_stage.domains) == ["swe_agentless"] and agentless_stage.params.min_best_reward == 0.5
    assert list(agentic_stage.domains) == ["swe_agentic"] and "min_best_reward" not in agentic_stage.params
    for name in ("swe_agentless", "swe_agentic"):
        domain = cfg.cascade.domains[name]
        assert domain.environment == name and domain.reward == "swe_tests" and domain.eval.n == 64
    assert cfg.cascade.domains.swe_agentic.environment_options.max_turns == 6
    runner = CascadeRunner(cfg, plugins, tmp_path)                # every stage option checked against its Config
    assert [p.name for p in runner.plan][-2:] == ["swe_agentless", "swe_agentic"]
    assert runner.environment("swe_agentic").max_turns == 6 and runner.reward("swe_agentless").limits.wall_seconds == 5.0
