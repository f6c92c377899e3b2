"""Ray workers (cascade-ray): the same generations, rewards, log-probs and scores as in-process, and a worker killed
mid-step is restarted and its call retried with nothing lost. One local 2-CPU Ray cluster serves the module."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray", reason="cascade-ray needs ray: pip install -e plugins/ray (depends on ray[default])")

from cascade import Checkpoint, Episode, hookimpl  # noqa: E402
from cascade.config import compose  # noqa: E402
from cascade.engine.policy import load_policy  # noqa: E402
from cascade.engine.rollout import HFRolloutEngine, render_prompt  # noqa: E402
from cascade.engine.teacher import HFTeacher  # noqa: E402
from cascade.models.fast_decode import enable_fast_decode  # noqa: E402
from cascade.plugins import PluginManager, UnknownComponentError  # noqa: E402
from cascade.runner import CascadeRunner  # noqa: E402
from cascade.types import SamplingParams  # noqa: E402
from cascade_math.plugin import MathEnvironment, MathVerifyReward  # noqa: E402
from cascade_ray.cluster import ActorOptions, connect  # noqa: E402
from cascade_ray.reward import RayReward  # noqa: E402
from cascade_ray.rollout import RayRolloutEngine  # noqa: E402
from cascade_ray.teacher import RayTeacher  # noqa: E402
from test_mopd import TINY  # noqa: E402

# TINY with enough SFT that some answers are right: GRPO then keeps groups and updates the weights every step
# (at 60 steps one step sampled no right answer on an AMD EPYC: 0.04, 0, 0.12; at 80: 0.33, 0.38, 0.25)
LEARNING = [*TINY, "cascade.domains.math.eval.n=32", "cascade.stages.sft.params.steps=80",
            "cascade.stages.math_grpo.params.steps=3", "cascade.stages.math_grpo.params.group_size=4",
            "cascade.stages.math_grpo.params.max_new_tokens=24"]
# the rollout engine and a math_verify worker, a CPU each: the 2-CPU cluster is full
ON_RAY = ["rollout=ray", "cascade.domains.math.reward=ray", "~cascade.domains.math.reward_options.timeout",
          "+cascade.domains.math.reward_options.reward=math_verify",
          "+cascade.domains.math.reward_options.options={timeout: 5.0}",
          "+cascade.domains.math.reward_options.workers=1", "+cascade.domains.math.reward_options.num_cpus=1"]
TIMINGS = {"rollout_seconds", "tokens_per_s", "teacher_seconds", "teacher_time_share"}


@pytest.fixture(scope="module", autouse=True)
def cluster():
    connect(ActorOptions(cluster_cpus=2))
    yield
    ray.shutdown()


def run_cascade(run_dir: Path, *overrides: str, plugin: object = None) -> dict:
    plugins = PluginManager().load()
    if plugin is not None:
        plugins.register(plugin, "test_ray_kills")
    config = compose([*LEARNING, *overrides], plugins.config_searchpaths())
    return CascadeRunner(config, plugins, run_dir).run()


def histories(run_dir: Path) -> dict[str, list[dict]]:
    """Every stage's per-step metrics, without the wall-clock ones."""
    return {path.parent.name: [{k: v for k, v in json.loads(line).items() if k not in TIMINGS}
                               for line in path.read_text().splitlines()]
            for path in sorted(run_dir.glob("stages/*/history.jsonl"))}


@dataclass
class Run:
    dir: Path
    scores: dict
    history: dict[str, list[dict]]


@pytest.fixture(scope="module")
def in_process(tmp_path_factory) -> Run:
    """The cascade the Ray runs must reproduce, run single-process."""
    run_dir = tmp_path_factory.mktemp("in_process") / "run"
    return Run(run_dir, run_cascade(run_dir)["scores"], histories(run_dir))


@pytest.fixture(scope="module")
def checkpoint(in_process) -> Checkpoint:
    """A trained checkpoint (cascade's Mamba scan changes a random model's log-probs too little to be seen)."""
    return Checkpoint("sft", str(in_process.dir / "stages" / "01_sft" / "checkpoint"))


def pid_of(actor) -> int:
    return ray.get(actor.pid.remote())


def kill(actor) -> int:
    pid = pid_of(actor)
    os.kill(pid, signal.SIGKILL)
    return pid


def all_cpus_free(wait_s: float = 10.0) -> bool:
    """Whether the cluster's CPUs are all free again within ``wait_s`` (a killed actor frees them a moment later)."""
    deadline = time.monotonic() + wait_s
    while ray.available_resources().get("CPU", 0.0) < ray.cluster_resources()["CPU"]:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True

def same_generations(a, b) -> bool:
    return all(
        x.token_ids == y.token_ids and x.logprobs == y.logprobs and x.finish_reason == y.finish_reason
        and torch.equal(x.routed_experts, y.routed_experts)
        for group_a, group_b in zip(a, b, strict=True) for x, y in zip(group_a, group_b, strict=True)
    )


# ---- each worker against its in-process counterpart --------------------------------------------------


