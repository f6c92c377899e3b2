"""cascade-math-proofs: the claim generator, both environments, the rewards (through the plugin manager
and a composed config), and the judge hook with a fake judge."""

from __future__ import annotations

import random
import sys
import types

import pytest

from cascade import Episode, Sample
from cascade.rewards.proofs import check_proof
from cascade_math_proofs.claims import KINDS, corrupt, generate
from cascade.rewards.judge import load_judge
from cascade_math_proofs.judge import JudgeReward
from cascade_math_proofs.plugin import ProofCheckEnvironment, ProofEnvironment, ProofVerdictReward, parse_verdict

NT = "<think></think>"


def episode(sample: Sample, answer: str) -> Episode:
    return Episode(sample, [*sample.messages, {"role": "assistant", "content": answer}], [], [], [])


# ---- generator -----------------------------------------------------------------------------------


def test_generator_is_deterministic_and_seeded():
    assert generate("train", 20, 0, 2) == generate("train", 20, 0, 2)
    assert generate("train", 20, 0, 2) != generate("train", 20, 1, 2)


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_splits_are_disjoint(difficulty):
    train = {t.claim for t in generate("train", 300, 0, difficulty)}
    test = {t.claim for t in generate("test", 60, 0, difficulty)}
    assert len(train) == 300 and len(test) == 60 and not train & test


def test_difficulty_sets_the_size_of_claims():
    terms = {level: {t.claim.count("/(") for t in generate("train", 10, 0, level, ["telescoping"])} for level in (1, 2, 3)}
    assert terms == {1: {3}, 2: {4}, 3: {5}}  # level + 1 terms on the left, one fraction on the right
    assert all(" > 0" not in t.claim for t in generate("train", 20, 0, 2, ["inequality"]))
    assert all(t.claim.endswith(" > 0") and "for" in t.claim for t in generate("train", 20, 0, 3, ["inequality"]))
    assert {t.kind for t in generate("train", 30, 0, 1)} == set(KINDS)


def test_generator_refuses_bad_arguments():
    with pytest.raises(ValueError, match="difficulty"):
        generate("train", 1, 0, 4)
    with pytest.raises(ValueError, match="kinds"):
        generate("train", 1, 0, 1, ["geometry"])
    with pytest.raises(ValueError, match="split"):
        generate("dev", 1, 0, 1)


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_every_generated_proof_is_valid(difficulty):
    for task in generate("train", 24, 3, difficulty):
        report = check_proof(task.claim, task.proof_text)
        assert (report.score, report.verdict) == (1.0, "valid"), (task, report)


def test_a_corrupted_proof_fails_at_the_changed_step_unless_another_rule_holds():
    rng = random.Random(0)
    broken = 0
    for task in [t for level in (1, 2, 3) for t in generate("train", 20, 5, level)]:
        shown = corrupt(task.proof, rng)
        changed = [i for i, (a, b) in enumerate(zip(task.proof, shown)) if a != b]
        assert len(shown) == len(task.proof) and len(changed) == 1 and changed[0] >= 1
        verdict = check_proof(task.claim, "\n".join([*shown, "QED"])).verdict
        if verdict == "valid":  # only a rule swapped for another that also gives the step
            assert "[rule:" in shown[changed[0]], shown
        else:
            assert verdict == f"invalid at step {changed[0]}", (task.claim, shown)
            broken += 1
    assert broken >= 55


# ---- environments and rewards ------------------------------------------------------------------


def test_proof_check_shows_half_broken_proofs_with_the_verifiers_verdict():
    env = ProofCheckEnvironment([1, 2])
    env.domain = "proof_check"
    samples = env.samples("test", 20, 0)
    assert len(samples) == 20 and len({s.id for s in samples}) == 20
    assert 10 <= sum(s.answer == "valid" for s in samples) <= 12  # a changed rule may still hold
    for sample in samples:
        claim, proof = sample.messages[0]["content"].split("\nProof:\n")
        proof = proof.rsplit("\n", 1)[0]  # the instruction line
        assert check_proof(claim.removeprefix("Claim: "), proof).verdict == sample.answer

    reward = ProofVerdictReward()
    for demo, sample in zip(env.demonstrations(10, 0), env.samples("train", 10, 1)):
        assert demo[1]["content"] == f"{NT}Verdict: {sample.answer}"
        assert reward.score([episode(sample, demo[1]["content"])])[0].value == 1.0
        wrong = "invalid at step 9" if sample.answer == "valid" else "valid"
        assert reward.score([episode(sample, f"Verdict: {wrong}")])[0].value == 0.0
    missing = reward.score([episode(samples[0], "It looks fine.")])[0]
    assert (missing.value, missing.info["status"]) == (0.0, "no_verdict")


