"""The RLHF plugin: the gold rubric, gold-labelled preference pairs, a Bradley-Terry reward model that learns
them, the reward-model and pairwise-judge rewards, the presets, and a reward_model -> rlhf cascade."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from cascade import Episode, Sample, hookimpl
from cascade.config import ConfigError, compose
from cascade.engine.policy import init_checkpoint
from cascade.plugins import PluginManager
from cascade.rewards.judge import HFJudge
from cascade.runner import CascadeRunner
from cascade_rlhf.chat import (
    CORRUPTIONS, MAX_WORDS, candidate, gold_score, good_answer, preference_pairs, prompts, rubric,
)
from cascade_rlhf.pairwise import PairwiseJudgeReward, parse_preference
from cascade_rlhf.plugin import ChatEnvironment, GoldRubricReward
from cascade_rlhf.reward_model import RewardModelReward, RewardModelStage, load_reward_model, pair_accuracy

RM_SCORE = RewardModelReward.score

NT = "<think></think>"
GREET = {"kind": "greet", "name": "Mia"}
THANKS = {"kind": "thanks", "name": "Ben", "item": "cake"}
SUM = {"kind": "sum", "a": 12, "b": 7, "number": 19}
COLOR = {"kind": "color", "thing": "the sky", "color": "blue"}
LIST = {"kind": "list", "category": "fruits", "count": 3}


def environment() -> ChatEnvironment:
    env = ChatEnvironment()
    env.domain = "rlhf"
    return env


def episode(answer: dict, response: str, prompt: str = "Please greet Mia.") -> Episode:
    sample = Sample("s", "rlhf", [{"role": "user", "content": prompt}], answer)
    return Episode(sample, [*sample.messages, {"role": "assistant", "content": NT + response}], [], [], [])


@pytest.fixture(scope="module")
def policy_checkpoint(tmp_path_factory):
    """A tiny from-scratch NemotronH policy with a tokenizer trained on the rlhf domain's text."""
    model = OmegaConf.create({"path": None, "arch": "tiny_nemotron_h", "options": {"vocab_size": 400, "hidden_size": 64},
                              "dtype": "float32"})
    return init_checkpoint(model, str(tmp_path_factory.mktemp("policy") / "init"), seed=0, environments={"rlhf": environment()})


def stage_context(tmp_path):
    """What RewardModelStage uses of a StageContext; returns it and the list its metrics are logged to."""
    logged = []
    return SimpleNamespace(environment=lambda domain: environment(), seed=0, stage=SimpleNamespace(total_steps=None),
                           history=[], history_path=tmp_path / "history.jsonl",
                           log=lambda step, metrics: logged.append({"step": step, **metrics})), logged


# ---- the gold rubric ------------------------------------------------------------------------------------


@pytest.mark.parametrize("answer, response, rule, verdict", [
    (GREET, "Hello, Mia! Nice to meet you.", "answers", True),
    (GREET, "Hello, Zoe! Nice to meet you.", "answers", False),          # the wrong name
    (GREET, "Mia, nice to meet you.", "answers", False),                 # no greeting word
    (THANKS, "Thank you, Ben, for the cake!", "answers", True),
    (THANKS, "Thank you, Ben, for the tea!", "answers", False),          # the wrong item
    (THANKS, "Ben, I got the cake.", "answers", False),                  # no thanks
    (SUM, "12 plus 7 is 19.", "answers", True),
    (SUM, "It is 20.", "answers", False),
    (SUM, "19 is not it, it is 18.", "answers", False),                  # the last number counts
    (COLOR, "The sky is blue.", "answers", True),
    (COLOR, "The sky is green.", "answers", False),
    (LIST, "Here are three fruits: apple, pear and plum.", "answers", True),
    (LIST, "Sure: apple, pear.", "answers", False),                      # too few
    (LIST, "Sure: apple, pear, plum, grape.", "answers", False),         # too many
    (LIST, "Sure: apple, apple and pear.", "answers", False),            # distinct items only
    (GREET, "Hello, Mia!", "polite", True),
    (GREET, "Ugh, whatever. Hello, Mia!", "polite", False),
    (GREET, "Hello, Mia! Now go away.", "polite", False),
    (GREET, "Hello, Mia! " + "x " * (MAX_WORDS - 2), "concise", True),                   # MAX_WORDS words
    (GREET, "Hello, Mia! " + "word " * (MAX_WORDS - 1), "concise", False),  # MAX_WORDS + 1 words
    (GREET, "Hello, Mia! How are you today?", "no_repetition", True),
    (GREET, "Hello, Mia! Hello, Mia!", "no_repetition", True),           # a repeated 2-gram is fine
    (GREET, "Hello, Mia! Hello, Mia! Hello", "no_repetition", False),    # a repeated 3-gram is not
])
def test_each_rule_on_both_sides(answer, response, rule, verdict):
    assert rubric(response, answer)[rule] is verdict


