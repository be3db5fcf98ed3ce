"""Evaluation apart from pretraining: downstream settings are not part of the run id, each task's
results are filed under its key, `harness eval --set eval.KEY=VALUE` evaluates a finished model
another way, `harness run` evaluates only what a finished run lacks, and `harness migrate` renames
records made under the earlier rule."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_suite

from harness.cli import main
from harness.records import RunRecord
from harness.results import load_results, resolve_sources

FINETUNE = {"epochs": 1, "batch_size": 16, "max_train_examples": 64, "max_eval_examples": 32, "seeds": [0]}


def suite_with(tasks: list[str], **eval_changes) -> dict:
    suite = tiny_suite(arms={"only": {}})
    suite["base"]["eval"].update({"tasks": tasks, "finetune": FINETUNE, **eval_changes})
    return suite


def run_suite(path: Path, out: Path, capsys) -> str:
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--no-report"]) == 0
    return capsys.readouterr().out


def only_run(out: Path) -> Path:
    (run_dir,) = [p for p in (out / "t").iterdir() if p.is_dir() and p.name != "_cache"]
    return run_dir


def fingerprint(run_dir: Path) -> tuple[int, str]:
    """metrics.jsonl's rows and the checkpoint's hash: what pretraining again would change."""
    rows = len(RunRecord(run_dir).metrics())
    weights = (run_dir / "checkpoint" / "model.safetensors").read_bytes()
    return rows, hashlib.sha256(weights).hexdigest()


def mtimes(folder: Path) -> dict[str, int]:
    """Every file's mtime but the run locks' (checking whether a run is held takes its lock)."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"]
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in files}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny run, pretrained and fine-tuned on the synthetic topic task."""
    root = tmp_path_factory.mktemp("finished")
    path = root / "suite.yaml"
    path.write_text(json.dumps(suite_with(["synthetic-topic"])))
    assert main(["run", str(path), "--out", str(root / "results"), "--no-progress", "--no-report"]) == 0
    return only_run(root / "results")


def tiny_glue(root: Path) -> Path:
    """SST-2 in GLUE's TSV layout, a few dozen sentences."""
    folder = root / "glue" / "SST-2"
    folder.mkdir(parents=True)
    good = ["a fine film .", "warm and funny .", "a joy to watch .", "clever , moving work ."]
    bad = ["a dull mess .", "tedious and flat .", "a waste of time .", "clumsy , boring work ."]
    rows = [f"{text}\t{label}" for _ in range(5) for texts, label in ((good, 1), (bad, 0)) for text in texts]
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    (folder / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(rows[:16]) + "\n")
    return root / "glue"


@pytest.fixture
def offline(monkeypatch):
    """No hub: offline mode set, the probe failing, and datasets never to be called."""
    import datasets

    import harness.data.sources as sources

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(sources, "hub_reachable", lambda: False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the hub was asked"))


def test_eval_with_a_glue_dir_set_works_offline_without_retraining(finished_run, tmp_path, offline, capsys):
    before, config_before = fingerprint(finished_run), (finished_run / "config.json").read_text()
    topic = mtimes(finished_run / "predictions" / "synthetic-topic")
    glue = tiny_glue(tmp_path)
    assert main(["eval", str(finished_run), "--set", f"eval.glue_dir={glue}", "--task", "sst2"]) == 0
    assert f"{finished_run}: sst2: median accuracy" in capsys.readouterr().out
    assert fingerprint(finished_run) == before  # no training row added, the checkpoint as it was
    summary = RunRecord(finished_run).summary
    entry = summary["downstream"]["sst2"]
    assert (finished_run / "predictions" / "sst2" / entry["key"] / "seed-0.npy").is_file()
    assert entry["dev_examples"] == 16 and "sst2.accuracy" in summary["metrics"]
    assert "synthetic-topic" in summary["downstream"]  # merged beside the task it had
    assert mtimes(finished_run / "predictions" / "synthetic-topic") == topic
    assert (finished_run / "config.json").read_text() == config_before  # an ad hoc evaluation: the record's config
    # where the files lie is not part of the key: the same data elsewhere is scored, not fine-tuned again
    elsewhere = tmp_path / "copy"
    shutil.copytree(glue, elsewhere / "glue")
    assert main(["eval", str(finished_run), "--set", f"eval.glue_dir={elsewhere / 'glue'}", "--task", "sst2"]) == 0
    assert RunRecord(finished_run).summary["downstream"]["sst2"]["key"] == entry["key"]


def test_eval_takes_eval_overrides_only(finished_run, capsys):
    before = fingerprint(finished_run)
    for assignment, words in (
        ("model.layers=3", "--set: model.layers: harness eval changes eval.* only"),
        ("train.lr=1e-3", "--set: train.lr: harness eval changes eval.* only"),
        ("eval.heldout_sequences=8", "--set: eval.heldout_sequences: the held-out MLM evaluation is part of"),
        ("eval={mask_seed: 3}", "--set: eval.mask_seed: the held-out MLM evaluation is part of"),
    ):
        assert main(["eval", str(finished_run), "--set", assignment]) == 2
        assert f"error: {words}" in capsys.readouterr().err
    assert main(["eval", str(finished_run), "--set", "eval.finetune.lrr=1"]) == 2
    assert "error: --set: eval.finetune.lrr: unknown key" in capsys.readouterr().err
    assert fingerprint(finished_run) == before


def test_an_unreachable_hub_fails_at_once_naming_glue_dir(finished_run, monkeypatch, capsys):
    import datasets

    import harness.data.sources as sources

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sources, "hub_reachable", lambda: False)  # one failed probe
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("datasets retries for half a minute"))
    assert main(["eval", str(finished_run), "--task", "sst2"]) == 2
    err = capsys.readouterr().err
    assert "sst2: the Hugging Face hub cannot be reached" in err and "--set eval.glue_dir=DIR" in err


