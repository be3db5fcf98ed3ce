"""A downstream task declared as data: where its examples come from, how its files are read, which
fields are its texts and label, its labels (or a regression range), its metrics and caps.

The built-in tasks are written this way too (harness/tasks.yaml); a suite declares more under
`eval.task_defs` or in a task file it names (`tasks_from`). Reading fields (format, columns,
encoding, ...) may be set on the task, for all its sources, or on one source, for that one.
Everything that can be checked without reading the data is checked here, when the config loads;
the data itself is checked by harness/tasks.py before any training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from harness.metrics import METRICS
from harness.schema import Schema, known_encoding

FORMATS = ("tsv", "csv", "jsonl", "json")
SUFFIX_FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "json"}
DELIMITED = ("tsv", "csv")
TASK_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"  # no '.': metrics are named <task>.<metric>


class Fields(Schema):
    """Which fields of a row a task takes."""

    text_a: str | None = Field(None, description="Column or field holding the (first) text.")
    text_b: str | None = Field(
        None, description="Column or field holding the second text of a pair task (unset: one text per example)."
    )
    label: str | None = Field(
        None, description="Column or field holding the label: a name of `labels`, a class id (label_ids), or a score."
    )
    label_ids: bool | None = Field(
        None,
        description="The label field holds class ids 0..n-1, numbered in the order of `labels`, instead of the "
        "names (unset: names).",
    )
    where: dict[str, str] | None = Field(
        None,
        description="Keep only the rows whose fields hold these values, compared as text, e.g. "
        "{SemEval_set: TRAIN} (SICK's one file holds every split).",
    )


class Reading(Fields):
    """How a file is read, and which of its fields a task takes."""

    format: Literal["tsv", "csv", "jsonl", "json"] | None = Field(
        None,
        description="tsv / csv: delimited text; jsonl: one JSON object per line; json: a list of objects, or an "
        "object of them keyed by id. Unset: from the file's suffix (.tsv, .csv, .jsonl, .json).",
    )
    header: bool | None = Field(
        None, description="tsv / csv: the first line names the columns (unset: yes, unless `columns` is given)."
    )
    columns: list[str] | None = Field(
        None, min_length=1, description="tsv / csv: the column names of a file without a header line, in order."
    )
    delimiter: str | None = Field(
        None, description="tsv / csv: the one-character field separator (unset: a tab for tsv, a comma for csv)."
    )
    quoting: Literal["none", "csv"] | None = Field(
        None,
        description="tsv / csv: none = quote characters are plain text, each line is one row (GLUE's TSVs; unset "
        'for tsv); csv = fields may be quoted with ", and then hold delimiters and line breaks (unset for csv).',
    )
    maxsplit: int | None = Field(
        None,
        ge=1,
        description="tsv / csv with quoting none: split each line at its first `maxsplit` delimiters only; the last "
        "column keeps the rest of the line (TREC's '<label> <question>' lines: delimiter ' ', maxsplit 1).",
    )
    encoding: str | None = Field(
        None,
        description="The file's text encoding, any Python codec name (unset: utf-8; latin-1 reads any byte). A "
        "leading byte-order mark is dropped.",
    )

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str | None) -> str | None:
        return known_encoding(value)

    @field_validator("delimiter")
    @classmethod
    def _one_character(cls, value: str | None) -> str | None:
        if value is not None and len(value) != 1:
            raise ValueError(f"a delimiter is one character, got {value!r}")
        return value


class FileSource(Reading):
    """One split of a task: a file, or (dev only) a share of the training rows."""

    file: str | None = Field(None, description="Path of the file (relative to the working directory).")
    from_train: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="dev only, instead of a file: this share of the training rows, drawn with a fixed seed and "
        "left out of training (the same rows for every run); for data that ships without a dev split.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> FileSource:
        if (self.file is None) == (self.from_train is None):
            raise ValueError("give exactly one of file or from_train")
        if self.file is not None and not Path(self.file).is_file():
            raise ValueError(f"{self.file} not found")
        if self.from_train is not None:
            reading = [n for n in Reading.model_fields if getattr(self, n) is not None]
            if reading:
                raise ValueError(f"from_train takes the training rows as read: drop {', '.join(reading)}")
        return self


class GlueLayout(Reading):
    """A task's folder in a GLUE download, read when `eval.glue_dir` is set."""

    folder: str = Field(description="The task's folder under eval.glue_dir, e.g. SST-2.")
    train: str = Field("train", description="File stem of the training split (<folder>/<train>.tsv).")
    dev: str = Field("dev", description="File stem of the scored split; eval.dev_splits replaces it.")


