"""What a report says, in reading order: the verdict matrix and one sentence of finding first, then
how to read the verdicts, then the details (every number behind a verdict, summaries, figures, the
paper's tables, runs, problems)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

import harness
from harness.effective import Ineffective
from harness.paper import load_paper_tables
from harness.report.document import Document
from harness.report.tables import (
    better_side,
    config_differences,
    fmt_num,
    fmt_p,
    ineffective_arms,
    is_missing,
    paper_columns,
    paper_side_by_side,
)
from harness.report.verdicts import BOTH_AT_FLOOR, NO_DIFFERENCE, finding
from harness.results import Results
from harness.stats import ALPHA, CI_LEVEL, MULTIBOOTSTRAP_RESAMPLES, POWER
from harness.suite import ComparisonSpec as Comparison


def _interval(low: float, high: float) -> str:
    return "–" if is_missing(low) else f"[{fmt_num(low, True)}, {fmt_num(high, True)}]"


def floor_flags(row: pd.Series) -> str:
    """'baseline at majority baseline' and the like: which side sits on its floor."""
    label = {"majority class": "at majority baseline", "unigram": "has not learned context"}.get(row["floor_kind"])
    if not label:
        return ""
    sides = [name for name, flag in ((row["arm"], row["arm_at_floor"]), (row["baseline"], row["baseline_at_floor"]))
             if str(flag) == "True"]  # fmt: skip
    return f"⚑ {' and '.join(sides)} {label}" if sides else ""


def unlearned_flag(row: pd.Series) -> str:
    """'⚑ bsz-8k has not learned context (held-out accuracy)': a pretrained side still at the unigram stage,
    on whichever metric the cell compares; '' when neither side is."""
    arms = row.get("unlearned")
    if not isinstance(arms, str) or not arms:
        return ""
    return f"⚑ {arms} {'have' if ' and ' in arms else 'has'} not learned context (held-out accuracy)"


def matrix_cell(row: pd.Series) -> tuple[str, str]:
    """(text, HTML class) of one verdict-matrix cell: the verdict first, then the difference with
    its interval, floors, and the paper's direction."""
    verdict = row["verdict"]
    if verdict == "not comparable":
        return f"not comparable: {row['reason']}", "untested"
    if row["winner"]:
        parts = [f"**{verdict}** (p_Holm {fmt_p(row['p_holm'])})"]
        css = "disagree" if row["agrees_with_paper"] == "disagree" else "better"
    elif verdict == NO_DIFFERENCE:
        parts, css = [f"{verdict} (MDE ±{fmt_num(row['mde'])})"], "none"
    elif verdict == BOTH_AT_FLOOR:
        parts, css = [verdict], "floor"
    else:
        parts, css = [f"{verdict}: {row['reason']}"], "untested"
    if not is_missing(row["diff"]):
        parts.append(f"{fmt_num(row['diff'], True)} {_interval(row['ci_low'], row['ci_high'])}")
    flags = floor_flags(row)
    if flags and verdict != BOTH_AT_FLOOR:
        parts.append(flags)
    unlearned = unlearned_flag(row)
    if unlearned and not (flags and "has not learned context" in flags):
        parts.append(unlearned)
    if row["paper_direction"] and not is_missing(row["paper_direction"]):
        agreement = f" → {row['agrees_with_paper']}" if row["agrees_with_paper"] else ""
        parts.append(f"paper: {row['paper_direction']}{agreement}")
    return " · ".join(parts), css


INEFFECTIVE_MARK = "⚠ identical training"


def ineffective_of(comparison: Comparison, warnings: list[Ineffective]) -> list[Ineffective]:
    """The warnings about this comparison: those naming both of its arms."""
    return [w for w in warnings if w.names(comparison.arm, comparison.baseline)]


