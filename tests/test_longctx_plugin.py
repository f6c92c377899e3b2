"""The cascade-longctx plugin: RULER-style tasks answerable from their prompts at the asked length, disjoint
splits, the string-match reward on both sides of each rule, the judge hook, and the presets."""

from __future__ import annotations

import re
import sys
import types

import pytest

from cascade import Episode, Sample
from cascade.engine.policy import tokenizer_corpus
from cascade.tokenizer import train_chat_tokenizer
from cascade_longctx.plugin import NO_THINKING, LongContextEnvironment
from cascade_longctx.reward import JUDGE_RUBRIC, LongContextMatchReward, appears
from cascade_longctx.tasks import TASKS, WORDS, approx_tokens, generate


def episode(sample: Sample, text: str) -> Episode:
    return Episode(sample, messages=[*sample.messages, {"role": "assistant", "content": text}],
                   token_ids=[], loss_mask=[], logprobs=[])


def sample_of(values, distractors=(), question="What is the special magic number for amber-falcon?") -> Sample:
    return Sample("s", "longctx", [{"role": "user", "content": "..."}],
                  answer={"values": list(values), "distractors": list(distractors)}, meta={"question": question})


# ---- the reward ----------------------------------------------------------------------------------

ONE = (["48213"], ["51897", "60336", "38759"])
TWO = (["38098", "38759"], ["51897", "60336"])
CHAIN = (["LWW", "SEL", "DJU"], ["CGQ", "PTT", "BCM"])
PERSON = (["Bea Weller"], ["Tobin Dahl", "1988", "47650"])


@pytest.mark.parametrize("answer, case, all_, part", [
    ("Answer: 48213", ONE, 1.0, 1.0),
    ("Answer: 48213.", ONE, 1.0, 1.0),                              # punctuation around a value is fine
    ('The number is "48213"', ONE, 1.0, 1.0),                       # free wording, same value
    ("Answer: 148213", ONE, 0.0, 0.0),                              # embedded in a longer number
    ("Answer: 482130", ONE, 0.0, 0.0),
    ("Answer: 4821", ONE, 0.0, 0.0),                                # a prefix is not the value
    ("Answer: 11111", ONE, 0.0, 0.0),
    ("<think>48213</think>Answer: 11111", ONE, 0.0, 0.0),           # what the thinking says does not count
    ("<think>maybe 51897</think>Answer: 48213", ONE, 1.0, 1.0),     # ... nor do distractors named there
    ("<think>it is 48213", ONE, 0.0, 0.0),                          # never finished thinking: no answer
    ("Answer: 48213, 51897, 60336, 38759", ONE, 0.0, 0.25),         # every number of the context: diluted
    ("Answer: 48213, 51897", ONE, 0.0, 0.5),
    ("Answer: 48213, 77777", ONE, 1.0, 1.0),                        # a number not in the context: no credit, no cost
    ("Answer: 38098, 38759", TWO, 1.0, 1.0),
    ("Answer: 38759, 38098", TWO, 1.0, 1.0),                        # order is not checked (as in RULER)
    ("Answer: 38098", TWO, 0.0, 0.5),
    ("Answer: 38098, 38759, 51897, 60336", TWO, 0.0, 0.5),
    ("Answer: LWW, SEL, DJU", CHAIN, 1.0, 1.0),
    ("Answer: LWW, SEL", CHAIN, 0.0, 2 / 3),
    ("Answer: LWWX, SELF, DJU", CHAIN, 0.0, 1 / 3),                 # names inside longer names do not count
    ("Answer: lww, sel, dju", CHAIN, 0.0, 0.0),                     # case-sensitive: values are copied
    ("Answer: LWW, SEL, DJU, CGQ, PTT, BCM", CHAIN, 0.0, 0.5),      # every variable of the context
    ("Answer: Bea Weller", PERSON, 1.0, 1.0),
    ("Answer: Bea\n  Weller", PERSON, 1.0, 1.0),                    # whitespace inside a value is loose
    ("Answer: Bea", PERSON, 0.0, 0.0),
    ("Answer: Bea Weller, founded 1988", PERSON, 0.0, 0.5),
    ("", ONE, 0.0, 0.0),
])
def test_string_match_all_and_part(answer, case, all_, part):
    sample = sample_of(*case)
    for metric, expected in (("all", all_), ("part", part)):
        result = LongContextMatchReward(metric=metric).score([episode(sample, NO_THINKING + answer)])[0]
        assert result.value == pytest.approx(expected), (metric, answer)
        assert result.info["status"] == "ok"


