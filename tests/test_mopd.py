"""MOPD: the loss by hand, gradients, teachers by domain, registry rules, wrapped SFT and GRPO stages."""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from cascade import Checkpoint, StageError, Teacher
from cascade.config import compose
from cascade.engine.grpo import Batch
from cascade.engine.policy import init_checkpoint
from cascade.plugins import PluginManager
from cascade.registry import Entry, Registry
from cascade.runner import CascadeRunner
from cascade_mopd.objective import DistillationObjective


def one_sequence_batch(rollout, teacher, mask, domain="math"):
    n = len(mask)
    return Batch(
        input_ids=torch.zeros(1, n + 1, dtype=torch.long),
        attention_mask=torch.ones(1, n + 1, dtype=torch.long),
        mask=torch.tensor([mask], dtype=torch.float32),
        advantages=torch.tensor([1.5]),
        rollout_logprobs=torch.tensor([rollout]),
        domains=[domain],
        teacher_logprobs=torch.tensor([teacher]),
    )


def test_loss_weights_and_gradient_by_hand():
    # four positions: a prompt token (mask 0), two response tokens inside the window, one outside (ratio e^1 > 2)
    train = torch.tensor([[-1.0, -0.5, -1.2, -0.3]], requires_grad=True)
    rollout = [-9.0, -0.7, -1.0, -1.3]
    teacher = [-5.0, -0.1, -2.0, -0.2]
    batch = one_sequence_batch(rollout, teacher, [0, 1, 1, 1])
    objective = DistillationObjective({"math": None}, alpha=0.0, ratio_bounds=(0.5, 2.0))
    loss, stats = objective.loss(train, train.detach(), batch, batch)

    r1, r2, r3 = math.exp(-0.5 + 0.7), math.exp(-1.2 + 1.0), math.exp(-0.3 + 1.3)
    assert 0.5 <= r1 <= 2 and 0.5 <= r2 <= 2 and r3 > 2  # the third response token falls outside the window
    a1, a2 = -0.1 - (-0.5), -2.0 - (-1.2)
    kept = 2
    expected = -(r1 * a1 * -0.5 + r2 * a2 * -1.2) / kept / 1
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats["masked_tokens"] == 1.0

    loss.backward()
    # gradient only through log pi_train, with w_t and a_t as constants: -w_t * a_t / |V| / sequences
    assert train.grad[0].tolist() == pytest.approx([0.0, -r1 * a1 / kept, -r2 * a2 / kept, 0.0], rel=1e-6)


def test_alpha_blends_in_the_reward_advantage():
    train = torch.tensor([[-0.5]], requires_grad=True)
    batch = one_sequence_batch([-0.5], [-0.25], [1])
    plain, _ = DistillationObjective({}, alpha=0.0).loss(train, train.detach(), batch, batch)
    blended, _ = DistillationObjective({}, alpha=2.0).loss(train, train.detach(), batch, batch)
    assert plain.item() == pytest.approx(-(0.25 * -0.5))
    assert blended.item() == pytest.approx(-((0.25 + 2.0 * 1.5) * -0.5))


class ConstantTeacher(Teacher):
    def __init__(self, value):
        self.value, self.calls = value, []

    def logprobs(self, token_ids_B):
        self.calls.append(len(token_ids_B))
        return [[0.0] + [self.value] * (len(ids) - 1) for ids in token_ids_B]


def test_each_example_is_scored_by_its_domains_teacher_in_one_call_per_teacher():
    math_teacher, code_teacher = ConstantTeacher(-1.0), ConstantTeacher(-2.0)
    objective = DistillationObjective({"math": math_teacher, "code": code_teacher, "proofs": math_teacher})
    domains = ["math", "code", "proofs", "code", "math"]
    lengths = [4, 3, 5, 2, 4]
    width = max(lengths)
    batch = Batch(
        input_ids=torch.ones(5, width, dtype=torch.long),
        attention_mask=torch.tensor([[1] * n + [0] * (width - n) for n in lengths]),
        mask=torch.ones(5, width - 1), advantages=torch.zeros(5), rollout_logprobs=torch.zeros(5, width - 1), domains=domains,
    )
    metrics = objective.prepare(batch, context=None)
    assert math_teacher.calls == [3] and code_teacher.calls == [2]  # math and proofs share one teacher
    for row, (domain, n) in enumerate(zip(domains, lengths)):
        value = -2.0 if domain == "code" else -1.0
        assert batch.teacher_logprobs[row, : n - 1].tolist() == [value] * (n - 1)
        assert batch.teacher_logprobs[row, n - 1:].abs().sum() == 0
    assert metrics["teacher_seconds"] >= 0


