"""`cascade export openrlhf STAGE`: the prompts, reward function, agent and launch command of a stage for OpenRLHF.

The contract tests need no OpenRLHF: they call the generated `reward_func` with its documented signature and drive the
generated agent through a whole workplace episode (the agent file's two OpenRLHF base classes are stood in for when
openrlhf is not installed). The last test runs OpenRLHF's own executors on the files, where openrlhf is importable.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import importlib.util
import io
import json
import shlex
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest

from cascade import cli
from cascade.config import ConfigError, compose
from cascade.engine.rollout import render_prompt
from cascade.export.openrlhf import export_stage, launch_flags, sample_from_label, sample_label
from cascade.plugins import PluginManager
from cascade.tokenizer import train_chat_tokenizer

NT, EOS = "<think></think>", "<|im_end|>"
MATH = ["cascade=math", "loggers=[]", "cascade.stages.math_grpo.params.prompt_pool=48"]


@pytest.fixture(scope="module")
def plugins():
    return PluginManager().load()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """Stands for the policy: the export reads only its tokenizer (chat template, end-of-turn token)."""
    path = tmp_path_factory.mktemp("model")
    train_chat_tokenizer(["What is 17-11? Schedule standup on Mon at 9. Done."] * 20, vocab_size=300).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def math_export(plugins, model_dir, tmp_path_factory):
    """`cascade export openrlhf math_grpo cascade=math ...` through the CLI."""
    out, stdout = tmp_path_factory.mktemp("math"), io.StringIO()
    with mock.patch.object(cli, "_plugins", plugins), contextlib.redirect_stdout(stdout):
        code = cli.main(["export", "openrlhf", "math_grpo", *MATH, "--model", str(model_dir), "--out", str(out)])
    assert code == 0
    return SimpleNamespace(out=out, stdout=stdout.getvalue(), rows=read_rows(out))


@pytest.fixture(scope="module")
def multidomain_export(plugins, model_dir, tmp_path_factory):
    """The default cascade's multi-domain RL stage: multiple choice, structured output and the multi-turn workplace
    (trained on part credit)."""
    config = compose(["loggers=[]", "cascade.stages.multidomain_rl.params.prompt_pool=16",
                      "+cascade.stages.multidomain_rl.params.domain_reward_options={workplace: {metric: part}}"],
                     plugins.config_searchpaths())
    return export_stage(config, plugins, "multidomain_rl", tmp_path_factory.mktemp("multidomain"), str(model_dir))


@pytest.fixture(scope="module")
def math_reward_func(math_export):
    reward_func = load(math_export.out / "reward_func.py").reward_func
    yield reward_func
    reward_func.close()  # the math reward's worker process


@pytest.fixture(scope="module")
def agent_file(multidomain_export):
    return load(multidomain_export.out / "agent_func.py")


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]


def load(path: Path):
    """Import a generated file the way OpenRLHF does (importlib, from its path)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    with mock.patch.dict(sys.modules, openrlhf_stand_in()):
        spec.loader.exec_module(module)
    return module


def openrlhf_stand_in() -> dict:
    """No modules when openrlhf is installed; else `openrlhf.utils.agent`'s two base classes as 0.11.2 defines them."""
    if importlib.util.find_spec("openrlhf") is not None:
        return {}

    class AgentInstanceBase(abc.ABC):
        @abc.abstractmethod
        def __init__(self, *args, **kwargs):
            pass

        async def reset(self, states: dict, **kwargs):
            return states

        @abc.abstractmethod
        async def step(self, state_dict: dict, **kwargs):
            raise NotImplementedError

    class MultiTurnAgentExecutor:
        def __init__(self, agent_instance_cls):
            assert issubclass(agent_instance_cls, AgentInstanceBase)
            self.agent_instance_cls = agent_instance_cls

    agent = types.ModuleType("openrlhf.utils.agent")
    agent.AgentInstanceBase, agent.MultiTurnAgentExecutor = AgentInstanceBase, MultiTurnAgentExecutor
    return {"openrlhf": types.ModuleType("openrlhf"), "openrlhf.utils": types.ModuleType("openrlhf.utils"),
            "openrlhf.utils.agent": agent}


def workplace_task(plugins, export):
    """A workplace sample, its demonstration (same task) and the demonstration's assistant turns as actions."""
    options = json.loads((export.out / "cascade_export.json").read_text())["domains"]["workplace"]["environment_options"]
    env = plugins.component("environments", "workplace").factory(**options)
    env.domain = "workplace"
    sample, demo = env.samples("train", 1, 8)[0], env.demonstrations(1, 7)[0]  # demonstrations draw with seed + 1
    assert demo[:len(sample.messages)] == sample.messages
    actions = [m["content"].removeprefix(NT) + EOS for m in demo[len(sample.messages):] if m["role"] == "assistant"]
    return sample, demo, actions


