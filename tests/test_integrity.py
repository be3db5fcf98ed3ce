"""Nothing damaged is trusted: each artifact the harness reuses is truncated (or garbled) in a copy of
one finished tiny suite, then `run`, `ls`, `report`, `eval`, `export` or `data` meet it. Each names the
damaged file, rebuilds or re-runs what it can, never calls a damaged run done, never shows a traceback."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_suite

from harness.cli import main
from harness.data.cache import stage_problem
from harness.integrity import CONTENTS, file_check
from harness.records import RunRecord, read_json, read_record

TASK = "synthetic-topic"


def integrity_suite() -> dict:
    """One short run fine-tuned on one synthetic task with one seed: a few seconds on a CPU."""
    suite = tiny_suite(arms={"dynamic": {}})
    suite["base"]["train"].update({"steps": 4})
    suite["base"]["eval"] = {
        "heldout_sequences": 16,
        "tasks": [TASK],
        "finetune": {"epochs": 1, "seeds": [0], "max_train_examples": 64, "max_eval_examples": 32},
    }
    return suite


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A results root holding the suite finished once (copied by each test before it damages it)."""
    root = tmp_path_factory.mktemp("integrity")
    (root / "suite.yaml").write_text(yaml.safe_dump(integrity_suite()))
    assert main(["run", str(root / "suite.yaml"), "--out", str(root / "results"), "--no-progress", "--no-report"]) == 0
    return root


@pytest.fixture
def copy(finished, tmp_path) -> Path:
    shutil.copytree(finished, tmp_path / "root")
    return tmp_path / "root"


def run_dir(root: Path) -> Path:
    (directory,) = [p for p in (root / "results" / "t").iterdir() if p.is_dir()]
    return directory


def cut(path: Path, keep: int) -> tuple[int, int]:
    """Truncate a file to `keep` bytes (a write cut short); returns (kept, original) sizes."""
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:keep])
    return keep, size


def harness(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert "Traceback" not in output
    return code, output


def run_suite(root: Path, capsys) -> tuple[int, str]:
    return harness(capsys, "run", str(root / "suite.yaml"), "--out", str(root / "results"), "--no-progress",
                   "--no-report")  # fmt: skip


def ls_state(root: Path, capsys) -> str:
    code, output = harness(capsys, "ls", str(root / "results"))
    assert code == 0
    (row,) = [line for line in output.splitlines() if run_dir(root).name in line]
    return row


# ------------------------------------------------------------------------------------- cached stages


def stage_dir(root: Path, stage: str, holding: str) -> Path:
    """The cached stage of that kind with the biggest `holding` file (the training split's, for format)."""
    found = sorted((root / "results" / "_cache" / stage).glob(f"*/{holding}"), key=lambda p: p.stat().st_size)
    return found[-1].parent


@pytest.mark.parametrize(
    ("stage", "damaged", "keep"),
    [("format", "tokens.npy", 1000), ("tokenizer", "tokenizer.json", 500)],
)
def test_a_truncated_cached_stage_is_named_once_and_rebuilt(copy, capsys, stage, damaged, keep):
    directory = stage_dir(copy, stage, damaged)
    whole = (directory / damaged).read_bytes()
    kept, size = cut(directory / damaged, keep)
    code, output = harness(capsys, "data", str(copy / "suite.yaml"), "--out", str(copy / "results"))
    assert code == 0
    line = f"cached stage {stage}/{directory.name} damaged ({damaged}: {kept} bytes, {size} were written); rebuilding"
    assert output.count("damaged") == 1 and f"data: {line}" in output
    assert (directory / damaged).read_bytes() == whole  # rebuilt in place, the same bytes
    assert stage_problem(directory) is None
    assert not [p for p in directory.parent.iterdir() if p.name.startswith(".")], "no temp or damaged folder left"


def test_a_stage_from_before_content_checks_is_checked_by_structure_then_recorded(copy, capsys):
    directory = stage_dir(copy, "format", "tokens.npy")
    (directory / CONTENTS).unlink()
    kept, _ = cut(directory / "tokens.npy", 1000)
    code, output = harness(capsys, "data", str(copy / "suite.yaml"), "--out", str(copy / "results"))
    assert code == 0
    assert re.search(rf"format/{directory.name} damaged \(tokens.npy: {kept} bytes, its header says \d+\); rebuilding",
                     output)  # fmt: skip
    assert read_json(directory / CONTENTS)["files"]["tokens.npy"] == file_check(directory / "tokens.npy")


def test_temp_folders_of_killed_builds_are_removed_but_not_a_live_build(copy, capsys):
    stages = copy / "results" / "_cache" / "format"
    dead, live = stages / ".0123456789abcdef-killed", stages / ".0123456789abcdef-building"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "tokens.npy").write_bytes(b"half")
        an_hour_ago = time.time() - 3600  # before this process started
        os.utime(folder, (an_hour_ago, an_hour_ago))
    held = os.open(live, os.O_RDONLY)  # as a concurrent builder holds its temp folder
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        code, output = harness(capsys, "data", str(copy / "suite.yaml"), "--out", str(copy / "results"))
    finally:
        os.close(held)
    assert code == 0
    assert not dead.exists() and f"removed {dead}, left by a build that did not finish" in output
    assert live.exists() and str(live) not in output


