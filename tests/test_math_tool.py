"""The math domain with the Python tool: prompts declare it, episodes run cells through ``env.step`` and are
scored on the final answer, demonstrations are tool-integrated and show exactly what the real tool shows; without
the tool the domain is unchanged."""

from __future__ import annotations

import pytest

from conftest import drive
from cascade.environments.generated import NO_THINKING
from cascade.environments.python_tool import NO_OUTPUT, OK, PythonTool
from cascade.environments.tool_calls import render_call
from cascade.types import Episode, Sample
from cascade_math.plugin import INSTRUCTION, MathEnvironment, MathVerifyReward, printed
from cascade_math.problems import LEVELS, generate, solution

TOOL_OPTIONS = {"max_calls": 2, "limits": {"cpu_seconds": 1, "wall_seconds": 3.0, "memory_mb": 256}}


def tool_env(difficulties=(1,), kinds=("arithmetic", "linear", "word")) -> MathEnvironment:
    return MathEnvironment(difficulties, kinds, python_tool=True, tool_options=TOOL_OPTIONS)


def call(code: str) -> str:
    return render_call("python", code=code)


@pytest.fixture(scope="module")
def reward():
    reward = MathVerifyReward()
    yield reward
    reward.close()


def test_without_the_tool_the_domain_is_single_turn_and_unchanged():
    env = MathEnvironment([1, 3])
    problems = env.problems("train", 12, seed=2)
    assert [s.messages for s in env.samples("train", 12, seed=2)] == \
        [[{"role": "user", "content": f"{p.question}\n{INSTRUCTION}"}] for p in problems]
    assert env.demonstrations(12, seed=1) == [
        [{"role": "user", "content": f"{p.question}\n{INSTRUCTION}"}, {"role": "assistant", "content": NO_THINKING + solution(p)}]
        for p in problems]
    assert env.max_turns == 1 and env.tool is None
    assert env.step(env.samples("train", 1, 0)[0], [{"role": "assistant", "content": call("print(1)")}]).done


def test_tool_options_need_the_tool():
    with pytest.raises(ValueError, match="python_tool"):
        MathEnvironment([1], tool_options={"max_calls": 2})


def test_with_the_tool_prompts_declare_it_and_episodes_get_a_turn_per_call_plus_one():
    env = tool_env()
    assert env.tool == PythonTool(**TOOL_OPTIONS) and env.max_turns == 3
    plain = MathEnvironment([1]).samples("test", 5, 0)
    for with_tool, without in zip(env.samples("test", 5, 0), plain):
        system, user = with_tool.messages
        assert system["role"] == "system" and '"name": "python"' in system["content"]
        assert user == without.messages[0] and with_tool.id == without.id and with_tool.answer == without.answer


def test_a_tool_episode_driven_by_hand_reaches_the_answer_and_scores_1(reward):
    env = tool_env([5], ["linear"])
    problem = next(p for p in env.problems("test", 20, 0) if "/" in p.answer)  # a fractional answer
    sample = next(s for s in env.samples("test", 20, 0) if s.id == problem.id)
    first = "from fractions import Fraction\n" + problem.code.split("\n")[1]  # a, b, c, d = ...
    messages, steps = drive(env, sample, [call(first), call("x = Fraction(d - b, a - c)\nx.numerator, x.denominator"),
                                          f"x = {problem.answer}, so \\boxed{{{problem.answer}}}"])
    numerator, denominator = problem.answer.split("/")
    assert [s.messages[0]["content"] for s in steps[:2]] == [NO_OUTPUT, f"({numerator}, {denominator})"]
    assert [s.done for s in steps] == [False, False, True]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant"]
    right = Episode(sample, messages, [], [], [])
    wrong = Episode(sample, [*messages[:-1], {"role": "assistant", "content": NO_THINKING + "\\boxed{0}"}], [], [], [])
    assert [r.value for r in reward.score([right, wrong])] == [1.0, 0.0]


def test_the_reward_scores_the_last_assistant_turn_not_a_trailing_tool_message(reward):
    sample = tool_env().samples("test", 1, 0)[0]
    answer = f"{NO_THINKING}\\boxed{{{sample.answer}}}" + call(f"print({sample.answer})")
    episode = Episode(sample, [*sample.messages, {"role": "assistant", "content": answer},
                               {"role": "tool", "content": f"{sample.answer}\n\\boxed{{0}}"}], [], [], [])
    assert episode.messages[-1]["role"] == "tool"  # the turn limit was hit right after a call
    assert reward.score([episode])[0].value == 1.0


def test_tool_demonstrations_call_the_tool_then_box_what_it_printed():
    env = MathEnvironment([1, 2, 3, 4, 5], python_tool=True)
    demos = env.demonstrations(100, seed=0)
    problems = env.problems("train", 100, seed=1)
    assert len(demos) == len(problems) == 100
    for demo, problem in zip(demos, problems):
        prompt, (call_turn, tool_turn, final) = demo[:2], demo[2:]
        assert prompt == env.prompt(problem)
        assert call_turn == {"role": "assistant", "content": NO_THINKING + call(problem.code)}
        assert tool_turn["role"] == "tool" and tool_turn["content"] == problem.answer and tool_turn["tool_status"] == OK
        assert final == {"role": "assistant", "content": NO_THINKING + f"\\boxed{{{problem.answer}}}"}


@pytest.mark.parametrize("difficulty", sorted(LEVELS))
def test_every_problems_code_prints_its_answer(difficulty):
    for problem in generate("train", 150, seed=0, difficulty=difficulty):
        assert printed(problem.code) == problem.answer + "\n", problem


def test_demonstrations_show_what_the_real_tool_shows():
    env = MathEnvironment([1, 3, 5], python_tool=True)
    demos, problems = env.demonstrations(30, seed=0), env.problems("train", 30, seed=1)
    by_kind = {}
    for demo, problem in zip(demos, problems):  # two of each kind, from different levels
        by_kind.setdefault(problem.kind, []).append(demo)
    picked = [demo for group in by_kind.values() for demo in (group[0], group[-1])]
    assert len(picked) == 6
    for demo in picked:
        sample = Sample("demo", "math", demo[:2])
        (reply,) = env.step(sample, demo[:3]).messages
        assert (reply["content"], reply["tool_status"]) == (demo[3]["content"], demo[3]["tool_status"])


def test_the_math_tool_preset_builds_the_tool_domain_with_the_math_reward_and_eval(tmp_path):
    from cascade.config import compose
    from cascade.plugins import PluginManager
    from cascade.runner import CascadeRunner

    plugins = PluginManager().load()
    config = compose([], plugins.config_searchpaths())  # the default cascade has both domains
    runner = CascadeRunner(config, plugins, tmp_path)
    math, tool = config.cascade.domains.math, config.cascade.domains.math_tool
    assert (tool.environment, tool.reward, tool.reward_options, tool.eval) == \
        (math.environment, math.reward, math.reward_options, math.eval)
    env = runner.environment("math_tool")
    assert env.tool is not None and env.max_turns == env.tool.max_calls + 1
    assert env.difficulties == list(math.environment_options.difficulties)