def tokenizer_of(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


# ---- the prompts -------------------------------------------------------------------------------------------------


def test_rows_hold_rendered_prompts_and_labels_that_rebuild_the_samples(math_export, plugins):
    settings = json.loads((math_export.out / "cascade_export.json").read_text())
    env = plugins.component("environments", "math").factory(**settings["domains"]["math"]["environment_options"])
    env.domain = "math"
    assert [sample_from_label(row["label"]) for row in math_export.rows] == env.samples("train", 48, 2)  # the stage's seed
    row = math_export.rows[0]
    assert row["datasource"] == "math" and row["prompt"].endswith(f"<|im_start|>assistant\n{NT}")
    assert settings["generation_prefix"] == NT and settings["eos_token"] == EOS


def test_domains_are_interleaved_and_a_multi_turn_stage_gets_an_agent(multidomain_export):
    rows = read_rows(multidomain_export.out)
    assert [row["datasource"] for row in rows[:3]] == ["mcq", "structured", "workplace"]
    assert multidomain_export.max_turns == 4 and (multidomain_export.out / "agent_func.py").exists()
    domains = json.loads((multidomain_export.out / "cascade_export.json").read_text())["domains"]
    assert domains["workplace"]["reward"] == "db_state" and domains["workplace"]["reward_options"] == {"metric": "part"}
    assert domains["structured"]["reward_options"] == {"allow_fence": True}  # the domain's own


# ---- reward_func(queries, prompts, labels) -----------------------------------------------------------------------


def test_reward_func_scores_right_wrong_and_bad_input_without_raising(math_reward_func, math_export):
    row = math_export.rows[0]
    prompt, label, answer = row["prompt"], row["label"], sample_from_label(row["label"]).answer
    right, wrong = prompt + f"It is \\boxed{{{answer}}}{EOS}", prompt + f"\\boxed{{{int(answer) + 1}}}{EOS}"
    out = math_reward_func([right, wrong, right, "not the prompt"], [prompt] * 4, [label, label, "{garbage", label], step=3)
    assert out["rewards"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert out["scores"].tolist() == out["rewards"].tolist()
    assert out["extra_logs"]["reward_failed"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert math_reward_func([right], [prompt], [label])["rewards"].tolist() == [1.0]  # OpenRLHF 0.11.2 sends one


# ---- the agent ---------------------------------------------------------------------------------------------------


def test_agent_runs_a_workplace_demonstration_to_reward_1(agent_file, multidomain_export, plugins, model_dir):
    sample, demo, actions = workplace_task(plugins, multidomain_export)
    tokenizer, label = tokenizer_of(model_dir), sample_label(sample)
    agent = agent_file.AgentExecutor().agent_instance_cls()
    prompt = render_prompt(tokenizer, sample.messages, False)
    text = asyncio.run(agent.reset({"observation": prompt, "label": label}))["observation"]
    results = []
    for action in actions:
        results.append(asyncio.run(agent.step({"observation_text": text, "action_text": action, "label": label,
                                               "sampling_params": None})))
        text += action + results[-1]["environment_feedback"]
    assert [r["done"] for r in results] == [False] * (len(actions) - 1) + [True]
    assert [r["rewards"].item() for r in results] == [0.0] * (len(actions) - 1) + [1.0]
    # the observations are the environment's tool messages, rendered exactly as the chat template renders the demo
    assert text + "\n" == tokenizer.apply_chat_template(demo, tokenize=False)


def test_agent_answers_a_malformed_action_with_an_error_and_a_bad_label_with_0(agent_file, multidomain_export, plugins,
                                                                               model_dir):
    sample, _, _ = workplace_task(plugins, multidomain_export)
    agent = agent_file.AgentInstance()
    prompt = render_prompt(tokenizer_of(model_dir), sample.messages, False)
    asyncio.run(agent.reset({"observation": prompt, "label": sample_label(sample)}))
    step = asyncio.run(agent.step({"action_text": "<tool_call><function=fly><parameter=to>moon</parameter></function>"
                                                  "</tool_call>" + EOS, "label": "", "observation_text": ""}))
    assert not step["done"] and step["rewards"].item() == 0.0 and '"error"' in step["environment_feedback"]
    broken = agent_file.AgentInstance()
    asyncio.run(broken.reset({"observation": "", "label": "{garbage"}))
    step = asyncio.run(broken.step({"action_text": "Done." + EOS, "label": "{garbage", "observation_text": ""}))
    assert step["done"] and step["rewards"].item() == 0.0


# ---- the launch command and the CLI ------------------------------------------------------------------------------


def test_launch_command_maps_the_stage(math_export, plugins, model_dir):
    params = compose(MATH, plugins.config_searchpaths()).cascade.stages.math_grpo.params
    launch = (math_export.out / "launch.sh").read_text()
    assert launch in math_export.stdout and "# Not mapped" in launch
    assert subprocess.run(["bash", "-n", str(math_export.out / "launch.sh")]).returncode == 0
    words = shlex.split(launch.replace("\\\n", " "), comments=True)  # joined continuation lines, as bash reads them
    flags = {w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--") and not words[i + 1].startswith("--")}
    out = math_export.out
    assert flags["--actor.model_name_or_path"] == str(model_dir)
    assert flags["--data.prompt_dataset"] == str(out / "prompts.jsonl")
    assert (flags["--data.input_key"], flags["--data.label_key"]) == ("prompt", "label")
    assert "--data.apply_chat_template" not in words  # the prompts are rendered in the stage's thinking mode
    assert flags["--reward.remote_url"] == str(out / "reward_func.py")
    assert flags["--algo.advantage.estimator"] == "group_norm"
    assert int(flags["--rollout.n_samples_per_prompt"]) == params.group_size
    assert int(flags["--rollout.batch_size"]) == params.prompts_per_step
    assert float(flags["--algo.kl.init_coef"]) == params.kl_coef == 0
    assert int(flags["--rollout.max_new_tokens"]) == params.max_new_tokens
    assert float(flags["--rollout.temperature"]) == params.temperature
    assert float(flags["--actor.adam.lr"]) == params.optim.lr


def test_kl_maps_to_a_k3_loss_term_and_a_wrapped_stage_is_refused(plugins, model_dir, tmp_path):
    config = compose(["loggers=[]", "cascade.stages.rlhf.params.prompt_pool=4"], plugins.config_searchpaths())
    rlhf = export_stage(config, plugins, "rlhf", tmp_path / "rlhf", str(model_dir))
    flags = launch_flags(rlhf)
    assert ("--algo.kl.init_coef", 0.03) in flags and ("--algo.kl.use_loss",) in flags
    assert ("--algo.kl.estimator", "k3") in flags and rlhf.options.kl_coef == 0.03
    with pytest.raises(ConfigError, match="stage 'mopd' is wrapped by mopd: .* exportable stages of this cascade: if_rl, "):
        export_stage(config, plugins, "mopd", tmp_path / "mopd", str(model_dir))


def test_cli_errors_name_the_stages(plugins, model_dir, capsys):
    with mock.patch.object(cli, "_plugins", plugins):
        assert cli.main(["export", "openrlhf", "math_grpoo", *MATH, "--model", str(model_dir)]) == 2
        assert capsys.readouterr().err.strip() == ("cascade: error: unknown stage 'math_grpoo'; did you mean 'math_grpo'? "
                                                   "Available: math_grpo, sft")
        assert cli.main(["export", "openrlhf", "sft", *MATH, "--model", str(model_dir)]) == 2
        assert "(type sft) is not a GRPO stage" in capsys.readouterr().err
        assert cli.main(["export", "openrlhf", "math_grpo", *MATH]) == 2
        assert "pass --model PATH" in capsys.readouterr().err


# ---- OpenRLHF's own executors ------------------------------------------------------------------------------------


class ScriptedEngine:
    """Stands for OpenRLHF's vLLM actor: each generate() answers with the next scripted action."""

    def __init__(self, tokenizer, actions):
        self.tokenizer, self.actions = tokenizer, iter(actions)

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        text = next(self.actions)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, text=text, finish_reason="stop", logprobs=None)])


def test_openrlhf_executors_score_the_exported_files(math_export, math_reward_func, multidomain_export, plugins, model_dir):
    openrlhf_agent = pytest.importorskip("openrlhf.utils.agent", reason="openrlhf is not installed (it needs deepspeed "
                                         "and vLLM); the contract tests above stand in for its executors")
    tokenizer, params = tokenizer_of(model_dir), SimpleNamespace(max_tokens=96, logprobs=None)
    row = math_export.rows[0]
    single = openrlhf_agent.SingleTurnAgentExecutor(str(math_export.out / "reward_func.py"))
    answer = f"\\boxed{{{sample_from_label(row['label']).answer}}}{EOS}"
    engine = ScriptedEngine(tokenizer, [answer])
    output = asyncio.run(single.execute(row["prompt"], row["label"], params, 4096, tokenizer, engine))
    assert float(output["reward"]) == 1.0

    sample, demo, actions = workplace_task(plugins, multidomain_export)
    multi = load(multidomain_export.out / "agent_func.py").AgentExecutor()
    prompt = render_prompt(tokenizer, sample.messages, False)
    engine = ScriptedEngine(tokenizer, actions)
    result = asyncio.run(multi.execute(prompt, sample_label(sample), params, 4096, tokenizer, engine))
    assert result["reward"] == 1.0 and len(result["action_ranges"]) == len(actions)
    assert tokenizer.decode(result["observation_tokens"]) + "\n" == tokenizer.apply_chat_template(demo, tokenize=False)
