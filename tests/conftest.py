"""Shared fixtures. One torch thread (two threads on two shared cores run ~30x slower), wandb offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TESTS = Path(__file__).parent
TOY_PLUGIN_DIR = TESTS / "plugins" / "toy"
CRASH_PLUGIN_DIR = TESTS / "plugins" / "crash"
TOY_ARGS = ["cascade=toy", "model=toy_table", "loggers=[]"]


def pytest_configure(config):
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


@pytest.fixture
def toy_env(monkeypatch):
    """Environment in which `cascade` loads the toy plugin (tests/plugins/toy) without installing it,
    and the crash plugin (tests/plugins/crash: ``CASCADE_CRASH_AT=STAGE:STEP`` kills the process)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TOY_PLUGIN_DIR), str(CRASH_PLUGIN_DIR), env.get("PYTHONPATH", "")]))
    env["CASCADE_PLUGINS"] = "cascade_toy.plugin,cascade_crash"
    monkeypatch.syspath_prepend(str(TOY_PLUGIN_DIR))
    monkeypatch.setenv("CASCADE_PLUGINS", "cascade_toy.plugin")
    return env


@pytest.fixture
def fresh_cli(monkeypatch):
    """The CLI module with its process-wide plugin manager reset, for in-process `cascade` calls."""
    from cascade import cli

    monkeypatch.setattr(cli, "_plugins", None)
    return cli


def run_cascade(args: list[str], env: dict, cwd: Path, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """`cascade ARGS` in a subprocess (a real process, so a kill -9 inside it is real too)."""
    proc = subprocess.run([sys.executable, "-m", "cascade.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"cascade {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def drive(env, sample, turns: list[str]):
    """Scripted assistant turns (each after the non-thinking prefix) through ``env.step`` as collect_episodes runs
    them, for multi-turn environments; returns the messages and the steps."""
    messages, steps = list(sample.messages), []
    for turn in range(env.max_turns):
        messages.append({"role": "assistant", "content": "<think></think>" + turns[turn]})
        step = env.step(sample, messages)
        steps.append(step)
        if step.done or turn == env.max_turns - 1:
            break
        messages += step.messages
    return messages, steps


def survivors(tag: str) -> list[int]:
    """Host pids whose command line holds ``tag``: the processes a sandboxed job left behind, if any."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if tag.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids
