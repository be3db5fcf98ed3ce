"""Downstream tasks: the registry, each task's examples, and their scores.

Every task is a definition (harness/taskdef.py): the built-in ones are read from
harness/tasks.yaml, a suite declares more under `eval.task_defs` or in task files it names. A
task's examples come from its own files (TSV / CSV, with or without a header, JSONL, JSON), a
local GLUE download, the hub or the synthetic world; its metrics are scikit-learn's and SciPy's
(harness/metrics.py). Bad data raises `TaskDataError` naming the task, the file, the field and the
line: `harness run` reads every task once before any training, so it stops there.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from harness.data.synthetic import generate_document, generate_topic_task, make_world
from harness.inputs import load_yaml
from harness.metrics import METRICS
from harness.records import jsonl_lines
from harness.schema import ConfigError
from harness.taskdef import TASK_NAME, Fields, Reading, TaskDef, file_format


class TaskDataError(Exception):
    """Task data that cannot be used: names the task, the file, the field and the line or row."""


@dataclass(frozen=True)
class TaskSpec:
    """A task by name, with its definition."""

    name: str
    definition: TaskDef

    @property
    def labels(self) -> tuple[str, ...] | None:  # None: regression
        labels = self.definition.labels
        return None if labels is None else tuple(str(label) for label in labels)

    @property
    def metrics(self) -> tuple[str, ...]:  # the first is the task's headline
        return tuple(self.definition.metrics)

    @property
    def is_regression(self) -> bool:
        return self.definition.is_regression

    @property
    def num_outputs(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return self.definition.is_pair


@dataclass(frozen=True)
class TaskData:
    train_a: list[str]
    train_b: list[str] | None
    train_labels: np.ndarray  # int64 class ids, or float32 scores for regression
    dev_a: list[str]
    dev_b: list[str] | None
    dev_labels: np.ndarray


# ------------------------------------------------------------------------------- definitions


def load_task_definitions(path: str | Path) -> dict[str, TaskDef]:
    """A task file: a mapping of task name -> definition, each validated on its own, so an error
    names this file, the task and the field."""
    source = str(path)
    if not Path(path).is_file():
        raise ConfigError(source, "", "task file not found")
    raw = load_yaml(path, "task")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(source, "", "expected a mapping of task name -> definition")
    definitions = {}
    for name, body in raw.items():
        if not isinstance(name, str) or not re.fullmatch(TASK_NAME, name):
            raise ConfigError(source, str(name), "task names use letters, digits, _ and - (no '.')")
        try:
            definitions[name] = TaskDef.model_validate(body)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in (name, *err["loc"]))
            raise ConfigError(source, where, describe_error(err)) from None
    return definitions


def describe_error(err: dict[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    message = err["msg"].removeprefix("Value error, ")
    return f"{message} (got {err['input']!r})" if err["type"] != "value_error" and "input" in err else message


BUILTIN_FILE = Path(__file__).with_name("tasks.yaml")
TASKS: dict[str, TaskSpec] = {name: TaskSpec(name, d) for name, d in load_task_definitions(BUILTIN_FILE).items()}


def as_spec(task: str | TaskSpec) -> TaskSpec:
    return TASKS[task] if isinstance(task, str) else task


# ------------------------------------------------------------------------------------- reading


@dataclass
class Table:
    """Rows read from one file or hub split: the columns a task takes, and where each row is."""

    source: str  # the file, or the hub split, for messages
    names: list[str]  # every column / field it has
    records: list[dict[str, Any]]
    places: list[str] | None  # "line 12" per row; None: "row i"

    def place(self, index: int) -> str:
        return self.places[index] if self.places is not None else f"row {index}"


LINE_BREAK = re.compile(r"\r\n|\r|\n")


def read_file(task: str, path: str, reading: Reading, field: str) -> Table:
    """Every row of a task's file, as `reading` says; `field` names the setting that gave the path."""
    if not Path(path).is_file():
        raise TaskDataError(f"{task}: {path} not found ({field})")
    fmt = file_format(reading, path)
    if fmt is None:
        raise TaskDataError(f"{task}: {path}: cannot tell the format from the suffix: set format ({field})")
    text = decode(task, path, reading.encoding or "utf-8")
    if fmt in ("tsv", "csv"):
        table = _delimited(task, path, text, reading, fmt)
    elif fmt == "jsonl":
        table = _jsonl(task, path, text)
    else:
        table = _json(task, path, text)
    return _select(task, table, reading.where)


def decode(task: str, path: str, encoding: str) -> str:
    data = Path(path).read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise TaskDataError(
            f"{task}: {path}: byte 0x{data[err.start]:02x} at offset {err.start} (line {line}) is not valid "
            f"{encoding} (encoding): set encoding to the file's, e.g. latin-1"
        ) from None
    return text.removeprefix("\ufeff")


def _delimited(task: str, path: str, text: str, reading: Reading, fmt: str) -> Table:
    delimiter = reading.delimiter or ("\t" if fmt == "tsv" else ",")
    if (reading.quoting or ("none" if fmt == "tsv" else "csv")) == "none":
        # each line is a row, quote characters are text (GLUE's TSVs); blank lines are skipped
        split = -1 if reading.maxsplit is None else reading.maxsplit
        lines = ((n, line.split(delimiter, split)) for n, line in enumerate(LINE_BREAK.split(text), 1) if line)
    else:
        lines = _csv_lines(task, path, csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True))
    header = reading.header if reading.header is not None else reading.columns is None
    if header:
        first = next(lines, None)
        names = [] if first is None else first[1]
    else:
        names = list(reading.columns)
    records, places = [], []
    for number, fields in lines:
        if len(fields) != len(names):
            given = "the header has" if header else "columns names"
            raise TaskDataError(
                f"{task}: {path}: line {number} has {len(fields)} fields, {given} {len(names)} "
                f"(delimiter {delimiter!r})"
            )
        records.append(dict(zip(names, fields)))
        places.append(f"line {number}")
    return Table(path, names, records, places)


def _csv_lines(task: str, path: str, reader) -> Iterator[tuple[int, list[str]]]:
    try:
        for row in reader:
            if row:
                yield reader.line_num, row
    except csv.Error as err:
        raise TaskDataError(f"{task}: {path}: line {reader.line_num}: {err}") from None


def _jsonl(task: str, path: str, text: str) -> Table:
    records, places = [], []
    for number, line in jsonl_lines(text):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise TaskDataError(
                f"{task}: {path}: line {number} is not valid JSON ({err.msg}, column {err.colno})"
            ) from None
        if not isinstance(row, dict):
            raise TaskDataError(f"{task}: {path}: line {number} is a JSON {type(row).__name__}, not an object")
        records.append(row)
        places.append(f"line {number}")
    return Table(path, list(records[0]) if records else [], records, places)


def _json(task: str, path: str, text: str) -> Table:
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as err:
        raise TaskDataError(
            f"{task}: {path}: not valid JSON at line {err.lineno}, column {err.colno} ({err.msg})"
        ) from None
    if isinstance(loaded, dict):  # an object of rows keyed by id
        places, records = [f"item {key!r}" for key in loaded], list(loaded.values())
    elif isinstance(loaded, list):
        places, records = [f"item [{i}]" for i in range(len(loaded))], loaded
    else:
        raise TaskDataError(f"{task}: {path}: expected a list of objects, or an object of them keyed by id")
    for place, row in zip(places, records):
        if not isinstance(row, dict):
            raise TaskDataError(f"{task}: {path}: {place} is a JSON {type(row).__name__}, not an object")
    return Table(path, list(records[0]) if records else [], records, places)


def _select(task: str, table: Table, where: dict[str, str] | None) -> Table:
    """The rows whose fields hold `where`'s values; a table without rows is an error."""
    if not table.records:
        raise TaskDataError(f"{task}: {table.source}: no rows")
    if not where:
        return table
    for column in where:
        if column not in table.names:
            raise TaskDataError(f"{task}: {table.source}: no column {column} (where; have: {', '.join(table.names)})")
    keep = [i for i, r in enumerate(table.records) if all(str(r.get(c)) == v for c, v in where.items())]
    if not keep:
        shown = ", ".join(f"{c} = {v}" for c, v in where.items())
        raise TaskDataError(f"{task}: {table.source}: no rows where {shown} (where)")
    places = None if table.places is None else [table.places[i] for i in keep]
    return Table(table.source, table.names, [table.records[i] for i in keep], places)


def _column(task: str, table: Table, name: str, role: str) -> list[Any]:
    if name not in table.names:
        raise TaskDataError(f"{task}: {table.source} has no column {name} ({role}; have: {', '.join(table.names)})")
    values = []
    for index, record in enumerate(table.records):
        if name not in record:
            raise TaskDataError(f"{task}: {table.source}: {table.place(index)} has no field {name!r} ({role})")
        values.append(record[name])
    return values


def _texts(task: str, table: Table, name: str, role: str) -> list[str]:
    values = _column(task, table, name, role)
    for index, value in enumerate(values):
        if value is None:
            raise TaskDataError(f"{task}: {table.source}: {table.place(index)}: {name} is null ({role})")
    return [str(v) for v in values]


