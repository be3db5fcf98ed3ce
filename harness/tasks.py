"""Downstream tasks: what each reads, its labels and its metrics (GLUE's own choices), and where its
data comes from: a local directory in GLUE's TSV layout, a hub dataset, or the synthetic world.

Metrics are scikit-learn's and SciPy's, never hand-written.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from harness.data.synthetic import generate_document, generate_topic_task, make_world
from harness.records import jsonl_lines


class TaskDataError(Exception):
    """Task data that cannot be used: names the file, the column or label, and what was expected."""


def _sklearn(name: str) -> Callable[[np.ndarray, np.ndarray], float]:
    def metric(y: np.ndarray, p: np.ndarray) -> float:
        import sklearn.metrics  # imported when scored: config validation stays fast

        return float(getattr(sklearn.metrics, name)(y, p))

    return metric


def _scipy(name: str) -> Callable[[np.ndarray, np.ndarray], float]:
    def metric(y: np.ndarray, p: np.ndarray) -> float:
        import scipy.stats

        return float(getattr(scipy.stats, name)(y, p)[0])

    return metric


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": _sklearn("accuracy_score"),
    "f1": _sklearn("f1_score"),
    "matthews": _sklearn("matthews_corrcoef"),
    "pearson": _scipy("pearsonr"),
    "spearman": _scipy("spearmanr"),
}


@dataclass(frozen=True)
class GlueFile:
    """Where a GLUE TSV keeps its fields; `columns` names a file without a header (CoLA)."""

    text_a: str
    text_b: str | None
    label: str
    columns: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TaskSpec:
    name: str
    labels: tuple[str, ...] | None  # None: regression
    metrics: tuple[str, ...]  # the first is the task's headline
    glue_dir: str | None = None  # the task's folder in a GLUE download
    glue_file: GlueFile | None = None
    train_split: str = "train"
    dev_split: str = "dev"
    hub: tuple[str, str] | None = None  # (dataset, config) on the hub
    hub_dev_split: str = "validation"

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_outputs(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return self.glue_file is not None and self.glue_file.text_b is not None


@dataclass(frozen=True)
class TaskData:
    train_a: list[str]
    train_b: list[str] | None
    train_labels: np.ndarray  # int64 class ids, or float32 scores for regression
    dev_a: list[str]
    dev_b: list[str] | None
    dev_labels: np.ndarray


NLI3 = ("entailment", "neutral", "contradiction")
ENTAIL2 = ("entailment", "not_entailment")
BINARY = ("0", "1")

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec("sst2", BINARY, ("accuracy",), "SST-2", GlueFile("sentence", None, "label"),
                 hub=("nyu-mll/glue", "sst2")),
        TaskSpec("cola", BINARY, ("matthews",), "CoLA",
                 GlueFile("sentence", None, "label", ("source", "label", "original_label", "sentence")),
                 hub=("nyu-mll/glue", "cola")),
        TaskSpec("mrpc", BINARY, ("f1", "accuracy"), "MRPC", GlueFile("#1 String", "#2 String", "Quality"),
                 hub=("nyu-mll/glue", "mrpc")),
        TaskSpec("qqp", BINARY, ("f1", "accuracy"), "QQP", GlueFile("question1", "question2", "is_duplicate"),
                 hub=("nyu-mll/glue", "qqp")),
        TaskSpec("stsb", None, ("pearson", "spearman"), "STS-B", GlueFile("sentence1", "sentence2", "score"),
                 hub=("nyu-mll/glue", "stsb")),
        TaskSpec("rte", ENTAIL2, ("accuracy",), "RTE", GlueFile("sentence1", "sentence2", "label"),
                 hub=("nyu-mll/glue", "rte")),
        TaskSpec("qnli", ENTAIL2, ("accuracy",), "QNLI", GlueFile("question", "sentence", "label"),
                 hub=("nyu-mll/glue", "qnli")),
        TaskSpec("mnli", NLI3, ("accuracy",), "MNLI", GlueFile("sentence1", "sentence2", "gold_label"),
                 dev_split="dev_matched", hub=("nyu-mll/glue", "mnli"), hub_dev_split="validation_matched"),
        TaskSpec("mnli-mm", NLI3, ("accuracy",), "MNLI", GlueFile("sentence1", "sentence2", "gold_label"),
                 dev_split="dev_mismatched", hub=("nyu-mll/glue", "mnli"), hub_dev_split="validation_mismatched"),
        TaskSpec("synthetic-topic", tuple(str(i) for i in range(6)), ("accuracy",)),
        TaskSpec("synthetic-pair", BINARY, ("accuracy",), glue_file=GlueFile("a", "b", "label")),
    ]
}  # fmt: skip


def _read_glue_tsv(path: Path, spec: TaskSpec) -> tuple[list[str], list[str] | None, list[str]]:
    import datasets

    if not path.is_file():
        raise TaskDataError(f"{spec.name}: {path} not found (expected GLUE's {spec.glue_dir}/{path.name})")
    layout = spec.glue_file
    options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE, "encoding": "utf-8-sig", "keep_default_na": False}
    if layout.columns:
        options.update(column_names=list(layout.columns), header=None)
    table = datasets.load_dataset("csv", data_files=str(path), split="train", **options)
    needed = [c for c in (layout.text_a, layout.text_b, layout.label) if c]
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise TaskDataError(
            f"{spec.name}: {path} has no column {', '.join(missing)} (have: {', '.join(table.column_names)})"
        )
    b = [str(x) for x in table[layout.text_b]] if layout.text_b else None
    return [str(x) for x in table[layout.text_a]], b, [str(x) for x in table[layout.label]]


def _labels_to_array(raw: list[str], spec: TaskSpec, where: str) -> np.ndarray:
    if spec.is_regression:
        try:
            return np.asarray([float(x) for x in raw], dtype=np.float32)
        except ValueError as err:
            raise TaskDataError(f"{spec.name}: {where}: a score is not a number ({err})") from None
    index = {label: i for i, label in enumerate(spec.labels)}
    bad = sorted({x for x in raw if x not in index})
    if bad:
        shown = ", ".join(repr(b) for b in bad[:5])
        raise TaskDataError(f"{spec.name}: {where}: labels {shown} are outside the label set {list(spec.labels)}")
    return np.asarray([index[x] for x in raw], dtype=np.int64)


# field names that hold a pair's two texts and its label in common JSON releases of these tasks
_JSON_TEXT_A = ("sentence1", "premise", "text_a", "question", "sentence", "text")
_JSON_TEXT_B = ("sentence2", "hypothesis", "text_b", "sentence")
_JSON_LABEL = ("label", "gold_label")


def _read_jsonl_rows(path: Path, spec: TaskSpec) -> list:
    rows = []
    for number, line in jsonl_lines(path.read_text(encoding="utf-8")):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise TaskDataError(
                f"{spec.name}: {path}: line {number} is not valid JSON ({err.msg}, column {err.colno})"
            ) from None
    return rows


def _read_json_rows(path: Path, spec: TaskSpec) -> tuple[list[str], list[str] | None, list[str]]:
    try:
        if path.suffix == ".jsonl":
            rows = _read_jsonl_rows(path, spec)
        else:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            rows = list(loaded.values()) if isinstance(loaded, dict) else loaded
    except (OSError, ValueError) as err:
        raise TaskDataError(f"{spec.name}: cannot read {path}: {err}") from None
    if not rows or not all(isinstance(row, dict) for row in rows):
        raise TaskDataError(f"{spec.name}: {path} holds no rows of named fields")

    def field(candidates: tuple[str, ...], exclude: str | None = None) -> str | None:
        return next((c for c in candidates if c in rows[0] and c != exclude), None)

    a_key = field(_JSON_TEXT_A)
    b_key = field(_JSON_TEXT_B, exclude=a_key) if spec.is_pair else None
    label_key = field(_JSON_LABEL)
    if a_key is None or label_key is None or (spec.is_pair and b_key is None):
        raise TaskDataError(f"{spec.name}: {path}: no text or label field among {sorted(rows[0])}")
    try:
        a = [str(row[a_key]) for row in rows]
        b = [str(row[b_key]) for row in rows] if b_key else None
        labels = [str(row[label_key]) for row in rows]
    except KeyError as err:
        raise TaskDataError(f"{spec.name}: {path}: a row has no field {err}") from None
    return a, b, labels


def load_task_files(spec: TaskSpec, train: str, dev: str) -> TaskData:
    """A task from its own two files: GLUE-style TSV, JSONL or JSON, chosen by suffix."""
    splits = []
    for name in (train, dev):
        path = Path(name)
        if path.suffix == ".tsv":
            a, b, labels = _read_glue_tsv(path, spec)
        elif path.suffix in (".jsonl", ".json"):
            a, b, labels = _read_json_rows(path, spec)
        else:
            raise TaskDataError(f"{spec.name}: {path}: expected a .tsv, .jsonl or .json file")
        splits.append((a, b, _labels_to_array(labels, spec, str(path))))
    (ta, tb, tl), (da, db, dl) = splits
    return TaskData(ta, tb, tl, da, db, dl)


def load_glue_task(spec: TaskSpec, glue_dir: str | None, dev_split: str | None = None) -> TaskData:
    """From `glue_dir` (GLUE's TSV layout) when given, else from the hub; `dev_split` replaces the
    task's default dev split (a file stem locally, a split name on the hub)."""
    if dev_split is not None:
        spec = replace(spec, dev_split=dev_split, hub_dev_split=dev_split)
    if glue_dir is not None:
        folder = Path(glue_dir) / spec.glue_dir
        return load_task_files(spec, str(folder / f"{spec.train_split}.tsv"), str(folder / f"{spec.dev_split}.tsv"))
    return _load_hub_task(spec)


def _load_hub_task(spec: TaskSpec) -> TaskData:
    import datasets

    name, config = spec.hub
    try:
        train = datasets.load_dataset(name, config, split="train")
        dev = datasets.load_dataset(name, config, split=spec.hub_dev_split)
    except Exception as err:  # datasets raises many types when offline
        offline = " (offline mode is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise TaskDataError(
            f"{spec.name}: could not load {name!r} config {config!r} from the hub{offline}: {type(err).__name__}. "
            "Without network, set eval.glue_dir to a local GLUE download (TSV layout)"
        ) from None
    fields = {"sst2": ("sentence", None), "cola": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
              "qqp": ("question1", "question2"), "stsb": ("sentence1", "sentence2"), "rte": ("sentence1", "sentence2"),
              "qnli": ("question", "sentence"), "mnli": ("premise", "hypothesis")}[config]  # fmt: skip

    def unpack(table):
        labels = np.asarray(table["label"], dtype=np.float32 if spec.is_regression else np.int64)
        return [str(x) for x in table[fields[0]]], ([str(x) for x in table[fields[1]]] if fields[1] else None), labels

    return TaskData(*unpack(train), *unpack(dev))


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