def test_appears_needs_whole_tokens():
    assert not appears("2345", "123456") and appears("2345", "1, 2345, 6") and appears("2345", "(2345)")
    assert not appears("QXT", "QXT2") and not appears("QXT", "AQXT") and appears("QXT", "QXT, BMR")


def test_reward_never_raises_on_a_malformed_sample():
    broken = Sample("s", "longctx", [{"role": "user", "content": "?"}], answer=None)
    result = LongContextMatchReward().score([episode(broken, "Answer: 1")])[0]
    assert (result.value, result.info["status"]) == (0.0, "error")
    no_answer = Episode(sample_of(*ONE), messages=[{"role": "user", "content": "..."}], token_ids=[], loss_mask=[],
                        logprobs=[])
    assert LongContextMatchReward().score([no_answer])[0].value == 0.0
    with pytest.raises(ValueError, match="metric"):
        LongContextMatchReward(metric="any")


# ---- the judge hook -------------------------------------------------------------------------------


class FakeJudge:
    def __init__(self, reply: str = "Score: 7"):
        self.reply = reply
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return self.reply


@pytest.mark.parametrize("reply, value, status", [
    ("It says the number in words. Score: 7", 0.7, "judged"),
    ("Score: 2\nOn reflection, Score: 10", 1.0, "judged"),   # the last score counts
    ("Score: 0", 0.0, "judged"),
    ("The answer looks right.", 0.0, "no_score"),            # no score: 0, never a guess
    ("Score: 11", 0.0, "no_score"),                          # out of range
])
def test_judge_grades_what_string_match_does_not(reply, value, status):
    judge = FakeJudge(reply)
    sample = sample_of(*ONE)
    words = "forty-eight thousand two hundred thirteen"
    result = LongContextMatchReward(judge=judge).score([episode(sample, NO_THINKING + words)])[0]
    assert (result.value, result.info["status"]) == (pytest.approx(value), status)
    prompt = judge.prompts[0]
    assert prompt == JUDGE_RUBRIC.format(question=sample.meta["question"], expected="48213", response=words)


def test_judge_is_not_asked_about_exact_answers():
    judge = FakeJudge("Score: 0")
    result = LongContextMatchReward(judge=judge).score([episode(sample_of(*ONE), NO_THINKING + "Answer: 48213")])[0]
    assert (result.value, result.info["status"], judge.prompts) == (1.0, "ok", [])


def test_a_failing_judge_scores_zero():
    def broken(prompt):
        raise ConnectionError("judge unreachable")

    result = LongContextMatchReward(judge=broken).score([episode(sample_of(*ONE), "Answer: 4 8 2 1 3")])[0]
    assert (result.value, result.info["status"]) == (0.0, "error") and "unreachable" in result.info["detail"]


def test_judge_is_named_by_import_path(monkeypatch):
    module = types.ModuleType("fake_longctx_judges")
    module.Judge = FakeJudge
    monkeypatch.setitem(sys.modules, "fake_longctx_judges", module)
    reward = LongContextMatchReward(judge="fake_longctx_judges:Judge", judge_options={"reply": "Score: 5"})
    assert reward.score([episode(sample_of(*ONE), "Answer: about 48 thousand")])[0].value == 0.5


# ---- the tasks: every answer can be read back from its prompt -------------------------------------

NEEDLE = re.compile(r"The special magic (?:number|word) for ([a-z]+-[a-z]+) is (\d+|[a-z]+)\.")
ASSIGNMENT = re.compile(r"VAR ([A-Z]{3}) = (\d+|[A-Z]{3})\.")
DOCUMENT = re.compile(r"Document (\d+): ([A-Za-z]+)\n")
FACTS = {  # the attribute is the word the question uses
    "mayor": r"The mayor of {town} is ([A-Z][a-z]+ [A-Z][a-z]+)\.",
    "founded": r"{town} was founded in (\d+)\.",
    "population": r"The population of {town} is (\d+)\.",
    "elevation": r"{town} lies at an elevation of (\d+) metres\.",
}


