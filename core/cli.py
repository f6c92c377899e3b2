"""The ``cascade`` command.

    cascade train [HYDRA OVERRIDES...]   run a cascade (a Hydra app: -m sweeps, --cfg job, ...)
    cascade plugins [--json]             every plugin, its version and what it provides
    cascade report RUN_DIR               rebuild report.json / report.md / figures/*.png of a run
    cascade export openrlhf STAGE [HYDRA OVERRIDES...] [--out DIR] [--model PATH]
                                         prompts, reward, agent and launch command to run STAGE on OpenRLHF
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cascade.config import ConfigError, describe_error, register_configs
from cascade.plugins import PluginError, PluginManager
from cascade.report import is_complete
from cascade.types import StageError

USAGE = __doc__

_plugins: PluginManager | None = None


def plugins() -> PluginManager:
    """The process's plugin manager (loaded once; Hydra launchers may call the task in new processes)."""
    global _plugins
    if _plugins is None:
        _plugins = PluginManager().load()
    return _plugins


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE.strip())
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command == "train":
            return train(rest)
        if command == "plugins":
            return show_plugins(rest)
        if command == "report":
            return rebuild_report(rest)
        if command == "export":
            return export(rest)
    except (ConfigError, PluginError) as exc:
        print(f"cascade: error: {exc}", file=sys.stderr)
        return 2
    print(f"cascade: unknown command '{command}' (commands: train, plugins, report, export)", file=sys.stderr)
    return 2


# ---- train -------------------------------------------------------------------------------------------


def train(overrides: list[str]) -> int:
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_configs()
    searchpaths = plugins().config_searchpaths()
    overrides = _with_searchpaths(overrides, searchpaths)
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let config errors reach us, so we can name the valid keys
    app = hydra.main(version_base="1.3", config_path="pkg://cascade.conf", config_name="config")(run_task)
    saved_argv = sys.argv
    sys.argv = ["cascade train", *overrides]
    try:
        app()
    except (HydraException, OmegaConfBaseException) as exc:
        print(f"cascade: config error: {describe_error(exc)}", file=sys.stderr)
        return 2
    except StageError as exc:
        print(f"cascade: stage failed: {exc}\nFinished stages and step checkpoints are kept: fix the cause, then "
              f"run the same command with resume=true.", file=sys.stderr)
        return 1
    finally:
        sys.argv = saved_argv
    return 0


def run_task(cfg) -> float | None:
    """Hydra's task function: one run of one cascade (one job of a sweep). Returns the held-out score that
    ``objective=STAGE.DOMAIN`` names, for sweepers that optimize it (Optuna); None without an objective."""
    import torch
    from hydra.core.hydra_config import HydraConfig
    from transformers.utils import logging as hf_logging

    from cascade.runner import CascadeRunner

    torch.set_num_threads(torch_threads(cfg.threads))
    hf_logging.disable_progress_bar()  # per-checkpoint "Loading weights" bars drown the console logger
    run_dir = resolve_run_dir(cfg, Path(HydraConfig.get().runtime.output_dir))
    runner = CascadeRunner(cfg, plugins(), run_dir)
    report = runner.run()
    if runner.objective is None:
        return None
    stage, domain = runner.objective
    return report["scores"][stage][domain]


def torch_threads(threads: int) -> int:
    """The ``threads`` setting as a count (0: ``OMP_NUM_THREADS``, else the CPUs this process may use)."""
    if threads < 0:
        raise ConfigError(f"threads={threads}: give a positive count, or 0 for OMP_NUM_THREADS / every CPU")
    if threads:
        return threads
    omp = os.environ.get("OMP_NUM_THREADS", "")
    return int(omp) if omp.isdigit() and int(omp) > 0 else len(os.sched_getaffinity(0))