@pytest.mark.parametrize("response, value", [
    ("Hello, Mia! Nice to meet you.", 1.0),
    ("Ugh, whatever. Hello, Mia!", 0.8),                                 # rude
    ("Hello, Zoe! Nice to meet you.", 0.6),                              # does not answer: the heaviest rule
    ("Hello, Zoe! Now go away. Hello, Zoe! Now go away.", 0.2),        # only concise
    ("", 0.0),
    ("<think>Hello, Mia!</think>", 0.0),                                 # only thoughts: empty
    ("<think>hmm</think>Hello, Mia!", 1.0),
])
def test_gold_score_weighs_the_rules(response, value):
    assert gold_score(response, GREET) == pytest.approx(value)


def test_splits_are_disjoint_and_seeded():
    train, test = prompts("train", 2000, 0), prompts("test", 2000, 0)
    assert len(test) > 150 and not {p.text for p in train} & {p.text for p in test}
    assert [p.text for p in prompts("test", 20, 3)] == [p.text for p in prompts("test", 20, 3)]
    assert {s.meta["kind"] for s in environment().samples("test", 100, 0)} == {"greet", "thanks", "sum", "color", "list"}


@pytest.mark.parametrize("flawed", [0.0, 0.5, 1.0])
def test_demonstrations_answer_and_a_share_of_them_has_a_style_flaw(flawed):
    """Flawed demonstrations break politeness, concision or repetition, never the answer itself."""
    env, reward = ChatEnvironment(flawed_demonstrations=flawed), GoldRubricReward()
    values = []
    for demo, sample in zip(env.demonstrations(400, 0), env.samples("train", 400, 1)):
        assert demo[0] == sample.messages[0] and demo[1]["content"].startswith(NT)
        result = reward.score([episode(sample.answer, demo[1]["content"][len(NT):])])[0]
        assert result.info["rules"]["answers"]
        values.append(result.value)
    share_flawed = sum(v < 1.0 for v in values) / len(values)
    assert abs(share_flawed - flawed) < 0.08
    with pytest.raises(ValueError, match="flawed_demonstrations"):
        ChatEnvironment(flawed_demonstrations=1.5)


def test_demonstration_flaws_choose_the_habits():
    env, reward = ChatEnvironment(flawed_demonstrations=1.0, demonstration_flaws=["too_long"]), GoldRubricReward()
    for demo, sample in zip(env.demonstrations(100, 0), env.samples("train", 100, 1)):
        rules = reward.score([episode(sample.answer, demo[1]["content"][len(NT):])])[0].info["rules"]
        assert rules == {"answers": True, "polite": True, "concise": False, "no_repetition": True}
    for bad in (["wrong"], []):
        with pytest.raises(ValueError, match="demonstration_flaws must be a non-empty subset of"):
            ChatEnvironment(demonstration_flaws=bad)


@pytest.mark.parametrize("corruption, rule", [
    ("rude", "polite"), ("too_long", "concise"), ("repeated", "no_repetition"), ("off_topic", "answers"), ("wrong", "answers"),
])
def test_each_corruption_breaks_its_rule(corruption, rule):
    rng = random.Random(0)
    for prompt in prompts("train", 60, 0):
        spoilt = CORRUPTIONS[corruption](good_answer(prompt.answer, rng), prompt.answer, rng)
        assert not rubric(spoilt, prompt.answer)[rule], (prompt.text, spoilt)


def test_preference_pairs_are_labelled_by_the_gold_rubric():
    train, test = preference_pairs("train", 300, 0), preference_pairs("test", 100, 0)
    answers = {p.text: p.answer for p in prompts("train", 2000, 0) + prompts("test", 2000, 0)}
    for pair in train + test:
        answer = answers[pair.messages[0]["content"]]
        assert gold_score(pair.chosen, answer) == pair.chosen_score > pair.rejected_score == gold_score(pair.rejected, answer)
    assert not {p.messages[0]["content"] for p in train} & {p.messages[0]["content"] for p in test}
    assert [p.chosen for p in preference_pairs("train", 20, 5)] == [p.chosen for p in preference_pairs("train", 20, 5)]
    assert max(len(p.rejected.split()) for p in train) < 60                # short enough for the tiny model's rows
    assert candidate(SUM, random.Random(0), 0) in ("12 plus 7 is 19.", "The answer is 19.", "It is 19.")


def test_the_gold_reward_reports_rules_and_survives_a_malformed_sample():
    good, bad = GoldRubricReward().score([episode(GREET, "Hello, Mia!"), episode({"kind": "poem"}, "Roses.")])
    assert good.value == 1.0 and good.info["rules"] == {"answers": True, "polite": True, "concise": True, "no_repetition": True}
    assert (bad.value, bad.info["status"]) == (0.0, "error") and "poem" in bad.info["detail"]


# ---- the Bradley-Terry reward model ------------------------------------------------------------------


def test_bradley_terry_training_learns_the_preferences_and_round_trips(policy_checkpoint, tmp_path):
    """A small Llama classifier from scratch: held-out pair accuracy well above chance within seconds, and the
    saved HF directory, loaded by the reward, gives the same scores."""
    torch.manual_seed(0)
    config = RewardModelStage.Config(
        output=str(tmp_path / "rm"), init="scratch", train_pairs=600, eval_pairs=120, steps=60, batch_size=16,
        eval_every=20, scratch_options={"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                                        "intermediate_size": 128})
    config.optim.lr = 1e-3
    context, logged = stage_context(tmp_path)
    result = RewardModelStage("reward_model", config, ["rlhf"]).run(policy_checkpoint, context)
    assert (result.stage, result.path) == ("reward_model", policy_checkpoint.path)   # the policy is left alone
    assert result.meta["reward_model"] == str(tmp_path / "rm")
    assert [row["step"] for row in logged] == list(range(1, 61)) and "eval_pair_accuracy" in logged[19]
    assert logged[-1]["eval_pair_accuracy"] == result.meta["eval_pair_accuracy"] >= 0.7
    assert logged[-1]["loss"] < logged[0]["loss"]

    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "rm").iterdir()}
    model, tokenizer = load_reward_model(tmp_path / "rm")
    assert type(model).__name__ == "LlamaForSequenceClassification"
    held_out = environment().preference_pairs("test", 120, 0)
    assert pair_accuracy(model, tokenizer, held_out, 256) == result.meta["eval_pair_accuracy"]

    reward = RewardModelReward(str(tmp_path / "rm"), batch_size=2)
    good, rude, wrong = reward.score([episode(GREET, "Hello, Mia! Nice to meet you."),
                                      episode(GREET, "Ugh, whatever. Hello, Mia! Now go away."),
                                      episode(GREET, "12 plus 7 is 19.")])
    assert all(r.info["status"] == "ok" and r.value == r.info["raw"] for r in (good, rude, wrong))
    normalised = RewardModelReward(str(tmp_path / "rm"), normalize=True).score([episode(GREET, "Hi Mia."), episode(GREET, "Ugh.")])
    assert sum(r.value for r in normalised) == pytest.approx(0.0, abs=1e-5)
    assert normalised[0].info["raw"] == pytest.approx(reward.score([episode(GREET, "Hi Mia.")])[0].value, abs=1e-5)