def test_offline_mode_fails_at_once_without_retries(finished_run, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # fmt: skip
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "harness", "eval", str(finished_run), "--task", "sst2"], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "HF_HUB_OFFLINE is set" in done.stderr and "eval.glue_dir" in done.stderr
    assert "Retrying" not in done.stderr and time.monotonic() - started < 60


def test_adding_a_task_evaluates_only_it_and_a_changed_protocol_only_that(tmp_path, write_suite, capsys):
    out = tmp_path / "results"
    run_suite(write_suite(suite_with(["synthetic-topic"])), out, capsys)
    run_dir = only_run(out)
    before, topic = fingerprint(run_dir), mtimes(run_dir / "predictions" / "synthetic-topic")

    both = write_suite(suite_with(["synthetic-topic", "synthetic-pair"]), "both.yaml")
    assert main(["run", str(both), "--out", str(out), "--dry-run"]) == 0
    assert "to evaluate: synthetic-pair" in capsys.readouterr().out
    notes = load_results(resolve_sources([both], out)).notes  # a report made now says what it lacks
    assert any("only seed 0: synthetic-pair not evaluated as the suite now asks" in note for note in notes)
    printed = run_suite(both, out, capsys)
    assert "training" not in printed and "synthetic-topic seed 0: fine-tuned" not in printed
    assert "evaluating synthetic-pair" in printed and "synthetic-pair seed 0: fine-tuned" in printed
    assert "nothing trained: 1 finished run(s) evaluated" in printed
    assert only_run(out) == run_dir and fingerprint(run_dir) == before
    assert mtimes(run_dir / "predictions" / "synthetic-topic") == topic
    summary = RunRecord(run_dir).summary
    assert set(summary["downstream"]) == {"synthetic-topic", "synthetic-pair"}
    assert RunRecord(run_dir).config["config"]["eval"]["tasks"] == ["synthetic-topic", "synthetic-pair"]
    first_key = summary["downstream"]["synthetic-pair"]["key"]

    assert "already done, skipped" in run_suite(both, out, capsys)  # up to date: nothing at all

    # another protocol for one task: a new key, fine-tuned; the other task untouched
    changed = suite_with(["synthetic-topic", "synthetic-pair"], task_overrides={"synthetic-pair": {"lr": 3e-4}})
    printed = run_suite(write_suite(changed, "changed.yaml"), out, capsys)
    assert "evaluating synthetic-pair" in printed and "synthetic-pair seed 0: fine-tuned" in printed
    new_key = RunRecord(run_dir).summary["downstream"]["synthetic-pair"]["key"]
    assert new_key != first_key and (run_dir / "predictions" / "synthetic-pair" / first_key).is_dir()
    assert mtimes(run_dir / "predictions" / "synthetic-topic") == topic and fingerprint(run_dir) == before

    # back to the first protocol: its predictions are on disk, scored again, not fine-tuned again
    printed = run_suite(both, out, capsys)
    assert "evaluating synthetic-pair" in printed and "fine-tuned" not in printed
    assert RunRecord(run_dir).summary["downstream"]["synthetic-pair"]["key"] == first_key


def test_another_finetuning_seed_fine_tunes_that_seed_alone(tmp_path, write_suite, capsys):
    out = tmp_path / "results"
    run_suite(write_suite(suite_with(["synthetic-topic"])), out, capsys)
    run_dir = only_run(out)
    key = RunRecord(run_dir).summary["downstream"]["synthetic-topic"]["key"]
    seed_0 = mtimes(run_dir / "predictions" / "synthetic-topic" / key)["seed-0.npy"]
    more = suite_with(["synthetic-topic"], finetune={**FINETUNE, "seeds": [0, 1]})
    printed = run_suite(write_suite(more, "more.yaml"), out, capsys)
    assert "synthetic-topic seed 1: fine-tuned" in printed and "seed 0: fine-tuned" not in printed
    entry = RunRecord(run_dir).summary["downstream"]["synthetic-topic"]
    assert entry["key"] == key and set(entry["metrics"]["accuracy"]["seeds"]) == {"0", "1"}
    assert mtimes(run_dir / "predictions" / "synthetic-topic" / key)["seed-0.npy"] == seed_0