def load_task(
    name: str,
    glue_dir: str | None,
    synthetic_seed: int,
    train_cap: int | None,
    dev_cap: int | None,
    dev_split: str | None = None,
    files: tuple[str, str] | None = None,
) -> TaskData:
    """`files` (train, dev) take precedence over `glue_dir` and the hub."""
    spec = TASKS[name]
    if name == "synthetic-topic":
        return synthetic_topic_task(synthetic_seed, train_cap or 2000, dev_cap or 500)
    if name == "synthetic-pair":
        return synthetic_pair_task(synthetic_seed, train_cap or 2000, dev_cap or 500)
    if files is not None:
        data = load_task_files(spec, *files)
    else:
        data = load_glue_task(spec, glue_dir, dev_split)
    return cap(data, train_cap, dev_cap, seed=0)


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


def score(name: str, labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    return {metric: METRICS[metric](labels, predictions) for metric in TASKS[name].metrics}


def majority_baseline(name: str, data: TaskData) -> dict[str, float]:
    """Every dev example predicted as the most frequent training label (the mean score for regression)."""
    if TASKS[name].is_regression:
        constant = np.full(len(data.dev_labels), float(np.mean(data.train_labels)))
        return {"mse": float(np.mean((constant - data.dev_labels) ** 2))}
    majority = int(np.bincount(data.train_labels).argmax())
    return score(name, data.dev_labels, np.full(len(data.dev_labels), majority))
