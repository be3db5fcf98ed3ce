"""One verdict per comparison × headline metric, and the rules behind it.

For each cell, in order:
1. Per-token held-out metrics between arms with different tokenizers are not comparable: refused.
2. Both arms at their floor (majority class downstream; the context-free unigram floor held out):
   "both at floor: no evidence", no test.
3. The seed-level test (harness/stats.py): paired t over shared pretraining seeds, else Welch.
   Not testable (n < 2, zero spread) is said, with the reason.
4. Holm's correction over the report's family: every cell that reached step 3 and was testable.
5. Downstream cells whose runs kept their dev predictions also get the multi-bootstrap over
   pretraining seeds, fine-tuning seeds and dev examples. Rule: a side is called better only when
   the Holm-adjusted seed-level p < alpha AND, where the multi-bootstrap could be computed, its
   interval excludes 0 too. Requiring both keeps the chance of a false claim at or below alpha.
6. Otherwise "no difference detected", with the minimum detectable effect at 80% power for this
   n and spread, and, where the paper reports the same comparison, the seeds that would detect
   an effect of the paper's size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.config import lower_is_better
from harness.downstream import recorded_folder
from harness.integrity import file_problem
from harness.paper import load_paper_tables
from harness.references import per_token_refusal
from harness.report.tables import (
    NO_FLOOR,
    Floor,
    arm_configs,
    arm_floor,
    control_arms,
    is_missing,
    paper_columns,
    values_by_seed,
)
from harness.results import Results
from harness.stats import (
    ALPHA,
    Difference,
    MultiBootstrap,
    compare_seeds,
    holm,
    minimum_detectable_effect,
    multibootstrap,
    seeds_needed,
)
from harness.suite import ComparisonSpec as Comparison

TOKENIZER_KEYS = ("config.data.tokenizer.kind", "config.data.tokenizer.vocab_size", "config.data.tokenizer.file")

NO_DIFFERENCE = "no difference detected"
BOTH_AT_FLOOR = "both at floor: no evidence"

COLUMNS = [
    "comparison", "arm", "baseline", "metric", "verdict", "winner", "diff", "relative", "ci_low", "ci_high",
    "p_value", "p_holm", "test", "n_arm", "n_baseline", "n_pairs", "mde", "reason", "floor_kind", "arm_floor",
    "baseline_floor", "arm_at_floor", "baseline_at_floor", "mb_diff", "mb_low", "mb_high", "mb_p", "mb_note",
    "paper_direction", "paper_effect", "seeds_for_paper_effect", "agrees_with_paper", "unlearned",
]  # fmt: skip
# the held-out metric that says whether a pretrained arm has left the unigram stage, whatever the metric compared
CONTEXT_METRIC = "heldout_acc"


def tokenizer_of(configs: pd.DataFrame, arm: str) -> str:
    """'byte_bpe 8192' (kind and vocabulary; the file when one is given) from `arm_configs`, '' when unknown."""
    if arm not in configs.index:
        return ""
    row = configs.loc[arm]
    values = [row[k] for k in TOKENIZER_KEYS if k in row and not is_missing(row[k])]
    parts = [str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in values]
    return " ".join(parts)


@dataclass
class Cell:
    comparison: Comparison
    metric: str
    diff: Difference | None = None
    refused: str = ""
    floors: tuple[Floor, Floor] = (NO_FLOOR, NO_FLOOR)  # arm's, baseline's
    multiboot: MultiBootstrap | None = None
    multiboot_note: str = ""
    p_holm: float = math.nan

    @property
    def both_at_floor(self) -> bool:
        return self.floors[0].at_floor and self.floors[1].at_floor


def _paper_effect(comparison: Comparison, metric: str, baseline_mean: float) -> tuple[str, float]:
    """(the paper's direction on the column measuring this metric, its effect in our units)."""
    deltas, same = paper_columns(comparison, metric)
    if not deltas:
        return "", math.nan
    if not same:
        better = sum(d.arm_better is True for d in deltas)
        worse = sum(d.arm_better is False for d in deltas)
        return f"{comparison.arm} better on {better}, worse on {worse} of {len(deltas)} paper columns", math.nan
    d = same[0]
    word = {True: f"{comparison.arm} better", False: f"{comparison.baseline} better", None: "equal"}[d.arm_better]
    table = load_paper_tables()[comparison.paper.table][1]
    column = table.columns[d.column]
    if metric.endswith("ppl"):  # perplexities differ in level across scales: carry the relative change over
        effect = d.delta / d.baseline * baseline_mean if d.baseline and not math.isnan(baseline_mean) else math.nan
    else:
        effect = d.delta / column.scale
    return f"{word} ({d.label} {d.delta:+.2f})", effect


def _predictions(folder: Path, finetune_seeds: list[int]) -> tuple[list[np.ndarray] | None, np.ndarray | None, str]:
    """The kept dev predictions of each fine-tuning seed and the labels, each checked against what was
    written (harness/integrity.py); otherwise None and why."""
    names = [f"seed-{s}.npy" for s in finetune_seeds]
    if not all((folder / name).is_file() for name in [*names, "labels.npy"]):
        return None, None, "dev predictions not kept with the records"
    arrays = []
    for name in [*names, "labels.npy"]:
        problem = file_problem(folder, name, str(folder / name))
        if problem:
            return None, None, f"dev predictions damaged ({problem}): `harness run` evaluates the task again"
        try:
            arrays.append(np.load(folder / name))
        except (ValueError, OSError, EOFError) as err:
            return None, None, f"dev predictions unreadable ({folder / name}: {err})"
    return arrays[:-1], arrays[-1], ""


def _multiboot(results: Results, comparison: Comparison, metric: str) -> tuple[MultiBootstrap | None, str]:
    """The multi-bootstrap of a downstream cell from the runs' stored dev predictions."""
    from harness.metrics import METRICS
    from harness.squad import SPAN_TASKS

    task, _, name = metric.rpartition(".")
    if task in SPAN_TASKS:  # answer texts, not label arrays: no multi-bootstrap over them yet
        return None, "span-extraction predictions: seed-level test only"
    if not task or name not in METRICS:
        return None, ""
    runs = results.runs[results.runs["state"] == "done"] if len(results.runs) else results.runs
    if "directory" not in runs:
        return None, "no run directories"
    by_arm = {arm: runs[runs["arm"] == arm].set_index("seed")["directory"] for arm in (comparison.arm,
                                                                                     comparison.baseline)}  # fmt: skip
    shared = sorted(set(by_arm[comparison.arm].index) & set(by_arm[comparison.baseline].index))
    if len(shared) < 2:
        return None, "fewer than 2 shared seeds"
    ft = results.finetune
    ft = ft[(ft["task"] == task) & (ft["diverged"] == "")] if len(ft) else ft
    seeds_ft = sorted(set(ft["finetune_seed"].astype(int))) if len(ft) else []
    if not seeds_ft:
        return None, "no fine-tuning seeds recorded"
    sides: dict[str, list[list[np.ndarray]]] = {}
    labels = None
    for arm, dirs in by_arm.items():
        sides[arm] = []
        for seed in shared:
            folder = recorded_folder(Path(dirs.loc[seed]), task)  # the predictions behind the summary's scores
            predictions, kept_labels, why = _predictions(folder, seeds_ft)
            if predictions is None:
                return None, why
            labels = kept_labels if labels is None else labels
            sides[arm].append(predictions)
    if name == "accuracy":  # the common case, vectorised: the others go through scikit-learn

        def metric_fn(gold, predicted):
            return float(np.mean(gold == predicted))
    else:
        metric_fn = METRICS[name]
    return multibootstrap(sides[comparison.arm], sides[comparison.baseline], labels, metric_fn), ""


def compare(results: Results, comparisons: list[Comparison], metrics: list[str]) -> pd.DataFrame:
    """The comparison table: one row per comparison × metric with its verdict (module docstring)."""
    cells: list[Cell] = []
    configs = arm_configs(results)
    for comparison in comparisons:
        tokenizers = {arm: tokenizer_of(configs, arm) for arm in (comparison.arm, comparison.baseline)}
        for metric in metrics:
            cell = Cell(comparison, metric)
            cells.append(cell)
            cell.refused = per_token_refusal(metric, comparison.arm, tokenizers[comparison.arm],
                                             comparison.baseline, tokenizers[comparison.baseline])  # fmt: skip
            cell.diff = compare_seeds(
                values_by_seed(results, comparison.arm, metric), values_by_seed(results, comparison.baseline, metric)
            )
            cell.floors = arm_floor(results, comparison.arm, metric), arm_floor(results, comparison.baseline, metric)
            if not cell.refused and not cell.both_at_floor and cell.diff.testable:
                cell.multiboot, cell.multiboot_note = _multiboot(results, comparison, metric)
    family = [c for c in cells if not c.refused and not c.both_at_floor and c.diff.testable]
    for cell, adjusted in zip(family, holm([c.diff.p_value for c in family])):
        cell.p_holm = adjusted
    unlearned = unlearned_arms(results)
    rows = []
    for cell in cells:
        row = _row(results, cell)
        sides = (cell.comparison.arm, cell.comparison.baseline)
        row["unlearned"] = " and ".join(arm for arm in sides if arm in unlearned)
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def unlearned_arms(results: Results) -> set[str]:
    """Pretrained arms whose every seed's held-out accuracy is at (or under) the unigram floor: models still
    at the frequency stage, so a verdict on any metric compares one that has not learned context. Random-init
    controls are there by design and are left out."""
    controls = control_arms(results)
    return {arm for arm in results.arms() if arm not in controls and arm_floor(results, arm, CONTEXT_METRIC).at_floor}


def _row(results: Results, cell: Cell) -> dict:
    comparison, metric, diff = cell.comparison, cell.metric, cell.diff
    floor_arm, floor_base = cell.floors
    paper, paper_effect = _paper_effect(comparison, metric, diff.baseline_mean)
    winner = ""
    mde = math.nan
    if cell.refused:
        verdict, reason = "not comparable", cell.refused
    elif cell.both_at_floor:
        verdict, reason = BOTH_AT_FLOOR, f"both arms within noise of the {floor_arm.kind} floor"
    elif not diff.testable:
        verdict, reason = "not testable", diff.untestable
    else:
        reason = ""
        bootstrap_agrees = cell.multiboot is None or cell.multiboot.excludes_zero
        if cell.p_holm < ALPHA and bootstrap_agrees:
            arm_higher = diff.diff > 0
            winner = comparison.arm if arm_higher != lower_is_better(metric) else comparison.baseline
            verdict = f"{winner} better"
        else:
            verdict = NO_DIFFERENCE
            mde = minimum_detectable_effect(diff)
            if cell.p_holm < ALPHA:
                reason = "the seed-level test rejects but the multi-bootstrap interval includes 0"
    paired_none = verdict == NO_DIFFERENCE and diff.test == "paired t"
    seeds = seeds_needed(paper_effect, diff.spread) if paired_none else math.nan
    agrees = ""
    if winner and paper and not paper.startswith(comparison.arm + " better on"):
        agrees = "agree" if paper.startswith(f"{winner} better") else "disagree"
    mb = cell.multiboot
    return {
        "comparison": comparison.name, "arm": comparison.arm, "baseline": comparison.baseline, "metric": metric,
        "verdict": verdict, "winner": winner, "diff": diff.diff, "relative": diff.relative,
        "ci_low": diff.ci_low, "ci_high": diff.ci_high, "p_value": diff.p_value, "p_holm": cell.p_holm,
        "test": diff.test, "n_arm": diff.n_arm, "n_baseline": diff.n_baseline, "n_pairs": diff.n_pairs,
        "mde": mde, "reason": reason, "floor_kind": floor_arm.kind or floor_base.kind,
        "arm_floor": floor_arm.value, "baseline_floor": floor_base.value,
        "arm_at_floor": floor_arm.at_floor, "baseline_at_floor": floor_base.at_floor,
        "mb_diff": mb.diff if mb else math.nan, "mb_low": mb.ci_low if mb else math.nan,
        "mb_high": mb.ci_high if mb else math.nan, "mb_p": mb.p_value if mb else math.nan,
        "mb_note": cell.multiboot_note, "paper_direction": paper, "paper_effect": paper_effect,
        "seeds_for_paper_effect": seeds, "agrees_with_paper": agrees,
    }  # fmt: skip


def finding(table: pd.DataFrame) -> str:
    """One sentence: what the suite found, counted over its family of verdicts."""
    if not len(table):
        return "No comparison could be made: no finished runs."
    claimed = table[table["winner"] != ""]
    none = table[table["verdict"] == NO_DIFFERENCE]
    floor = table[table["verdict"] == BOTH_AT_FLOOR]
    other = len(table) - len(claimed) - len(none) - len(floor)
    parts = []
    if len(claimed):
        listed = "; ".join(
            f"{r['winner']} over {r['baseline'] if r['winner'] == r['arm'] else r['arm']} on {r['metric']}"
            for _, r in claimed.iterrows()
        )
        parts.append(f"{len(claimed)} of {len(table)} detect a difference ({listed})")
        unlearned = claimed[claimed["unlearned"].fillna("") != ""] if "unlearned" in claimed else claimed.iloc[:0]
        if len(unlearned):
            named = list(dict.fromkeys(unlearned["unlearned"]))
            arms, verb = ", ".join(named), "have" if len(named) > 1 or " and " in named[0] else "has"
            parts.append(f"{len(unlearned)} of those involve {arms}, which {verb} not learned context (held-out "
                         "accuracy at the unigram floor in every seed): they compare a model still at the frequency "
                         "stage, not the setting")  # fmt: skip
    else:
        parts.append(f"none of {len(table)} detects a difference")
    if len(none):
        parts.append(f"{len(none)} detect none (each with the smallest effect it could have detected)")
    if len(floor):
        parts.append(f"{len(floor)} carry no evidence because both arms sit at their floor")
    if other:
        parts.append(f"{other} could not be tested or compared")
    return "Of the comparisons × metrics below, " + "; ".join(parts) + "."
