"""Every comparison of several reports in one table: the paper's direction beside ours at each
scale, with intervals. It reads only the reports' comparisons.csv, so it shows exactly what the
reports say, and it rewrites a marked block of a Markdown file so the prose around it stays."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.report import fmt_num, fmt_p, is_missing
from harness.report.content import unlearned_flag

BEGIN = "<!-- comparisons:begin (written by `harness index`; edit around it) -->"
END = "<!-- comparisons:end -->"
SCALES = ("tiny", "cpu", "small", "base")


class IndexFileError(ValueError):
    """A report directory without a comparisons table, or a file without the markers."""


def split_scale(report_name: str) -> tuple[str, str]:
    """'roberta-table1-masking.tiny' -> ('roberta-table1-masking', 'tiny'); unscaled: (name, '')."""
    suite, _, scale = report_name.rpartition(".")
    return (suite, scale) if suite and scale in SCALES else (report_name, "")


def load_comparisons(report_dirs: list[Path]) -> pd.DataFrame:
    frames = []
    for directory in report_dirs:
        path = Path(directory) / "comparisons.csv"
        if not path.is_file():
            raise IndexFileError(f"{directory}: no comparisons.csv (write the report first: harness report)")
        frame = _read_comparisons(path)
        suite, scale = split_scale(Path(directory).name)
        frames.append(frame.assign(suite=suite, scale=scale))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# the columns of a report's comparisons.csv this table is made of
COLUMNS = ("comparison", "metric", "diff", "ci_low", "ci_high", "p_holm", "verdict", "winner", "mde", "reason",
           "agrees_with_paper", "paper_direction")  # fmt: skip


def _read_comparisons(path: Path) -> pd.DataFrame:
    """A report's comparisons.csv, whatever it holds: unreadable content or missing columns are an
    IndexFileError naming the file."""
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (ValueError, UnicodeDecodeError, OSError) as err:  # pandas' parser and empty-data errors are ValueErrors
        raise IndexFileError(f"{path}: not a readable comparisons table ({type(err).__name__}: {err})") from None
    lacking = [c for c in COLUMNS if c not in frame.columns]
    if lacking:
        raise IndexFileError(
            f"{path}: lacks the column(s) {', '.join(lacking)}: not a comparisons table this version reads"
        )
    for column in ("diff", "ci_low", "ci_high", "p_holm", "mde"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def _ours(row: pd.Series) -> str:
    """The report's verdict in one cell: difference, interval, Holm-adjusted p, verdict, and the
    minimum detectable effect where nothing was detected."""
    if is_missing(row["diff"]):
        return "not run"
    low, high = row["ci_low"], row["ci_high"]
    interval = "" if is_missing(low) else f" [{fmt_num(low, True)}, {fmt_num(high, True)}]"
    p_value = "" if is_missing(row["p_holm"]) else f", p_Holm {fmt_p(float(row['p_holm']))}"
    verdict = str(row["verdict"])
    if not is_missing(row["winner"]) and row["winner"]:
        verdict = f"**{verdict}**"
    elif verdict == "no difference detected" and not is_missing(row["mde"]):
        verdict += f" (MDE ±{fmt_num(row['mde'])})"
    elif verdict in ("not testable", "not comparable") and not is_missing(row["reason"]):
        verdict += f" ({row['reason']})"
    agreement = "" if is_missing(row["agrees_with_paper"]) else f"; {row['agrees_with_paper']}s with the paper"
    # where a verdict is read as evidence, say when a side is a model still at the frequency stage
    flag = unlearned_flag(row) if row["verdict"] not in ("both at floor: no evidence", "not testable") else ""
    return f"{fmt_num(row['diff'], True)}{interval}{p_value}: {verdict}{agreement}" + (f"; {flag}" if flag else "")


def index_table(comparisons: pd.DataFrame) -> str:
    """Markdown: one row per suite x comparison x metric, one 'ours' column per scale present."""
    if comparisons.empty:
        return "_No comparisons._\n"
    scales = [s for s in (*SCALES, "") if s in set(comparisons["scale"])]
    header = ["suite", "comparison", "metric", "paper", *[f"ours, {s}" if s else "ours" for s in scales]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keys = ["suite", "comparison", "metric"]
    order = comparisons.drop_duplicates(keys)[keys]
    for _, key in order.iterrows():
        rows = comparisons[(comparisons[keys] == key.values).all(axis=1)]
        paper = next((p for p in rows["paper_direction"] if not is_missing(p)), "–")
        cells = []
        for scale in scales:
            found = rows[rows["scale"] == scale]
            cells.append(_ours(found.iloc[0]) if len(found) else "not run")
        lines.append("| " + " | ".join([key["suite"], key["comparison"], key["metric"], paper, *cells]) + " |")
    return "\n".join(lines) + "\n"


def write_index(report_dirs: list[Path], markdown_file: Path) -> str:
    """Replace the block between the markers in `markdown_file` (a new file is just the block)."""
    block = f"{BEGIN}\n{index_table(load_comparisons(report_dirs))}{END}"
    markdown_file = Path(markdown_file)
    if not markdown_file.exists():
        text = block + "\n"
    else:
        old = markdown_file.read_text(encoding="utf-8")
        if BEGIN not in old or END not in old:
            raise IndexFileError(f"{markdown_file}: no '{BEGIN}' ... '{END}' block to replace")
        before, rest = old.split(BEGIN, 1)
        text = before + block + rest.split(END, 1)[1]
    markdown_file.write_text(text, encoding="utf-8")
    return text