@pytest.mark.parametrize("text, verdict", [
    ("Verdict: valid", "valid"),
    ("verdict:  Invalid at step  3", "invalid at step 3"),
    ("<think>Verdict: valid</think>Verdict: invalid at step 2", "invalid at step 2"),
    ("<think>Verdict: valid", None),                      # never finished thinking
    ("Verdict: valid\nVerdict: invalid at step 1", "invalid at step 1"),  # the last one
    ("Verdict: invalid", None),                           # where it fails is part of the answer
    ("Verdict: validity unclear", None),
    ("valid", None),
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_presets_compose_validate_and_build_through_the_plugin_manager(tmp_path):
    from cascade.config import compose
    from cascade.plugins import PluginManager
    from cascade.runner import CascadeRunner

    plugins = PluginManager().load()
    assert "pkg://cascade_math_proofs.conf" in plugins.config_searchpaths()
    config = compose(["+domain@cascade.domains.proofs=proofs", "+domain@cascade.domains.proof_check=proof_check",
                      "+stage@cascade.stages.proofs_rl=proofs_rl"], plugins.config_searchpaths())
    runner = CascadeRunner(config, plugins, tmp_path)  # plans the cascade: every name and option checked
    stage = config.cascade.stages.proofs_rl
    assert stage.type == "grpo" and list(stage.domains) == ["proofs", "proof_check"]
    assert stage.params.max_new_tokens == 128 and stage.params.kl_coef == 0.0
    assert runner.eval_options("proof_check").max_new_tokens == 16

    env, reward = runner.environment("proofs"), runner.reward("proofs")
    try:
        samples = env.samples("train", 6, 0)
        demos = env.demonstrations(6, 0)
        episodes = [episode(s, d[1]["content"]) for s, d in zip(env.samples("train", 6, 1), demos)]
        left, right = samples[0].answer.split(" = ")  # an identity (the first kind)
        copied = episode(samples[0], f"{NT}{left}\n= {right}\nQED")
        thought = episode(samples[1], "<think>x\n= y\nQED</think>")
        results = reward.score([*episodes, copied, thought])
    finally:
        reward.close()
    assert [r.value for r in results[:6]] == [1.0] * 6  # the demonstrations prove their claims
    assert all(r.info["status"] == "ok" for r in results[:6])
    assert (results[6].value, results[6].info["verdicts"]) == (0.0, ["restates the claim"])  # the claim copied back
    assert (results[7].value, results[7].info["status"]) == (0.0, "format")  # a proof only inside <think>
    assert all(s.domain == "proofs" and s.messages[0]["content"].startswith(f"Claim: {s.answer}\n") for s in samples)


def test_a_demonstration_is_short():
    for env in (ProofEnvironment([1]), ProofCheckEnvironment([1])):
        for demo in env.demonstrations(50, 0):
            assert len(demo[0]["content"]) + len(demo[1]["content"]) < 320  # under ~170 tokens of the tiny tokenizer
            assert demo[1]["content"].startswith(NT)


# ---- the judge hook ----------------------------------------------------------------------------


class FakeJudge:
    """Stands in for a judge model: records the prompts, answers with a fixed reply."""

    def __init__(self, reply: str = "Looks rigorous.\nScore: 7"):
        self.reply = reply
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return self.reply


def test_judge_reward_scores_with_the_rubric():
    judge = FakeJudge()
    sample = Sample("s", "proofs", [{"role": "user", "content": "Prove that sqrt(2) is irrational."}])
    result = JudgeReward(judge).score([episode(sample, "<think>hmm</think>Suppose sqrt(2) = p/q in lowest terms...")])[0]
    assert (result.value, result.info["status"]) == (0.7, "ok")
    assert "Prove that sqrt(2) is irrational." in judge.prompts[0] and "lowest terms" in judge.prompts[0]
    assert "hmm" not in judge.prompts[0]  # the judge never sees the thinking


@pytest.mark.parametrize("reply, value, status", [
    ("Score: 10", 1.0, "ok"), ("score: 0", 0.0, "ok"), ("Score: 2.5", 0.25, "ok"),
    ("Score: 3\nOn reflection, Score: 5", 0.5, "ok"),
    ("Score: 11", 0.0, "no_score"), ("A fine proof.", 0.0, "no_score")])
def test_judge_replies(reply, value, status):
    sample = Sample("s", "proofs", [{"role": "user", "content": "Prove it."}])
    result = JudgeReward(FakeJudge(reply)).score([episode(sample, "Proof.")])[0]
    assert (result.value, result.info["status"]) == (value, status)


def test_a_failing_judge_scores_zero():
    def broken(prompt):
        raise ConnectionError("judge unreachable")

    sample = Sample("s", "proofs", [{"role": "user", "content": "Prove it."}])
    result = JudgeReward(broken).score([episode(sample, "Proof.")])[0]
    assert (result.value, result.info["status"]) == (0.0, "error") and "unreachable" in result.info["detail"]


def test_judge_is_named_by_import_path_in_config(monkeypatch):
    module = types.ModuleType("fake_judges")
    module.grade = FakeJudge("Score: 4")
    module.Judge = FakeJudge
    monkeypatch.setitem(sys.modules, "fake_judges", module)
    assert load_judge("fake_judges:grade") is module.grade
    built = load_judge("fake_judges:Judge", {"reply": "Score: 9"})
    assert isinstance(built, FakeJudge) and built.reply == "Score: 9"
    with pytest.raises(ValueError, match="module:name"):
        load_judge("fake_judges")
    with pytest.raises(TypeError, match="callable"):
        load_judge("textwrap:TextWrapper", {"width": 10})  # builds an object that is not a judge
