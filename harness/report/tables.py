"""The report's tables: metric names and units, per-arm summaries, what each comparison changes,
the paper's numbers beside ours, and number formatting. Reads `harness.results` tables only."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from harness.config import lower_is_better
from harness.effective import ArmPlan, Ineffective, find_ineffective, is_false, reads_setting
from harness.paper import PaperDelta, load_paper_tables, paper_deltas
from harness.results import Results
from harness.stats import mean_interval
from harness.suite import ComparisonSpec as Comparison


def better_side(metric: str) -> str:
    return "lower" if lower_is_better(metric) else "higher"


def metric_label(metric: str) -> str:
    """Axis label with the unit."""
    name = metric.rsplit(".", 1)[-1]
    task = metric.rsplit(".", 1)[0] if "." in metric else ""
    units = {
        "heldout_ppl": "held-out MLM perplexity (exp nats/token)",
        "heldout_loss": "held-out MLM loss (nats/masked token)",
        "heldout_acc": "held-out MLM accuracy (fraction of masked tokens)",
        "heldout_bpb": "held-out MLM bits per byte of the masked tokens' text",
        "train_loss": "training loss (nats/masked token)",
        "nsp_loss": "NSP loss (nats/pair)",
        "accuracy": "accuracy (fraction of dev examples)",
        "f1": "F1 (fraction)",
        "matthews": "Matthews correlation",
        "pearson": "Pearson correlation",
        "spearman": "Spearman correlation",
    }
    if metric.startswith("heldout_own_"):  # scored on the arm's own format rather than the yardstick
        return units[metric.replace("heldout_own_", "heldout_", 1)].replace("held-out", "held-out (own format)", 1)
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


@dataclass(frozen=True)
class Floor:
    """Where an arm stands against the score of a predictor that learned nothing (results.FLOOR_COLUMNS)."""

    kind: str  # "majority class", "unigram", or "" when the runs record none
    value: float  # mean over the arm's runs
    at_floor: bool  # every seed within noise of (or worse than) its run's floor

    @property
    def label(self) -> str:
        return {"majority class": "at majority baseline", "unigram": "has not learned context"}.get(self.kind, "")


NO_FLOOR = Floor("", math.nan, False)


def arm_floor(results: Results, arm: str, metric: str) -> Floor:
    """Is every seed of the arm at its floor for this metric? Each seed is checked against its own
    run's floor and threshold (two standard errors from it, towards better)."""
    floors = results.floors
    rows = floors[(floors["arm"] == arm) & (floors["metric"] == metric)] if len(floors) else floors
    if not len(rows):
        return NO_FLOOR
    values = results.metrics[(results.metrics["arm"] == arm) & (results.metrics["metric"] == metric)]
    merged = values.merge(rows[["seed", "floor", "threshold", "kind"]], on="seed")
    if not len(merged) or len(merged) < len(values):
        return NO_FLOOR
    lower = lower_is_better(metric)
    on_floor = merged["value"] >= merged["threshold"] if lower else merged["value"] <= merged["threshold"]
    return Floor(str(merged["kind"].iloc[0]), float(merged["floor"].mean()), bool(on_floor.all()))