# ----------------------------------------------------------------------------------------- run records


def test_a_truncated_summary_is_never_done_and_the_run_runs_again(copy, finished, capsys):
    directory = run_dir(copy)
    kept, size = cut(directory / "summary.json", 100)
    problem = f"summary.json: {kept} bytes, {size} were written"
    assert not RunRecord(directory).is_done()
    row = ls_state(copy, capsys)
    assert f"damaged ({problem})" in row and " done " not in row
    code, output = run_suite(copy, capsys)
    assert code == 0
    assert f"damaged: {problem}: it is run again" in output and "already done" not in output
    assert RunRecord(directory).is_done()
    assert RunRecord(directory).summary["metrics"] == RunRecord(run_dir(finished)).summary["metrics"]
    assert " done " in ls_state(copy, capsys)


def test_a_truncated_finished_checkpoint_fails_eval_and_export_by_name_and_the_run_trains_again(
    copy, finished, capsys, tmp_path
):
    directory = run_dir(copy)
    kept, size = cut(directory / "checkpoint" / "model.safetensors", 1000)
    problem = f"checkpoint/model.safetensors: {kept} bytes, {size} were written"
    assert f"damaged ({problem})" in ls_state(copy, capsys)
    for command in (["eval", str(directory)], ["export", str(directory), "--out", str(tmp_path / "hf")]):
        code, output = harness(capsys, *command)
        assert code == 2, command
        (line,) = output.strip().splitlines()
        assert line.startswith(f"error: {directory}: damaged: {problem}"), line
    assert not (tmp_path / "hf").exists()
    code, output = run_suite(copy, capsys)
    assert code == 0 and f"damaged: {problem}: it is run again" in output and "training on" in output
    assert (directory / "checkpoint" / "model.safetensors").stat().st_size == size
    assert " done " in ls_state(copy, capsys)
    assert RunRecord(directory).summary["metrics"] == RunRecord(run_dir(finished)).summary["metrics"]


def test_truncated_predictions_are_named_and_their_task_evaluated_again(copy, finished, capsys, tmp_path):
    directory = run_dir(copy)
    (predictions,) = directory.glob(f"predictions/{TASK}/*/seed-0.npy")
    whole = np.load(predictions)
    kept, size = cut(predictions, 100)
    shown = str(predictions.relative_to(directory))
    problem = f"{shown}: {kept} bytes, {size} were written"
    assert RunRecord(directory).is_done()  # the model and its summary are whole: only the task is redone
    assert f"damaged ({problem})" in ls_state(copy, capsys)
    code, output = harness(capsys, "report", str(copy / "results" / "t"), "--out", str(tmp_path / "report"))
    assert code == 0 and f"{directory}/{problem}" in output
    code, output = run_suite(copy, capsys)
    assert code == 0
    assert f"damaged: {problem}: {TASK} evaluated again" in output
    assert f"damaged: {problem}; seed 0 is fine-tuned again" in output and "training on" not in output
    assert np.array_equal(np.load(predictions), whole)
    assert " done " in ls_state(copy, capsys)
    original = RunRecord(run_dir(finished)).summary["metrics"][f"{TASK}.accuracy"]
    assert RunRecord(directory).summary["metrics"][f"{TASK}.accuracy"] == original


@pytest.mark.parametrize(
    ("content", "what"),
    [(b"\x89PNG\r\n\x1a\n\x00\xff", "not UTF-8 text (byte 0x89 at offset 0)"),
     (b"[]", "a list where a JSON object is expected")],
)  # fmt: skip
def test_a_garbled_status_is_named_by_ls_report_and_run(copy, capsys, tmp_path, content, what):
    directory = run_dir(copy)
    (directory / "status.json").write_bytes(content)
    assert not RunRecord(directory).is_done()
    assert f"damaged (status.json: {what}" in ls_state(copy, capsys)
    code, output = harness(capsys, "report", str(copy / "results" / "t"), "--out", str(tmp_path / "report"))
    assert code == 0 and str(directory / "status.json") in output
    code, output = run_suite(copy, capsys)
    assert code == 0 and f"damaged: status.json: {what}" in output and "it is run again" in output
    assert RunRecord(directory).is_done() and " done " in ls_state(copy, capsys)


