"""The report's figures: curves against tokens, each metric per arm, differences with their
intervals, metrics against batch size. PNG and SVG, byte-identical for the same results."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.report.tables import arm_configs, batch_axis, better_side, control_arms, metric_label
from harness.results import Results
from harness.stats import CI_LEVEL

FIGURE_FORMATS = ("png", "svg")
FIGURE_STEMS = ("curves", "metrics", "differences", "batch-size")  # every figure a report may draw


def _style(count: int) -> tuple[list[Any], list[Any], list[str]]:
    """Colours of decreasing darkness, plus dash patterns and markers, so arms stay apart in
    greyscale print."""
    import seaborn as sns

    palette = sns.color_palette("cubehelix", count + 2)[:count]
    dashes = [(1, 0), (4, 2), (1, 1.5), (6, 2, 1, 2), (3, 1, 1, 1, 1, 1), (8, 3)]
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    return palette, [dashes[i % len(dashes)] for i in range(count)], [markers[i % len(markers)] for i in range(count)]


def _error_bars(center: Any, low: Any, high: Any) -> list[np.ndarray]:
    """Matplotlib's [below, above] distances; a missing bound (one seed) draws no bar."""
    center = np.asarray(center, dtype=float)
    low = np.where(np.isnan(np.asarray(low, dtype=float)), center, low)
    high = np.where(np.isnan(np.asarray(high, dtype=float)), center, high)
    return [center - low, high - center]


def _save(fig: Any, out_dir: Path, stem: str) -> Path:
    """PNG and SVG of the figure; returns the PNG (what the report embeds)."""
    import matplotlib.pyplot as plt

    for fmt in FIGURE_FORMATS:
        # no timestamps in the files: the same results give byte-identical figures
        metadata = {"Date": None} if fmt == "svg" else {"Software": None}
        fig.savefig(out_dir / f"{stem}.{fmt}", dpi=150, bbox_inches="tight", metadata=metadata)
    plt.close(fig)
    return out_dir / f"{stem}.png"


def figure_curves(results: Results, out_dir: Path) -> Path | None:
    """Training loss and held-out perplexity against tokens seen: the mean over seeds as a line,
    the range over seeds as a band."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    curves = results.curves
    panels = [m for m in ("train_loss", "heldout_ppl") if len(curves) and (curves["metric"] == m).any()]
    if not panels:
        return None
    arms = [a for a in results.arms() if (curves["arm"] == a).any()]
    palette, dashes, markers = _style(len(arms))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], panels):
        data = curves[curves["metric"] == metric].copy()
        if metric == "train_loss":  # per-step losses are noisy; a short running mean per run
            data["value"] = data.groupby("run_id")["value"].transform(lambda v: v.rolling(5, min_periods=1).mean())
        # seeds of one arm log at the same steps but not at exactly the same token counts: align on
        # the arm's mean token count per step so the band spans seeds, not neighbouring steps
        data["tokens_m"] = data.groupby(["arm", "step"])["tokens"].transform("mean") / 1e6
        sns.lineplot(
            data=data, x="tokens_m", y="value", hue="arm", style="arm", hue_order=arms, style_order=arms,
            palette=palette, dashes=dashes, markers=markers if metric != "train_loss" else False, markevery=1,
            errorbar=("pi", 100), estimator="mean", ax=ax, linewidth=1.6,
        )  # fmt: skip
        ax.set_xlabel("tokens seen (millions)")
        ax.set_ylabel(metric_label(metric))
        if metric == "heldout_ppl":
            from matplotlib.ticker import NullFormatter, ScalarFormatter

            floors = results.floors
            floors = floors[floors["metric"] == "heldout_ppl"]["floor"].astype(float) if len(floors) else []
            for level in sorted(set(np.round(floors, 6))):
                ax.axhline(level, color="0.3", linestyle=":", linewidth=1.2)
            if len(floors):
                ax.annotate("unigram floor", (0.99, min(floors)), xycoords=("axes fraction", "data"), ha="right",
                            va="bottom", fontsize=7, color="0.3")  # fmt: skip

            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
            # within a decade the minor ticks are the only labels; across several they would overlap
            low, high = ax.get_ylim()
            ax.yaxis.set_minor_formatter(ScalarFormatter() if high / low <= 10 else NullFormatter())
        ax.grid(True, alpha=0.3)
        ax.legend(title="arm (band: min–max over seeds)", fontsize=8, title_fontsize=8)
    fig.tight_layout()
    return _save(fig, out_dir, "curves")


def _with_results(summary: pd.DataFrame, metrics: list[str]) -> list[str]:
    """The metrics some arm has a finished run for."""
    reported = set(summary.loc[summary["n"] > 0, "metric"])
    return [m for m in metrics if m in reported]


def figure_metrics(results: Results, summary: pd.DataFrame, metrics: list[str], out_dir: Path) -> Path | None:
    """Each metric per arm: every seed as a grey point, the mean with its t-interval in black, the floor dashed."""
    import matplotlib.pyplot as plt

    metrics = _with_results(summary, metrics)
    if not metrics:
        return None
    arms = results.arms()
    columns = min(len(metrics), 3)
    rows = math.ceil(len(metrics) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.8 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        data = results.metrics[results.metrics["metric"] == metric]
        positions = np.arange(len(arms))
        # seeds side by side, jittered by a seeded generator so the same results draw the same figure
        jitter = np.random.default_rng(0).uniform(-0.12, 0.12, len(data))
        ax.scatter(data["arm"].map(dict(zip(arms, positions))) + jitter, data["value"], color="0.55", s=25, zorder=1)
        stats = summary[summary["metric"] == metric].set_index("arm").reindex(arms)
        means = stats["mean"].to_numpy(dtype=float)
        yerr = _error_bars(means, stats["ci_low"], stats["ci_high"])
        ax.errorbar(positions, means, yerr=yerr, fmt="D", color="black", capsize=5,
                    markersize=6, zorder=2, label=f"mean, {CI_LEVEL:.0%} t-interval")  # fmt: skip
        floors = stats["floor"].to_numpy(dtype=float)
        if np.isfinite(floors).any():
            ax.scatter(positions, floors, marker="_", s=900, color="0.25", zorder=0,
                       label=f"floor ({stats['floor_kind'].dropna().iloc[0]})")  # fmt: skip
        ax.set_xticks(positions, arms)
        ax.set_xlim(-0.5, len(arms) - 0.5)  # every arm keeps its place, also one without results
        for position, n in zip(positions, stats["n"].fillna(0)):
            if n == 0:
                ax.annotate("missing", (position, 0.5), xycoords=("data", "axes fraction"), ha="center", color="0.3")
        ax.set_xlabel("")
        values = data["value"]
        if len(values) and values.max() == values.min():  # one value: give the axis a visible range
            pad = abs(values.iloc[0]) * 0.05 or 0.05
            ax.set_ylim(values.iloc[0] - pad, values.iloc[0] + pad)
        ax.set_ylabel(metric_label(metric), fontsize=9)
        ax.set_title(f"{metric} ({better_side(metric)} is better)", fontsize=9)
        ax.tick_params(axis="x", rotation=20, labelsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    for ax in list(axes.flat)[: len(metrics)]:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, out_dir, "metrics")


def figure_differences(table: pd.DataFrame, out_dir: Path) -> Path | None:
    """Each comparison's difference with its CI, per metric, against a line at zero."""
    import matplotlib.pyplot as plt

    table = table.dropna(subset=["diff"])
    metrics = list(dict.fromkeys(table["metric"]))
    if not metrics:
        return None
    columns = min(len(metrics), 2)
    rows = math.ceil(len(metrics) / columns)
    names = list(dict.fromkeys(table["comparison"]))
    height = max(0.55 * len(names) + 1.6, 2.8)
    fig, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, height * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        data = table[table["metric"] == metric].set_index("comparison").reindex(names)
        positions = np.arange(len(names))[::-1]
        diff = data["diff"].to_numpy(dtype=float)
        below, above = _error_bars(diff, data["ci_low"], data["ci_high"])
        claimed = (data["winner"].fillna("") != "").to_numpy(dtype=bool)
        tested = (data["verdict"] == "no difference detected").to_numpy(dtype=bool)
        for y, d, lo, hi, won, none in zip(positions, diff, below, above, claimed, tested):
            fill, marker = ("black", "o") if won else ("white", "o") if none else ("0.6", "s")
            ax.errorbar([d], [y], xerr=[[lo], [hi]], fmt=marker, mfc=fill, color="black", capsize=4)
        ax.axvline(0, color="0.4", linestyle="--", linewidth=1)
        ax.set_yticks(positions, names, fontsize=8)
        ax.set_xlabel(f"difference, arm − baseline ({metric_label(metric)})", fontsize=8)
        ax.set_title(f"{metric} ({better_side(metric)} is better)", fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, out_dir, "differences")