class HubSource(Fields):
    """A dataset on the Hugging Face hub, read when no files are given."""

    name: str = Field(description="Hub dataset name, e.g. nyu-mll/glue.")
    config: str | None = Field(None, description="Dataset config name, e.g. sst2.")
    train: str = Field("train", description="Split to train on.")
    dev: str = Field("validation", description="Split to score; eval.dev_splits replaces it.")


class Regression(Schema):
    min: float | None = Field(None, description="Lowest valid score (unset: no bound); a lower one is an error.")
    max: float | None = Field(None, description="Highest valid score (unset: no bound); a higher one is an error.")

    @model_validator(mode="after")
    def _ordered(self) -> Regression:
        if self.min is not None and self.max is not None and not self.min < self.max:
            raise ValueError(f"empty range: min {self.min} must be below max {self.max}")
        return self


class TaskDef(Reading):
    """A downstream task. Its examples come from, in this order: `eval.task_files` (built-in names
    only), `train` + `dev` files, `glue` when `eval.glue_dir` is set, `hub`; or `synthetic`."""

    labels: list[str | int] | None = Field(
        None,
        min_length=2,
        description="The classes, in order: a class's id is its position. Labels read are compared as text, so "
        "[0, 1] and ['0', '1'] are the same list.",
    )
    regression: Regression | None = Field(
        None, description="A regression task instead of `labels`: one output, MSE loss, scores checked against a range."
    )
    metrics: list[str] = Field(
        min_length=1, description="Metric names from harness/metrics.py (accuracy, f1, macro_f1, ...); the first is "
        "the headline (it also chooses the learning rate of finetune.lr_grid)."
    )  # fmt: skip
    train: FileSource | None = Field(None, description="The training file.")
    dev: FileSource | None = Field(None, description="The scored file, or from_train: a share of the training rows.")
    glue: GlueLayout | None = Field(None, description="Where the task sits in a GLUE download (eval.glue_dir).")
    hub: HubSource | None = Field(None, description="A hub dataset, when no files are given.")
    synthetic: Literal["topic", "pair"] | None = Field(
        None, description="Generated from the synthetic corpus's world (needs data.corpus.source synthetic)."
    )
    max_train_examples: int | None = Field(
        None, ge=1, description="At most this many training examples (a seeded subset; with the fine-tuning "
        "protocol's own cap, the smaller applies)."
    )  # fmt: skip
    max_dev_examples: int | None = Field(
        None, ge=1, description="At most this many scored examples (with finetune.max_eval_examples, the smaller)."
    )

    @field_validator("labels")
    @classmethod
    def _distinct_labels(cls, labels: list[str | int] | None) -> list[str | int] | None:
        if labels is not None:
            text = [str(label) for label in labels]
            repeated = sorted({t for t in text if text.count(t) > 1})
            if repeated:
                raise ValueError(f"labels must be distinct; {', '.join(repeated)} repeat")
        return labels

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, metrics: list[str]) -> list[str]:
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric {', '.join(unknown)} (expected one of: {', '.join(METRICS)})")
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"metrics must be distinct, got {metrics}")
        return metrics

    @model_validator(mode="after")
    def _consistent(self) -> TaskDef:
        if (self.labels is None) == (self.regression is None):
            raise ValueError("give exactly one of labels (classification) or regression")
        kind = "regression" if self.regression is not None else "classification"
        for name in self.metrics:
            metric = METRICS[name]
            if metric.task_kind != kind:
                raise ValueError(f"metric {name} scores {metric.task_kind}, this is a {kind} task")
            if metric.two_classes and len(self.labels) != 2:
                raise ValueError(f"metric {name} needs exactly two labels, the task has {len(self.labels)}")
        if kind == "regression" and self.label_ids:
            raise ValueError("label_ids names classes; a regression task reads scores")
        self._check_sources()
        return self

    def _check_sources(self) -> None:
        if self.synthetic is not None:
            given = [n for n in ("train", "dev", "glue", "hub") if getattr(self, n) is not None]
            if given:
                raise ValueError(f"a synthetic task is generated: drop {', '.join(given)}")
            return
        if (self.train is None) != (self.dev is None):
            raise ValueError("give both train and dev, or neither")
        if self.train is None and self.glue is None and self.hub is None:
            raise ValueError("no source: give train and dev files, a glue layout, a hub dataset, or synthetic")
        if self.train is not None and self.train.from_train is not None:
            raise ValueError("train.from_train: only dev can be taken from the training rows")
        sources = {"train": self.train, "dev": self.dev, "glue": self.glue}
        for where, source in sources.items():
            if source is None or (isinstance(source, FileSource) and source.file is None):
                continue
            problem = reading_problem(self.reading(source), source.file if isinstance(source, FileSource) else None)
            if problem:
                raise ValueError(f"{where}: {problem}")
        if self.hub is not None:
            problem = fields_problem(self.fields(self.hub))
            if problem:
                raise ValueError(f"hub: {problem}")
        read = {
            w: s
            for w, s in {**sources, "hub": self.hub}.items()
            if s is not None and getattr(s, "from_train", None) is None
        }
        pairs = {where: self.fields(source).text_b is not None for where, source in read.items()}
        if len(set(pairs.values())) > 1:
            singles = [w for w, pair in pairs.items() if not pair]
            raise ValueError(f"text_b is set for some sources but not for {', '.join(singles)}: pair or not, all alike")

    def reading(self, source: Reading) -> Reading:
        """The reading a source gets: its own fields, else the task's."""
        return Reading.model_construct(**_overlay(source, self, Reading))

    def fields(self, source: Fields) -> Fields:
        return Fields.model_construct(**_overlay(source, self, Fields))

    @property
    def is_regression(self) -> bool:
        return self.regression is not None

    @property
    def is_pair(self) -> bool:
        if self.synthetic is not None:
            return self.synthetic == "pair"
        sources = [s for s in (self.train, self.glue, self.hub) if s is not None]
        return any(self.fields(s).text_b is not None for s in sources)