def as_before_keys(run_dir: Path, suite_dir: Path, old_id: str) -> Path:
    """A copy of the record as the earlier rule left it: filed under another id, predictions flat, no keys."""
    old = suite_dir / old_id
    shutil.copytree(run_dir, old)
    for task_dir in (old / "predictions").iterdir():
        for key_dir in [p for p in task_dir.iterdir() if p.is_dir()]:
            for path in key_dir.iterdir():
                if path.name != "task.json":
                    path.rename(task_dir / path.name)
            shutil.rmtree(key_dir)
    for name in ("config.json", "summary.json"):
        document = json.loads((old / name).read_text())
        document["run_id"] = old_id
        for entry in document.get("downstream", {}).values():
            del entry["key"]
        (old / name).write_text(json.dumps(document))
    return old


def test_migrate_renames_old_records_and_files_their_predictions(finished_run, tmp_path, capsys):
    suite_dir = tmp_path / "t"
    suite_dir.mkdir()
    as_before_keys(finished_run, suite_dir, "0123456789ab")
    assert main(["migrate", str(suite_dir), "--dry-run"]) == 0
    assert f"0123456789ab would become {finished_run.name}" in capsys.readouterr().out
    assert (suite_dir / "0123456789ab").is_dir()

    assert main(["migrate", str(suite_dir)]) == 0
    printed = capsys.readouterr().out
    assert f"0123456789ab -> {finished_run.name}; predictions of " in printed
    migrated = suite_dir / finished_run.name
    assert not (suite_dir / "0123456789ab").exists()
    for name in ("config.json", "summary.json"):
        assert json.loads((migrated / name).read_text())["run_id"] == finished_run.name
    summary = RunRecord(migrated).summary
    for task, entry in RunRecord(finished_run).summary["downstream"].items():  # the keys the evaluation gave
        assert summary["downstream"][task]["key"] == entry["key"]
        assert (migrated / "predictions" / task / entry["key"] / "seed-0.npy").is_file()
    # up to date: the suite finds nothing to evaluate, and migrating again changes nothing
    from harness.downstream import tasks_to_evaluate

    assert tasks_to_evaluate(RunRecord(migrated).config["config"], summary) == []
    before = mtimes(migrated)
    assert main(["migrate", str(suite_dir)]) == 0
    assert "1 record(s): 0 renamed, 1 already under their id" in capsys.readouterr().out
    assert mtimes(migrated) == before


def test_migrate_refuses_collisions_and_changes_nothing(finished_run, tmp_path, capsys):
    suite_dir = tmp_path / "t"
    suite_dir.mkdir()
    for old_id in ("0123456789ab", "ba9876543210"):  # two records that differed in eval settings alone
        as_before_keys(finished_run, suite_dir, old_id)
    before = mtimes(suite_dir)
    assert main(["migrate", str(suite_dir)]) == 2
    err = capsys.readouterr().err
    assert f"all become {suite_dir / finished_run.name}: they differ in eval settings alone" in err
    assert "nothing was changed" in err and mtimes(suite_dir) == before


def test_with_jobs_finished_runs_are_evaluated_in_children(tmp_path, write_suite, capsys):
    out = tmp_path / "results"
    two_arms = suite_with(["synthetic-topic"])
    two_arms["arms"] = {"dynamic": {}, "static": {"masking": {"kind": "static", "dupe_factor": 2}}}
    run_suite(write_suite(two_arms), out, capsys)
    runs = [p for p in (out / "t").iterdir() if p.is_dir()]
    before = {p.name: fingerprint(p) for p in runs}
    two_arms["base"]["eval"]["tasks"] = ["synthetic-topic", "synthetic-pair"]
    common = ["run", str(write_suite(two_arms, "more.yaml")), "--out", str(out), "--no-progress", "--no-report"]
    assert main([*common, "--jobs", "2", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert printed.count(": done; evaluating synthetic-pair on ") == 2 and "training on" not in printed
    assert printed.count(": evaluated synthetic-pair") == 2
    assert "nothing trained: 2 finished run(s) evaluated on the task(s) they lacked" in printed
    for run_dir in runs:
        assert "synthetic-pair" in RunRecord(run_dir).summary["downstream"]
        assert fingerprint(run_dir) == before[run_dir.name]
        assert "evaluating synthetic-pair" in (run_dir / "output.log").read_text()
