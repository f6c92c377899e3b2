"""A policy is a Hugging Face causal LM plus its chat tokenizer; checkpoints are plain HF directories."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from cascade.config import ConfigError
from cascade.engine.moe import prepare_moe
from cascade.io import write_dir_atomic
from cascade.types import Checkpoint, Environment

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Policy:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id


def load_policy(path: str | Path, dtype: str = "float32") -> Policy:
    """Load model and tokenizer from a checkpoint directory, with errors that say what is missing."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise ConfigError(f"model path {path} is not a Hugging Face model directory (no config.json there)")
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype '{dtype}' is not one of {', '.join(DTYPES)}")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"the tokenizer in {path} has no chat template; cascade needs one to render prompts "
                          f"(set tokenizer.chat_template and save it, e.g. a ChatML template)")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    prepare_moe(model)  # every engine model (trainer, rollouts, evaluation, teachers) routes with our kernels
    return Policy(model, tokenizer)


def save_policy(policy: Policy, path: str | Path) -> Path:
    """Save as a standard HF directory (safetensors), atomically: a crash never leaves half a model."""

    def write(tmp: Path) -> None:
        policy.model.save_pretrained(tmp, safe_serialization=True)
        policy.tokenizer.save_pretrained(tmp)

    return write_dir_atomic(Path(path), write)


def dtype_name(model: torch.nn.Module) -> str:
    """The ``model.dtype`` setting (a key of ``DTYPES``) a loaded model runs in: what an engine loading its own copy
    of the checkpoint asks for."""
    return next(name for name, dtype in DTYPES.items() if dtype == model.dtype)


def weights_version(model: torch.nn.Module) -> tuple[int, ...]:
    """Version counters of every weight and buffer: torch bumps one on each in-place write to its tensor (optimizer
    step, expert-bias balancing, a resumed checkpoint). Engines holding their own copy of the policy compare it to
    the one they last loaded, so unchanged weights are never sent twice."""
    return tuple(t._version for t in model.state_dict(keep_vars=True).values())


def tokenizer_fingerprint(path: str | Path) -> str:
    """Same fingerprint = same vocabulary: what makes two checkpoints one lineage (MOPD teachers)."""
    vocab = AutoTokenizer.from_pretrained(path).get_vocab()
    return hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()[:16]


def init_checkpoint(model_config: Any, path: str, seed: int, environments: dict[str, Environment]) -> Checkpoint:
    """The cascade's starting point: an existing HF model (``model.path``) or a tiny one built from scratch."""
    if model_config.path:
        load_policy(model_config.path, model_config.dtype)  # fail now, not after the first stage
        return Checkpoint("init", str(model_config.path), lineage=tokenizer_fingerprint(model_config.path))
    if model_config.arch != "tiny_nemotron_h":
        return None
    from cascade.models.tiny_nemotron_h import build_model, tiny_nemotron_h_config
    from cascade.tokenizer import train_chat_tokenizer

    options = OmegaConf.to_container(model_config.options, resolve=True) if OmegaConf.is_config(model_config.options) else dict(model_config.options)
    vocab_size = options.pop("vocab_size", 1024)
    corpus = list(tokenizer_corpus(environments.values(), seed))
    if not corpus:
        raise ConfigError("no text to train the tokenizer on: the cascade's domains provide no samples")
    tokenizer = train_chat_tokenizer(corpus, vocab_size=vocab_size)
    torch.manual_seed(seed)
    model = build_model(tiny_nemotron_h_config(len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                               eos_token_id=tokenizer.eos_token_id, **options))
    save_policy(Policy(model, tokenizer), path)
    return Checkpoint("init", path, lineage=tokenizer_fingerprint(path))


def tokenizer_corpus(environments: Iterable[Environment], seed: int, per_domain: int = 400) -> Iterable[str]:
    """Text the tiny tokenizer is trained on: every domain's demonstrations and prompts."""
    for env in environments:
        for conversation in env.demonstrations(per_domain, seed):
            yield "\n".join(str(m.get("content", "")) for m in conversation)
        for sample in env.samples("train", per_domain, seed):
            yield "\n".join(str(m.get("content", "")) for m in sample.messages)