def _overlay(first: Schema, then: Schema, schema: type[Schema]) -> dict:
    """schema's fields: first's where set, else then's."""
    return {n: getattr(first, n) if getattr(first, n) is not None else getattr(then, n) for n in schema.model_fields}


def file_format(reading: Reading, path: str) -> str | None:
    """The format a file is read in: the one given, else its suffix's (None: cannot tell)."""
    return reading.format or SUFFIX_FORMATS.get(Path(path).suffix.lower())


def fields_problem(fields: Fields) -> str | None:
    missing = [n for n in ("text_a", "label") if getattr(fields, n) is None]
    return f"no {' or '.join(missing)} field named (set it on the task or here)" if missing else None


def reading_problem(reading: Reading, path: str | None) -> str | None:
    """What makes a reading impossible, before any file is opened (None: nothing)."""
    problem = fields_problem(reading)
    if problem:
        return problem
    fmt = file_format(reading, path) if path is not None else "tsv"
    if fmt is None:
        return f"cannot tell the format of {path} from its suffix: set format ({', '.join(FORMATS)})"
    if fmt not in DELIMITED:
        given = [
            n for n in ("header", "columns", "delimiter", "quoting", "maxsplit") if getattr(reading, n) is not None
        ]
        if given:
            return f"{', '.join(given)} only apply to tsv / csv files, this one is {fmt}"
        return None
    if reading.header and reading.columns:
        return "columns names the columns of a file without a header: set header: false, or drop columns"
    if reading.header is False and not reading.columns:
        return "header: false needs columns (the names of the file's columns, in order)"
    if reading.maxsplit is not None and (reading.quoting or ("none" if fmt == "tsv" else "csv")) != "none":
        return "maxsplit needs quoting: none"
    if reading.columns:
        named = [getattr(reading, n) for n in ("text_a", "text_b", "label") if getattr(reading, n) is not None]
        absent = [c for c in [*named, *(reading.where or {})] if c not in reading.columns]
        if absent:
            return f"no column {', '.join(absent)} among columns {reading.columns}"
    return None
