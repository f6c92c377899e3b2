"""``report.json`` (for machines) and ``report.md`` (for people, with the pictures of ``figures/``) in the
run directory."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cascade.io import write_json_atomic, write_text_atomic
from cascade.registry import Registry

log = logging.getLogger(__name__)
FIGURE_CAPTIONS = {
    "cascade": "Held-out score per domain after each stage",
    "gains": "Change from the previous stage per domain",
    "training": "Training curves per stage",
}


def write_report(run_dir: Path, config: DictConfig, registry: Registry) -> dict[str, Any]:
    """Written after every stage; ``complete`` turns true when every planned stage is done."""
    report = build_report(run_dir, config, registry)
    write_json_atomic(Path(run_dir) / "report.json", report)
    figures = draw_figures(Path(run_dir), report)
    write_text_atomic(Path(run_dir) / "report.md", render_markdown(report, figures))
    return report


def build_report(run_dir: Path, config: DictConfig, registry: Registry) -> dict[str, Any]:
    """What ``report.json`` holds, for the registry as it is."""
    matrix = registry.scores_matrix()
    domains = list(config.cascade.domains)
    plan = planned_stages(config)
    return {
        "cascade": config.cascade.name,
        "complete": all(p["name"] in registry for p in plan),
        "run_dir": str(run_dir),
        "domains": domains,
        "stages": [{**p, "metrics": registry[p["name"]].metrics} for p in plan if p["name"] in registry],
        "scores": matrix,
        "gains": gains(matrix, domains),
        "best": best_scores(matrix, domains),
        "variants": {d: spec.variant_of for d, spec in config.cascade.domains.items() if spec.get("variant_of")},
        "details": {stage: e.details for stage, e in registry.entries.items()},
        "checkpoints": {stage: e.checkpoint.to_dict() for stage, e in registry.entries.items()},
        "seconds": {s: e.metrics.get("seconds", 0.0) for s, e in registry.entries.items()},
        # the evaluation's wall time; runs from before it was recorded: the domains' times added up
        "eval_seconds": {s: e.metrics.get("eval_seconds", sum(d.get("seconds", 0.0) for d in e.details.values()))
                         for s, e in registry.entries.items()},
        "config": OmegaConf.to_container(config, resolve=True),
    }


def draw_figures(run_dir: Path, report: dict[str, Any]) -> dict[str, str]:
    """``figures/*.png`` for report.md (name -> relative path of those drawn). A picture is never worth a
    failed run: any error is logged and the report is written without it."""
    try:
        from cascade.figures import draw_all  # matplotlib loads only when a report is written

        return draw_all(run_dir, report)
    except Exception:
        log.warning("cascade: could not draw the figures of %s", run_dir, exc_info=True)
        return {}


def gains(matrix: dict[str, dict[str, float]], domains: list[str]) -> dict[str, dict[str, float]]:
    """Per stage and domain: change from the previous stage (negative = forgetting)."""
    rows = list(matrix.items())
    return {
        stage: {d: round(scores[d] - prev[d], 6) for d in domains if d in scores and d in prev}
        for (_, prev), (stage, scores) in zip(rows, rows[1:])
    }


def best_scores(matrix: dict[str, dict[str, float]], domains: list[str]) -> dict[str, dict[str, Any]]:
    """Per domain: the stage that scored best so far, its score, the latest score and the gap to the best
    (negative = the cascade has not kept what an earlier stage reached, e.g. before MOPD recovers it)."""
    best: dict[str, dict[str, Any]] = {}
    for d in domains:
        rows = [(stage, scores[d]) for stage, scores in matrix.items() if d in scores]
        if rows:
            stage, score = max(rows, key=lambda row: row[1])  # max keeps the earliest of equal scores
            best[d] = {"stage": stage, "score": score, "latest": rows[-1][1], "gap": round(rows[-1][1] - score, 6)}
    return best


def render_markdown(report: dict[str, Any], figures: dict[str, str] | None = None) -> str:
    """``figures``: name -> path relative to the run directory of the pictures to embed."""
    figures = figures or {}
    domains = report["domains"]
    status = "complete" if report["complete"] else "incomplete (resume with `resume=true`)"
    lines = [f"# Cascade `{report['cascade']}`", "", f"Run directory: `{report['run_dir']}` ({status})", "",
             "## Held-out score per domain after each stage", "",
             "| stage | " + " | ".join(domains) + " | seconds | eval seconds |", "|---|" + "---:|" * (len(domains) + 2)]
    for stage, scores in report["scores"].items():
        cells = []
        for d in domains:
            delta = report["gains"].get(stage, {}).get(d)
            if d not in scores:  # a domain added to the cascade after this stage ran
                cells.append("n/a")
                continue
            cells.append(f"{scores[d]:.3f}" + (f" ({delta:+.3f})" if delta is not None else ""))
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {report['seconds'].get(stage, 0.0):.1f} | "
                     f"{report['eval_seconds'].get(stage, 0.0):.1f} |")
    lines += ["", "In parentheses: change from the previous stage (negative = forgetting). Seconds: the stage's training; "
              "eval seconds: the held-out evaluation after it (wall time; report.json's `details` give each domain's).", ""]
    lines += [line for name in ("cascade", "gains") if name in figures
              for line in (f"![{FIGURE_CAPTIONS[name]}]({figures[name]})", "")]
    lines += variant_tables(report)
    lines += breakdown_tables(report)
    lines += ["## Latest against best per domain", "", "| domain | best stage | best | latest | gap |", "|---|---|---:|---:|---:|"]
    for d, best in report["best"].items():
        lines.append(f"| {d} | {best['stage']} | {best['score']:.3f} | {best['latest']:.3f} | {best['gap']:+.3f} |")
    lines += ["", "## Stages", ""]
    if "training" in figures:
        lines += [f"![{FIGURE_CAPTIONS['training']}]({figures['training']})", ""]
    for stage in report["stages"]:
        last = stage["metrics"].get("last", {})
        shown = ", ".join(f"{k}={v:.4g}" for k, v in last.items() if isinstance(v, (int, float)) and k != "step")
        lines.append(f"- **{stage['name']}** ({stage['type']}, domains: {', '.join(stage['domains'])}): "
                     f"{stage['metrics'].get('steps', 0)} steps" + (f"; last step: {shown}" if shown else ""))
    lines += ["", "Checkpoints: `checkpoints/`; machine-readable: `report.json`.", ""]
    return "\n".join(lines)


def variant_tables(report: dict[str, Any]) -> list[str]:
    """report.md's side-by-side tables: a domain and its variant (with a tool, say) after each stage."""
    lines = []
    for variant, base in report.get("variants", {}).items():
        lines += [f"## `{variant}` beside `{base}`", "",
                  f"| stage | {base} | {variant} | difference | {variant}: episodes with a tool call |", "|---|---:|---:|---:|---:|"]
        for stage, scores in report["scores"].items():
            if base in scores and variant in scores:
                rate = report["details"].get(stage, {}).get(variant, {}).get("tool_call_rate")
                lines.append(f"| {stage} | {scores[base]:.3f} | {scores[variant]:.3f} | {scores[variant] - scores[base]:+.3f} | "
                             + ("n/a" if rate is None else f"{rate:.3f}") + " |")
        lines.append("")
    return lines


def breakdown_tables(report: dict[str, Any]) -> list[str]:
    """report.md's per-kind tables: a domain whose evaluation breaks its score down (``eval.breakdown``), after each
    stage."""
    lines = []
    for domain in report["domains"]:
        kinds = sorted({k for details in report["details"].values() for k in details.get(domain, {}) if k.startswith("score/")})
        if not kinds:
            continue
        lines += [f"## `{domain}` by kind", "", "| stage | " + " | ".join(k.removeprefix("score/") for k in kinds) + " |",
                  "|---|" + "---:|" * len(kinds)]
        for stage, details in report["details"].items():
            if domain in details:
                lines.append(f"| {stage} | " + " | ".join(f"{details[domain][k]:.3f}" if k in details[domain] else "n/a"
                                                          for k in kinds) + " |")
        lines.append("")
    return lines


def planned_stages(config: DictConfig) -> list[dict[str, Any]]:
    cascade = config.cascade
    order = list(cascade.order) if cascade.order is not None else list(cascade.stages)
    return [{"name": n, "type": cascade.stages[n].type, "domains": list(cascade.stages[n].domains) or list(cascade.domains)} for n in order]


def is_complete(run_dir: Path) -> bool:
    path = Path(run_dir) / "report.json"
    return path.exists() and json.loads(path.read_text()).get("complete", False)


def rebuild(run_dir: Path) -> dict[str, Any]:
    """Regenerate the report from what the run saved (its config and checkpoint index)."""
    run_dir = Path(run_dir)
    index = run_dir / "checkpoints" / "index.json"
    if not index.exists():
        raise FileNotFoundError(f"{run_dir} is not a cascade run directory (no {index.relative_to(run_dir)})")
    return write_report(run_dir, OmegaConf.load(run_dir / "config.yaml"), Registry(index))
