"""Tasks declared as data: every file format, encodings, labels and regression, each error message,
task files named by a suite, the built-in tasks unchanged, and a declared task end to end."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import SHARED_DATA, tiny_suite

from harness.cli import main
from harness.config import ConfigError, RunConfig
from harness.metrics import METRICS, Metric, register
from harness.records import RunRecord
from harness.suite import load_suite
from harness.taskdef import TaskDef
from harness.tasks import (
    TASKS,
    TaskDataError,
    TaskSpec,
    load_glue_task,
    load_task,
    load_task_definitions,
    majority_baseline,
    score,
)

ROWS = [
    ("A man sleeps.", "Someone rests.", "entailment"),
    ("It rains, a lot.", 'He said "no".', "contradiction"),
    ("Cats purr.", "Dogs bark.", "neutral"),
]
NLI = ["entailment", "neutral", "contradiction"]


def spec(**definition) -> TaskSpec:
    return TaskSpec("t", TaskDef.model_validate(definition))


def load(**definition):
    return load_task(spec(**definition), None, 0, None, None)


def _csv_text(rows, delimiter=",") -> str:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\n").writerows(rows)
    return out.getvalue()


def _write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> str:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return str(path)


# every format holds ROWS; the definition says how to read it
FORMATS = {
    "tsv-header": ("d.tsv", "premise\thypothesis\tlabel\n" + "".join("\t".join(r) + "\n" for r in ROWS), {}),
    "tsv-no-header": (
        "d.tsv",
        "".join(f"{y}\t{a}\t{b}\n" for a, b, y in ROWS),
        {"columns": ["label", "premise", "hypothesis"]},
    ),
    "csv": ("d.csv", _csv_text([("premise", "hypothesis", "label"), *ROWS]), {}),
    "csv-no-header-semicolons": ("d.txt", _csv_text(ROWS, delimiter=";"),
                                 {"format": "csv", "delimiter": ";", "header": False,
                                  "columns": ["premise", "hypothesis", "label"]}),
    "jsonl": ("d.jsonl", "".join(json.dumps(dict(zip(("premise", "hypothesis", "label"), r))) + "\n" for r in ROWS),
              {}),
    "json-list": ("d.json", json.dumps([dict(zip(("premise", "hypothesis", "label"), r)) for r in ROWS]), {}),
    "json-keyed": ("d.json", json.dumps({str(i): dict(zip(("premise", "hypothesis", "label"), r))
                                         for i, r in enumerate(ROWS)}), {}),
}  # fmt: skip


@pytest.mark.parametrize("layout", FORMATS)
def test_every_format_reads_the_same_examples(tmp_path, layout):
    name, text, reading = FORMATS[layout]
    path = _write(tmp_path, name, text)
    data = load(labels=NLI, metrics=["accuracy"], text_a="premise", text_b="hypothesis", label="label",
                train={"file": path}, dev={"file": path}, **reading)  # fmt: skip
    assert data.train_a == data.dev_a == [a for a, _, _ in ROWS]
    assert data.train_b == [b for _, b, _ in ROWS]  # quote characters are text in a TSV, unquoted in a CSV
    assert data.train_labels.tolist() == data.dev_labels.tolist() == [0, 2, 1]


def test_csv_fields_may_hold_quoted_delimiters_and_line_breaks(tmp_path):
    path = _write(tmp_path, "d.csv", 'text,label\r\n"one, two\r\nthree",1\r\nplain,0\r\n')
    data = load(labels=[0, 1], metrics=["accuracy"], text_a="text", label="label",
                train={"file": path}, dev={"file": path})  # fmt: skip
    assert data.train_a == ["one, two\r\nthree", "plain"] and data.train_labels.tolist() == [1, 0]


def test_train_and_dev_may_name_their_fields_differently(tmp_path):
    train = _write(tmp_path, "train.json", json.dumps({"0": {"text_a": "x", "text_b": "y", "label": "neutral"}}))
    dev = _write(tmp_path, "dev.jsonl", json.dumps({"premise": "p", "hypothesis": "h", "label": "entailment"}) + "\n")
    data = load(labels=NLI, metrics=["accuracy"], label="label",
                train={"file": train, "text_a": "text_a", "text_b": "text_b"},
                dev={"file": dev, "text_a": "premise", "text_b": "hypothesis"})  # fmt: skip
    assert (data.train_a, data.train_b, data.dev_a, data.dev_b) == (["x"], ["y"], ["p"], ["h"])
    assert data.train_labels.tolist() == [1] and data.dev_labels.tolist() == [0]


LATIN1 = "0 Qu'est-ce qu'un café ?\n1 Où est Zürich ?\r\n0 Why ?\n"
TREC_LIKE = {"format": "tsv", "delimiter": " ", "maxsplit": 1, "columns": ["label", "question"],
             "text_a": "question", "label": "label", "label_ids": True, "labels": ["DESC", "LOC"],
             "metrics": ["accuracy", "macro_f1"]}  # fmt: skip


def test_a_latin1_file_reads_with_its_encoding_and_fails_clearly_as_utf8(tmp_path):
    path = _write(tmp_path, "TREC.all", LATIN1, encoding="latin-1")
    data = load(**TREC_LIKE, encoding="latin-1", train={"file": path}, dev={"file": path})
    assert data.train_a == ["Qu'est-ce qu'un café ?", "Où est Zürich ?", "Why ?"]  # split at the first space only
    assert data.train_labels.tolist() == [0, 1, 0]
    offset = LATIN1.encode("latin-1").index(b"\xe9")
    with pytest.raises(TaskDataError) as caught:
        load(**TREC_LIKE, train={"file": path}, dev={"file": path})
    assert str(caught.value) == (
        f"t: {path}: byte 0xe9 at offset {offset} (line 1) is not valid utf-8 (encoding): set encoding to the "
        "file's, e.g. latin-1"
    )
    # the encoding may differ between the two files
    utf8 = _write(tmp_path, "test.all", "1 Où ?\n")
    data = load(**TREC_LIKE, train={"file": path, "encoding": "latin-1"}, dev={"file": utf8})
    assert data.dev_a == ["Où ?"]


def test_string_labels_map_in_the_given_order_and_numbers_read_as_text(tmp_path):
    path = _write(tmp_path, "d.jsonl", "".join(json.dumps({"t": "x", "y": y}) + "\n" for y in ["b", "c", "a", "b"]))
    data = load(labels=["c", "b", "a"], metrics=["accuracy"], text_a="t", label="y", train={"file": path},
                dev={"file": path})  # fmt: skip
    assert data.train_labels.tolist() == [1, 0, 2, 1]
    ints = _write(tmp_path, "i.jsonl", "".join(json.dumps({"t": "x", "y": y}) + "\n" for y in [1, 0]))
    data = load(labels=[0, 1], metrics=["accuracy"], text_a="t", label="y", train={"file": ints}, dev={"file": ints})
    assert data.train_labels.tolist() == [1, 0]
    ids = _write(tmp_path, "ids.tsv", "t\ty\nx\t2\nx\t0\n")
    data = load(labels=["neg", "mid", "pos"], label_ids=True, metrics=["accuracy"], text_a="t", label="y",
                train={"file": ids}, dev={"file": ids})  # fmt: skip
    assert data.train_labels.tolist() == [2, 0]


def test_an_unknown_label_is_named_with_its_line(tmp_path):
    path = _write(tmp_path, "d.tsv", "t\ty\nx\ta\nx\tmaybe\nx\tb\nx\tperhaps\nx\tmaybe\n")
    with pytest.raises(TaskDataError) as caught:
        load(labels=["a", "b"], metrics=["accuracy"], text_a="t", label="y", train={"file": path}, dev={"file": path})
    assert str(caught.value) == (
        f"t: {path}: line 3: label 'maybe' (y) is not in the label set ['a', 'b']; 2 more row(s) are outside "
        "it too ('perhaps')"
    )
    ids = _write(tmp_path, "ids.jsonl", json.dumps({"t": "x", "y": 0}) + "\n" + json.dumps({"t": "x", "y": 3}) + "\n")
    with pytest.raises(TaskDataError, match=r"ids.jsonl: line 2: label 3 \(y\) is not a class id 0..1 \(label_ids\)"):
        load(labels=["a", "b"], label_ids=True, metrics=["accuracy"], text_a="t", label="y", train={"file": ids},
             dev={"file": ids})  # fmt: skip
    keyed = _write(tmp_path, "k.json", json.dumps({"17": {"t": "x", "y": "c"}}))
    with pytest.raises(TaskDataError, match=r"k.json: item '17': label 'c' \(y\) is not in the label set"):
        load(labels=["a", "b"], metrics=["accuracy"], text_a="t", label="y", train={"file": keyed},
             dev={"file": keyed})  # fmt: skip


def test_regression_reads_scores_and_checks_the_range(tmp_path):
    path = _write(tmp_path, "d.tsv", "a\tb\tscore\nx\ty\t4.5\nx\tz\t1\n")
    data = load(regression={"min": 1, "max": 5}, metrics=["pearson", "spearman"], text_a="a", text_b="b",
                label="score", train={"file": path}, dev={"file": path})  # fmt: skip
    assert data.train_labels.dtype == np.float32 and data.train_labels.tolist() == [4.5, 1.0]
    high = _write(tmp_path, "high.tsv", "a\tb\tscore\nx\ty\t4.5\nx\tz\t7\n")
    with pytest.raises(TaskDataError) as caught:
        load(regression={"min": 1, "max": 5}, metrics=["pearson"], text_a="a", text_b="b", label="score",
             train={"file": path}, dev={"file": high})  # fmt: skip
    assert str(caught.value) == f"t: {high}: line 3: score 7 (score) is outside the range [1, 5] (regression)"
    word = _write(tmp_path, "word.tsv", "a\tb\tscore\nx\ty\thigh\n")
    with pytest.raises(TaskDataError, match=r"word.tsv: line 2: score 'high' \(score\) is not a number"):
        load(regression={}, metrics=["pearson"], text_a="a", text_b="b", label="score", train={"file": word},
             dev={"file": word})  # fmt: skip


def test_where_keeps_the_rows_of_one_split(tmp_path):
    path = _write(tmp_path, "SICK.txt", "id\tA\tB\tlabel\tset\r\n1\ta\tb\tNEUTRAL\tTRAIN\r\n"
                                        "2\tc\td\tENTAILMENT\tTRIAL\r\n3\te\tf\tCONTRADICTION\tTRAIN")  # fmt: skip
    data = load(format="tsv", labels=["ENTAILMENT", "NEUTRAL", "CONTRADICTION"], metrics=["accuracy"], text_a="A",
                text_b="B", label="label", train={"file": path, "where": {"set": "TRAIN"}},
                dev={"file": path, "where": {"set": "TRIAL"}})  # fmt: skip
    assert data.train_a == ["a", "e"] and data.dev_a == ["c"] and data.train_labels.tolist() == [1, 2]
    with pytest.raises(TaskDataError, match=r"SICK.txt: no rows where set = TEST \(where\)"):
        load(format="tsv", labels=["NEUTRAL", "x"], metrics=["accuracy"], text_a="A", label="label",
             train={"file": path, "where": {"set": "TEST"}}, dev={"file": path})  # fmt: skip
    with pytest.raises(TaskDataError, match=r"SICK.txt: no column split \(where; have: id, A, B, label, set\)"):
        load(format="tsv", labels=["NEUTRAL", "x"], metrics=["accuracy"], text_a="A", label="label",
             train={"file": path, "where": {"split": "TEST"}}, dev={"file": path})  # fmt: skip


def test_dev_from_train_is_a_fixed_disjoint_share(tmp_path):
    path = _write(tmp_path, "d.jsonl", "".join(json.dumps({"t": f"row {i}", "y": i % 2}) + "\n" for i in range(50)))
    definition = {"labels": [0, 1], "metrics": ["accuracy"], "text_a": "t", "label": "y", "train": {"file": path},
                  "dev": {"from_train": 0.2}}  # fmt: skip
    first, again = load(**definition), load(**definition)
    assert len(first.dev_a) == 10 and len(first.train_a) == 40 and not set(first.dev_a) & set(first.train_a)
    assert first.dev_a == again.dev_a and first.dev_a == sorted(first.dev_a, key=lambda t: int(t.split()[1]))


def test_the_task_cap_and_the_protocol_cap_the_smaller_applies(tmp_path):
    path = _write(tmp_path, "d.jsonl", "".join(json.dumps({"t": f"row {i}", "y": i % 2}) + "\n" for i in range(50)))
    task = spec(labels=[0, 1], metrics=["accuracy"], text_a="t", label="y", train={"file": path}, dev={"file": path},
                max_train_examples=30, max_dev_examples=5)  # fmt: skip
    assert len(load_task(task, None, 0, None, None).train_a) == 30
    assert len(load_task(task, None, 0, 20, None).train_a) == 20
    assert len(load_task(task, None, 0, 40, 8).dev_a) == 5


def test_data_errors_name_the_task_the_file_and_the_field(tmp_path):
    good = _write(tmp_path, "good.tsv", "t\ty\nx\ta\n")
    base = {"labels": ["a", "b"], "metrics": ["accuracy"], "text_a": "t", "label": "y"}
    cases = {
        "columns.tsv": ("s\ty\nx\ta\n", {}, r"columns.tsv has no column t \(text_a; have: s, y\)"),
        "short.tsv": ("t\ty\nx\ta\nonly one field\n", {}, r"short.tsv: line 3 has 1 fields, the header has 2"),
        "rows.jsonl": ('{"t": "x", "y": "a"}\n["x", "a"]\n', {}, r"rows.jsonl: line 2 is a JSON list, not an object"),
        "field.jsonl": ('{"t": "x", "y": "a"}\n{"t": "x"}\n', {}, r"field.jsonl: line 2 has no field 'y' \(label\)"),
        "cut.jsonl": ('{"t": "x", "y": "a"}\n{"t": "x",\n', {}, r"cut.jsonl: line 2 is not valid JSON"),
        "bad.json": ('{"0": {"t": "x"', {}, r"bad.json: not valid JSON at line 1"),
        "null.json": ('[{"t": null, "y": "a"}]', {}, r"null.json: item \[0\]: t is null \(text_a\)"),
        "empty.csv": ("t,y\n", {}, r"empty.csv: no rows"),
        "quote.csv": ('t,y\n"x\n', {}, r"quote.csv: line \d: unexpected end of data"),
    }
    for name, (text, extra, message) in cases.items():
        path = _write(tmp_path, name, text)
        with pytest.raises(TaskDataError, match=rf"^t: .*{message}"):
            load(**base, **extra, train={"file": good}, dev={"file": path})


DEFINITION_ERRORS = [
    ({"metrics": ["acc"]}, "metrics", "unknown metric acc (expected one of: accuracy, f1, macro_f1"),
    ({"metrics": ["pearson"]}, "", "metric pearson scores regression, this is a classification task"),
    ({"labels": ["a", "b", "c"], "metrics": ["f1"]}, "", "metric f1 needs exactly two labels, the task has 3"),
    ({"labels": None}, "", "give exactly one of labels (classification) or regression"),
    ({"labels": ["a", "a"]}, "labels", "labels must be distinct; a repeat"),
    ({"encoding": "latin-9x"}, "encoding", "unknown encoding 'latin-9x'"),
    ({"delimiter": "::"}, "delimiter", "a delimiter is one character"),
    ({"train": {"file": "MISSING"}}, "train", "not found"),
    ({"train": {"file": "{data}.txt"}}, "", "train: cannot tell the format of"),
    ({"header": False}, "", "train: header: false needs columns"),
    ({"quoting": "csv", "maxsplit": 1}, "", "train: maxsplit needs quoting: none"),
    ({"label": None}, "", "train: no label field named"),
    ({"dev": None}, "", "give both train and dev, or neither"),
    ({"dev": {"from_train": 0.1, "encoding": "latin-1"}}, "dev", "from_train takes the training rows as read"),
    ({"dev": {"file": "{data}.tsv", "text_b": "b"}}, "", "text_b is set for some sources but not for train"),
    ({"synthetic": "topic"}, "", "a synthetic task is generated: drop train, dev"),
    ({"colour": "red"}, "colour", "unknown key"),
]


@pytest.mark.parametrize("change,field,message", DEFINITION_ERRORS, ids=[c[2][:40] for c in DEFINITION_ERRORS])
def test_definition_errors_stop_the_suite_naming_the_task_and_field(tmp_path, write_suite, change, field, message):
    data = _write(tmp_path, "data.tsv", "t\ty\nx\ta\n")
    _write(tmp_path, "data.txt", "t\ty\nx\ta\n")
    definition = {"labels": ["a", "b"], "metrics": ["accuracy"], "text_a": "t", "label": "y",
                  "train": {"file": data}, "dev": {"file": data}}  # fmt: skip
    for key, value in change.items():
        value = json.loads(json.dumps(value).replace("{data}", str(tmp_path / "data")))
        definition[key] = value
    suite = tiny_suite(arms={"only": {}})
    suite["base"]["eval"].update({"tasks": ["mine"], "task_defs": {"mine": definition}})
    with pytest.raises(ConfigError) as caught:
        load_suite(write_suite(suite))
    assert caught.value.key_path == "base.eval.task_defs.mine" + (f".{field}" if field else "")
    assert message in caught.value.message


def test_task_names_metrics_and_sources_are_checked_against_the_run(tmp_path, write_suite):
    data = _write(tmp_path, "d.tsv", "t\ty\nx\ta\n")
    mine = {"labels": ["a", "b"], "metrics": ["macro_f1"], "text_a": "t", "label": "y", "train": {"file": data},
            "dev": {"file": data}}  # fmt: skip
    suite = tiny_suite(arms={"only": {}})
    suite["base"]["eval"].update({"tasks": ["snli"]})
    with pytest.raises(ConfigError, match="unknown task 'snli' .*or declare it under eval.task_defs"):
        load_suite(write_suite(suite))
    suite["base"]["eval"].update({"tasks": ["sst2"], "task_defs": {"sst2": mine}})
    with pytest.raises(ConfigError, match="task_defs.sst2: sst2 is a built-in task"):
        load_suite(write_suite(suite))
    suite["base"]["eval"].update({"tasks": ["mine"], "task_defs": {"mine": mine}, "task_files": {"mine": {
        "train": data, "dev": data}}})  # fmt: skip
    with pytest.raises(ConfigError, match="task_files.mine: mine is declared in task_defs"):
        load_suite(write_suite(suite))
    del suite["base"]["eval"]["task_files"]
    suite["metrics"] = ["heldout_ppl", "mine.accuracy"]
    with pytest.raises(ConfigError, match="unknown metric 'mine.accuracy'"):
        load_suite(write_suite(suite))
    suite["metrics"] = ["heldout_ppl", "mine.macro_f1"]
    assert load_suite(write_suite(suite)).runs[0].config.eval.task("mine").metrics == ("macro_f1",)


def test_declared_tasks_leave_other_run_ids_unchanged(write_suite):
    plain = load_suite(write_suite(tiny_suite())).runs
    with_field = tiny_suite()
    with_field["base"]["eval"]["task_defs"] = None
    assert [r.run_id for r in load_suite(write_suite(with_field, "b.yaml")).runs] == [r.run_id for r in plain]


def _task_file(tmp_path: Path, data: str) -> Path:
    definitions = {
        "used": {"labels": ["a", "b"], "metrics": ["accuracy"], "text_a": "t", "label": "y", "train": {"file": data},
                 "dev": {"file": data}},
        "unused": {"regression": {}, "metrics": ["pearson"], "text_a": "t", "label": "y", "train": {"file": data},
                   "dev": {"file": data}},
    }  # fmt: skip
    path = tmp_path / "tasks.yaml"
    path.write_text(yaml.safe_dump(definitions))
    return path


def test_a_task_file_gives_each_run_the_definitions_it_names(tmp_path, write_suite):
    data = _write(tmp_path, "d.tsv", "t\ty\nx\ta\ny\tb\n")
    library = _task_file(tmp_path, data)
    # (arms that differ in eval alone would share one pretrained model: "without" trains another)
    other = {"train": {"lr": 1e-3}}
    suite = tiny_suite(tasks_from=[str(library)], arms={"with": {"eval": {"tasks": ["used"]}}, "without": other})
    suite["metrics"] = ["heldout_ppl"]
    runs = {r.arm: r for r in load_suite(write_suite(suite)).runs}
    assert list(runs["with"].config.eval.task_defs) == ["used"]
    assert runs["without"].config.eval.task_defs is None
    plain = tiny_suite(arms={"without": other})
    assert runs["without"].config == load_suite(write_suite(plain, "plain.yaml")).runs[0].config
    # the same definition inline gives the same config: the same run id, and the same task key
    inline = tiny_suite(arms={"with": {"eval": {"tasks": ["used"]}}})
    inline["base"]["eval"]["task_defs"] = {"used": load_task_definitions(library)["used"].model_dump(mode="json")}
    assert load_suite(write_suite(inline, "inline.yaml")).runs[0].config == runs["with"].config


def test_task_file_errors_name_the_task_file(tmp_path, write_suite):
    data = _write(tmp_path, "d.tsv", "t\ty\nx\ta\n")
    library = tmp_path / "tasks.yaml"
    library.write_text(yaml.safe_dump({"mine": {"labels": ["a", "b"], "metrics": ["accuracy", "spearman"],
                                                "text_a": "t", "label": "y", "train": {"file": data},
                                                "dev": {"file": data}}}))  # fmt: skip
    suite = tiny_suite(tasks_from=[str(library)])
    with pytest.raises(ConfigError) as caught:
        load_suite(write_suite(suite))
    assert (caught.value.source, caught.value.key_path) == (str(library), "mine")
    assert "metric spearman scores regression" in caught.value.message
    library.write_text(yaml.safe_dump({"rte": {"labels": ["a", "b"], "metrics": ["accuracy"], "hub": {
        "name": "x", "text_a": "t", "label": "y"}}}))  # fmt: skip
    with pytest.raises(ConfigError, match="rte is a built-in task"):
        load_suite(write_suite(suite))
    suite["tasks_from"] = [str(tmp_path / "absent.yaml")]
    with pytest.raises(ConfigError, match=r"tasks_from.0: task file .*absent.yaml not found"):
        load_suite(write_suite(suite))


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_registered_metric_scores_its_kind_of_task(name):
    metric = METRICS[name]
    if metric.task_kind == "regression":
        gold, predicted = np.array([0.0, 1.5, 2.0, 3.5]), np.array([0.2, 1.0, 2.5, 3.0])
    else:
        gold, predicted = np.array([0, 1, 1, 0, 1]), np.array([0, 1, 0, 0, 1])
    value = metric(gold, predicted)
    assert isinstance(value, float) and -1.0 <= value <= 1.0


def test_a_registered_metric_can_be_named_by_a_task(tmp_path):
    from sklearn.metrics import balanced_accuracy_score

    if "balanced_accuracy" not in METRICS:
        register("balanced_accuracy", Metric(balanced_accuracy_score, "classification"))
    with pytest.raises(ValueError, match="already registered"):
        register("accuracy", METRICS["accuracy"])
    task = spec(labels=[0, 1], metrics=["balanced_accuracy"], hub={"name": "x", "text_a": "t", "label": "y"})
    assert score(task, np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0])) == {"balanced_accuracy": 0.5}


# ------------------------------------------------------------------------------ built-in tasks

# what every built-in task was before it was written as data (harness/tasks.py's table)
BUILT_IN = {
    "sst2": (("0", "1"), ("accuracy",), False, "SST-2", ("sentence", None, "label"), ("sentence", None), "validation"),
    "cola": (("0", "1"), ("matthews",), False, "CoLA", ("sentence", None, "label"), ("sentence", None), "validation"),
    "mrpc": (("0", "1"), ("f1", "accuracy"), True, "MRPC", ("#1 String", "#2 String", "Quality"),
             ("sentence1", "sentence2"), "validation"),
    "qqp": (("0", "1"), ("f1", "accuracy"), True, "QQP", ("question1", "question2", "is_duplicate"),
            ("question1", "question2"), "validation"),
    "stsb": (None, ("pearson", "spearman"), True, "STS-B", ("sentence1", "sentence2", "score"),
             ("sentence1", "sentence2"), "validation"),
    "rte": (("entailment", "not_entailment"), ("accuracy",), True, "RTE", ("sentence1", "sentence2", "label"),
            ("sentence1", "sentence2"), "validation"),
    "qnli": (("entailment", "not_entailment"), ("accuracy",), True, "QNLI", ("question", "sentence", "label"),
             ("question", "sentence"), "validation"),
    "mnli": (("entailment", "neutral", "contradiction"), ("accuracy",), True, "MNLI",
             ("sentence1", "sentence2", "gold_label"), ("premise", "hypothesis"), "validation_matched"),
    "mnli-mm": (("entailment", "neutral", "contradiction"), ("accuracy",), True, "MNLI",
                ("sentence1", "sentence2", "gold_label"), ("premise", "hypothesis"), "validation_mismatched"),
}  # fmt: skip


def test_built_in_tasks_are_what_they_were():
    assert list(TASKS) == [*BUILT_IN, "synthetic-topic", "synthetic-pair"]
    for name, (labels, metrics, pair, folder, tsv, hub, hub_dev) in BUILT_IN.items():
        task, d = TASKS[name], TASKS[name].definition
        assert (task.labels, task.metrics, task.is_pair, task.is_regression) == (labels, metrics, pair, labels is None)
        assert (d.glue.folder, d.glue.text_a, d.glue.text_b, d.glue.label, d.glue.encoding) == (
            folder,
            *tsv,
            "utf-8-sig",
        )
        assert (d.hub.name, d.hub.config or name, d.hub.text_a, d.hub.text_b, d.hub.label) == ("nyu-mll/glue",
            name.removesuffix("-mm"), *hub, "label")  # fmt: skip
        assert d.hub.dev == hub_dev and d.hub.label_ids is (None if labels is None else True)
        assert d.max_train_examples is None and d.max_dev_examples is None
    assert TASKS["cola"].definition.glue.columns == ["source", "label", "original_label", "sentence"]
    assert (
        TASKS["mnli"].definition.glue.dev == "dev_matched" and TASKS["mnli-mm"].definition.glue.dev == "dev_mismatched"
    )
    assert TASKS["synthetic-topic"].labels == tuple("012345") and not TASKS["synthetic-topic"].is_pair
    assert TASKS["synthetic-pair"].is_pair and TASKS["synthetic-pair"].num_outputs == 2


SHARED_GLUE = SHARED_DATA / "glue"


def _before(task: str, path: Path):
    """How a GLUE TSV was read before tasks were data: `datasets`' CSV loader (pandas), every value as text."""
    import datasets

    old_layouts = {"sst2": ("sentence", None, "label"), "cola": ("sentence", None, "label"),
                   "mrpc": ("#1 String", "#2 String", "Quality"), "stsb": ("sentence1", "sentence2", "score"),
                   "rte": ("sentence1", "sentence2", "label"), "qnli": ("question", "sentence", "label")}  # fmt: skip
    options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE, "encoding": "utf-8-sig", "keep_default_na": False}
    if task == "cola":
        options.update(column_names=["source", "label", "original_label", "sentence"], header=None)
    table = datasets.load_dataset("csv", data_files=str(path), split="train", **options)
    a, b, label = old_layouts[task]
    labels = TASKS[task].labels
    raw = [str(x) for x in table[label]]
    ids = np.asarray([float(x) for x in raw], np.float32) if labels is None else [labels.index(x) for x in raw]
    return [str(x) for x in table[a]], [str(x) for x in table[b]] if b else None, np.asarray(ids)