def test_registry_rules(tmp_path):
    registry = Registry(tmp_path / "index.json")
    registry.add(Entry(Checkpoint("init", "/ck/init", "L"), {"math": 0.1, "code": 0.0}))
    registry.add(Entry(Checkpoint("sft", "/ck/sft", "L"), {"math": 0.5, "code": 0.4}))
    registry.add(Entry(Checkpoint("math_rl", "/ck/math", "L"), {"math": 0.7, "code": 0.3}))
    registry.add(Entry(Checkpoint("code_rl", "/ck/code", "L"), {"math": 0.6, "code": 0.4}))
    assert registry.resolve("best", "math").checkpoint.stage == "math_rl"
    assert registry.resolve("best", "code").checkpoint.stage == "sft"  # a tie goes to the earlier stage
    assert registry.resolve("stage:code_rl", "math").checkpoint.path == "/ck/code"
    assert registry.resolve("path:/elsewhere", "math").checkpoint.path == "/elsewhere"
    with pytest.raises(KeyError, match="no checkpoint for stage 'nope' yet; finished so far: init, sft, math_rl, code_rl"):
        registry.resolve("stage:nope", "math")
    with pytest.raises(ValueError, match="unknown teacher rule 'worst'"):
        registry.resolve("worst", "math")
    assert Registry(tmp_path / "index.json").resolve("best", "math").checkpoint.stage == "math_rl"  # persisted


TINY = [
    "cascade=math", "loggers=[]", "eval.n=8", "eval.max_new_tokens=16",
    "cascade.domains.math.environment_options.difficulties=[1]",
    "cascade.stages.sft.params.steps=3", "cascade.stages.sft.params.rows_per_step=2", "cascade.stages.sft.params.micro_rows=2",
    "cascade.stages.sft.params.seq_len=256", "cascade.stages.sft.params.demonstrations_per_domain=40",
    "cascade.stages.math_grpo.params.steps=2", "cascade.stages.math_grpo.params.prompts_per_step=2",
    "cascade.stages.math_grpo.params.group_size=2", "cascade.stages.math_grpo.params.max_new_tokens=12",
    "cascade.stages.math_grpo.params.prompt_pool=20", "model.options.vocab_size=400",
]


def run(tmp_path, *overrides):
    plugins = PluginManager().load()
    config = compose([*TINY, *overrides], plugins.config_searchpaths())
    return CascadeRunner(config, plugins, tmp_path / "run").run()


def history(tmp_path, stage_dir):
    return [json.loads(line) for line in (tmp_path / "run" / "stages" / stage_dir / "history.jsonl").read_text().splitlines()]


def test_mopd_wraps_a_grpo_stage_and_an_sft_stage(tmp_path):
    report = run(
        tmp_path,
        "+cascade.stages.math_grpo.wrap.mopd.teachers.default=best",
        "+stage@cascade.stages.distil=sft",
        "+cascade.stages.distil.wrap.mopd.teachers.default=stage:sft",
        "+cascade.stages.distil.wrap.mopd.sampling.steps=2",
        "+cascade.stages.distil.wrap.mopd.sampling.prompts_per_step=2",
        "+cascade.stages.distil.wrap.mopd.sampling.max_new_tokens=12",
        "+cascade.stages.distil.wrap.mopd.sampling.prompt_pool=20",
    )
    assert list(report["scores"]) == ["init", "sft", "math_grpo", "distil"]
    for stage_dir in ("02_math_grpo", "03_distil"):
        rows = history(tmp_path, stage_dir)
        assert len(rows) == 2
        assert all({"reverse_kl/math", "masked_fraction", "teacher_time_share"} <= set(r) for r in rows)
        assert all(0.0 <= r["masked_fraction"] <= 1.0 and 0.0 < r["teacher_time_share"] < 1.0 for r in rows)
    teachers = json.loads((tmp_path / "run" / "stages" / "02_math_grpo" / "teachers.json").read_text())
    assert teachers["math"]["rule"] == "best" and teachers["math"]["stage"] in ("init", "sft")
    assert json.loads((tmp_path / "run" / "stages" / "03_distil" / "teachers.json").read_text())["math"]["stage"] == "sft"
    # warm-up as configured in SPEC.md: lr starts at 2e-7 + (2e-6 - 2e-7) / 30
    assert history(tmp_path, "03_distil")[0]["lr"] == pytest.approx(2e-7 + (2e-6 - 2e-7) / 30)


def test_a_teacher_with_another_tokenizer_is_refused(tmp_path):
    from cascade_math.plugin import MathEnvironment

    class Other(MathEnvironment):
        def demonstrations(self, n, seed):
            return [[{"role": "user", "content": "completely different corpus " * 3}]] * 5

    foreign = tmp_path / "foreign"
    init_checkpoint(OmegaConf.create({"path": None, "arch": "tiny_nemotron_h", "options": {"vocab_size": 300}, "dtype": "float32"}),
                    str(foreign), seed=1, environments={"other": Other([1])})
    with pytest.raises(StageError, match=r"has a different tokenizer from the student .*teachers must come from the student's lineage"):
        run(tmp_path, f"+cascade.stages.math_grpo.wrap.mopd.teachers.default=path:{foreign}")