def summarize(results: Results, metrics: list[str]) -> pd.DataFrame:
    """arm x metric: n (of the arm's runs), mean, std, median, the t-interval of the mean, and the
    floor (majority class or unigram) with whether the arm sits on it. Arms without a finished run
    keep their rows, with n = 0."""
    rows = []
    expected = results.runs.groupby("arm", sort=False).size() if len(results.runs) else pd.Series(dtype=int)
    for arm in results.arms():
        for metric in metrics:
            values = results.metrics.query("arm == @arm and metric == @metric")["value"].to_numpy()
            low, high = mean_interval(values)
            floor = arm_floor(results, arm, metric)
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
                    "floor": floor.value,
                    "floor_kind": floor.kind,
                    "at_floor": floor.at_floor,
                }
            )
    columns = ["arm", "metric", "n", "runs", "mean", "std", "median", "ci_low", "ci_high", "floor", "floor_kind",
               "at_floor"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


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


def values_by_seed(results: Results, arm: str, metric: str) -> dict[int, float]:
    rows = results.metrics.query("arm == @arm and metric == @metric")
    return dict(zip(rows["seed"].astype(int), rows["value"].astype(float)))


def paper_columns(comparison: Comparison, metric: str) -> tuple[list[PaperDelta], list[PaperDelta]]:
    """(every column of the mapped paper table with both rows, the columns measuring `metric`)."""
    if comparison.paper is None:
        return [], []
    ref = comparison.paper
    table = load_paper_tables()[ref.table][1]
    deltas = paper_deltas(table, ref.arm, ref.baseline)
    return deltas, [d for d in deltas if table.columns[d.column].ours == metric]


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


def control_arms(results: Results) -> set[str]:
    """The random-init controls among the arms (train.pretrain false): evaluated as initialised."""
    configs = arm_configs(results)
    if "config.train.pretrain" not in configs:
        return set()
    return set(configs.index[configs["config.train.pretrain"].map(is_false)])


def config_differences(results: Results, comparisons: list[Comparison]) -> list[list[str]]:
    """For each compared pair, the config settings whose values differ (the seed aside) and that both
    arms read: what the comparison actually changes. A setting one side never reads (dupe_factor under
    dynamic masking, any masking or optimiser setting of a random-init control) is left out: the
    setting that makes the side not read it (masking.kind, train.pretrain) is listed instead. An arm
    whose runs disagree on a setting (records from before a suite's change) shows each value with its
    count of runs."""
    runs = results.runs
    config_cols = [c for c in runs.columns if c.startswith("config.") and c != "config.train.seed"]
    if not len(runs) or not config_cols:
        return []
    known = runs[runs[config_cols].notna().any(axis=1)]
    rows = []
    for c in comparisons:
        arm, baseline = known[known["arm"] == c.arm], known[known["arm"] == c.baseline]
        if arm.empty or baseline.empty:
            continue
        changed = []
        readers = _readers(arm) + _readers(baseline)  # (masking.kind, train.pretrain) of every run of both
        for col in config_cols:
            key = col.removeprefix("config.")
            if not all(reads_setting(key, kind, pretrain) for kind, pretrain in readers):
                continue
            values_arm, values_base = _values(arm[col]), _values(baseline[col])
            if set(values_arm) != set(values_base):
                changed.append(f"{key}: {_plain_values(values_base)} → {_plain_values(values_arm)}")
        rows.append([c.name, "; ".join(changed) or "(no config difference)"])
    return rows


def _readers(runs: pd.DataFrame) -> list[tuple[Any, Any]]:
    """What decides which settings each run reads: its masking.kind and train.pretrain."""
    kinds = runs.get("config.masking.kind", pd.Series([None] * len(runs), index=runs.index))
    pretrains = runs.get("config.train.pretrain", pd.Series([None] * len(runs), index=runs.index))
    return list(zip(kinds, pretrains, strict=True))


def _values(column: pd.Series) -> dict[str, int]:
    """Each distinct value of an arm's setting, as shown, with its count of runs (first seen first)."""
    counts: dict[str, int] = {}
    for value in column:
        text = _plain(value)
        counts[text] = counts.get(text, 0) + 1
    return counts


def _plain_values(counts: dict[str, int]) -> str:
    if len(counts) == 1:
        return next(iter(counts))
    return " or ".join(f"{text} ({n} run{'s' if n > 1 else ''})" for text, n in counts.items())


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> str:
    return "unset" if is_missing(value) else str(value)


BATCH_KEYS = ("config.train.tokens_per_step", "config.train.batch_size")


# a batch sweep has at least three batch sizes: two arms that differ in batch (and often in much else,
# as BERT's recipe against RoBERTa's) are a comparison, which the verdict matrix already shows
SWEEP_POINTS = 3


def batch_axis(results: Results) -> str | None:
    """The config column that varies the batch across arms, when the suite is about batch size: at
    least SWEEP_POINTS batch sizes among its pretrained runs."""
    runs = results.runs
    if "config.train.pretrain" in runs:
        runs = runs[~runs["config.train.pretrain"].map(is_false)]
    for key in BATCH_KEYS:
        if key in runs and pd.to_numeric(runs[key], errors="coerce").dropna().nunique() >= SWEEP_POINTS:
            return key
    return None


def fmt_num(value: Any, signed: bool = False) -> str:
    if is_missing(value):
        return "–"
    value = float(value)
    digits = 1 if abs(value) >= 100 else 2 if abs(value) >= 10 else 4
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def fmt_p(value: float) -> str:
    if math.isnan(value):
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def ineffective_arms(results: Results) -> list[Ineffective]:
    """harness/effective.py's warnings from the records alone: each arm's config, and the passes over
    the data its finished runs made (the most of any seed; runs.csv's `epochs`) with the training
    tokens per pass (tokens / epochs). Arms without a finished run are left out: nothing is known of
    their passes."""
    runs = results.runs
    if not len(runs) or "epochs" not in runs:
        return []
    configs = arm_configs(results)
    finished = runs[(runs["state"] == "done") & (pd.to_numeric(runs["epochs"], errors="coerce") > 0)]
    plans = {}
    for arm, rows in finished.groupby("arm", sort=False):
        if arm not in configs.index:
            continue
        passes = float(rows["epochs"].max())
        tokens = pd.to_numeric(rows["tokens"], errors="coerce") / rows["epochs"].astype(float)
        copies = pd.to_numeric(rows.get("format_copies"), errors="coerce") if "format_copies" in rows else None
        known = copies is not None and copies.notna().any()
        plans[arm] = ArmPlan(_nested_config(configs.loc[arm]), passes, float(tokens.max()), planned=False,
                             format_copies=int(copies.max()) if known else None)  # fmt: skip
    return [warning for warning in find_ineffective(plans) if warning.certain]


def _nested_config(row: pd.Series) -> dict[str, Any]:
    """A run row's flattened `config.*` columns as the nested config they came from, with missing
    values as None and numpy scalars as plain Python (`False is False` must hold)."""
    config: dict[str, Any] = {}
    for column, value in row.items():
        if not str(column).startswith("config."):
            continue
        *parents, leaf = str(column).removeprefix("config.").split(".")
        holder = config
        for part in parents:
            if not isinstance(holder.get(part), dict):  # a section another suite's records leave unset
                holder[part] = {}
            holder = holder[part]
        if isinstance(holder.get(leaf), dict):
            continue
        value = value.item() if isinstance(value, np.generic) else value
        holder[leaf] = None if is_missing(value) else value
    return config