GLUE_FILES = [("sst2", "SST-2", "train"), ("sst2", "SST-2", "dev"), ("cola", "CoLA", "train"), ("cola", "CoLA", "dev"),
              ("mrpc", "MRPC", "train"), ("mrpc", "MRPC", "dev"), ("stsb", "STS-B", "train"), ("stsb", "STS-B", "dev"),
              ("rte", "RTE", "train"), ("rte", "RTE", "dev"), ("qnli", "QNLI", "dev")]  # fmt: skip


@pytest.mark.skipif(not (SHARED_GLUE / "SST-2" / "dev.tsv").is_file(), reason="../shared/data/glue is not present")
@pytest.mark.parametrize("task,folder,split", GLUE_FILES, ids=[f"{f}-{s}" for _, f, s in GLUE_FILES])
def test_real_glue_files_read_exactly_as_before(task, folder, split):
    path = SHARED_GLUE / folder / f"{split}.tsv"
    # a GLUE file read as the task's training split (QNLI has no train file here: its dev as both)
    data = load_task(task, None, 0, None, None, files=(str(path), str(path)))
    a, b, labels = _before(task, path)
    assert data.train_a == a and data.train_b == b
    assert data.train_labels.dtype == labels.dtype and np.array_equal(data.train_labels, labels)
    if split == "dev":
        glue = load_glue_task(task, str(SHARED_GLUE)) if task != "qnli" else None
        assert glue is None or (glue.dev_a == a and np.array_equal(glue.dev_labels, labels))