def test_a_reward_model_from_the_policy_is_a_nemotron_h_classifier(policy_checkpoint, tmp_path):
    config = RewardModelStage.Config(output=str(tmp_path / "rm"), init="policy", train_pairs=40, eval_pairs=16, steps=2,
                                     batch_size=4, eval_every=2)
    context, logged = stage_context(tmp_path)
    RewardModelStage("reward_model", config, ["rlhf"]).run(policy_checkpoint, context)
    assert json.loads((tmp_path / "rm" / "config.json").read_text())["architectures"] == ["NemotronHForSequenceClassification"]
    model, tokenizer = load_reward_model(tmp_path / "rm")
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert pair_accuracy(model, tokenizer, environment().preference_pairs("test", 16, 0), 256) == logged[-1]["eval_pair_accuracy"]


def test_a_missing_reward_model_names_the_path_and_how_to_make_one(tmp_path):
    with pytest.raises(ConfigError, match=rf"no reward model at {tmp_path / 'nope'} .*run a 'reward_model' stage first"):
        RewardModelReward(str(tmp_path / "nope"))


def test_the_stage_refuses_a_domain_without_preference_pairs(policy_checkpoint, tmp_path):
    context, _ = stage_context(tmp_path)
    context.environment = lambda domain: SimpleNamespace()
    with pytest.raises(ConfigError, match="has no preference_pairs"):
        RewardModelStage("rm", RewardModelStage.Config(output=str(tmp_path / "rm")), ["math"]).run(policy_checkpoint, context)


# ---- the pairwise judge -----------------------------------------------------------------------------


@pytest.mark.parametrize("reply, verdict", [
    ("A: 7, B: 4", "A"),
    ("A: 3/10\nB: 8/10", "B"),
    ("a = 5, b = 5", "tie"),
    ("Better: B", "B"),
    ("The winner is A.", "A"),
    ("[[B]]", "B"),
    ("Better: tie", "tie"),
    ("A: 9, B: 2\nBetter: B", "B"),                          # the verdict wins over the scores
    ("<think>Better: A</think>Better: B", "B"),              # thoughts are ignored
    ("Both are fine.", None),
    ("A: 7", None),                                          # one score is no comparison
    ("", None),
])
def test_parse_preference(reply, verdict):
    assert parse_preference(reply) == verdict


class ScriptedJudge:
    """Prefers the shorter response (a tie on equal length); records every prompt."""

    def __init__(self, reply=None):
        self.prompts: list[str] = []
        self.reply = reply

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        a = prompt.split("Response A:\n")[1].split("\nResponse B:")[0]
        b = prompt.split("Response B:\n")[1].split("\nWhich response")[0]
        return self.reply(a, b) if self.reply else f"A: {10 - len(a)}, B: {10 - len(b)}"


def group(*responses):
    return [episode(GREET, r) for r in responses]


def test_pairwise_win_rates_over_all_pairs_in_both_orders():
    judge = ScriptedJudge()
    results = PairwiseJudgeReward(judge).score(group("aa", "a", "aaa", "a"))
    assert len(judge.prompts) == 4 * 3                                       # every ordered pair once
    pairs = {(p.split("Response A:\n")[1].split("\n")[0], p.split("Response B:\n")[1].split("\n")[0]) for p in judge.prompts}
    assert ("a", "aaa") in pairs and ("aaa", "a") in pairs
    assert "Please greet Mia." in judge.prompts[0]
    # "a" beats "aa" and "aaa" (4 wins) and ties the other "a" (2 ties) over 6 comparisons
    assert [r.value for r in results] == pytest.approx([2 / 6, 5 / 6, 0.0, 5 / 6])
    assert all(r.info == {"status": "ok", "win_rate": r.value, "ok": 6, "unparsable": 0, "error": 0} for r in results)