def read_back(sample: Sample) -> tuple[list[str], set[str]]:
    """The expected values and every candidate value, found in the prompt text alone."""
    prompt, question = sample.messages[0]["content"], sample.meta["question"]
    assert prompt.endswith(question)
    kind = sample.meta["task"]
    if kind == "niah":
        needles = NEEDLE.findall(prompt)
        numbers = dict(needles)
        assert len(numbers) == len(needles)  # every key once
        asked = re.findall(r"[a-z]+-[a-z]+", question)
        return [numbers[k] for k in asked], set(numbers.values())
    if kind == "variable_tracking":
        value_of: dict[str, str] = {}
        for name, source in ASSIGNMENT.findall(prompt):
            assert name not in value_of  # assigned once, after its source
            value_of[name] = source if source.isdigit() else value_of[source]
        asked = re.search(r"the value (\d+)\?", question).group(1)
        return [n for n, v in value_of.items() if v == asked], set(value_of)
    documents = DOCUMENT.findall(prompt)
    bodies = dict(zip((town for _, town in documents), re.split(DOCUMENT.pattern, prompt)[3::3]))
    assert [int(number) for number, _ in documents] == list(range(1, len(documents) + 1))
    named = re.search(r"Document (\d+)", question)
    if named:
        town = documents[int(named.group(1)) - 1][1]
    else:
        town = next(t for _, t in documents if re.search(rf"\b{t}\b", question))
    candidates = set()
    for t, body in bodies.items():
        for pattern in FACTS.values():
            found = re.findall(pattern.format(town=t), body)
            assert len(found) == 1  # each fact once, in its own document
            candidates.add(found[0])
    attribute = next(a for a in FACTS if a in question)
    return re.findall(FACTS[attribute].format(town=town), bodies[town]), candidates


@pytest.mark.parametrize("options", [
    {},
    {"context_tokens": 1200, "keys": 6, "queries": [1, 2, 3], "chains": 3, "hops": 4, "documents": 5},
    {"context_tokens": 120, "keys": 2, "queries": 2, "chains": 1, "hops": 1, "documents": 2},
    {"keys": 3, "queries": [1, 2], "values": ["number", "word"]},
])
@pytest.mark.parametrize("split", ["train", "test"])
def test_every_answer_is_in_its_prompt(options, split):
    env = LongContextEnvironment(**options)
    samples = env.samples(split, 60, 0)
    assert {s.meta["task"] for s in samples} == set(TASKS)
    for sample in samples:
        expected, candidates = read_back(sample)
        assert expected == sample.answer["values"], sample.messages[0]["content"]
        assert candidates == set(sample.answer["values"]) | set(sample.answer["distractors"])
        # the filler holds no number of its own: with the facts and titles gone, no digit is left
        context = sample.messages[0]["content"].removesuffix(sample.meta["question"])
        facts = [re.compile(p.format(town="[A-Za-z]+")) for p in FACTS.values()]
        for pattern in (NEEDLE, ASSIGNMENT, DOCUMENT, *facts):
            context = pattern.sub("", context)
        assert not re.search(r"\d", context)
        # nor any word a needle may hold, and no word of the needles' keys is one: a word value in an answer is one
        assert not set(re.findall(r"[a-z]+", context)) & set(WORDS)
        assert not {w for k, _ in NEEDLE.findall(sample.messages[0]["content"]) for w in k.split("-")} & set(WORDS)


def test_word_values_mix_with_numbers_per_item():
    mixed = LongContextEnvironment(tasks=["niah"], keys=2, values=["number", "word"]).samples("test", 60, 0)
    kinds = [s.meta["value"] for s in mixed]
    assert 15 < kinds.count("word") < 45 and kinds.count("word") + kinds.count("number") == 60
    for s in mixed:
        assert all(v.isdigit() == (s.meta["value"] == "number") for v in s.answer["values"] + s.answer["distractors"])
        assert f"special magic {s.meta['value']}s are hidden" in s.messages[0]["content"]
        assert s.meta["question"].endswith(f"Answer with the {s.meta['value']}.")
    # numbers alone (the default) are the items they always were: the option draws nothing then
    assert LongContextEnvironment(values=["number"]).samples("test", 20, 0) == LongContextEnvironment().samples("test", 20, 0)