def ineffective_block(doc: Document, comparisons: list[Comparison], warnings: list[Ineffective]) -> None:
    """Right under the verdicts: each comparison whose arms train alike, with why, then arms whose
    setting does nothing on its own (static masking that repeats no mask)."""
    pairs = [(c, w) for c in comparisons for w in ineffective_of(c, warnings)]
    lines = [f"⚠ **{c.name}**: {w.message()}." for c, w in pairs]
    compared = {w for _, w in pairs}
    lines += [f"⚠ {w.message()}." for w in warnings if w not in compared]
    doc.bullets(lines)


def verdict_matrix(doc: Document, table: pd.DataFrame, metrics: list[str], marked: set[str] = frozenset()) -> None:
    names = list(dict.fromkeys(table["comparison"]))
    rows, classes = [], []
    for name in names:
        cells = [f"{name} {INEFFECTIVE_MARK}" if name in marked else name], [""]
        for metric in metrics:
            found = table[(table["comparison"] == name) & (table["metric"] == metric)]
            text, css = matrix_cell(found.iloc[0]) if len(found) else ("–", "")
            cells[0].append(text)
            cells[1].append(css)
        rows.append(cells[0])
        classes.append(cells[1])
    doc.table(["comparison (arm vs baseline)", *[f"{m} ({better_side(m)} is better)" for m in metrics]], rows, classes)


def reading_guide(table: pd.DataFrame) -> str:
    family = table[~table["p_holm"].isna()] if len(table) else table
    return (
        f"Each cell: arm − baseline over pretraining seeds with its {CI_LEVEL:.0%} t-interval (paired by seed; "
        f"Welch when runs do not pair), then the verdict. A side is called better only when the paired t-test, "
        f"Holm-adjusted over this report's family of {len(family)} test(s) (every comparison × headline metric "
        f"that could be tested), gives p < {ALPHA}, and, for downstream metrics whose dev predictions were kept, "
        f"the multi-bootstrap over seeds and dev examples agrees (its interval excludes 0). The interval shown is "
        f'not adjusted, so it can exclude 0 where the adjusted test does not reject. Beside "{NO_DIFFERENCE}" '
        f"is the minimum detectable effect (MDE): the smallest true difference this many seeds, with the spread "
        f"seen, detect with {POWER:.0%} power at α = {ALPHA}. ⚑ marks an arm whose every seed is within two "
        "standard errors of its floor: the majority-class baseline of the dev set, or, held out, the context-free "
        'unigram floor (token frequencies plus the 80-10-10 rule, scored on the same positions); "has not '
        "learned context (held-out accuracy)\" marks, in every column, a pretrained arm whose every seed's "
        "held-out accuracy is at that floor. "
        f'"{BOTH_AT_FLOOR}" is not a test. Per-token held-out metrics are not compared across tokenizers.'
    )


def _seeds_text(row: pd.Series) -> str:
    return f"{row['n_pairs']} paired" if row["n_pairs"] else f"{row['n_arm']} vs {row['n_baseline']}"


def _multiboot_text(row: pd.Series) -> str:
    if not is_missing(row["mb_low"]):
        return f"{fmt_num(row['mb_diff'], True)} {_interval(row['mb_low'], row['mb_high'])}"
    return row["mb_note"] if isinstance(row["mb_note"], str) and row["mb_note"] else "–"


def _seeds_for_paper(row: pd.Series) -> str:
    seeds = row["seeds_for_paper_effect"]
    if is_missing(seeds):
        return "–"
    if math.isinf(seeds):
        return "> 10,000"
    return f"{seeds:,.0f}"


def detail_table(doc: Document, table: pd.DataFrame) -> None:
    doc.table(
        ["comparison", "metric", "difference", f"{CI_LEVEL:.0%} CI", "p", "p (Holm)", "seeds", "verdict", "MDE",
         "multi-bootstrap", "paper", "seeds for the paper's effect"],
        [
            [r["comparison"], r["metric"], fmt_num(r["diff"], True), _interval(r["ci_low"], r["ci_high"]),
             fmt_p(r["p_value"]), fmt_p(r["p_holm"]), _seeds_text(r), r["verdict"], fmt_num(r["mde"]),
             _multiboot_text(r), r["paper_direction"] or "–", _seeds_for_paper(r)]
            for _, r in table.iterrows()
        ],
    )  # fmt: skip