def test_a_position_biased_judge_cancels_out():
    results = PairwiseJudgeReward(ScriptedJudge(lambda a, b: "Better: A")).score(group("x", "yy", "zzz"))
    assert [r.value for r in results] == [0.5, 0.5, 0.5]


def test_unparsable_judgements_are_ties_and_counted():
    reply = lambda a, b: "Better: A" if (a, b) == ("a", "bb") else "I cannot decide."  # noqa: E731
    results = PairwiseJudgeReward(ScriptedJudge(reply)).score(group("a", "bb", "ccc"))
    assert [r.value for r in results] == pytest.approx([2.5 / 4, 1.5 / 4, 0.5])
    assert [r.info["status"] for r in results] == ["unparsable"] * 3
    assert [r.info["unparsable"] for r in results] == [3, 3, 4] and results[0].info["ok"] == 1


def test_a_raising_judge_is_a_tie_with_an_error_status():
    def judge(prompt):
        if "Response A:\nboom" in prompt:
            raise RuntimeError("judge down")
        return "Better: A"

    results = PairwiseJudgeReward(judge).score(group("boom", "fine"))
    assert [r.value for r in results] == [0.25, 0.75]       # "fine" won as A; the other order was a tie
    assert [r.info["status"] for r in results] == ["error", "error"] and results[0].info["error"] == 1


def test_the_judge_is_loaded_by_import_path():
    reward = PairwiseJudgeReward("test_rlhf_plugin:ScriptedJudge", judge_options={})
    assert isinstance(reward.judge, ScriptedJudge)
    with pytest.raises(ValueError, match="import path 'module:name'"):
        PairwiseJudgeReward("no_colon")


def test_a_real_tiny_causal_lm_as_judge(policy_checkpoint):
    """An untrained model answers gibberish: every judgement is an unparsable tie, nothing raises."""
    judge = HFJudge(policy_checkpoint.path, max_new_tokens=6)
    reply = judge("Which is better?")
    assert isinstance(reply, str)
    results = PairwiseJudgeReward("cascade.rewards.judge:HFJudge", {"path": policy_checkpoint.path, "max_new_tokens": 6}).score(
        group("Hello, Mia!", "Go away."))
    assert all(0.0 <= r.value <= 1.0 and r.info["ok"] + r.info["unparsable"] == 2 and r.info["error"] == 0 for r in results)
    assert sum(r.value for r in results) == pytest.approx(1.0)


# ---- presets and the cascade ------------------------------------------------------------------------


RLHF = ["+domain@cascade.domains.rlhf=rlhf", "+stage@cascade.stages.reward_model=reward_model",
        "+stage@cascade.stages.rlhf=rlhf"]


def test_presets_compose_and_plan(tmp_path):
    """As the default cascade has them."""
    plugins = PluginManager().load()
    assert "pkg://cascade_rlhf.conf" in plugins.config_searchpaths()
    config = compose(["cascade.order=[sft,reward_model,rlhf]", "loggers=[]"], plugins.config_searchpaths())
    runner = CascadeRunner(config, plugins, tmp_path)     # plans: every name and option checked
    stages = {p.name: p for p in runner.plan}
    rm, rlhf = stages["reward_model"].stage, stages["rlhf"].stage
    assert rm.config.output == f"{tmp_path}/reward_model" and rm.config.init == "policy" and rm.domains == ["rlhf"]
    assert rlhf.config.kl_coef == 0.03 and rlhf.config.reward == "reward_model"
    assert rlhf.config.reward_options == {"model": f"{tmp_path}/reward_model", "normalize": False}
    assert rlhf.config.max_new_tokens == 64 and rlhf.domains == ["rlhf"]
    assert config.cascade.domains.rlhf.reward == "rlhf_gold"          # held-out evaluation: the gold rubric
    assert isinstance(runner.reward("rlhf"), GoldRubricReward)
    typo = compose(["+cascade.stages.reward_model.params.stepz=3", "loggers=[]"], plugins.config_searchpaths())
    with pytest.raises(ConfigError, match=r"reward_model.params: unknown config key 'stepz'; did you mean 'steps'\?"):
        CascadeRunner(typo, plugins, tmp_path)


