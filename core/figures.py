"""The pictures of a run, drawn into ``RUN_DIR/figures/`` next to ``report.md``, which links them.

Drawn from the report's data (``cascade.report.write_report``, after every stage and by ``cascade report``)
and the stages' ``history.jsonl``:

- ``cascade.png``: held-out score per domain after each stage, filled markers where the stage trains it;
- ``gains.png``: stage x domain change from the previous stage (gains blue, forgetting red);
- ``training.png``: one panel of training curves per stage.

Matplotlib's object API with the Agg canvas, never pyplot: no global figure state, no backend switch in a
process that embeds the runner (a notebook), and nothing to close.
"""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from cascade.io import write_bytes_atomic

log = logging.getLogger(__name__)

FIGURE_DIR = "figures"
DPI = 110
# Okabe-Ito (colour-blind safe) with its yellow, faint on white, swapped for Tol's wine, then Tol's olive,
# grey and indigo for cascades of more than eight domains. A marker per domain too, so lines stay apart in
# grey print and for the colours a reader cannot tell apart.
COLOURS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#882255", "#999933",
           "#888888", "#332288"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "p", "<"]
SECONDARY_COLOUR = "#D55E00"
# training panels, in inches: fixed sizes instead of constrained layout, which took 2/3 of the drawing time
PANEL = (2.55, 1.85)
PANEL_GAP = (1.4, 0.8)  # room for one panel's right-axis labels and the next one's left-axis labels
MARGINS = {"left": 0.7, "right": 0.65, "top": 0.8, "bottom": 0.5}

Rows = list[dict[str, Any]]


def draw_all(run_dir: Path, report: dict[str, Any]) -> dict[str, str]:
    """Draw every figure that has data; returns name -> path relative to ``run_dir`` of those written.

    One figure failing is logged and left out; the others and the report are still written.
    """
    run_dir = Path(run_dir)
    drawers: dict[str, Callable[[], Figure | None]] = {
        "cascade": lambda: draw_cascade(report),
        "gains": lambda: draw_gains(report),
        "training": lambda: draw_training(run_dir, report),
    }
    written = {}
    for name, draw in drawers.items():
        try:
            figure = draw()
            if figure is not None:  # None: nothing to show yet (no stage finished, no history)
                save_png(figure, run_dir / FIGURE_DIR / f"{name}.png")
                written[name] = f"{FIGURE_DIR}/{name}.png"
        except Exception:
            log.warning("cascade: could not draw figures/%s.png of %s", name, run_dir, exc_info=True)
    return written


# ---- the cascade chart -----------------------------------------------------------------------------------


def draw_cascade(report: dict[str, Any]) -> Figure | None:
    stages = list(report["scores"])
    if not stages:
        return None
    domains, trained = report["domains"], trained_domains(report)
    figure = new_figure(width=3.2 + 0.95 * max(len(stages), 4), height=4.8)
    ax = figure.add_subplot()
    x = np.arange(len(stages), dtype=float)
    for i, domain in enumerate(domains):
        scores = np.array([number(report["scores"][s].get(domain)) for s in stages])
        # domains often share a score (two at 0.094): a small sideways shift per domain keeps both visible
        xs = x + 0.05 * (i - (len(domains) - 1) / 2)
        colour, marker = domain_style(i)
        label = domain if np.isfinite(scores).any() else f"{domain} (no scores)"
        ax.plot(xs, scores, color=colour, lw=1.6, alpha=0.85, label=label, zorder=2)
        # filled where the stage trains this domain, hollow where it only rides along
        trains = np.array([domain in trained.get(s, ()) for s in stages])
        ax.scatter(xs[trains], scores[trains], marker=marker, s=46, color=colour, edgecolors=colour, zorder=3)
        ax.scatter(xs[~trains], scores[~trains], marker=marker, s=40, facecolors="white", edgecolors=colour,
                   linewidths=1.3, zorder=3)
    ax.set_xticks(x, stages, rotation=30, ha="right")
    ax.set_xlim(-0.5, len(stages) - 0.5)
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    ax.set_ylabel("held-out score")
    ax.grid(axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(f"Cascade '{report['cascade']}': held-out score per domain after each stage", loc="left", fontsize=11)
    handles = [Line2D([], [], color=domain_style(i)[0], marker=domain_style(i)[1], lw=1.6, label=line.get_label())
               for i, line in enumerate(ax.get_lines())]
    handles += [Line2D([], [], ls="", marker="o", color="0.35", label="stage trains the domain"),
                Line2D([], [], ls="", marker="o", mfc="white", color="0.35", label="stage does not train it")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
    return figure


# ---- gains and forgetting --------------------------------------------------------------------------------


def draw_gains(report: dict[str, Any]) -> Figure | None:
    stages, domains = list(report["gains"]), report["domains"]
    if not stages or not domains:
        return None
    delta = np.array([[number(report["gains"][s].get(d)) for d in domains] for s in stages])
    limit = colour_limit(delta)
    figure = new_figure(width=2.6 + 0.85 * len(domains), height=1.6 + 0.42 * len(stages))
    ax = figure.add_subplot()
    # red = forgetting, blue = gain (colour-blind safe); cells with no value light grey, not white (= 0)
    colours = colormaps["RdBu"].with_extremes(bad="0.92")
    image = ax.imshow(np.ma.masked_invalid(delta), cmap=colours, vmin=-limit, vmax=limit, aspect="auto")
    trained = trained_domains(report)
    for row, stage in enumerate(stages):
        for col, domain in enumerate(domains):
            annotate_cell(ax, row, col, delta[row, col], limit)
            if domain in trained.get(stage, ()):
                ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, ec="black", lw=1.8))
    ax.set_xticks(range(len(domains)), domains, rotation=30, ha="right")
    ax.set_yticks(range(len(stages)), stages)
    ax.tick_params(length=0)
    ax.spines[:].set_visible(False)
    ax.set_title("Change from the previous stage", loc="left", fontsize=11)
    ax.set_xlabel("outlined: the stage trains the domain", fontsize=9, color="0.3")
    clipped = np.nanmax(np.abs(delta), initial=0.0) > limit
    bar = figure.colorbar(image, ax=ax, extend="both" if clipped else "neither", shrink=0.9, pad=0.02)
    bar.set_label("gain (blue) / forgetting (red)")
    return figure


