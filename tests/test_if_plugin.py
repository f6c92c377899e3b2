"""The cascade-if plugin: the prompt generator, its demonstrations, the `if` environment, the
`if_verify` reward through the Reward API, registration and config presets."""

from __future__ import annotations

import pytest

from cascade import Episode, Sample
from cascade.rewards.ifeval import check_response
from cascade_if.plugin import NO_THINKING, IFEnvironment, IFVerifyReward
from cascade_if.prompts import ALL, EASY, generate, split_of


def episode(sample: Sample, text: str) -> Episode:
    return Episode(sample, messages=[*sample.messages, {"role": "assistant", "content": text}],
                   token_ids=[], loss_mask=[], logprobs=[])


def test_generator_is_deterministic_and_seeded():
    first = generate("train", 50, 0, 2)
    assert first == generate("train", 50, 0, 2)
    assert [p.prompt for p in first] != [p.prompt for p in generate("train", 50, 1, 2)]
    assert len({p.prompt for p in first}) == 50


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_splits_are_disjoint(difficulty):
    train = {p.prompt for p in generate("train", 300, 0, difficulty)}
    test = {p.prompt for p in generate("test", 100, 0, difficulty)}
    assert not train & test
    assert all(split_of(p) == "train" for p in train) and all(split_of(p) == "test" for p in test)


def test_difficulty_sets_the_number_and_kind_of_constraints():
    for level, (low, high) in {1: (1, 1), 2: (1, 2), 3: (2, 3)}.items():
        counts = [len(p.instruction_id_list) for p in generate("train", 200, 0, level)]
        assert low <= min(counts) and max(counts) <= high
    assert {i for p in generate("train", 200, 0, 1) for i in p.instruction_id_list} <= set(EASY)
    # every IFEval instruction appears at the higher levels
    assert {i for p in generate("train", 400, 0, 3) for i in p.instruction_id_list} == set(ALL)
    # strictness: counts grow with the level
    def most_highlights(level):
        return max(k["num_highlights"] for p in generate("train", 400, 0, level)
                   for i, k in zip(p.instruction_id_list, p.kwargs)
                   if i == "detectable_format:number_highlighted_sections")
    assert most_highlights(3) > most_highlights(2)
    only = generate("train", 30, 0, 2, instruction_ids=["punctuation:no_comma", "detectable_format:title"])
    assert {i for p in only for i in p.instruction_id_list} <= {"punctuation:no_comma", "detectable_format:title"}


def test_generator_refuses_bad_arguments():
    with pytest.raises(ValueError):
        generate("valid", 1, 0, 1)
    with pytest.raises(ValueError):
        generate("train", 1, 0, 4)
    with pytest.raises(ValueError):
        generate("train", 1, 0, 1, instruction_ids=["no:such"])
    with pytest.raises(ValueError):
        IFEnvironment(difficulties=[0])


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_every_generated_answer_follows_its_constraints(difficulty):
    for p in generate("train", 200, 3, difficulty) + generate("test", 50, 3, difficulty):
        result = check_response(p.answer, p.instruction_id_list, p.kwargs, p.prompt, mode="strict")
        assert result.follow_all, (p.prompt, p.answer, result.follow_list)
        assert len(p.answer.split()) <= 60  # short enough for a tiny model


def test_demonstrations_pass_the_reward():
    env = IFEnvironment(difficulties=[1, 2, 3])
    env.domain = "if"
    demos = env.demonstrations(300, 0)
    assert len(demos) == 300
    reward = IFVerifyReward()
    for user, assistant in demos:
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert assistant["content"].startswith(NO_THINKING)
    # through the Reward API: demonstrations come from the train split with seed + 1
    samples = env.samples("train", 300, 1)
    by_prompt = {s.messages[0]["content"]: s for s in samples}
    for user, assistant in demos:
        sample = by_prompt[user["content"]]
        [result] = reward.score([episode(sample, assistant["content"])])
        assert result.value == 1.0, (user["content"], assistant["content"], result.info)


def test_environment_samples():
    env = IFEnvironment()
    env.domain = "if"
    samples = env.samples("test", 40, 0)
    assert len(samples) == 40 and samples == env.samples("test", 40, 0)
    assert {s.meta["difficulty"] for s in samples} == {1, 2}
    sample = samples[0]
    assert sample.domain == "if" and sample.messages[0]["role"] == "user"
    assert set(sample.answer) == {"instruction_id_list", "kwargs", "prompt"}
    assert not {s.id for s in samples} & {s.id for s in env.samples("train", 200, 0)}


def _sample(ids, kwargs):
    return Sample("s", "if", [{"role": "user", "content": "Describe the sea."}],
                  answer={"instruction_id_list": ids, "kwargs": kwargs, "prompt": "Describe the sea."})


def test_reward_binary_fractional_and_thinking():
    sample = _sample(["punctuation:no_comma", "detectable_format:title"], [{}, {}])
    group = [episode(sample, t) for t in [
        "<<Sea>>\nThe sea is blue.",                  # both
        "<<Sea>>\nThe sea is big, and blue.",         # title only
        "The sea is blue.",                            # no comma only
        "<think>A title, maybe <<Sea>>.</think>Blue",  # the thinking section does not count
        NO_THINKING + "<<Sea>>\nBlue.",                # an empty thinking section is fine
        "<think>cut off while thinking <<Sea>>",       # nothing answered
    ]]
    assert [r.value for r in IFVerifyReward().score(group)] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    fractional = IFVerifyReward(fractional=True).score(group)
    assert [r.value for r in fractional] == [1.0, 0.5, 0.5, 0.5, 1.0, 0.0]
    assert fractional[1].info["follow"] == {"punctuation:no_comma": False, "detectable_format:title": True}
    # loose mode forgives a chatty first line
    chatty = [episode(sample, "Sure, here you go:\n<<Sea>>\nBlue.")]
    assert IFVerifyReward().score(chatty)[0].value == 0.0
    assert IFVerifyReward(mode="loose").score(chatty)[0].value == 1.0
    with pytest.raises(ValueError):
        IFVerifyReward(mode="lenient")


def test_reward_never_raises_on_a_malformed_sample():
    broken = _sample(["no:such"], [{}])
    [result] = IFVerifyReward().score([episode(broken, "text")])
    assert result.value == 0.0 and result.info["status"].startswith("error")
    no_answer = Episode(broken, messages=list(broken.messages), token_ids=[], loss_mask=[], logprobs=[])
    assert IFVerifyReward().score([no_answer])[0].value == 0.0


def test_plugin_is_registered_with_its_presets():
    from cascade.config import compose, to_container
    from cascade.plugins import PluginManager

    plugins = PluginManager().load()
    assert "if" in plugins.components["environments"] and "if_verify" in plugins.components["rewards"]
    assert "pkg://cascade_if.conf" in plugins.config_searchpaths()
    cfg = to_container(compose(["cascade=math", "+domain@cascade.domains.if=if", "+stage@cascade.stages.if_rl=if_rl"],
                               plugins.config_searchpaths()))["cascade"]
    domain, stage = cfg["domains"]["if"], cfg["stages"]["if_rl"]
    assert domain["environment"] == "if" and domain["reward"] == "if_verify"
    assert domain["reward_options"] == {"fractional": False, "mode": "strict"}
    assert IFVerifyReward(**domain["reward_options"]) and IFEnvironment(**domain["environment_options"])
    assert stage["type"] == "grpo" and stage["domains"] == ["if"]
    assert stage["params"]["dynamic_filter"] is True and stage["params"]["overlong_reward"] == 0.0
    assert stage["params"]["kl_coef"] == 0.0  # inherited from the shared GRPO preset