# ------------------------------------------------------------------------------------ any content read

GARBAGE = {
    "binary": b"\x00\xff\xfe\x89binary",
    "a list": b"[]",
    "a string": b'"done"',
    "a number": b"42",
    "null": b"null",
    "truncated": b'{"state": "do',
    "empty": b"",
    "deeply nested": b"[" * 100_000,
}


@pytest.mark.parametrize("name", GARBAGE)
def test_read_record_names_whatever_a_file_holds(tmp_path, name):
    path = tmp_path / "status.json"
    path.write_bytes(GARBAGE[name])
    document, problem = read_record(path)
    assert document is None and problem
    assert RunRecord(tmp_path).status is None


@pytest.mark.parametrize(
    ("record", "content", "named"),
    [("config.json", b'{"schema_version": 1, "suite": "t", "arm": "dynamic", "seed": "zero", "config": {}}',
      "config.json: `seed` is a string, expected an integer"),
     ("config.json", b"\xff\xfe", "config.json: not UTF-8 text"),
     ("summary.json", b'{"metrics": [], "downstream": {}}', "summary.json: `metrics` is a list, expected an object"),
     ("status.json", b'{"state": ["done"]}', "status.json: `state` is a list, expected a string")],
)  # fmt: skip
def test_records_of_the_wrong_shape_are_named_by_ls_and_report(copy, capsys, tmp_path, record, content, named):
    directory = run_dir(copy)
    if record == "summary.json":  # a summary from before checks: its shape is what is checked
        status = read_json(directory / "status.json")
        status.pop("summary_check")
        (directory / "status.json").write_text(json.dumps(status))
    (directory / record).write_bytes(content)
    assert f"damaged ({named}" in ls_state(copy, capsys)
    code, output = harness(capsys, "report", str(copy / "results" / "t"), "--out", str(tmp_path / "report"))
    assert code in (0, 2) and named.split(":")[0] in output


ODD_SUMMARIES = {
    "metric values": {"metrics": {"heldout_ppl": [1], "heldout_loss": "low", "heldout_acc": 1e400}},
    "budget": {"metrics": {}, "budget": {"tokens": "many", "epochs": [1]}, "wall_s": "slow"},
    "downstream": {"metrics": {}, "downstream": {TASK: {
        "metrics": {"accuracy": {"seeds": {"x": 1, "0": "0.5"}, "median": "m"}}, "diverged_seeds": {"q": "r"},
        "dev_examples": "n", "majority_baseline": {"accuracy": "y"}}}},
    "references": {"metrics": {}, "references": {"heldout_unigram_loss": "a", "heldout_loss_noise": [1]}},
}  # fmt: skip


@pytest.mark.parametrize("name", ODD_SUMMARIES)
def test_a_summary_of_odd_values_is_read_without_a_traceback(copy, capsys, tmp_path, name):
    """A summary from before checks (no summary_check) whose values are not what they should be:
    `ls` and `report` read it, name what they leave out, and go on."""
    directory = run_dir(copy)
    status = read_json(directory / "status.json")
    status.pop("summary_check")
    (directory / "status.json").write_text(json.dumps(status))
    (directory / "summary.json").write_text(json.dumps(ODD_SUMMARIES[name]))
    ls_state(copy, capsys)
    code, output = harness(capsys, "report", str(copy / "results" / "t"), "--out", str(tmp_path / "report"))
    assert code == 0
    if name == "metric values":
        assert "metric heldout_ppl = [1] is not a number: left out" in output


def test_index_names_a_comparisons_table_it_cannot_read(tmp_path, capsys):
    for name, content in (("binary", b"\x00\xff\x00\xfe"), ("columns", b"a,b\n1,2\n"), ("empty", b"")):
        report = tmp_path / name
        report.mkdir()
        (report / "comparisons.csv").write_bytes(content)
        code, output = harness(capsys, "index", str(report), "--out", str(tmp_path / "index.md"))
        assert code == 2 and f"{report / 'comparisons.csv'}:" in output, output
    assert not (tmp_path / "index.md").exists()