def batch_points(results: Results, summary: pd.DataFrame, metric: str, key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The summary rows of `metric` to draw against batch size (`key`, a config column): the pretrained
    arms with a `batch` column, in batch order, and the random-init controls apart. A control takes an
    arm's config but trains on no batch, so it is a level to draw across, not a point at that arm's batch."""
    controls = control_arms(results)
    stats = summary[summary["metric"] == metric].copy()
    stats["batch"] = stats["arm"].map(arm_configs(results)[key]).astype(float)
    stats = stats.dropna(subset=["batch", "mean"]).sort_values("batch")
    return stats[~stats["arm"].isin(controls)], stats[stats["arm"].isin(controls)]


def figure_batch(results: Results, summary: pd.DataFrame, metrics: list[str], out_dir: Path) -> Path | None:
    """Perplexity and downstream metrics against batch size (log scale), mean with CI; downstream, the
    random-init control as a dashed level."""
    import matplotlib.pyplot as plt

    key = batch_axis(results)
    if key is None:
        return None
    metrics = _with_results(summary, metrics)
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        stats, levels = batch_points(results, summary, metric, key)
        yerr = _error_bars(stats["mean"], stats["ci_low"], stats["ci_high"])
        ax.errorbar(stats["batch"], stats["mean"], yerr=yerr, fmt="-o", color="black", capsize=4)
        for _, row in stats.iterrows():
            ax.annotate(row["arm"], (row["batch"], row["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if not metric.startswith("heldout_") and len(levels):  # held out, a control sits far off every arm's scale
            for (_, row), style in zip(levels.iterrows(), itertools.cycle(["--", ":", "-."])):
                label = f"{row['arm']} (no pretraining)"
                ax.axhline(row["mean"], color="0.45", linestyle=style, linewidth=1.1, label=label)
            ax.legend(fontsize=7, loc="best")
        ax.set_xscale("log", base=2)
        unit = "tokens per step" if key.endswith("tokens_per_step") else "sequences per step"
        ax.set_xlabel(f"batch size ({unit}, log scale)")
        ax.set_ylabel(metric_label(metric), fontsize=9)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, out_dir, "batch-size")