SHARED_MNLI = SHARED_DATA / "mnli"


@pytest.mark.skipif(not (SHARED_MNLI / "dev_matched.jsonl").is_file(), reason="../shared/data/mnli is not present")
def test_real_mnli_json_files_read_exactly_as_before():
    train, dev = SHARED_MNLI / "ppft_train_subset" / "train.json", SHARED_MNLI / "dev_matched.jsonl"
    data = load_task("mnli", None, 0, None, None, files=(str(train), str(dev)))
    keyed = json.loads(train.read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in dev.read_text(encoding="utf-8").split("\n") if line.strip()]
    labels = TASKS["mnli"].labels
    assert data.train_a == [r["text_a"] for r in keyed.values()] and data.train_b == [
        r["text_b"] for r in keyed.values()
    ]
    assert data.dev_a == [r["premise"] for r in rows] and data.dev_b == [r["hypothesis"] for r in rows]
    assert data.dev_labels.tolist() == [labels.index(r["label"]) for r in rows]


# ------------------------------------------------------------------------------ shared data

SHARED_TASKS = Path(__file__).resolve().parents[1] / "ablations" / "tasks" / "shared-data.yaml"


@pytest.mark.skipif(not (SHARED_DATA / "sick" / "SICK.txt").is_file(), reason="../shared/data is not present")
def test_the_shipped_task_file_reads_the_shared_data(monkeypatch):
    monkeypatch.chdir(SHARED_TASKS.parents[2])  # its paths are relative to the repository root
    definitions = load_task_definitions(SHARED_TASKS)
    counts = {}
    for name, definition in definitions.items():
        data = load_task(TaskSpec(name, definition), None, 0, None, None)
        counts[name] = (len(data.train_a), len(data.dev_a))
        assert majority_baseline(TaskSpec(name, definition), data)
    assert counts == {"snli": (8999, 9842), "sick": (4439, 495), "sick-relatedness": (4439, 495),
                      "trec": (5452, 500), "imdb": (22500, 2500)}  # fmt: skip
    trec = load_task(TaskSpec("trec", definitions["trec"]), None, 0, None, None)
    assert trec.train_a[0] == "How did serfdom develop in and then leave Russia ?" and trec.train_labels[0] == 0
    assert "as a sister\u00f0city" in trec.train_a[65]  # its one byte above 0x7f, on line 66, read as Latin-1
    assert np.bincount(trec.dev_labels).tolist() == [138, 94, 9, 65, 81, 113]
    as_utf8 = definitions["trec"].model_copy(update={"encoding": None})
    with pytest.raises(TaskDataError, match=r"TREC.train.all: byte 0xf0 at offset 3173 \(line 66\) is not valid utf-8"):
        load_task(TaskSpec("trec", as_utf8), None, 0, None, None)