def colour_limit(delta: np.ndarray) -> float:
    """The colour scale's half-range. The first training stage (SFT from scratch) moves scores ~10x more
    than later stages; scaling to it would wash the forgetting of a few points out to white, so the scale
    stops at the 80th percentile of the moves (those above saturate; the cells print exact values)."""
    moves = np.abs(delta[np.isfinite(delta) & (delta != 0)])
    return float(np.percentile(moves, 80)) if moves.size else 1.0


def annotate_cell(ax, row: int, col: int, value: float, limit: float) -> None:
    if not np.isfinite(value):
        ax.text(col, row, "n/a", ha="center", va="center", fontsize=8, color="0.45")
        return
    text = "0" if value == 0 else f"{value:+.3f}"
    ink = "white" if abs(value) > 0.6 * limit else ("0.45" if value == 0 else "black")
    ax.text(col, row, text, ha="center", va="center", fontsize=8, color=ink)


# ---- training curves -------------------------------------------------------------------------------------


def draw_training(run_dir: Path, report: dict[str, Any]) -> Figure | None:
    histories = stage_histories(run_dir)
    if not histories:
        return None
    columns = min(4, len(histories))
    rows = math.ceil(len(histories) / columns)
    figure, axes = panel_grid(rows, columns)
    types = {s["name"]: s["type"] for s in report["stages"]}
    for ax, (directory, history) in zip(axes, histories):
        number, _, name = directory.partition("_")
        starts = attempt_starts(history)  # only the last attempt made the checkpoint
        notes = [types.get(name, "?")] + ([] if name in report["scores"] else ["unfinished"])
        notes += [f"last of {len(starts)} attempts"] if len(starts) > 1 else []
        ax.set_title(f"{int(number)}. {name} ({', '.join(notes)})", loc="left", fontsize=10)
        plot_stage(ax, history[starts[-1]:], report["domains"])
    for ax in axes[len(histories):]:  # the grid's empty cells
        ax.set_visible(False)
    figure.text(0.01, 1 - 0.1 / figure.get_figheight(), "Training curves per stage", va="top", fontsize=11)
    figure.text(0.01, 1 - 0.32 / figure.get_figheight(), "dots: each step; line: moving average", va="top", fontsize=8, color="0.3")
    return figure


def panel_grid(rows: int, columns: int) -> tuple[Figure, list]:
    (width, height), (gap_x, gap_y), m = PANEL, PANEL_GAP, MARGINS
    size = (m["left"] + columns * width + (columns - 1) * gap_x + m["right"],
            m["bottom"] + rows * height + (rows - 1) * gap_y + m["top"])
    figure = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(figure)
    grid = {"left": m["left"] / size[0], "right": 1 - m["right"] / size[0], "bottom": m["bottom"] / size[1],
            "top": 1 - m["top"] / size[1], "wspace": gap_x / width, "hspace": gap_y / height}
    return figure, list(figure.subplots(rows, columns, squeeze=False, gridspec_kw=grid).flat)


def stage_histories(run_dir: Path) -> list[tuple[str, Rows]]:
    """(``NN_name``, rows) of every stage with a history, in run order (the directories' number)."""
    paths = sorted(Path(run_dir).glob("stages/[0-9]*_*/history.jsonl"))
    histories = [(path.parent.name, read_history(path)) for path in paths]
    return [(name, rows) for name, rows in histories if rows]


def read_history(path: Path) -> Rows:
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a last line cut short by a kill -9
            continue
    return [row for row in rows if isinstance(row, dict)]