def test_options_shape_the_tasks():
    env = LongContextEnvironment(tasks=["niah"], keys=5, queries=[1, 3])
    samples = env.samples("train", 40, 0)
    assert {len(s.answer["values"]) for s in samples} == {1, 3}
    assert all(len(NEEDLE.findall(s.messages[0]["content"])) == 5 for s in samples)
    chains = LongContextEnvironment(tasks=["variable_tracking"], chains=3, hops=4).samples("train", 10, 0)
    assert all(len(s.answer["values"]) == 5 and len(s.answer["distractors"]) == 10 for s in chains)
    docs = LongContextEnvironment(tasks=["multi_doc_qa"], documents=4).samples("train", 10, 0)
    assert all(len(DOCUMENT.findall(s.messages[0]["content"])) == 4 for s in docs)
    for bad in ({"tasks": ["nope"]}, {"tasks": []}, {"queries": 5}, {"keys": 2, "queries": [3]}, {"hops": 0},
                {"documents": 0}, {"context_tokens": 0}, {"values": []}, {"values": ["letter"]}):
        with pytest.raises(ValueError):
            LongContextEnvironment(**bad)


def test_asked_facts_spread_over_the_whole_context():
    depths = [s.meta["depth"] for s in LongContextEnvironment(tasks=["niah"]).samples("train", 200, 0)]
    assert min(depths) < 0.1 and max(depths) > 0.9 and 0.35 < sum(depths) / len(depths) < 0.65


# ---- length, splits, determinism, demonstrations ----------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    """A cascade tokenizer trained as the init stage trains it, on this domain's corpus."""
    env = LongContextEnvironment(queries=[1, 2])
    return train_chat_tokenizer(list(tokenizer_corpus([env], 0, per_domain=200)), vocab_size=2048)


def prompt_tokens(tokenizer, messages) -> int:
    return len(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                             enable_thinking=False, return_dict=False))


@pytest.mark.parametrize("context_tokens", [200, 400, 800, 1600])
def test_prompt_length_tracks_context_tokens(tokenizer, context_tokens):
    samples = LongContextEnvironment(context_tokens=context_tokens, queries=[1, 2]).samples("test", 30, 1)
    for sample in samples:
        assert abs(approx_tokens(sample.messages[0]["content"]) - context_tokens) <= 0.05 * context_tokens + 15
        # the chat template adds ~12 tokens; generated names split into a few tokens each
        assert 0.95 * context_tokens <= prompt_tokens(tokenizer, sample.messages) <= 1.25 * context_tokens + 12


def test_default_demonstrations_fit_a_512_token_row(tokenizer):
    for conversation in LongContextEnvironment(queries=[1, 2]).demonstrations(60, 0):
        assert len(tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=False)) <= 490


def test_splits_share_no_prompt_key_value_or_name():
    def names(samples):
        out = set()
        for s in samples:
            text = s.messages[0]["content"]
            out |= set(re.findall(r"\d{3,}", text)) | {k for k, _ in NEEDLE.findall(text)}
            out |= {n for n, _ in ASSIGNMENT.findall(text)} | {t for _, t in DOCUMENT.findall(text)}
            out |= set(re.findall(r"The mayor of \w+ is ([A-Z][a-z]+ [A-Z][a-z]+)\.", text))
        return out

    env = LongContextEnvironment(queries=[1, 2], values=["number", "word"])
    train, test = env.samples("train", 300, 0), env.samples("test", 90, 0)
    assert not {s.messages[0]["content"] for s in train} & {s.messages[0]["content"] for s in test}
    train_names, test_names = names(train), names(test)
    assert len(test_names) > 500 and not train_names & test_names
    # word values are the one pool the splits share (tasks.WORDS): a held-out needle pairs a new key with a word
    words = {split: {v for s in samples for _, v in NEEDLE.findall(s.messages[0]["content"]) if v.isalpha()}
             for split, samples in (("train", train), ("test", test))}
    assert words["train"] | words["test"] <= set(WORDS) and len(words["train"] & words["test"]) > 20


def test_generation_is_deterministic_per_seed():
    env = LongContextEnvironment()
    assert env.samples("test", 12, 3) == env.samples("test", 12, 3)
    assert [s.id for s in env.samples("test", 12, 3)] != [s.id for s in env.samples("test", 12, 4)]
    assert generate("niah", "train", 5, 0) == generate("niah", "train", 5, 0)
    assert env.demonstrations(6, 0) == env.demonstrations(6, 0)