@pytest.mark.skipif(not (SHARED_DATA / "sick" / "SICK.txt").is_file(), reason="../shared/data is not present")
def test_a_declared_task_runs_end_to_end(tmp_path, write_suite, capsys):
    sick = Path(SHARED_DATA / "sick" / "SICK.txt")
    suite = tiny_suite(arms={"only": {}}, metrics=["heldout_ppl", "sick.accuracy", "sick.macro_f1"])
    suite["base"]["eval"].update({
        "tasks": ["sick"],
        "finetune": {"epochs": 1, "lr": 1e-3, "max_len": 48, "max_train_examples": 200, "max_eval_examples": 100},
        "task_defs": {"sick": {
            "format": "tsv", "text_a": "sentence_A", "text_b": "sentence_B", "label": "entailment_label",
            "labels": ["ENTAILMENT", "NEUTRAL", "CONTRADICTION"], "metrics": ["accuracy", "macro_f1"],
            "train": {"file": str(sick), "where": {"SemEval_set": "TRAIN"}},
            "dev": {"file": str(sick), "where": {"SemEval_set": "TRIAL"}}}},
    })  # fmt: skip
    out = tmp_path / "results"
    assert main(["run", str(write_suite(suite)), "--out", str(out), "--no-progress"]) == 0
    (run_dir,) = [p for p in (out / "t").iterdir() if p.is_dir()]
    summary = RunRecord(run_dir).summary
    result = summary["downstream"]["sick"]
    assert (result["train_examples"], result["dev_examples"]) == (200, 100)
    assert set(result["metrics"]) == {"accuracy", "macro_f1"} and "accuracy" in result["majority_baseline"]
    assert 0.0 <= summary["metrics"]["sick.accuracy"] <= 1.0
    report = (out / "reports" / "t" / "report.md").read_text()
    assert "sick.accuracy" in report and "sick.macro_f1" in report
    # harness eval knows the task from the run's own config
    assert main(["eval", str(run_dir), "--task", "sick"]) == 0
    assert "sick: median accuracy" in capsys.readouterr().out
    assert main(["eval", str(run_dir), "--task", "snli"]) == 2
    assert "unknown task 'snli'" in capsys.readouterr().err