def _labels(spec: TaskSpec, table: Table, fields: Fields) -> np.ndarray:
    """The label field as class ids (int64) or scores (float32), every bad value named by its row."""
    values = _column(spec.name, table, fields.label, "label")
    where = f"{spec.name}: {table.source}"
    if spec.is_regression:
        bounds = spec.definition.regression
        scores = []
        for index, value in enumerate(values):
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise TaskDataError(
                    f"{where}: {table.place(index)}: score {value!r} ({fields.label}) is not a number"
                ) from None
            if not math.isfinite(number):  # "nan" and "inf" parse as floats, and would poison the loss
                raise TaskDataError(
                    f"{where}: {table.place(index)}: score {value!r} ({fields.label}) is not a finite number"
                )
            low, high = bounds.min, bounds.max
            if (low is not None and number < low) or (high is not None and number > high):
                raise TaskDataError(
                    f"{where}: {table.place(index)}: score {number:g} ({fields.label}) is outside the range "
                    f"[{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}] (regression)"
                )
            scores.append(number)
        return np.asarray(scores, dtype=np.float32)
    labels = spec.labels
    if fields.label_ids:
        ids = [_class_id(v, len(labels)) for v in values]
        expected = f"a class id 0..{len(labels) - 1} (label_ids)"
    else:
        index = {label: i for i, label in enumerate(labels)}
        ids = [index.get(str(v)) for v in values]
        expected = f"in the label set {list(labels)}"
    bad = [i for i, label_id in enumerate(ids) if label_id is None]
    if bad:
        first = bad[0]
        others = sorted({repr(str(values[i])) for i in bad[1:]} - {repr(str(values[first]))})
        more = f"; {len(bad) - 1} more row(s) are outside it too" if len(bad) > 1 else ""
        more += f" ({', '.join(others[:5])})" if others else ""
        raise TaskDataError(
            f"{where}: {table.place(first)}: label {values[first]!r} ({fields.label}) is not {expected}{more}"
        )
    return np.asarray(ids, dtype=np.int64)


def _class_id(value: Any, count: int) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return value if isinstance(value, int) and 0 <= value < count else None


def _examples(spec: TaskSpec, table: Table, fields: Fields) -> tuple[list[str], list[str] | None, np.ndarray]:
    a = _texts(spec.name, table, fields.text_a, "text_a")
    b = _texts(spec.name, table, fields.text_b, "text_b") if fields.text_b else None
    return a, b, _labels(spec, table, fields)


def read_source(spec: TaskSpec, path: str, reading: Reading, field: str):
    """(texts A, texts B or None, labels) of one file."""
    return _examples(spec, read_file(spec.name, path, reading, field), reading)


# ------------------------------------------------------------------------------------- sources


def load_declared_files(spec: TaskSpec) -> TaskData:
    """A task's own train and dev files (dev may be a share of the training rows)."""
    d = spec.definition
    train = read_source(spec, d.train.file, d.reading(d.train), "train.file")
    if d.dev.from_train is not None:
        return hold_out(spec, train, d.dev.from_train)
    dev = read_source(spec, d.dev.file, d.reading(d.dev), "dev.file")
    return TaskData(*train, *dev)


HOLD_OUT_SEED = 0


def hold_out(spec: TaskSpec, train, share: float) -> TaskData:
    """dev.from_train: a seeded share of the training rows scored, the rest trained on (both in file order)."""
    a, b, labels = train
    n = len(a)
    if n < 2:
        raise TaskDataError(f"{spec.name}: dev.from_train needs at least 2 training rows, the file has {n}")
    return split_rows(a, b, labels, share, HOLD_OUT_SEED)


def split_rows(a: list[str], b: list[str] | None, labels: np.ndarray, share: float, seed: int) -> TaskData:
    """A seeded `share` of the rows (at least one, never all) as `dev`, the rest as `train`, each in
    their original order."""
    n = len(a)
    order = np.random.default_rng(seed).permutation(n)
    held = min(n - 1, max(1, round(share * n)))
    fit, back = np.sort(order[held:]), np.sort(order[:held])
    take = lambda xs, idx: None if xs is None else [xs[i] for i in idx]  # noqa: E731
    return TaskData(take(a, fit), take(b, fit), labels[fit], take(a, back), take(b, back), labels[back])


# field names that hold a pair's two texts and its label in common JSON releases of these tasks
_JSON_TEXT_A = ("sentence1", "premise", "text_a", "question", "sentence", "text")
_JSON_TEXT_B = ("sentence2", "hypothesis", "text_b", "sentence")
_JSON_LABEL = ("label", "gold_label")


