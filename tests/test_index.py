"""`harness index`: every comparison of several reports in one table, by scale."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.index import BEGIN, END, split_scale
from harness.report.verdicts import COLUMNS


def write_report(
    directory: Path, diff: float, significant: bool, paper: str = "dynamic better (SST-2 +0.40)", unlearned: str = ""
) -> Path:
    """A comparisons.csv with the columns `harness report` writes."""
    directory.mkdir(parents=True)
    row = dict.fromkeys(COLUMNS, "")
    row.update({"comparison": "dynamic vs static", "arm": "dynamic", "baseline": "static", "metric": "sst2.accuracy",
                "diff": diff, "ci_low": diff - 0.01, "ci_high": diff + 0.01, "p_value": 0.01, "p_holm": 0.03,
                "test": "paired t", "n_pairs": 3, "paper_direction": paper,
                "verdict": "dynamic better" if significant else "no difference detected",
                "winner": "dynamic" if significant else "", "mde": 0.025,
                "agrees_with_paper": "agree" if significant else "", "unlearned": unlearned})  # fmt: skip
    pd.DataFrame([row], columns=COLUMNS).to_csv(directory / "comparisons.csv", index=False)
    return directory


def test_scales_become_columns_and_the_prose_around_the_block_stays(tmp_path: Path):
    tiny = write_report(tmp_path / "masking.tiny", 0.012, significant=True)
    small = write_report(tmp_path / "masking.small", -0.003, significant=False)
    readme = tmp_path / "README.md"
    readme.write_text(f"# Results\n\nIntro.\n\n{BEGIN}\nold table\n{END}\n\nWhat reproduced: ...\n")
    assert main(["index", str(tiny), str(small), "--out", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# Results\n\nIntro.\n\n") and text.endswith(f"{END}\n\nWhat reproduced: ...\n")
    assert "old table" not in text
    assert "| suite | comparison | metric | paper | ours, tiny | ours, small |" in text
    row = next(line for line in text.splitlines() if line.startswith("| masking |"))
    assert "dynamic better (SST-2 +0.40)" in row
    assert "+0.0120 [+0.0020, +0.0220], p_Holm 0.030: **dynamic better**; agrees with the paper" in row
    assert "-0.0030 [-0.0130, +0.0070], p_Holm 0.030: no difference detected (MDE ±0.0250)" in row


def test_a_missing_scale_reads_not_run_and_bad_inputs_are_errors(tmp_path: Path, capsys):
    tiny = write_report(tmp_path / "masking.tiny", 0.012, significant=True)
    other = write_report(tmp_path / "batch.small", 0.5, significant=False, paper="")
    out = tmp_path / "index.md"
    assert main(["index", str(tiny), str(other), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert next(line for line in lines if line.startswith("| masking |")).endswith("| not run |")
    assert "| batch | dynamic vs static | sst2.accuracy | – | not run |" in out.read_text()
    assert main(["index", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "no comparisons.csv" in capsys.readouterr().err
    unmarked = tmp_path / "plain.md"
    unmarked.write_text("# no markers\n")
    assert main(["index", str(tiny), "--out", str(unmarked)]) == 2
    assert unmarked.read_text() == "# no markers\n"


@pytest.mark.parametrize("name,expected", [("roberta-table1-masking.tiny", ("roberta-table1-masking", "tiny")),
                                           ("quickstart", ("quickstart", "")), ("v1.2", ("v1.2", ""))])  # fmt: skip
def test_split_scale(name, expected):
    assert split_scale(name) == expected


def test_a_side_that_has_not_learned_context_is_named_beside_its_verdict(tmp_path: Path):
    flagged = write_report(tmp_path / "masking.cpu", 0.012, significant=True, unlearned="static")
    plain = write_report(tmp_path / "other.cpu", 0.012, significant=True)
    readme = tmp_path / "README.md"
    assert main(["index", str(flagged), str(plain), "--out", str(readme)]) == 0
    rows = {line.split(" | ")[0]: line for line in readme.read_text().splitlines() if line.startswith("| ")}
    assert (
        "**dynamic better**; agrees with the paper; ⚑ static has not learned context (held-out accuracy)"
        in (rows["| masking"])
    )
    assert "learned context" not in rows["| other"]
    # a comparisons.csv written before the column existed still reads
    frame = pd.read_csv(plain / "comparisons.csv").drop(columns="unlearned")
    frame.to_csv(plain / "comparisons.csv", index=False)
    assert main(["index", str(plain), "--out", str(readme)]) == 0