def attempt_starts(history: Rows) -> list[int]:
    """Where each attempt of a stage begins: row 0, then every row whose step counter went back (a stage
    restarted from scratch, e.g. stopped and resumed with other settings, appends a new attempt)."""
    steps = [row.get("step") for row in history]
    return [0] + [i for i in range(1, len(steps)) if is_before(steps[i], steps[i - 1])]


def is_before(step: Any, previous: Any) -> bool:
    return isinstance(step, (int, float)) and isinstance(previous, (int, float)) and step <= previous


def curve_keys(history: Rows) -> tuple[list[str], str | None]:
    """What a stage's panel shows: (series on the left axis, series on the right axis or None).

    MOPD: the reverse KL to each domain's teacher; GRPO-type: reward (and accuracy when it differs),
    KL (or entropy when there is no KL term) on the right; SFT: loss; anything else: its first metric.
    """
    keys = [k for k in dict.fromkeys(k for row in history for k in row) if k != "step" and is_number_series(history, k)]
    reverse_kl = [k for k in keys if k.startswith("reverse_kl/")]
    if reverse_kl:
        return reverse_kl, None
    if "reward" in keys:
        shown = ["reward"] + (["accuracy"] if "accuracy" in keys and column(history, "accuracy") != column(history, "reward") else [])
        has_kl = "kl" in keys and any(v not in (0, None) for v in column(history, "kl"))
        return shown, "kl" if has_kl else ("entropy" if "entropy" in keys else None)
    if "loss" in keys:
        return ["loss"], None
    return keys[:1], None


def plot_stage(ax, history: Rows, domains: list[str]) -> None:
    steps = np.array([number(row.get("step", i + 1)) for i, row in enumerate(history)])
    left, right = curve_keys(history)
    for i, key in enumerate(left):
        domain = key.partition("/")[2]
        colour = domain_style(domains.index(domain))[0] if domain in domains else COLOURS[2 * i % len(COLOURS)]
        plot_smoothed(ax, steps, series(history, key), colour, domain or key)
    ax.set_xlabel("step", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    if len(left) == 1:
        # coloured like its line when a right axis shares the panel
        ax.set_ylabel(left[0], fontsize=9, color=COLOURS[0] if right else "black")
        log_axis_if_wide(ax, series(history, left[0]))
    elif left:
        ax.set_ylabel("reverse KL" if left[0].startswith("reverse_kl/") else "", fontsize=9)
        ax.legend(fontsize=7, frameon=False, ncol=2 if len(left) > 3 else 1)
    if right:
        twin = ax.twinx()
        plot_smoothed(twin, steps, series(history, right), SECONDARY_COLOUR, right, secondary=True)
        twin.set_ylabel(right, color=SECONDARY_COLOUR, fontsize=9)
        twin.tick_params(axis="y", labelsize=8, colors=SECONDARY_COLOUR)


def log_axis_if_wide(ax, values: np.ndarray) -> None:
    """SFT's loss falls from ~8 to ~0.2: on a log axis the end of training is not a flat line at 0."""
    low, high = np.nanmin(values, initial=np.inf), np.nanmax(values, initial=0.0)
    if low > 0 and high > 20 * low:
        ax.set_yscale("log")
        # ticks at 1 and 3 of each decade, labelled as plain numbers (0.3, 1, 3), not 3x10^-1
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 3.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def plot_smoothed(ax, steps: np.ndarray, values: np.ndarray, colour: str, label: str, secondary: bool = False) -> None:
    """Each step as a faint dot, the moving average as a line (dashed and thinner on the right axis)."""
    ax.plot(steps, values, ".", ms=3.5, color=colour, alpha=0.2 if secondary else 0.35, mew=0)
    # a fifth of the stage (up to 50 steps): 30-step RL stages are noisy, 800-step SFT is not
    ax.plot(steps, moving_average(values, window=max(1, min(50, round(len(values) / 5)))),
            color=colour, lw=1.1 if secondary else 1.6, ls="--" if secondary else "-", label=label)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` finite values (fewer at the start); NaN steps are skipped."""
    known = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(known, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(known)])
    start = np.maximum(np.arange(1, len(values) + 1) - window, 0)
    end = np.arange(1, len(values) + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums[end] - sums[start]) / (counts[end] - counts[start])


# ---- helpers ---------------------------------------------------------------------------------------------


def trained_domains(report: dict[str, Any]) -> dict[str, list[str]]:
    return {s["name"]: s["domains"] for s in report["stages"]}


def domain_style(index: int) -> tuple[str, str]:
    return COLOURS[index % len(COLOURS)], MARKERS[index % len(MARKERS)]


def number(value: Any) -> float:
    """A metric or score as a float; missing or not a number (None, a string) -> NaN, a gap in the line."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def column(history: Rows, key: str) -> list[Any]:
    return [row.get(key) for row in history]


def series(history: Rows, key: str) -> np.ndarray:
    return np.array([number(v) for v in column(history, key)])


def is_number_series(history: Rows, key: str) -> bool:
    return any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in column(history, key))


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: Path) -> None:
    """Written whole or not at all (a markdown viewer open on the report never sees half a PNG)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    write_bytes_atomic(path, buffer.getvalue())