def load_task_files(spec: TaskSpec, train: str, dev: str) -> TaskData:
    """`eval.task_files`: a built-in task from two other files, chosen by suffix: a .tsv is read
    with the task's GLUE layout, a .jsonl / .json by the usual field names of its releases."""
    splits = []
    for path in (train, dev):
        suffix = Path(path).suffix
        if suffix == ".tsv" and spec.definition.glue is not None:
            d = spec.definition
            reading = d.reading(d.glue).model_copy(update={"format": "tsv"})
            splits.append(read_source(spec, path, reading, f"eval.task_files.{spec.name}"))
        elif suffix in (".jsonl", ".json"):
            reading = Reading.model_construct(format=suffix[1:])
            table = read_file(spec.name, path, reading, f"eval.task_files.{spec.name}")
            splits.append(_examples(spec, table, _guess_fields(spec, table)))
        else:
            raise TaskDataError(f"{spec.name}: {path}: expected a .tsv, .jsonl or .json file")
    return TaskData(*splits[0], *splits[1])


def _guess_fields(spec: TaskSpec, table: Table) -> Fields:
    first = table.records[0]

    def field(candidates: tuple[str, ...], exclude: str | None = None) -> str | None:
        return next((c for c in candidates if c in first and c != exclude), None)

    a_key = field(_JSON_TEXT_A)
    b_key = field(_JSON_TEXT_B, exclude=a_key) if spec.is_pair else None
    label_key = field(_JSON_LABEL)
    if a_key is None or label_key is None or (spec.is_pair and b_key is None):
        raise TaskDataError(f"{spec.name}: {table.source}: no text or label field among {sorted(first)}")
    return Fields.model_construct(text_a=a_key, text_b=b_key, label=label_key)


def load_glue_task(task: str | TaskSpec, glue_dir: str | None, dev_split: str | None = None) -> TaskData:
    """From `glue_dir` (GLUE's TSV layout) when given, else from the hub; `dev_split` replaces the
    task's dev split (a file stem locally, a split name on the hub)."""
    spec = as_spec(task)
    d = spec.definition
    if glue_dir is not None and d.glue is not None:
        folder = Path(glue_dir) / d.glue.folder
        reading = d.reading(d.glue).model_copy(update={"format": "tsv"})
        splits = []
        for stem in (d.glue.train, dev_split or d.glue.dev):
            path = folder / f"{stem}.tsv"
            field = f"expected GLUE's {d.glue.folder}/{path.name} under eval.glue_dir"
            splits.append(read_source(spec, str(path), reading, field))
        return TaskData(*splits[0], *splits[1])
    if d.hub is None:
        raise TaskDataError(f"{spec.name}: reads a GLUE download: set eval.glue_dir")
    return _load_hub_task(spec, dev_split)


def _load_hub_task(spec: TaskSpec, dev_split: str | None) -> TaskData:
    from harness.data.sources import OFFLINE_VARIABLES, hub_reachable

    hub = spec.definition.hub
    fields = spec.definition.fields(hub)
    instead = (
        "set eval.glue_dir to a local GLUE download (TSV layout): in the suite, or --set eval.glue_dir=DIR on "
        "`harness run` or `harness eval`"
        if spec.definition.glue is not None
        else "give the task train and dev files"
    )
    offline = next((name for name in OFFLINE_VARIABLES if os.environ.get(name)), None)
    if offline is None and not hub_reachable():  # datasets would retry for half a minute per split
        raise TaskDataError(
            f"{spec.name}: the Hugging Face hub cannot be reached (no connection to huggingface.co) to load "
            f"{hub.name!r} config {hub.config!r}. Without network, {instead} (a copy in the datasets cache is read "
            "with HF_DATASETS_OFFLINE=1)"
        )
    from harness.data.sources import datasets_module

    datasets = datasets_module()

    tables = []
    for split in (hub.train, dev_split or hub.dev):
        try:
            loaded = datasets.load_dataset(hub.name, hub.config, split=split)
        except Exception as err:  # datasets raises many types when offline
            mode = f" ({offline} is set: only the datasets cache is read)" if offline else ""
            raise TaskDataError(
                f"{spec.name}: could not load {hub.name!r} config {hub.config!r} from the hub{mode}: "
                f"{type(err).__name__}. Without network, {instead}"
            ) from None
        names = list(loaded.column_names)
        needed = [c for c in (fields.text_a, fields.text_b, fields.label, *(fields.where or {})) if c in names]
        columns = loaded.select_columns(needed).to_dict()
        records = [dict(zip(columns, row)) for row in zip(*columns.values())]
        source = f"hub {hub.name} {hub.config or ''} split {split}".replace("  ", " ")
        tables.append(_select(spec.name, Table(source, names, records, None), fields.where))
    return TaskData(*_examples(spec, tables[0], fields), *_examples(spec, tables[1], fields))