def test_demonstrations_are_training_prompts_that_score_one():
    env = LongContextEnvironment(queries=[1, 2], values=["number", "word"])
    demonstrations, samples = env.demonstrations(60, 0), env.samples("train", 60, 1)  # demonstrations use seed + 1
    test_prompts = {s.messages[0]["content"] for s in env.samples("test", 60, 0)}
    reward = LongContextMatchReward()
    for conversation, sample in zip(demonstrations, samples, strict=True):
        assert conversation[:1] == sample.messages and conversation[0]["content"] not in test_prompts
        answer = conversation[1]["content"]
        assert answer.startswith(NO_THINKING + "Answer: ") and len(answer) < 110
        assert reward.score([episode(sample, answer)])[0].value == 1.0
        # each value after the context's words for it (the key, the fact), so finding it is copying what follows
        stated, prompt, values = answer[len(NO_THINKING + "Answer: "):], sample.messages[0]["content"], sample.answer["values"]
        if sample.meta["task"] == "niah":
            keys = re.findall(r"[a-z]+-[a-z]+", sample.meta["question"])
            assert stated == ", ".join(f"{k} is {v}" for k, v in zip(keys, values))
            assert all(f"The special magic {sample.meta['value']} for {k} is {v}." in prompt for k, v in zip(keys, values))
        elif sample.meta["task"] == "multi_doc_qa":
            fact = re.sub(r"^Document (\d+): (\w+)\. ", "", stated)
            assert values[0] in fact and fact in prompt
            if fact != stated:  # the document was asked by number: its title first
                assert stated.split(". ")[0] + "\n" in prompt
        else:
            assert stated == ", ".join(values)


def test_demonstrations_spread_over_their_own_context_lengths():
    env = LongContextEnvironment(demonstration_context_tokens=[100, 400])
    demonstrations = env.demonstrations(30, 0)
    lengths = [approx_tokens(conversation[0]["content"]) for conversation in demonstrations]
    # at 100 pieces: niah and variable tracking ~100; three documents' facts alone are ~180
    assert all(n <= 200 for n in lengths[:15]) and all(n > 370 for n in lengths[15:])
    assert env.demonstrations(30, 0)[15:] == LongContextEnvironment().demonstrations(15, 0)
    assert all(approx_tokens(s.messages[0]["content"]) > 370 for s in env.samples("test", 9, 0))  # evaluation keeps 400
    assert LongContextEnvironment(demonstration_context_tokens=200).demonstration_lengths == [200]
    for bad in ([], [0, 400], -5):
        with pytest.raises(ValueError):
            LongContextEnvironment(demonstration_context_tokens=bad)


# ---- registration and presets --------------------------------------------------------------------


def test_plugin_is_registered_with_its_presets(tmp_path):
    from cascade.config import compose, to_container
    from cascade.plugins import PluginManager
    from cascade.runner import CascadeRunner

    plugins = PluginManager().load()
    assert "longctx" in plugins.components["environments"] and "longctx_match" in plugins.components["rewards"]
    config = compose(["cascade=math", "loggers=[]", "+domain@cascade.domains.longctx=longctx",
                      "+stage@cascade.stages.longctx_rl=longctx_rl"], plugins.config_searchpaths())
    runner = CascadeRunner(config, plugins, tmp_path)  # checks every name and the stage's params
    cfg = to_container(config)["cascade"]
    domain, stage = cfg["domains"]["longctx"], cfg["stages"]["longctx_rl"]
    assert domain["environment"] == "longctx" and domain["reward"] == "longctx_match"
    assert domain["reward_options"] == {"metric": "all", "judge": None, "judge_options": None}
    assert runner.eval_options("longctx").max_new_tokens == 48
    env = runner.environment("longctx")
    assert env.options["context_tokens"] == 400 and env.tasks == list(TASKS)
    assert isinstance(runner.reward("longctx"), LongContextMatchReward)
    assert stage["type"] == "grpo" and stage["domains"] == ["longctx"]
    assert stage["params"]["micro_batch"] == stage["params"]["group_size"] == 8
    assert stage["params"]["kl_coef"] == 0.0 and stage["params"]["dynamic_filter"] is True  # the shared preset's