def test_rollout_actor_follows_the_trainers_weights_and_random_stream_through_a_restart(checkpoint):
    policy = load_policy(checkpoint.path)
    local, remote = HFRolloutEngine(policy, batch_size=4), RayRolloutEngine(policy, batch_size=4, num_cpus=1)
    tokenizer = policy.tokenizer
    prompts = [tokenizer(render_prompt(tokenizer, [{"role": "user", "content": q}], thinking=False))["input_ids"]
               for q in ("1+2=", "7*8=")]
    params = SamplingParams(max_new_tokens=10, temperature=1.0, n=3)

    def both():
        """The same call in-process and on the actor, each from the same global generator state."""
        torch.manual_seed(5)
        expected, expected_state = local.generate(prompts, params), torch.get_rng_state()
        torch.manual_seed(5)
        got = remote.generate(prompts, params)
        assert torch.equal(torch.get_rng_state(), expected_state)  # the trainer's stream went on as if it sampled
        return expected, got

    try:
        assert same_generations(*both())
        with torch.no_grad():  # an update in place, buffers too (the routers' correction biases): the actor follows
            for tensor in policy.model.state_dict().values():
                if tensor.is_floating_point():
                    tensor.add_(0.01 * torch.randn_like(tensor))
        expected, got = both()
        assert same_generations(expected, got) and remote.weights_version == 2
        first = kill(remote.actor)
        assert same_generations(expected, both()[1])  # the call was retried on a restarted actor with the new weights
        assert pid_of(remote.actor) != first
    finally:
        remote.close()


def episodes_for(env, answers):
    sample = env.samples("train", 1, 0)[0]
    return [Episode(sample, [*sample.messages, {"role": "assistant", "content": f"<think></think>\\boxed{{{a}}}"}],
                    [1, 2], [0, 1], [0.0, -1.0], routed_experts=torch.zeros(2, 1, 2)) for a in answers]


def test_reward_workers_take_groups_in_turn_and_score_like_the_reward():
    env = MathEnvironment([1])
    group = episodes_for(env, [env.samples("train", 1, 0)[0].answer, "nonsense", 0])
    local = MathVerifyReward(timeout=5.0)
    remote = RayReward(reward="math_verify", options={"timeout": 5.0}, workers=2, num_cpus=0.5)
    try:
        expected = local.score(group)
        assert [r.value for r in expected] == [1.0, 0.0, 0.0]
        assert remote.score(group) == expected and remote.score(group) == expected  # worker 0, then 1
        assert len({pid_of(worker) for worker in remote.workers}) == 2
    finally:
        remote.close()
        local.close()


def test_teacher_actor_gives_the_teachers_logprobs(checkpoint):
    enable_fast_decode()  # as in any run's process once an engine has been made: the actor must follow
    draw = torch.Generator().manual_seed(0)
    sequences = [torch.randint(300, (n,), generator=draw).tolist() for n in (90, 33, 5, 2)]
    remote = RayTeacher(checkpoint, batch_size=2, num_cpus=1)
    try:
        assert remote.logprobs(sequences) == HFTeacher(checkpoint, batch_size=2).logprobs(sequences)
    finally:
        remote.close()


def test_another_process_joins_the_running_cluster_by_address():
    address = ray.get_runtime_context().gcs_address
    script = ("import ray, sys\n"
              "from cascade_ray.cluster import ActorOptions, Worker, start_actors\n"
              "[actor] = start_actors(Worker, ActorOptions(address=sys.argv[1], num_cpus=0.5), 1, 'probe')\n"
              "print(ray.get_runtime_context().gcs_address)\n")
    joined = subprocess.run([sys.executable, "-P", "-c", script, address], capture_output=True, text=True, timeout=120)
    assert joined.returncode == 0, joined.stderr
    assert joined.stdout.strip() == address


def test_an_unknown_inner_reward_is_named_before_any_worker_starts():
    with pytest.raises(UnknownComponentError, match="'math_verfy'; did you mean 'math_verify'"):
        RayReward(reward="math_verfy")


# ---- whole cascades ---------------------------------------------------------------------------------


@pytest.mark.slow  # the killed run below asserts the same equalities in the default suite
def test_a_cascade_on_ray_workers_scores_like_the_single_process_run(tmp_path, in_process):
    assert all(row.get("groups_kept", 0) > 0 for row in in_process.history["02_math_grpo"])  # each step updated
    assert run_cascade(tmp_path / "run", *ON_RAY)["scores"] == in_process.scores
    assert histories(tmp_path / "run") == in_process.history


class KillDuringStep2:
    """Once GRPO's first step (and update) is done, SIGKILL the rollout actor and every reward worker just before
    the step's first call to them; records their pids at the next call, from the restarted processes."""

    def __init__(self, monkeypatch):
        self.armed, self.killed, self.after = False, {}, {}
        monkeypatch.setattr(RayRolloutEngine, "generate",
                            self.killing(RayRolloutEngine.generate, lambda engine: [engine.actor]))
        monkeypatch.setattr(RayReward, "score", self.killing(RayReward.score, lambda reward: reward.workers))

    @hookimpl
    def cascade_step_end(self, stage, step):
        self.armed = self.armed or (stage.name == "math_grpo" and step == 1)

    def killing(self, call, actors_of):
        def call_with_a_kill(component, *args):
            name = type(component).__name__
            if self.armed and name not in self.killed:
                self.killed[name] = [kill(actor) for actor in actors_of(component)]
            elif name in self.killed and name not in self.after:
                self.after[name] = [pid_of(actor) for actor in actors_of(component)]
            return call(component, *args)

        return call_with_a_kill


def test_workers_killed_mid_step_are_restarted_and_the_step_retried(tmp_path, in_process, monkeypatch):
    # the restarted rollout actor must get step 1's update
    assert in_process.history["02_math_grpo"][0].get("groups_kept", 0) > 0
    kills = KillDuringStep2(monkeypatch)
    result = run_cascade(tmp_path / "run", *ON_RAY, plugin=kills)
    assert set(kills.killed) == {"RayRolloutEngine", "RayReward"}
    assert set(kills.after) == set(kills.killed)
    assert all(not set(kills.after[name]) & set(pids) for name, pids in kills.killed.items())  # new processes serve
    assert result["scores"] == in_process.scores
    assert histories(tmp_path / "run") == in_process.history  # the killed step's rollouts and rewards, exactly
    assert all_cpus_free()  # the run left no actor behind