def resolve_run_dir(cfg, fresh: Path) -> Path:
    """``resume=true``: the newest unfinished run of this cascade; ``resume=DIR``: that run."""
    if cfg.run_dir:
        return Path(cfg.run_dir)
    if cfg.resume in (False, None, "false"):
        return fresh
    if cfg.resume is not True and cfg.resume != "true":
        path = Path(str(cfg.resume))
        if not (path / "checkpoints" / "index.json").exists():
            raise ConfigError(f"resume={path}: not a cascade run directory (no checkpoints/index.json)")
        return path
    for candidate in sorted(fresh.parent.iterdir(), reverse=True):
        if (candidate / "checkpoints" / "index.json").exists() and not is_complete(candidate):
            return candidate
    raise ConfigError(f"resume=true: no unfinished run of cascade '{cfg.cascade.name}' under {fresh.parent}")


def _with_searchpaths(overrides: list[str], searchpaths: list[str]) -> list[str]:
    """Add the plugins' config directories to Hydra's search path (after the user's own, if any)."""
    if not searchpaths:
        return overrides
    for i, arg in enumerate(overrides):
        if arg.startswith("hydra.searchpath=[") and arg.endswith("]"):
            inner = arg[len("hydra.searchpath=["):-1]
            return overrides[:i] + [f"hydra.searchpath=[{inner + ',' if inner else ''}{','.join(searchpaths)}]"] + overrides[i + 1:]
    # next to the user's overrides: argparse reads one contiguous run of them (`-m a=1 --cfg job` works)
    at = next((i for i, arg in enumerate(overrides) if not arg.startswith("-") and ("=" in arg or arg.startswith("~"))),
              len(overrides))
    return [*overrides[:at], f"hydra.searchpath=[{','.join(searchpaths)}]", *overrides[at:]]


# ---- plugins / report -----------------------------------------------------------------------------------


def show_plugins(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cascade plugins", description="List plugins and what they provide.")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    opts = parser.parse_args(args)
    described = plugins().describe()
    if opts.json:
        print(json.dumps(described, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="cascade plugins", show_lines=True)
    for column in ("plugin", "distribution", "provides", "hooks"):
        table.add_column(column)
    for info in described:
        provides = "\n".join(f"{kind}: {', '.join(names)}" for kind, names in info["provides"].items() if names)
        if info["config_searchpaths"]:
            provides += ("\n" if provides else "") + "config: " + ", ".join(info["config_searchpaths"])
        hooks = "\n".join(h for h in info["hooks"] if h not in _provider_hook_names())
        table.add_row(f"{info['name']}\n[dim]{info['module']}[/dim]", f"{info['distribution']} {info['version']}", provides, hooks)
    Console().print(table)
    return 0


def _provider_hook_names() -> set[str]:
    from cascade.plugins import PROVIDER_HOOKS

    return {*PROVIDER_HOOKS, "cascade_config_searchpaths"}


def rebuild_report(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cascade report", description="Rebuild the report of a run (report.json, report.md and its figures).")
    parser.add_argument("run_dir", type=Path)
    opts = parser.parse_args(args)
    from cascade.report import rebuild

    report = rebuild(opts.run_dir)
    print(f"wrote {opts.run_dir / 'report.json'} and {opts.run_dir / 'report.md'} ({len(report['scores'])} stages)")
    return 0


# ---- export -------------------------------------------------------------------------------------------------


def export(args: list[str]) -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from cascade.config import compose
    from cascade.export.openrlhf import LAUNCH_FILE, export_stage

    parser = argparse.ArgumentParser(prog="cascade export", description="Write what another trainer needs to run a stage "
                                     "of a cascade: its prompts, reward, agent and launch command.")
    parser.add_argument("target", choices=["openrlhf"])
    parser.add_argument("stage", help="a GRPO stage of the composed cascade")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for `cascade train` (cascade=math, ...)")
    parser.add_argument("--out", type=Path, help="output directory (default: exports/openrlhf/CASCADE/STAGE)")
    parser.add_argument("--model", help="the policy to train (default: model.path): a Hugging Face model directory or id")
    opts = parser.parse_intermixed_args(args)
    try:
        config = compose(opts.overrides, plugins().config_searchpaths())
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(describe_error(exc)) from None
    result = export_stage(config, plugins(), opts.stage, opts.out, opts.model)
    prompts = ", ".join(f"{domain} {n}" for domain, n in result.prompts_per_domain.items())
    print(f"wrote {result.out}: {', '.join(path.name for path in result.files)} (prompts: {prompts})\n")
    print((result.out / LAUNCH_FILE).read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