def _paper_sentence(comparison: Comparison) -> str:
    if comparison.paper is None:
        return ""
    ref = comparison.paper
    table = load_paper_tables()[ref.table][1]
    arm, base = table.rows[ref.arm], table.rows[ref.baseline]
    deltas, _ = paper_columns(comparison, "")
    listed = ", ".join(f"{d.label} {d.delta:+.2f}" for d in deltas)
    return f"**{comparison.name}**: {table.title}, {arm.label} − {base.label}: {listed}."


def compose(
    results: Results,
    summary: pd.DataFrame,
    table: pd.DataFrame,
    comparisons: list[Comparison],
    figures: dict[str, Path | None],
    headline: list[str],
    problems: list[str],
    notes: list[str],
) -> Document:
    doc = Document()
    doc.heading(1, f"Report: {', '.join(s.name for s in results.sources)}")
    ineffective = ineffective_arms(results)
    marked = {c.name for c in comparisons if ineffective_of(c, ineffective)}
    if len(table):
        verdict_matrix(doc, table, headline, marked)
    ineffective_block(doc, comparisons, ineffective)
    doc.paragraph(f"**Finding.** {finding(table)}")
    for source in results.sources:
        if source.spec and source.spec.description:
            doc.paragraph(source.spec.description.strip())

    doc.heading(2, "How to read the verdicts")
    doc.paragraph(reading_guide(table))
    runs = results.runs
    done = int((runs["state"] == "done").sum()) if len(runs) else 0
    doc.paragraph(
        f"Generated by harness {harness.__version__} from {len(runs)} run(s) ({done} finished{_latest(runs)}) "
        f"under {', '.join(f'`{s.directory}`' for s in results.sources)}. The multi-bootstrap "
        f"(Sellam et al., 2022) resamples pretraining seeds, fine-tuning seeds and dev examples jointly "
        f"({MULTIBOOTSTRAP_RESAMPLES:,} seeded resamples). A percentile bootstrap over seeds alone is not used: "
        "with n seeds it cannot reach past the smallest and largest per-seed difference, so at 3 seeds its 95% "
        "interval is their range."
    )
    if notes:
        doc.bullets([f"note: {n}" for n in notes])

    doc.heading(2, "Every number behind the verdicts")
    if len(table):
        detail_table(doc, table)
    paper_lines = [_paper_sentence(c) for c in comparisons if c.paper is not None]
    if paper_lines:
        doc.paragraph("What the paper found for the same settings:")
        doc.bullets(paper_lines)
    differences = [[name, f"{changed} ({INEFFECTIVE_MARK}: see the top)" if name in marked else changed]
                   for name, changed in config_differences(results, comparisons)]  # fmt: skip
    if differences:
        doc.paragraph("What each comparison changes (baseline → arm):")
        doc.table(["comparison", "config differences"], differences)
    if figures["differences"]:
        doc.figure(
            figures["differences"],
            f"Each comparison's difference (arm − baseline) with its {CI_LEVEL:.0%} t-interval. Black: a side "
            "detected better; white: no difference detected; grey square: both arms at floor or not testable.",
        )

    doc.heading(2, "Summary per arm")
    doc.table(
        ["arm", "metric", "n / runs", "mean", "std", "median", f"{CI_LEVEL:.0%} CI", "floor"],
        [
            [r["arm"], r["metric"], f"{r['n']}/{r['runs']}", fmt_num(r["mean"]), fmt_num(r["std"]),
             fmt_num(r["median"]), _interval(r["ci_low"], r["ci_high"]) if r["n"] > 1 else "–", _floor_text(r)]
            for _, r in summary.iterrows()
        ],
    )  # fmt: skip
    if figures["metrics"]:
        doc.figure(
            figures["metrics"],
            f"Each metric per arm: seeds as grey points, mean and {CI_LEVEL:.0%} t-interval in black; dashed: the "
            "floor (majority-class baseline, or the unigram floor held out).",
        )
    if figures["curves"]:
        doc.figure(
            figures["curves"],
            "Training loss (running mean of 5 logs) and held-out perplexity against tokens seen: mean over seeds, "
            "band from the lowest to the highest seed; dotted: the context-free unigram floor of the held-out "
            "positions.",
        )
    if figures["batch"]:
        doc.figure(figures["batch"], f"Metrics against batch size: mean with {CI_LEVEL:.0%} t-interval.")
    _paper_tables(doc, results, comparisons, summary)
    _runs(doc, results)
    if problems:
        doc.heading(2, "Problems")
        doc.bullets([f"problem: {p}" for p in problems])
    doc.paragraph(
        "Files: `results.csv` / `results.parquet` (one row per run × metric, flattened config beside it), "
        "`summary.csv`, `comparisons.csv` (every column of the verdicts), `runs.csv`, `figures/` (PNG and SVG)."
    )
    return doc