def test_bad_task_data_stops_the_run_before_training(tmp_path, write_suite, capsys):
    good = _write(tmp_path, "train.tsv", "t\ty\nx\ta\ny\tb\n")
    bad = _write(tmp_path, "dev.tsv", "t\ty\nx\ta\ny\tc\n")
    suite = tiny_suite(arms={"only": {}})
    suite["base"]["eval"].update({"tasks": ["mine"], "task_defs": {"mine": {
        "labels": ["a", "b"], "metrics": ["accuracy"], "text_a": "t", "label": "y", "train": {"file": good},
        "dev": {"file": bad}}}})  # fmt: skip
    assert main(["run", str(write_suite(suite)), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"eval.tasks (mine): mine: {bad}: line 3: label 'c' (y) is not in the label set ['a', 'b']" in err
    assert not (tmp_path / "r").exists()


def test_run_config_round_trips_a_declared_task(tmp_path):
    data = _write(tmp_path, "d.csv", "t,y\nx,a\n")
    raw = {"train": {"steps": 1, "batch_size": 2}, "eval": {"tasks": ["mine"], "task_defs": {"mine": {
        "labels": ["a", "b"], "metrics": ["accuracy"], "text_a": "t", "label": "y", "train": {"file": data},
        "dev": {"file": data}}}}}  # fmt: skip
    config = RunConfig.model_validate(raw)
    again = RunConfig.model_validate(config.model_dump(mode="json"))
    assert again.run_id() == config.run_id() and again.eval.task("mine").labels == ("a", "b")
