"""Every bad input (a file, a flag, a record) ends with exit 2 and one message naming the file or
flag and what was expected: no traceback, and nothing written (no results, no cache, no report).

Each case runs the CLI's `main()` in this process (the same exit codes and messages as the
command, without a Python start per case); two cases also run as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import tiny_suite

from harness.cli import main

Setup = Callable[[Path], tuple[list[str], list[str]]]  # inputs dir -> (argv, what the message must say)

SENTENCES = "The cat sat on the mat. It was warm there. A dog came by later.\n"


def _suite(inputs: Path, name: str = "suite.yaml", **base: object) -> Path:
    """The tiny suite, each `base` entry (a dotted key) set, written into inputs."""
    suite = tiny_suite()
    for dotted, value in base.items():
        node = suite["base"]
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path = inputs / name
    path.write_text(yaml.safe_dump(suite))
    return path


def _corpus_suite(inputs: Path, corpus: Path, **fields: object) -> Path:
    return _suite(inputs, data__corpus={"source": "files", "paths": [str(corpus)], **fields})


def _run(suite: Path, *flags: str) -> list[str]:
    return ["run", str(suite), "--no-progress", *flags]


def _file(inputs: Path, name: str, content: str | bytes) -> Path:
    path = inputs / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _documents(count: int) -> str:
    return "\n".join(SENTENCES for _ in range(count))


# --------------------------------------------------------------------------------- corpus files


def empty_corpus(inputs: Path):
    corpus = _file(inputs, "empty.txt", "")
    return _run(_corpus_suite(inputs, corpus)), [str(corpus), "no non-empty document"]


def blank_corpus(inputs: Path):
    corpus = _file(inputs, "blank.txt", "\n  \n\t\n\n")
    return _run(_corpus_suite(inputs, corpus)), [str(corpus), "no non-empty document"]


def one_giant_line(inputs: Path):
    corpus = _file(inputs, "giant.txt", SENTENCES.strip() * 2000)
    return _run(_corpus_suite(inputs, corpus)), [str(corpus), "1 document(s)", "too few"]


def latin1_corpus(inputs: Path):
    corpus = _file(inputs, "latin1.txt", _documents(40).encode() + "Caf\u00e9 au lait.\n".encode("latin-1"))
    offset = len(_documents(40).encode()) + 3
    return _run(_corpus_suite(inputs, corpus)), [str(corpus), f"offset {offset}", "utf-8", "data.corpus.encoding"]


def binary_corpus(inputs: Path):
    corpus = _file(inputs, "binary.txt", bytes(range(120, 256)) * 20)
    return _run(_corpus_suite(inputs, corpus)), [str(corpus), "offset 8", "not valid utf-8"]


def utf16_corpus_cut_mid_character(inputs: Path):
    corpus = _file(inputs, "utf16.txt", _documents(40).encode("utf-16-le") + b"x")
    offset = len(_documents(40).encode("utf-16-le"))
    return _run(_corpus_suite(inputs, corpus, encoding="utf-16-le")), [str(corpus), f"offset {offset}", "utf-16-le"]


def unknown_encoding(inputs: Path):
    corpus = _file(inputs, "c.txt", _documents(40))
    return _run(_corpus_suite(inputs, corpus, encoding="utf-9")), ["data.corpus.encoding", "unknown encoding"]


def jsonl_bad_line_6(inputs: Path):
    lines = [json.dumps({"text": SENTENCES}) for _ in range(40)]
    lines[5] = '{"text": "Doc five.", "x": }'
    corpus = _file(inputs, "c.jsonl", "\n".join(lines) + "\n")
    return _run(_corpus_suite(inputs, corpus)), [str(corpus), "line 6", "not valid JSON"]


def jsonl_line_not_an_object(inputs: Path):
    lines = [json.dumps({"text": SENTENCES}) for _ in range(40)]
    lines[2] = json.dumps(["a", "list"])
    corpus = _file(inputs, "c.jsonl", "\n".join(lines) + "\n")
    return _run(_corpus_suite(inputs, corpus)), [str(corpus), "line 3", "not an object"]


def jsonl_without_the_text_field(inputs: Path):
    corpus = _file(inputs, "c.jsonl", "\n".join(json.dumps({"body": SENTENCES}) for _ in range(40)) + "\n")
    return _run(_corpus_suite(inputs, corpus)), [str(corpus), "line 1", "'text'", "data.corpus.text_field"]


def parquet_that_is_not_parquet(inputs: Path):
    corpus = _file(inputs, "c.parquet", _documents(40))
    return _run(_corpus_suite(inputs, corpus)), [str(corpus), "not a readable Parquet file"]


def missing_corpus_file(inputs: Path):
    return _run(_corpus_suite(inputs, inputs / "nope.txt")), ["data.corpus.paths", "nope.txt", "not found"]


def glob_matching_nothing(inputs: Path):
    return _run(_corpus_suite(inputs, inputs / "shards-*.txt")), ["data.corpus.paths", "shards-*.txt"]


# ---------------------------------------------------------------------------------- suite files


def missing_suite(inputs: Path):
    return _run(inputs / "nope.yaml"), ["nope.yaml", "suite file not found"]


def suite_yaml_syntax_error(inputs: Path):
    path = _file(inputs, "s.yaml", "name: t\nbase:\n  train: {lr: 1e-3\narms: {a: {}}\n")
    return _run(path), [str(path), "not valid YAML", "line"]


def suite_not_a_mapping(inputs: Path):
    path = _file(inputs, "s.yaml", "- a\n- b\n")
    return _run(path), [str(path), "expected a mapping"]


def suite_in_latin1(inputs: Path):
    path = _file(inputs, "s.yaml", "name: caf\u00e9\n".encode("latin-1"))
    return _run(path), [str(path), "offset 9", "utf-8"]


def suite_unknown_key(inputs: Path):
    path = _file(inputs, "s.yaml", yaml.safe_dump({**tiny_suite(), "colour": "blue"}))
    return _run(path), [str(path), "colour", "unknown key"]


def suite_wrong_type(inputs: Path):
    return _run(_suite(inputs, train__steps="many")), ["suite.yaml", "base.train.steps", "valid integer"]


def suite_infinite_lr(inputs: Path):
    return _run(_suite(inputs, train__lr=float("inf"))), ["suite.yaml", "base.train.lr", "finite"]


def suite_nan_clip(inputs: Path):
    return _run(_suite(inputs, train__clip_norm=float("nan"))), ["suite.yaml", "base.train.clip_norm", "finite"]


def search_space_to_infinity(inputs: Path):
    space = {"train.lr": {"type": "log_float", "low": 1e-5, "high": float("inf")}}
    suite = tiny_suite(search={"objective": {"metric": "heldout_loss"}, "space": space})
    path = _file(inputs, "s.yaml", yaml.safe_dump(suite))
    return ["search", str(path)], [str(path), "search.space.train.lr.high", "finite"]


def task_file_missing(inputs: Path):
    suite = tiny_suite(tasks_from=[str(inputs / "tasks.yaml")])
    path = _file(inputs, "s.yaml", yaml.safe_dump(suite))
    return _run(path), [str(path), "tasks_from.0", "not found"]


def task_file_unknown_key(inputs: Path):
    tasks = _file(inputs, "tasks.yaml", yaml.safe_dump({"mytask": {"labelz": ["a", "b"], "metrics": ["accuracy"]}}))
    path = _file(inputs, "s.yaml", yaml.safe_dump(tiny_suite(tasks_from=[str(tasks)])))
    return _run(path), [str(tasks), "mytask.labelz", "unknown key"]


def task_file_yaml_error(inputs: Path):
    tasks = _file(inputs, "tasks.yaml", "mytask: {labels: [a, b]\n")
    path = _file(inputs, "s.yaml", yaml.safe_dump(tiny_suite(tasks_from=[str(tasks)])))
    return _run(path), [str(tasks), "not valid YAML", "line"]


def _task_suite(inputs: Path, train_file: Path, **definition: object) -> Path:
    task = {"train": {"file": str(train_file)}, "dev": {"file": str(train_file)}, **definition}
    tasks = _file(inputs, "tasks.yaml", yaml.safe_dump({"mytask": task}))
    suite = tiny_suite(tasks_from=[str(tasks)])
    suite["base"]["eval"]["tasks"] = ["mytask"]
    return _file(inputs, "s.yaml", yaml.safe_dump(suite))


def task_regression_nan_score(inputs: Path):
    rows = "sentence\tscore\n" + "".join(f"text {i}\t{i % 5}\n" for i in range(9)) + "text nan\tnan\n"
    data = _file(inputs, "scores.tsv", rows)
    path = _task_suite(inputs, data, text_a="sentence", label="score", regression={}, metrics=["pearson"])
    return _run(path), [str(data), "line 11", "'nan'", "finite"]


def task_jsonl_bad_line(inputs: Path):
    lines = [json.dumps({"sentence": f"text {i}", "label": "a" if i % 2 else "b"}) for i in range(9)]
    lines[6] = '{"sentence": "seven", "label": }'
    data = _file(inputs, "t.jsonl", "\n".join(lines) + "\n")
    path = _task_suite(inputs, data, text_a="sentence", label="label", labels=["a", "b"], metrics=["accuracy"])
    return _run(path), [str(data), "line 7", "not valid JSON"]


def glue_task_without_glue_dir(inputs: Path):
    tasks = {"mytask": {"glue": {"folder": "MY"}, "text_a": "sentence", "label": "label", "labels": ["0", "1"],
                        "metrics": ["accuracy"]}}  # fmt: skip
    suite = tiny_suite(tasks_from=[str(_file(inputs, "tasks.yaml", yaml.safe_dump(tasks)))])
    suite["base"]["eval"]["tasks"] = ["mytask"]
    path = _file(inputs, "s.yaml", yaml.safe_dump(suite))
    return _run(path), [str(path), "mytask", "set eval.glue_dir"]


# ----------------------------------------------------------------------------------------- flags


def set_infinite_lr(inputs: Path):
    return _run(_suite(inputs), "--set", "train.lr=.inf"), ["--set", "train.lr", "finite"]


def set_nan_text(inputs: Path):
    return _run(_suite(inputs), "--set", "masking.mask_prob=nan"), ["--set", "masking.mask_prob", "finite"]


def set_without_equals(inputs: Path):
    return _run(_suite(inputs), "--set", "train.lr"), ["--set", "KEY.PATH=VALUE"]


def set_unknown_key(inputs: Path):
    return _run(_suite(inputs), "--set", "train.lrr=1e-3"), ["--set", "train.lrr", "unknown key"]


def set_bad_yaml_value(inputs: Path):
    return _run(_suite(inputs), "--set", "train.lr=[1,"), ["--set", "train.lr", "not valid YAML"]


def set_unknown_scale(inputs: Path):
    return _run(_suite(inputs), "--set", "scale=huge"), ["--set", "scale", "declares no scales"]


def unknown_arm(inputs: Path):
    return _run(_suite(inputs), "--arm", "nope"), ["suite.yaml", "no arm named nope"]


def bad_shard(inputs: Path):
    return _run(_suite(inputs), "--shard", "3/2"), ["--shard", "1 <= I <= N"]


def shard_not_a_fraction(inputs: Path):
    return _run(_suite(inputs), "--shard", "half"), ["--shard", "I/N"]


def checkpoint_every_negative(inputs: Path):
    return _run(_suite(inputs), "--checkpoint-every", "-1"), ["--checkpoint-every", ">= 0", "'-1'"]


def keep_checkpoints_negative(inputs: Path):
    return _run(_suite(inputs), "--keep-checkpoints", "-3"), ["--keep-checkpoints", ">= 1", "'-3'"]


def jobs_zero(inputs: Path):
    return _run(_suite(inputs), "--jobs", "0"), ["--jobs", ">= 1"]


def threads_not_a_number(inputs: Path):
    return _run(_suite(inputs), "--threads", "many"), ["--threads", "an integer"]


def spike_factor_nan(inputs: Path):
    return _run(_suite(inputs), "--spike-factor", "nan"), ["--spike-factor", "finite"]


def spike_factor_below_one(inputs: Path):
    return _run(_suite(inputs), "--spike-factor", "0.5"), ["--spike-factor", "> 1"]


def gpus_empty(inputs: Path):
    return _run(_suite(inputs), "--gpus", "0,,0"), ["--gpus", "GPU ids"]


def out_is_a_file(inputs: Path):
    out = _file(inputs, "results.txt", "not a directory\n")
    return _run(_suite(inputs), "--out", str(out)), ["--out", str(out), "not a directory"]


def out_below_a_file(inputs: Path):
    out = _file(inputs, "results.txt", "not a directory\n")
    return _run(_suite(inputs), "--out", str(out / "sub")), ["--out", str(out), "not a directory"]


def report_out_is_a_file(inputs: Path):
    out = _file(inputs, "report.md", "# a report\n")
    return _run(_suite(inputs), "--report-out", str(out)), ["--report-out", str(out), "not a directory"]


def device_unknown(inputs: Path):
    return _run(_suite(inputs), "--device", "tpu"), ["--device", "invalid choice"]


def data_epochs_zero(inputs: Path):
    return ["data", str(_suite(inputs)), "--epochs", "0"], ["--epochs", ">= 1"]


def data_empty_corpus(inputs: Path):
    corpus = _file(inputs, "empty.txt", "\n\n")
    return ["data", str(_corpus_suite(inputs, corpus))], [str(corpus), "no non-empty document"]


def search_without_a_search_section(inputs: Path):
    return ["search", str(_suite(inputs))], ["suite.yaml", "search", "no search section"]


def search_workers_zero(inputs: Path):
    return ["search", str(_suite(inputs)), "--workers", "0"], ["--workers", ">= 1"]


def search_trials_zero(inputs: Path):
    return ["search", str(_suite(inputs)), "--trials", "0"], ["--trials", ">= 1"]


def search_timeout_infinite(inputs: Path):
    return ["search", str(_suite(inputs)), "--timeout-s", "inf"], ["--timeout-s", "finite"]


def bench_steps_zero(inputs: Path):
    return ["bench", "--steps", "0"], ["--steps", ">= 1"]


def bench_warmup_zero(inputs: Path):
    return ["bench", "--warmup", "0"], ["--warmup", ">= 1"]


def bench_json_below_a_file(inputs: Path):
    blocker = _file(inputs, "bench", "a file\n")
    return ["bench", "--json", str(blocker / "out.json")], ["--json", str(blocker), "not a directory"]


def bench_jobs_rounds_zero(inputs: Path):
    return ["bench", "jobs", str(_suite(inputs)), "--rounds", "0"], ["--rounds", ">= 1"]


def bench_jobs_side_limit_zero(inputs: Path):
    return ["bench", "jobs", str(_suite(inputs)), "--side-limit-s", "0"], ["--side-limit-s", "> 0"]


# --------------------------------------------------------------------------------------- records


def eval_of_a_directory_without_a_run(inputs: Path):
    empty = inputs / "not-a-run"
    empty.mkdir()
    return ["eval", str(empty)], [str(empty), "config.json"]


def export_of_a_directory_without_a_run(inputs: Path):
    empty = inputs / "not-a-run"
    empty.mkdir()
    return ["export", str(empty), "--out", str(inputs / "hf")], [str(empty)]


def export_out_is_a_file(inputs: Path):
    out = _file(inputs, "hf", "a file\n")
    return ["export", str(inputs), "--out", str(out)], ["--out", str(out), "not a directory"]


def report_out_is_a_file_too(inputs: Path):
    out = _file(inputs, "report", "a file\n")
    return ["report", str(inputs), "--out", str(out)], ["--out", str(out), "not a directory"]


def curves_out_below_a_file(inputs: Path):
    blocker = _file(inputs, "bench", "a file\n")
    return ["curves", str(inputs), "--out", str(blocker / "c.json")], ["--out", str(blocker), "not a directory"]


def index_out_is_a_directory(inputs: Path):
    return ["index", str(inputs), "--out", str(inputs)], ["--out", str(inputs), "is a directory"]


def ls_of_a_file(inputs: Path):
    afile = _file(inputs, "results", "a file\n")
    return ["ls", str(afile)], [str(afile), "not a directory"]


def ls_of_a_missing_directory(inputs: Path):
    return ["ls", str(inputs / "nowhere")], [str(inputs / "nowhere"), "no such directory"]


def report_of_a_directory_without_runs(inputs: Path):
    empty = inputs / "results"
    empty.mkdir()
    return ["report", str(empty), "--out", str(inputs / "report")], [str(empty), "no run records"]


def migrate_of_a_missing_directory(inputs: Path):
    return ["migrate", str(inputs / "nowhere")], [str(inputs / "nowhere"), "not a results directory"]


def run_over_incompatible_records(inputs: Path):
    from harness.suite import load_suite

    path = _suite(inputs)
    run = load_suite(path).runs[0]
    old = inputs / "old-results" / "t" / run.run_id
    old.mkdir(parents=True)
    (old / "config.json").write_text(json.dumps({"schema_version": 0, "suite": "t"}))
    return _run(path, "--out", str(inputs / "old-results")), [str(old / "config.json"), "schema 0"]


BAD_INPUTS: list[Setup] = [
    # corpus files
    empty_corpus, blank_corpus, one_giant_line, latin1_corpus, binary_corpus, utf16_corpus_cut_mid_character,
    unknown_encoding, jsonl_bad_line_6, jsonl_line_not_an_object, jsonl_without_the_text_field,
    parquet_that_is_not_parquet, missing_corpus_file, glob_matching_nothing,
    # suite files
    missing_suite, suite_yaml_syntax_error, suite_not_a_mapping, suite_in_latin1, suite_unknown_key,
    suite_wrong_type, suite_infinite_lr, suite_nan_clip, search_space_to_infinity, task_file_missing,
    task_file_unknown_key, task_file_yaml_error, task_regression_nan_score, task_jsonl_bad_line,
    glue_task_without_glue_dir,
    # flags
    set_infinite_lr, set_nan_text, set_without_equals, set_unknown_key, set_bad_yaml_value, set_unknown_scale,
    unknown_arm, bad_shard, shard_not_a_fraction, checkpoint_every_negative, keep_checkpoints_negative, jobs_zero,
    threads_not_a_number, spike_factor_nan, spike_factor_below_one, gpus_empty, out_is_a_file, out_below_a_file,
    report_out_is_a_file, device_unknown, data_epochs_zero, data_empty_corpus, search_without_a_search_section,
    search_workers_zero, search_trials_zero, search_timeout_infinite, bench_steps_zero, bench_warmup_zero,
    bench_json_below_a_file, bench_jobs_rounds_zero, bench_jobs_side_limit_zero,
    # records
    eval_of_a_directory_without_a_run, export_of_a_directory_without_a_run, export_out_is_a_file,
    report_out_is_a_file_too, curves_out_below_a_file, index_out_is_a_directory, ls_of_a_file,
    ls_of_a_missing_directory, report_of_a_directory_without_runs, migrate_of_a_missing_directory,
    run_over_incompatible_records,
]  # fmt: skip


def _tree(root: Path) -> dict[str, int]:
    """Every path under root with its size (directories: -1), to see that nothing was written."""
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1) for p in root.rglob("*")}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """inputs/ holds the bad input; the command runs in work/ with its results root there, so a
    default results/, _cache/ or reports/ would show up under tmp_path too."""
    inputs, work = tmp_path / "inputs", tmp_path / "work"
    inputs.mkdir()
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path, inputs


def check_refused(status: int, err: str, needles: list[str], before: dict, after: dict) -> None:
    assert status == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"one message line, got:\n{err}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert after == before, f"written: {sorted(set(after) - set(before))}"


@pytest.mark.parametrize("setup", BAD_INPUTS, ids=[s.__name__ for s in BAD_INPUTS])
def test_bad_input_exits_2_with_one_message_and_writes_nothing(setup, workdir, capsys):
    root, inputs = workdir
    argv, needles = setup(inputs)
    if argv[0] in ("run", "data", "search") and "--out" not in argv:
        argv += ["--out", str(root / "work" / "results")]
    before = _tree(root)
    capsys.readouterr()
    status = main(argv)
    check_refused(status, capsys.readouterr().err, needles, before, _tree(root))


def test_the_table_holds_at_least_30_bad_inputs():
    assert len(BAD_INPUTS) >= 30


@pytest.mark.parametrize("setup", [latin1_corpus, checkpoint_every_negative], ids=["latin1", "checkpoint-every"])
def test_the_real_command_prints_no_traceback(setup, workdir):
    """The same refusals from a real `python -m harness` process: exit 2, one line, no traceback."""
    root, inputs = workdir
    argv, needles = setup(inputs)
    before = _tree(root)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "harness", *argv], capture_output=True, text=True, env=env, timeout=120
    )
    check_refused(done.returncode, done.stderr, needles, before, _tree(root))


def test_a_read_only_results_root_is_refused(workdir, capsys, monkeypatch):
    """A directory the process may not write into (root may write anywhere, so the permission check
    itself is what is simulated here)."""
    root, inputs = workdir
    locked = inputs / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != locked and real_access(p, mode, **kw))
    argv = _run(_suite(inputs), "--out", str(locked / "results"))
    before = _tree(root)
    status = main(argv)
    check_refused(status, capsys.readouterr().err, ["--out", str(locked), "cannot write"], before, _tree(root))


def test_every_case_defined_is_in_the_table():
    """A case written but left out of BAD_INPUTS would never run."""
    setups = [v for v in globals().values() if callable(v) and getattr(v, "__module__", "") == __name__]
    defined = {v.__name__ for v in setups if list(getattr(v, "__annotations__", {})) == ["inputs"]}
    assert defined == {setup.__name__ for setup in BAD_INPUTS}


# ------------------------------------------------------------- what the messages point to works


def test_the_encoding_a_message_asks_for_reads_the_corpus(tmp_path):
    from harness.config import FilesCorpus
    from harness.data.sources import iter_documents

    text = tmp_path / "latin1.txt"
    text.write_bytes("Caf\u00e9 au lait.\n\nNa\u00efve art.\n".encode("latin-1"))
    corpus = FilesCorpus(source="files", paths=[str(text)], encoding="latin-1")
    assert list(iter_documents(corpus)) == ["Caf\u00e9 au lait.", "Na\u00efve art."]
    rows = tmp_path / "cp1252.jsonl"
    rows.write_bytes('{"text": "\u201cQuoted\u201d"}\r\n\r\n{"text": "Second."}\n'.encode("cp1252"))
    corpus = FilesCorpus(source="files", paths=[str(rows)], encoding="cp1252")
    assert list(iter_documents(corpus)) == ["\u201cQuoted\u201d", "Second."]


def test_json_corpus_rows_are_numbered_by_their_line(tmp_path):
    from harness.config import FilesCorpus
    from harness.data.sources import DataSourceError, iter_documents

    listed = tmp_path / "rows.json"  # a .json file may hold one JSON list of rows
    listed.write_text('\n[\n  {"text": "One."},\n  {"text": null},\n  {"text": "Two."}\n]\n')
    assert list(iter_documents(FilesCorpus(source="files", paths=[str(listed)]))) == ["One.", "Two."]
    listed.write_text('\n[\n  {"text": "One."},\n  {"text": },\n]\n')
    with pytest.raises(DataSourceError, match=r"rows.json: line 4 is not valid JSON"):
        list(iter_documents(FilesCorpus(source="files", paths=[str(listed)])))
    # a row without the field is an empty document, as a missing column value is
    lines = tmp_path / "rows.jsonl"
    lines.write_text('{"text": "One."}\n\n{"title": "no text"}\n{"text": "Two.\\u2028Still two."}\n')
    assert list(iter_documents(FilesCorpus(source="files", paths=[str(lines)]))) == ["One.", "Two.\u2028Still two."]


def test_an_unset_encoding_leaves_run_ids_and_cached_documents_where_they_were(tmp_path):
    from harness.config import run_id_of, validate_run_config
    from harness.data.pipeline import documents_inputs

    text = _file(tmp_path, "c.txt", _documents(40))
    raw = {"data": {"corpus": {"source": "files", "paths": [str(text)]}}, "train": {"batch_size": 8, "steps": 1}}
    config = validate_run_config(raw, "x")
    before = config.model_dump(mode="json")
    del before["data"]["corpus"]["encoding"]  # a config as written before the field existed
    assert config.run_id() == run_id_of(before)
    assert "encoding" not in documents_inputs(config.data)["corpus"]
    raw["data"]["corpus"]["encoding"] = "latin-1"
    latin1 = validate_run_config(raw, "x")
    assert latin1.run_id() != config.run_id()
    assert documents_inputs(latin1.data)["corpus"]["encoding"] == "latin-1"


def test_a_corpus_whose_documents_are_cached_is_not_read_again(tmp_path, monkeypatch):
    from harness.config import DataConfig, FilesCorpus
    from harness.data import pipeline
    from harness.data.cache import StageCache

    text = _file(tmp_path, "c.txt", _documents(40))
    config = DataConfig(corpus=FilesCorpus(source="files", paths=[str(text)]))
    cache = StageCache(tmp_path / "_cache")
    pipeline.check_corpus(config, cache)  # a sound corpus passes
    pipeline.cached(cache, "documents", pipeline.documents_inputs(config), pipeline.build_documents, config)

    def unread(corpus):
        raise AssertionError("read again")

    monkeypatch.setattr(pipeline, "iter_documents", unread)
    pipeline.check_corpus(config, cache)


def test_boundary_values_of_the_flags_are_accepted():
    from harness.cli import build_parser

    args = build_parser().parse_args(["run", "s.yaml", "--checkpoint-every", "0", "--keep-checkpoints", "1",
                                      "--spike-factor", "0", "--jobs", "1", "--threads", "1"])  # fmt: skip
    assert (args.checkpoint_every, args.keep_checkpoints, args.spike_factor, args.jobs) == (0, 1, 0.0, 1)
    assert build_parser().parse_args(["run", "s.yaml", "--spike-factor", "1.5"]).spike_factor == 1.5
    assert build_parser().parse_args(["search", "s.yaml", "--timeout-s", "0.5"]).timeout_s == 0.5


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_a_read_only_directory_is_refused_for_real(workdir, capsys):
    root, inputs = workdir
    locked = inputs / "locked"
    locked.mkdir(mode=0o555)
    argv = _run(_suite(inputs), "--out", str(locked / "results"))
    before = _tree(root)
    try:
        status = main(argv)
    finally:
        locked.chmod(0o755)  # so that pytest can remove it
    check_refused(status, capsys.readouterr().err, ["--out", str(locked), "cannot write"], before, _tree(root))
