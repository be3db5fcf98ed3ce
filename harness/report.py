"""Comparison reports: summary statistics, differences against a baseline with their uncertainty,
the paper's numbers beside ours, figures, and report.md / report.html.

Everything here reads the tables of `harness.results`; nothing trains or evaluates.
"""

from __future__ import annotations

import base64
import html
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import harness
from harness.config import lower_is_better
from harness.paper import PaperDelta, load_paper_tables, paper_deltas
from harness.results import Results, SuiteSource
from harness.stats import BOOTSTRAP_RESAMPLES, CI_LEVEL, Difference, bootstrap_mean_ci, compare_seeds
from harness.suite import ComparisonSpec as Comparison

FIGURE_FORMATS = ("png", "svg")
FEW_SEEDS = 5  # below this, say that a bootstrap over seeds is a rough guide


# ------------------------------------------------------------------------------------- metrics


def _better(metric: str) -> str:
    return "lower" if lower_is_better(metric) else "higher"


def metric_label(metric: str) -> str:
    """Axis label with the unit."""
    name = metric.rsplit(".", 1)[-1]
    task = metric.rsplit(".", 1)[0] if "." in metric else ""
    units = {
        "heldout_ppl": "held-out MLM perplexity (exp nats/token)",
        "heldout_loss": "held-out MLM loss (nats/masked token)",
        "heldout_acc": "held-out MLM accuracy (fraction of masked tokens)",
        "train_loss": "training loss (nats/masked token)",
        "nsp_loss": "NSP loss (nats/pair)",
        "accuracy": "accuracy (fraction of dev examples)",
        "f1": "F1 (fraction)",
        "matthews": "Matthews correlation",
        "pearson": "Pearson correlation",
        "spearman": "Spearman correlation",
    }
    unit = units.get(metric) or units.get(name, name)
    return f"{task} {unit}" if task else unit


def metric_order(results: Results) -> list[str]:
    """Declared metrics first (suite order), then every other metric the runs report."""
    declared: list[str] = []
    for source in results.sources:
        if source.spec:
            declared.extend(source.spec.metrics)
    found = list(dict.fromkeys(results.metrics["metric"])) if len(results.metrics) else []
    return list(dict.fromkeys([*declared, *found]))


def declared_metrics(results: Results) -> list[str]:
    names: list[str] = []
    for source in results.sources:
        names.extend(source.spec.metrics if source.spec else [])
    if not names and len(results.metrics):  # no suite spec: every metric but the noisy last training loss
        names = [m for m in dict.fromkeys(results.metrics["metric"]) if m != "train_loss"]
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------------- statistics