def _latest(runs: pd.DataFrame) -> str:
    """', records up to 2026-11-23': the date of the newest status written, not today's, so the same
    records always give the same report (rebuilding a committed report changes no byte of it)."""
    times = [t for t in runs["time"] if isinstance(t, str) and t] if "time" in runs else []
    return f", records up to {max(times)[:10]}" if times else ""


def _floor_text(row: pd.Series) -> str:
    if is_missing(row["floor"]) or not row["floor_kind"]:
        return "–"
    flag = " ⚑ " + ("at it" if row["floor_kind"] == "majority class" else "has not learned context")
    return f"{row['floor_kind']} {fmt_num(row['floor'])}{flag if row['at_floor'] else ''}"


def _paper_tables(doc: Document, results: Results, comparisons: list[Comparison], summary: pd.DataFrame) -> None:
    side_by_side = paper_side_by_side(results, comparisons, summary)
    if not side_by_side:
        return
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


def _wall_time(runs: pd.DataFrame) -> str:
    """Mean wall time of the runs trained in one sitting; how many were left out for resuming."""
    resumed = pd.to_numeric(runs.get("resumed_from_step", pd.Series(0, index=runs.index)), errors="coerce")
    resumed = resumed.fillna(0) > 0
    whole = pd.to_numeric(runs.loc[~resumed, "wall_s"], errors="coerce").dropna()
    text = fmt_num(whole.mean()) if len(whole) else "–"
    return f"{text} ({len(whole)} of {len(runs)}; {int(resumed.sum())} resumed)" if resumed.any() else text


def _runs(doc: Document, results: Results) -> None:
    runs = results.runs
    doc.heading(2, "Runs")
    if len(runs):
        grid = runs.pivot_table(index="arm", columns="seed", values="state", aggfunc="first", sort=False)
        doc.table(
            ["arm", *[f"seed {s}" for s in grid.columns]],
            [[arm, *[str(v) if isinstance(v, str) else "missing" for v in row]] for arm, row in grid.iterrows()],
        )
        finished = runs[runs["state"] == "done"]
        if len(finished):
            means = finished.groupby("arm", sort=False)[["tokens", "steps", "epochs"]].mean()
            doc.paragraph(
                "Budget each arm actually consumed (mean over its finished runs; wall time over the runs trained "
                "in one sitting: a resumed run records only its last sitting's):"
            )
            doc.table(
                ["arm", "tokens", "steps", "passes over the data", "wall time (s)"],
                [[arm, f"{r['tokens']:,.0f}", f"{r['steps']:,.0f}", fmt_num(r["epochs"]),
                  _wall_time(finished[finished["arm"] == arm])] for arm, r in means.iterrows()],
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
