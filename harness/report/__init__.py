"""Comparison reports: calibrated verdicts first, then the numbers, figures and the paper beside ours.

Modules, one concern each: `harness.stats` (the statistics), `tables` (summaries, paper tables,
formatting), `verdicts` (one verdict per comparison × metric, floors, Holm), `figures`, `document`
(Markdown and self-contained HTML) and `content` (what the report says, in order). Everything here
reads the tables of `harness.results`; nothing trains or evaluates.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.report.content import compose
from harness.report.figures import (
    FIGURE_FORMATS,
    FIGURE_STEMS,
    figure_batch,
    figure_curves,
    figure_differences,
    figure_metrics,
)
from harness.report.tables import comparisons_for, declared_metrics, fmt_num, fmt_p, is_missing, metric_order, summarize
from harness.report.verdicts import compare
from harness.results import Results, SuiteSource

__all__ = ["ReportOutput", "build_report", "committed_repo", "default_report_dir", "fmt_num", "fmt_p", "is_missing"]


@dataclass
class ReportOutput:
    directory: Path
    problems: list[str]


REPORTS = "reports"


def default_report_dir(sources: list[SuiteSource]) -> Path:
    """Where a report goes unless told: inside its results root, `<root>/reports/<suite>/` (several
    suites: `<a>-vs-<b>`), so two results roots never share a report directory. Suites from different
    roots go under the first root, their name suffixed with a hash of the suite directories, so another
    combination of the same names gets a directory of its own.

    The one exception is a repository's committed results: when every suite directory is
    `<repo>/results/<suite>/` with its manifest (`suite.json`) tracked by git and `<repo>/reports/`
    beside it, the report goes to `<repo>/reports/<suite>/`, where the committed reports live. Results
    that are not committed (the quickstart's, a search's, anything under another `--out`) never write
    there."""
    roots = [s.directory.parent for s in sources]
    name = "-vs-".join(s.name for s in sources)
    committed = {committed_repo(s.directory) for s in sources}
    if len(committed) == 1 and None not in committed:
        return roots[0].parent / REPORTS / name
    if len({r.resolve() for r in roots}) > 1:
        joined = "\n".join(str(s.directory.resolve()) for s in sources)
        name += "-" + hashlib.sha256(joined.encode()).hexdigest()[:8]
    return roots[0] / REPORTS / name


def committed_repo(suite_dir: Path) -> Path | None:
    """The repository whose committed results `suite_dir` is (`<repo>/results/<suite>/`, its suite.json
    tracked by git, `<repo>/reports/` present), else None. Without git, nothing counts as committed."""
    suite_dir = Path(suite_dir).resolve()
    repo = suite_dir.parent.parent
    if suite_dir.parent.name != "results" or not (repo / REPORTS).is_dir():
        return None
    manifest = suite_dir.relative_to(repo) / "suite.json"
    try:
        found = subprocess.run(
            ["git", "ls-files", "--error-unmatch", "--", manifest.as_posix()],
            cwd=repo, capture_output=True, timeout=30, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return repo if found.returncode == 0 else None


def _remove_stale_figures(figures_dir: Path, written: dict[str, Path | None]) -> None:
    """A figure an earlier report of this directory drew and this one does not (e.g. the batch-size
    figure of a suite that no longer sweeps the batch) would sit beside the report unreferenced."""
    kept = {path.stem for path in written.values() if path is not None}
    for stem in FIGURE_STEMS:
        if stem not in kept:
            for fmt in FIGURE_FORMATS:
                (figures_dir / f"{stem}.{fmt}").unlink(missing_ok=True)


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
    table = compare(results, comparisons, headline)

    results.metrics.to_csv(out_dir / "results.csv", index=False)
    _to_parquet(results.metrics, out_dir / "results.parquet")
    summary.to_csv(out_dir / "summary.csv", index=False, float_format="%.6g")
    table.to_csv(out_dir / "comparisons.csv", index=False, float_format="%.6g")
    run_columns = ["suite", "arm", "seed", "run_id", "state", "error", "tokens", "steps", "epochs", "wall_s",
                   "resumed_from_step"]  # fmt: skip
    run_columns = [c for c in run_columns if c in results.runs]
    results.runs[run_columns].to_csv(out_dir / "runs.csv", index=False)

    figures = {
        "curves": figure_curves(results, figures_dir),
        "metrics": figure_metrics(results, summary, headline, figures_dir),
        "differences": figure_differences(table, figures_dir),
        "batch": figure_batch(results, summary, headline, figures_dir),
    }
    _remove_stale_figures(figures_dir, figures)
    doc = compose(results, summary, table, comparisons, figures, headline, problems, results.notes)
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