def summarize(results: Results, metrics: list[str]) -> pd.DataFrame:
    """arm x metric: n (of the arm's runs), mean, std, median and the bootstrap CI of the mean.
    Arms without a finished run keep their rows, with n = 0."""
    rows = []
    expected = results.runs.groupby("arm", sort=False).size() if len(results.runs) else pd.Series(dtype=int)
    for arm in results.arms():
        for metric in metrics:
            values = results.metrics.query("arm == @arm and metric == @metric")["value"].to_numpy()
            low, high = bootstrap_mean_ci(values)
            rows.append(
                {
                    "arm": arm,
                    "metric": metric,
                    "n": len(values),
                    "runs": int(expected.get(arm, 0)),
                    "mean": values.mean() if len(values) else math.nan,
                    "std": values.std(ddof=1) if len(values) > 1 else math.nan,
                    "median": float(np.median(values)) if len(values) else math.nan,
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    return pd.DataFrame(rows, columns=["arm", "metric", "n", "runs", "mean", "std", "median", "ci_low", "ci_high"])


def comparisons_for(results: Results, baseline: str | None = None) -> list[Comparison]:
    """The suite's comparisons (arm labels as in the tables); with several suites, every arm
    against the first suite's baseline unless `baseline` names another."""
    arms = results.arms()
    if baseline is not None and baseline not in arms:
        raise ValueError(f"--baseline {baseline!r}: no such arm (have: {', '.join(arms)})")
    first = results.sources[0]
    if not results.multi_suite and first.spec is not None:
        return first.spec.comparison_list(baseline)
    default = None
    if results.multi_suite and first.spec and len(first.spec.arms) > 1:
        default = f"{first.name}/{first.spec.comparison_list()[0].baseline}"
    reference = baseline or default or (arms[0] if arms else None)
    return [Comparison(arm=arm, baseline=reference) for arm in arms if arm != reference]


def _values_by_seed(results: Results, arm: str, metric: str) -> dict[int, float]:
    rows = results.metrics.query("arm == @arm and metric == @metric")
    return dict(zip(rows["seed"].astype(int), rows["value"].astype(float)))


SIGNIFICANCE = 0.05


def verdict(comparison: Comparison, metric: str, diff: Difference) -> tuple[str, str | None]:
    """(words, winner). A side wins only when the bootstrap CI excludes zero and the t-test agrees
    (p < 0.05): over two or three seeds a percentile bootstrap can exclude zero by luck of a few
    consistent draws, and the t-test knows how little two seeds say."""
    if math.isnan(diff.ci_low):
        return "not enough seeds to tell", None
    if not diff.excludes_zero:
        return "no clear difference (CI includes 0)", None
    arm_higher = diff.ci_low > 0
    winner = comparison.arm if arm_higher != lower_is_better(metric) else comparison.baseline
    if math.isnan(diff.p_value):
        return f"leans {winner} (CI excludes 0; every seed differs by the same amount, no test possible)", None
    if not diff.p_value < SIGNIFICANCE:
        return f"leans {winner} (CI excludes 0, t-test p ≥ {SIGNIFICANCE})", None
    return f"{winner} better", winner


def compare(results: Results, comparisons: list[Comparison], metrics: list[str]) -> pd.DataFrame:
    rows = []
    for comparison in comparisons:
        for metric in metrics:
            diff = compare_seeds(
                _values_by_seed(results, comparison.arm, metric), _values_by_seed(results, comparison.baseline, metric)
            )
            ours, winner = verdict(comparison, metric, diff)
            paper = _paper_direction(comparison, metric)
            rows.append(
                {
                    "comparison": comparison.name,
                    "arm": comparison.arm,
                    "baseline": comparison.baseline,
                    "metric": metric,
                    "diff": diff.diff,
                    "relative": diff.relative,
                    "ci_low": diff.ci_low,
                    "ci_high": diff.ci_high,
                    "p_value": diff.p_value,
                    "test": diff.test,
                    "n_arm": diff.n_arm,
                    "n_baseline": diff.n_baseline,
                    "n_pairs": diff.n_pairs,
                    "ci_excludes_zero": diff.excludes_zero,
                    "significant": winner is not None,
                    "our_direction": ours,
                    "paper_direction": paper,
                    "agrees_with_paper": _agreement(comparison, metric, winner),
                }
            )
    columns = ["comparison", "arm", "baseline", "metric", "diff", "relative", "ci_low", "ci_high", "p_value", "test",
               "n_arm", "n_baseline", "n_pairs", "ci_excludes_zero", "significant", "our_direction", "paper_direction",
               "agrees_with_paper"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def _paper_columns(comparison: Comparison, metric: str) -> tuple[list[PaperDelta], list[PaperDelta]]:
    """(every column of the mapped paper table with both rows, the columns measuring `metric`)."""
    if comparison.paper is None:
        return [], []
    ref = comparison.paper
    table = load_paper_tables()[ref.table][1]
    deltas = paper_deltas(table, ref.arm, ref.baseline)
    return deltas, [d for d in deltas if table.columns[d.column].ours == metric]


def _paper_direction(comparison: Comparison, metric: str) -> str:
    """The paper's direction on the column measuring this metric, or, when no column does, a
    count over the table's columns (the paper's downstream tasks against our proxy metric)."""
    deltas, same = _paper_columns(comparison, metric)
    if not deltas:
        return ""
    if same:
        d = same[0]
        word = {True: f"{comparison.arm} better", False: f"{comparison.baseline} better", None: "equal"}[d.arm_better]
        return f"{word} ({d.label} {d.delta:+.2f})"
    better = sum(d.arm_better is True for d in deltas)
    worse = sum(d.arm_better is False for d in deltas)
    return f"{comparison.arm} better on {better}, worse on {worse} of {len(deltas)} paper columns"


def _agreement(comparison: Comparison, metric: str, winner: str | None) -> str:
    """yes / no / inconclusive where a paper column measures this very metric; blank otherwise."""
    _, same = _paper_columns(comparison, metric)
    if not same:
        return ""
    if winner is None or same[0].arm_better is None:
        return "inconclusive"
    paper_winner = comparison.arm if same[0].arm_better else comparison.baseline
    return "yes" if paper_winner == winner else "no"


def paper_side_by_side(results: Results, comparisons: list[Comparison], summary: pd.DataFrame) -> list[dict[str, Any]]:
    """For each paper table the suite maps onto: the paper's rows and, under each paper row that
    one of our arms stands for, our mean on the metric measuring the same thing (in the paper's unit)."""
    mapping: dict[str, dict[str, str]] = {}  # table -> paper row -> our arm
    for c in comparisons:
        if c.paper is not None:
            rows = mapping.setdefault(c.paper.table, {})
            rows.setdefault(c.paper.arm, c.arm)
            rows.setdefault(c.paper.baseline, c.baseline)
    reported = set(results.metrics["metric"]) if len(results.metrics) else set()
    out = []
    for table_id, rows in mapping.items():
        paper, table = load_paper_tables()[table_id]
        header = ["setting", "source", *[f"{col.label}: {col.measures}" for col in table.columns.values()]]
        body = []
        for row_id, arm in rows.items():
            row = table.rows[row_id]
            body.append([row.label, "paper", *[fmt_num(row.values.get(c)) for c in table.columns]])
            cells = []
            for column in table.columns.values():
                if column.ours is None:
                    cells.append("not measured")
                    continue
                if column.ours not in reported:
                    cells.append("not in this suite")
                    continue
                found = summary.query("arm == @arm and metric == @column.ours")
                value = found["mean"].iloc[0] * column.scale if len(found) and found["n"].iloc[0] else math.nan
                cells.append(fmt_num(value) if not math.isnan(value) else "not run")
            body.append([f"arm {arm}", "ours (mean)", *cells])
        out.append({"id": table_id, "paper": paper, "title": table.title, "caption": table.caption,
                    "header": header, "rows": body})  # fmt: skip
    return out


def arm_configs(results: Results) -> pd.DataFrame:
    """One run row per arm, indexed by arm: the first whose config is known (a missing run read
    from a results directory has none)."""
    runs = results.runs
    config_cols = [c for c in runs.columns if c.startswith("config.")]
    known = runs[runs[config_cols].notna().any(axis=1)] if config_cols else runs
    return known.drop_duplicates("arm").set_index("arm")


def config_differences(results: Results, comparisons: list[Comparison]) -> list[list[str]]:
    """For each compared pair, the config keys whose values differ (the seed aside): what the
    comparison actually changes."""
    if not len(results.runs):
        return []
    config_cols = [c for c in results.runs.columns if c.startswith("config.") and c != "config.train.seed"]
    firsts = arm_configs(results)
    rows = []
    for c in comparisons:
        if c.arm not in firsts.index or c.baseline not in firsts.index:
            continue
        a, b = firsts.loc[c.arm], firsts.loc[c.baseline]
        changed = []
        for col in config_cols:
            va, vb = a.get(col), b.get(col)
            if _same(va, vb):
                continue
            changed.append(f"{col.removeprefix('config.')}: {_plain(vb)} → {_plain(va)}")
        rows.append([c.name, "; ".join(changed) or "(no config difference)"])
    return rows


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _same(a: Any, b: Any) -> bool:
    return (is_missing(a) and is_missing(b)) or (not is_missing(a) and not is_missing(b) and a == b)


def _plain(value: Any) -> str:
    return "unset" if is_missing(value) else str(value)


# ------------------------------------------------------------------------------------ figures


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
            from matplotlib.ticker import ScalarFormatter

            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.grid(True, alpha=0.3)
        ax.legend(title="arm (band: min–max over seeds)", fontsize=8, title_fontsize=8)
    fig.tight_layout()
    return _save(fig, out_dir, "curves")


def _with_results(summary: pd.DataFrame, metrics: list[str]) -> list[str]:
    """The metrics some arm has a finished run for."""
    reported = set(summary.loc[summary["n"] > 0, "metric"])
    return [m for m in metrics if m in reported]


def figure_metrics(results: Results, summary: pd.DataFrame, metrics: list[str], out_dir: Path) -> Path | None:
    """Each metric per arm: every seed as a grey point, the mean with its bootstrap CI in black."""
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
                    markersize=6, zorder=2, label=f"mean, {CI_LEVEL:.0%} bootstrap CI")  # fmt: skip
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
        ax.set_title(f"{metric} ({_better(metric)} is better)", fontsize=9)
        ax.tick_params(axis="x", rotation=20, labelsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7, loc="best")
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
        excludes = data["ci_excludes_zero"].fillna(False).to_numpy(dtype=bool)
        significant = data["significant"].fillna(False).to_numpy(dtype=bool)
        for y, d, lo, hi, out, sig in zip(positions, diff, below, above, excludes, significant):
            fill = "black" if sig else "0.6" if out else "white"
            ax.errorbar([d], [y], xerr=[[lo], [hi]], fmt="o", mfc=fill, color="black", capsize=4)
        ax.axvline(0, color="0.4", linestyle="--", linewidth=1)
        ax.set_yticks(positions, names, fontsize=8)
        ax.set_xlabel(f"difference, arm − baseline ({metric_label(metric)})", fontsize=8)
        ax.set_title(f"{metric} ({_better(metric)} is better)", fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, out_dir, "differences")


BATCH_KEYS = ("config.train.tokens_per_step", "config.train.batch_size")


def batch_axis(results: Results) -> str | None:
    """The config column that varies the batch across arms, when the suite is about batch size."""
    runs = results.runs
    for key in BATCH_KEYS:
        if key in runs and pd.to_numeric(runs[key], errors="coerce").dropna().nunique() > 1:
            return key
    return None


def figure_batch(results: Results, summary: pd.DataFrame, metrics: list[str], out_dir: Path) -> Path | None:
    """Perplexity and downstream metrics against batch size (log scale), mean with CI."""
    import matplotlib.pyplot as plt

    key = batch_axis(results)
    if key is None:
        return None
    batch = arm_configs(results)[key]
    metrics = _with_results(summary, metrics)
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        stats = summary[summary["metric"] == metric].copy()
        stats["batch"] = stats["arm"].map(batch).astype(float)
        stats = stats.dropna(subset=["batch", "mean"]).sort_values("batch")
        yerr = _error_bars(stats["mean"], stats["ci_low"], stats["ci_high"])
        ax.errorbar(stats["batch"], stats["mean"], yerr=yerr, fmt="-o", color="black", capsize=4)
        for _, row in stats.iterrows():
            ax.annotate(row["arm"], (row["batch"], row["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xscale("log", base=2)
        unit = "tokens per step" if key.endswith("tokens_per_step") else "sequences per step"
        ax.set_xlabel(f"batch size ({unit}, log scale)")
        ax.set_ylabel(metric_label(metric), fontsize=9)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, out_dir, "batch-size")


# ----------------------------------------------------------------------------------- document


@dataclass
class Document:
    """Blocks rendered once as Markdown and once as self-contained HTML."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("heading", (level, text)))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("paragraph", text))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("bullets", items))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", (header, rows)))

    def figure(self, path: Path, caption: str) -> None:
        self.blocks.append(("figure", (path, caption)))

    def markdown(self, base: Path) -> str:
        out = []
        for kind, content in self.blocks:
            if kind == "heading":
                out.append(f"{'#' * content[0]} {content[1]}")
            elif kind == "paragraph":
                out.append(content)
            elif kind == "bullets":
                out.append("\n".join(f"- {item}" for item in content))
            elif kind == "table":
                header, rows = content
                cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
                lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
                lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
                out.append("\n".join(lines))
            elif kind == "figure":
                path, caption = content
                out.append(f"![{caption}]({path.relative_to(base).as_posix()})\n\n*{caption}*")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        parts = []
        for kind, content in self.blocks:
            if kind == "heading":
                parts.append(f"<h{content[0]}>{_inline(content[1])}</h{content[0]}>")
            elif kind == "paragraph":
                parts.append(f"<p>{_inline(content)}</p>")
            elif kind == "bullets":
                parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in content) + "</ul>")
            elif kind == "table":
                header, rows = content
                head = "".join(f"<th>{_inline(str(h))}</th>" for h in header)
                body = "".join("<tr>" + "".join(f"<td>{_inline(str(v))}</td>" for v in row) + "</tr>" for row in rows)
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif kind == "figure":
                path, caption = content
                # embedded, so the file opens anywhere with no network and no side files
                data = base64.b64encode(path.read_bytes()).decode("ascii")
                parts.append(
                    f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{_inline(caption)}</figcaption></figure>"
                )
        style = (
            "body{font-family:sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#111;line-height:1.45}"
            "table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}"
            "th,td{border:1px solid #999;padding:.25rem .5rem;text-align:left;vertical-align:top}"
            "th{background:#eee}code{background:#f3f3f3;padding:0 .2rem}"
            "img{max-width:100%}figcaption{font-style:italic;font-size:.9rem}"
        )
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
        )


def _inline(text: str) -> str:
    """Escape, then the two Markdown marks the report uses: `code` and **bold**."""
    escaped = html.escape(text, quote=False)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


def fmt_num(value: Any, signed: bool = False) -> str:
    if is_missing(value):
        return "–"
    value = float(value)
    digits = 1 if abs(value) >= 100 else 2 if abs(value) >= 10 else 4
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _p_clause(value: float) -> str:
    """`= 0.118` or `< 0.001`, to follow a "p"."""
    text = fmt_p(value)
    return text if text.startswith("<") else f"= {text}"


def fmt_p(value: float) -> str:
    if math.isnan(value):
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


# ------------------------------------------------------------------------------------- report


@dataclass
class ReportOutput:
    directory: Path
    problems: list[str]


def default_report_dir(sources: list[SuiteSource]) -> Path:
    """reports/<suite> beside the results root (results/<suite> -> reports/<suite>)."""
    root = sources[0].directory.parent
    return root.parent / "reports" / "-vs-".join(s.name for s in sources)


def _metric_sentence(row: pd.Series) -> str:
    metric = row["metric"]
    if math.isnan(row["diff"]):
        return f"{metric}: no finished runs on one side"
    relative = f" ({row['relative']:+.1%})" if not math.isnan(row["relative"]) else ""
    if math.isnan(row["ci_low"]):
        return f"{metric} {fmt_num(row['diff'], True)}{relative}, too few seeds for an interval: undecided"
    verdict_text = f"**{row['our_direction']}**" if row["significant"] else row["our_direction"]
    return (
        f"{metric} ({_better(metric)} is better) {fmt_num(row['diff'], True)}{relative}, "
        f"CI [{fmt_num(row['ci_low'], True)}, {fmt_num(row['ci_high'], True)}], p {_p_clause(row['p_value'])}: "
        f"{verdict_text}"
    )


def _paper_sentence(comparison: Comparison) -> str:
    if comparison.paper is None:
        return ""
    ref = comparison.paper
    table = load_paper_tables()[ref.table][1]
    arm, base = table.rows[ref.arm], table.rows[ref.baseline]
    deltas, _ = _paper_columns(comparison, "")
    listed = ", ".join(f"{d.label} {d.delta:+.2f}" for d in deltas)
    return f" Paper ({table.title}, {arm.label} − {base.label}): {listed}."


def _narrative(table: pd.DataFrame, comparisons: list[Comparison]) -> list[str]:
    """One sentence per comparison: each metric's difference, interval, test and verdict, then
    what the paper found for the same two settings."""
    lines = []
    for comparison in comparisons:
        rows = table[table["comparison"] == comparison.name]
        if not len(rows):
            continue
        first = rows.iloc[0]
        seeds = (
            f"{first['n_pairs']} paired seeds"
            if first["n_pairs"]
            else f"{first['n_arm']} vs {first['n_baseline']} seeds ({first['test'] or 'no test'})"
        )
        metrics = "; ".join(_metric_sentence(row) for _, row in rows.iterrows())
        lines.append(f"**{comparison.name}** ({seeds}): {metrics}.{_paper_sentence(comparison)}")
    return lines


def build_report(results: Results, out_dir: Path, baseline: str | None = None) -> ReportOutput:
    """Write the tables, figures, report.md and report.html for `results` under out_dir."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "harness"
    out_dir = Path(out_dir)
    figures_dir = out_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    problems = list(results.problems)

    metrics_all = metric_order(results)
    headline = declared_metrics(results) or metrics_all[:1]
    summary = summarize(results, metrics_all)
    comparisons = comparisons_for(results, baseline)
    comparison_table = compare(results, comparisons, headline)

    results.metrics.to_csv(out_dir / "results.csv", index=False)
    _to_parquet(results.metrics, out_dir / "results.parquet")
    summary.to_csv(out_dir / "summary.csv", index=False, float_format="%.6g")
    comparison_table.to_csv(out_dir / "comparisons.csv", index=False, float_format="%.6g")
    run_columns = ["suite", "arm", "seed", "run_id", "state", "error", "tokens", "steps", "epochs", "wall_s"]
    run_columns = [c for c in run_columns if c in results.runs]
    results.runs[run_columns].to_csv(out_dir / "runs.csv", index=False)

    figures = {
        "curves": figure_curves(results, figures_dir),
        "metrics": figure_metrics(results, summary, headline, figures_dir),
        "differences": figure_differences(comparison_table, figures_dir),
        "batch": figure_batch(results, summary, headline, figures_dir),
    }
    doc = _document(results, summary, comparison_table, comparisons, figures, headline, problems)
    title = "Report: " + ", ".join(s.name for s in results.sources)
    (out_dir / "report.md").write_text(doc.markdown(out_dir), encoding="utf-8")
    (out_dir / "report.html").write_text(doc.html(title), encoding="utf-8")
    return ReportOutput(out_dir, problems)


def _to_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Config columns can mix types across suites (a path in one, null in another as a number
    elsewhere); Parquet needs one type per column, so mixed object columns become text."""
    frame = frame.copy()
    for column in [c for c in frame.columns if pd.api.types.is_object_dtype(frame[c])]:
        kinds = {type(v) for v in frame[column].dropna()}
        if len(kinds) > 1:
            frame[column] = frame[column].map(lambda v: None if v is None else str(v))
    frame.to_parquet(path, index=False)


def _document(
    results: Results,
    summary: pd.DataFrame,
    comparison_table: pd.DataFrame,
    comparisons: list[Comparison],
    figures: dict[str, Path | None],
    headline: list[str],
    problems: list[str],
) -> Document:
    doc = Document()
    names = ", ".join(s.name for s in results.sources)
    doc.heading(1, f"Report: {names}")
    for source in results.sources:
        if source.spec and source.spec.description:
            doc.paragraph(source.spec.description.strip())
    runs = results.runs
    done = int((runs["state"] == "done").sum()) if len(runs) else 0
    doc.paragraph(
        f"Generated by harness {harness.__version__} on {time.strftime('%Y-%m-%d')} from {len(runs)} run(s) "
        f"({done} finished) under {', '.join(f'`{s.directory}`' for s in results.sources)}. "
        f"Statistics are over pretraining seeds; intervals are {CI_LEVEL:.0%} percentile bootstrap intervals of the "
        f"mean ({BOOTSTRAP_RESAMPLES:,} resamples, seeded); tests are two-sided t-tests, paired by seed where both "
        "arms ran it."
    )

    doc.heading(2, "Comparisons")
    doc.paragraph(
        f"Differences are arm − baseline with their {CI_LEVEL:.0%} CI and t-test p-value. A side is called better "
        f'only when the CI excludes 0 and p < {SIGNIFICANCE}; "leans" marks a CI that excludes 0 with a test that '
        "does not agree."
    )
    doc.bullets(_narrative(comparison_table, comparisons))
    fewest = int(comparison_table[["n_arm", "n_baseline"]].min().min()) if len(comparison_table) else 0
    if 1 < fewest < FEW_SEEDS:
        doc.paragraph(
            f"With {fewest} seeds per arm the bootstrap intervals are a rough guide (a percentile bootstrap over so "
            "few values is too narrow); more seeds in the suite's `seeds` list would firm them up."
        )
    if len(comparison_table):
        doc.table(
            ["comparison", "metric", "difference", f"{CI_LEVEL:.0%} CI", "p", "seeds", "ours", "paper"],
            [
                [
                    r["comparison"], r["metric"], fmt_num(r["diff"], True),
                    f"[{fmt_num(r['ci_low'], True)}, {fmt_num(r['ci_high'], True)}]", fmt_p(r["p_value"]),
                    f"{r['n_pairs']} paired" if r["n_pairs"] else f"{r['n_arm']} vs {r['n_baseline']}",
                    r["our_direction"], r["paper_direction"] or "–",
                ]
                for _, r in comparison_table.iterrows()
            ],
        )  # fmt: skip
    differences = config_differences(results, comparisons)
    if differences:
        doc.paragraph("What each comparison changes (baseline → arm):")
        doc.table(["comparison", "config differences"], differences)
    if figures["differences"]:
        doc.figure(
            figures["differences"],
            "Each comparison's difference (arm − baseline) with its 95% bootstrap CI. Black: CI excludes 0 and "
            "t-test p < 0.05; grey: CI excludes 0 but the t-test does not agree; white: CI includes 0.",
        )

    doc.heading(2, "Summary per arm")
    doc.table(
        ["arm", "metric", "n / runs", "mean", "std", "median", f"{CI_LEVEL:.0%} CI"],
        [
            [r["arm"], r["metric"], f"{r['n']}/{r['runs']}", fmt_num(r["mean"]), fmt_num(r["std"]),
             fmt_num(r["median"]), f"[{fmt_num(r['ci_low'])}, {fmt_num(r['ci_high'])}]" if r["n"] > 1 else "–"]
            for _, r in summary.iterrows()
        ],
    )  # fmt: skip
    if figures["metrics"]:
        doc.figure(figures["metrics"], "Each metric per arm: seeds as grey points, mean and 95% bootstrap CI in black.")
    if figures["curves"]:
        doc.figure(
            figures["curves"],
            "Training loss (running mean of 5 logs) and held-out perplexity against tokens seen: mean over seeds, "
            "band from the lowest to the highest seed.",
        )
    if figures["batch"]:
        doc.figure(figures["batch"], "Metrics against batch size: mean with 95% bootstrap CI.")

    side_by_side = paper_side_by_side(results, comparisons, summary)
    if side_by_side:
        doc.heading(2, "The paper beside ours")
        doc.paragraph(
            "The paper's numbers come from BERT-base-sized models pretrained on BookCorpus + Wikipedia (16 GB of "
            "text) and are medians over five random initialisations; ours come from this suite's scale. Compare "
            "directions, not levels. Columns the harness cannot evaluate are marked 'not measured', columns this "
            "suite does not evaluate 'not in this suite'."
        )
        for entry in side_by_side:
            doc.heading(3, entry["title"])
            doc.paragraph(f"{entry['caption'].strip()} Source: {entry['paper']}.")
            doc.table(entry["header"], entry["rows"])

    doc.heading(2, "Runs")
    if len(runs):
        grid = runs.pivot_table(index="arm", columns="seed", values="state", aggfunc="first", sort=False)
        doc.table(
            ["arm", *[f"seed {s}" for s in grid.columns]],
            [[arm, *[str(v) if isinstance(v, str) else "missing" for v in row]] for arm, row in grid.iterrows()],
        )
        budget = runs[runs["state"] == "done"].groupby("arm", sort=False)[["tokens", "steps", "epochs", "wall_s"]]
        if len(runs[runs["state"] == "done"]):
            means = budget.mean()
            doc.paragraph("Budget each arm actually consumed (mean over its finished runs):")
            doc.table(
                ["arm", "tokens", "steps", "passes over the data", "wall time (s)"],
                [[arm, f"{r['tokens']:,.0f}", f"{r['steps']:,.0f}", fmt_num(r["epochs"]), fmt_num(r["wall_s"])]
                 for arm, r in means.iterrows()],
            )  # fmt: skip
    not_done = runs[runs["state"] != "done"] if len(runs) else runs
    if len(not_done):
        doc.paragraph("Runs without results (they count as missing in every statistic above):")
        doc.table(
            ["arm", "seed", "run id", "state", "error"],
            [[r["arm"], str(r["seed"]), r["run_id"] or "–", r["state"], (r["error"] or "").splitlines()[-1:][0]
              if r["error"] else ""] for _, r in not_done.iterrows()],
        )  # fmt: skip
    diverged = results.finetune[results.finetune["diverged"] != ""] if len(results.finetune) else results.finetune
    if len(diverged):
        doc.paragraph("Fine-tuning seeds that diverged (left out of their run's median):")
        doc.table(
            ["arm", "seed", "task", "fine-tuning seed", "reason"],
            [[r["arm"], str(r["seed"]), r["task"], str(r["finetune_seed"]), r["diverged"]]
             for _, r in diverged.iterrows()],
        )  # fmt: skip
    if problems or results.notes:
        doc.heading(2, "Problems and notes")
        doc.bullets([f"problem: {p}" for p in problems] + [f"note: {n}" for n in results.notes])
    doc.paragraph(
        "Files: `results.csv` / `results.parquet` (one row per run × metric, flattened config beside it), "
        "`summary.csv`, `comparisons.csv`, `runs.csv`, `figures/` (PNG and SVG)."
    )
    return doc