# ------------------------------------------------------------------------------------ synthetic


def synthetic_pair_task(seed: int, train_examples: int, dev_examples: int) -> TaskData:
    """Do two sentences come from the same document? The negative comes from a document on another
    topic: the pair shares topic words and a cast or it does not, which the model must read across
    both sentences, the relation pretraining on the same world teaches; the documents are fresh,
    so nothing is memorised."""
    world = make_world(seed)

    def draw(split: str, count: int):
        rng = random.Random(f"pair-task-{seed}-{split}")
        a, b, labels = [], [], []
        for _ in range(count):
            doc = generate_document(world, rng)
            first, second = rng.sample(range(len(doc.sentences)), 2)
            a.append(doc.sentences[first])
            if rng.random() < 0.5:
                b.append(doc.sentences[second])
                labels.append(1)
            else:
                other_topic = (doc.topic + rng.randrange(1, len(world.topics))) % len(world.topics)
                other = generate_document(world, rng, topic_index=other_topic)
                b.append(rng.choice(other.sentences))
                labels.append(0)
        return a, b, np.asarray(labels, dtype=np.int64)

    return TaskData(*draw("train", train_examples), *draw("dev", dev_examples))


def synthetic_topic_task(seed: int, train_examples: int, dev_examples: int) -> TaskData:
    train, dev = generate_topic_task(seed, train_examples, dev_examples)
    return TaskData(
        [e.text for e in train], None, np.asarray([e.label for e in train], dtype=np.int64),
        [e.text for e in dev], None, np.asarray([e.label for e in dev], dtype=np.int64),
    )  # fmt: skip


SYNTHETIC = {"topic": synthetic_topic_task, "pair": synthetic_pair_task}


# ------------------------------------------------------------------------------------ one task


def load_task(
    task: str | TaskSpec,
    glue_dir: str | None,
    synthetic_seed: int,
    train_cap: int | None,
    dev_cap: int | None,
    dev_split: str | None = None,
    files: tuple[str, str] | None = None,
) -> TaskData:
    """A task's examples, capped. Its source: `files` (eval.task_files: train, dev), else its own
    train and dev files, else `glue_dir` (when the task has a GLUE layout), else the hub. The
    task's own caps and the given ones: the smaller applies."""
    spec = as_spec(task)
    d = spec.definition
    train_cap, dev_cap = _smaller(train_cap, d.max_train_examples), _smaller(dev_cap, d.max_dev_examples)
    if d.synthetic is not None:
        return SYNTHETIC[d.synthetic](synthetic_seed, train_cap or 2000, dev_cap or 500)
    if files is not None:
        data = load_task_files(spec, *files)
    elif d.train is not None:
        data = load_declared_files(spec)
    else:
        data = load_glue_task(spec, glue_dir, dev_split)
    return cap(data, train_cap, dev_cap, seed=0)


def _smaller(first: int | None, second: int | None) -> int | None:
    return min((c for c in (first, second) if c is not None), default=None)


def cap(data: TaskData, train_cap: int | None, dev_cap: int | None, seed: int) -> TaskData:
    """A seeded subset of at most train_cap / dev_cap examples (the same for every run and arm)."""

    def pick(n: int, limit: int | None) -> np.ndarray:
        if limit is None or limit >= n:
            return np.arange(n)
        return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))

    t, d = pick(len(data.train_a), train_cap), pick(len(data.dev_a), dev_cap)
    take = lambda xs, idx: None if xs is None else [xs[i] for i in idx]  # noqa: E731
    return TaskData(
        take(data.train_a, t), take(data.train_b, t), data.train_labels[t],
        take(data.dev_a, d), take(data.dev_b, d), data.dev_labels[d],
    )  # fmt: skip


def score(task: str | TaskSpec, labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    return {metric: METRICS[metric](labels, predictions) for metric in as_spec(task).metrics}


def majority_baseline(task: str | TaskSpec, data: TaskData) -> dict[str, float]:
    """Every dev example predicted as the most frequent training label (the mean score for regression)."""
    spec = as_spec(task)
    if spec.is_regression:
        constant = np.full(len(data.dev_labels), float(np.mean(data.train_labels)))
        return {"mse": float(np.mean((constant - data.dev_labels) ** 2))}
    majority = int(np.bincount(data.train_labels).argmax())
    return score(spec, data.dev_labels, np.full(len(data.dev_labels), majority))