class EvalSpy:
    """Records which stages' checkpoints get evaluated."""

    def __init__(self):
        self.stages: list[str] = []

    @hookimpl
    def cascade_eval_start(self, stage):
        self.stages.append(stage.name)


def test_reward_model_then_rlhf_cascade(tmp_path, monkeypatch):
    """init -> reward_model -> rlhf on a tiny model: the RL stage trains on the reward model, evaluation uses the gold
    rubric, and the reward model stage keeps the previous scores without evaluating again."""
    plugins = PluginManager().load()
    config = compose([
        "cascade=math", "~cascade.domains.math", *RLHF, "cascade.order=[reward_model,rlhf]", "loggers=[]",
        "model.options.vocab_size=400", "model.options.hidden_size=64", "cascade.domains.rlhf.eval.n=12", "cascade.domains.rlhf.eval.max_new_tokens=16",
        "cascade.stages.reward_model.params.init=scratch", "cascade.stages.reward_model.params.steps=10",
        "cascade.stages.reward_model.params.train_pairs=100", "cascade.stages.reward_model.params.eval_pairs=20",
        "cascade.stages.rlhf.params.steps=2", "cascade.stages.rlhf.params.prompts_per_step=2",
        "cascade.stages.rlhf.params.group_size=3", "cascade.stages.rlhf.params.max_new_tokens=12",
        "cascade.stages.rlhf.params.prompt_pool=20",
        "cascade.stages.rlhf.params.dynamic_filter=false",  # an untrained model's rollouts all run too long: all 0
    ], plugins.config_searchpaths())
    spy = EvalSpy()
    plugins.register(spy, "eval-spy")
    scored = []
    gold_score_group = GoldRubricReward.score
    monkeypatch.setattr(RewardModelReward, "score", lambda self, g: scored.append(len(g)) or RM_SCORE(self, g))
    monkeypatch.setattr(GoldRubricReward, "score", lambda self, g: scored.append(-len(g)) or gold_score_group(self, g))
    report = CascadeRunner(config, plugins, tmp_path / "run").run()
    assert spy.stages == ["init", "rlhf"]                                       # not after reward_model
    scores = report["scores"]
    assert list(scores) == ["init", "reward_model", "rlhf"] and scores["reward_model"] == scores["init"]
    assert report["eval_seconds"]["reward_model"] == 0 < report["eval_seconds"]["init"]  # reused, not rerun
    assert (tmp_path / "run" / "reward_model" / "config.json").exists()
    rm_rows = [json.loads(line) for line in (tmp_path / "run" / "stages" / "01_reward_model" / "history.jsonl").read_text().splitlines()]
    assert len(rm_rows) == 10 and "eval_pair_accuracy" in rm_rows[-1]
    rows = [json.loads(line) for line in (tmp_path / "run" / "stages" / "02_rlhf" / "history.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("kl" in r and r["reward_errors"] == 0 for r in rows)
    # training scored a step's 2 groups of 3 in one reward-model batch (raw scores are per episode), evaluation
    # single episodes with the gold rubric (it does not set per_episode: nothing to gain)
    assert set(scored) == {6, -1} and scored.count(6) == 2 and scored.count(-1) == 2 * 12
