"""Published reference numbers (the RoBERTa ablation tables) as data, and what they say about a comparison.

The tables live in YAML files under `ablations/paper/`; a suite's comparison can name a table
and the two rows that correspond to its arms, and the report puts the paper's numbers and the
paper's direction beside ours.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import Field, ValidationError, model_validator

from harness.config import ConfigError, Schema

PAPER_DIR = Path(__file__).resolve().parents[1] / "ablations" / "paper"


class PaperColumn(Schema):
    label: str = Field(description="Column heading as the paper prints it.")
    measures: str = Field(description="What the number is, with its unit.")
    ours: str | None = Field(None, description="The harness metric measuring the same thing, if any.")
    scale: float = Field(1.0, description="Factor from our metric's unit to the paper's (100 for percentages).")
    higher_is_better: bool = True


class PaperRow(Schema):
    label: str
    values: dict[str, float]


class PaperTable(Schema):
    title: str
    caption: str
    columns: dict[str, PaperColumn]
    rows: dict[str, PaperRow]

    @model_validator(mode="after")
    def _values_name_columns(self) -> PaperTable:
        for row_id, row in self.rows.items():
            unknown = set(row.values) - set(self.columns)
            if unknown:
                raise ValueError(f"row {row_id} has values for unknown column(s) {sorted(unknown)}")
        return self


class PaperFile(Schema):
    paper: str
    tables: dict[str, PaperTable]


@dataclass(frozen=True)
class PaperDelta:
    """One column of a paper table: the arm row minus the baseline row."""

    column: str
    label: str
    arm: float
    baseline: float
    higher_is_better: bool

    @property
    def delta(self) -> float:
        return self.arm - self.baseline

    @property
    def arm_better(self) -> bool | None:
        """None when the paper's two numbers are equal."""
        if self.delta == 0:
            return None
        return (self.delta > 0) == self.higher_is_better


@functools.cache
def load_paper_tables(directory: Path = PAPER_DIR) -> dict[str, tuple[str, PaperTable]]:
    """Table id -> (paper, table) for every YAML file in the directory."""
    tables: dict[str, tuple[str, PaperTable]] = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        try:
            parsed = PaperFile.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
        except (yaml.YAMLError, ValidationError) as err:
            raise ConfigError(str(path), "", f"not a valid paper-table file: {err}") from None
        for table_id, table in parsed.tables.items():
            if table_id in tables:
                raise ConfigError(str(path), f"tables.{table_id}", "table id defined twice")
            tables[table_id] = (parsed.paper, table)
    return tables


def paper_deltas(table: PaperTable, arm_row: str, baseline_row: str) -> list[PaperDelta]:
    """Every column where the paper reports both rows."""
    arm, base = table.rows[arm_row].values, table.rows[baseline_row].values
    return [
        PaperDelta(column, spec.label, arm[column], base[column], spec.higher_is_better)
        for column, spec in table.columns.items()
        if column in arm and column in base
    ]
