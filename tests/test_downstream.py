"""Downstream evaluation: metrics, the protocol on the synthetic tasks, `harness eval`, bad task data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_suite
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from harness.cli import main
from harness.config import RunConfig
from harness.evaluate import evaluate_downstream
from harness.integrity import CHECKPOINT_FILES, write_contents
from harness.records import RunRecord
from harness.runner import load_pretrained
from harness.tasks import (
    METRICS,
    TASKS,
    TaskDataError,
    load_glue_task,
    load_task,
    majority_baseline,
    score,
    synthetic_pair_task,
)

SHARED_GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def test_metrics_agree_with_scikit_learn_and_scipy():
    y = np.array([1, 0, 1, 1, 0, 1, 0, 0, 1, 1])
    p = np.array([1, 0, 0, 1, 0, 1, 1, 0, 1, 0])
    assert METRICS["accuracy"](y, p) == accuracy_score(y, p) == 0.7
    assert METRICS["f1"](y, p) == pytest.approx(f1_score(y, p))
    assert METRICS["matthews"](y, p) == pytest.approx(matthews_corrcoef(y, p))
    scores, guesses = np.array([0.0, 1.5, 2.0, 3.5, 5.0]), np.array([0.3, 1.0, 2.5, 3.0, 4.0])
    assert METRICS["pearson"](scores, guesses) == pytest.approx(pearsonr(scores, guesses)[0])
    assert METRICS["spearman"](scores, guesses) == pytest.approx(spearmanr(scores, guesses)[0]) == 1.0
    assert set(score("mrpc", y, p)) == {"f1", "accuracy"} and set(score("stsb", scores, guesses)) == {
        "pearson",
        "spearman",
    }
    assert TASKS["cola"].metrics == ("matthews",) and TASKS["stsb"].is_regression


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    """A tiny model pretrained briefly on the synthetic corpus, fine-tuned on the synthetic pair task."""
    root = tmp_path_factory.mktemp("downstream")
    suite = tiny_suite(arms={"only": {}}, metrics=["heldout_ppl", "synthetic-pair.accuracy"])
    # the quickstart's regime: ~700 small steps take a tiny model past the unigram plateau
    suite["base"]["model"] = {"preset": "tiny", "max_len": 64}
    suite["base"]["data"]["corpus"]["documents"] = 600
    suite["base"]["train"].update({"steps": 700, "micro_batch_size": 32, "log_every": 50})
    suite["base"]["eval"] = {
        "heldout_sequences": 16,
        "tasks": ["synthetic-pair"],
        "finetune": {"epochs": 3, "lr": 3e-4, "max_train_examples": 3000, "max_eval_examples": 400, "seeds": [0, 1]},
    }
    path = root / "suite.yaml"
    path.write_text(json.dumps(suite))
    out = root / "results"
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 0
    return next(p for p in (out / "t").iterdir() if p.is_dir())


def test_run_summary_reports_model_size_and_unknown_token_rate(pretrained_run):
    metrics = RunRecord(pretrained_run).summary["metrics"]
    _, model, _, _ = load_pretrained(pretrained_run)
    assert metrics["parameters"] == sum(p.numel() for p in model.parameters()) > 0
    assert metrics["heldout_unk_rate"] == 0.0  # byte-level BPE has no unknown token in use


def test_pretrained_tiny_model_beats_the_majority_baseline_on_the_pair_task(pretrained_run):
    summary = RunRecord(pretrained_run).summary
    result = summary["downstream"]["synthetic-pair"]
    assert set(result["metrics"]["accuracy"]["seeds"]) == {"0", "1"}
    baseline = result["majority_baseline"]["accuracy"]
    assert 0.45 < baseline < 0.55
    assert result["metrics"]["accuracy"]["median"] > baseline + 0.06, result
    assert summary["metrics"]["synthetic-pair.accuracy"] == result["metrics"]["accuracy"]["median"]
    # predictions are kept per seed, under the task's key, so the metric can be recomputed from them
    folder = pretrained_run / "predictions" / "synthetic-pair" / result["key"]
    again = accuracy_score(np.load(folder / "labels.npy"), np.load(folder / "seed-0.npy"))
    assert again == result["metrics"]["accuracy"]["seeds"]["0"]


def test_rerunning_eval_does_nothing_new(pretrained_run, capsys):
    folder = pretrained_run / "predictions" / "synthetic-pair"
    before = {str(p): p.stat().st_mtime_ns for p in folder.glob("*/*")}
    assert main(["eval", str(pretrained_run)]) == 0
    printed = capsys.readouterr().out
    assert "fine-tuned" not in printed and "synthetic-pair: median accuracy" in printed
    assert {str(p): p.stat().st_mtime_ns for p in folder.glob("*/*")} == before


def test_a_diverging_seed_is_recorded_and_left_out_of_the_median(pretrained_run, tmp_path):
    config, model, tokenizer, specials = load_pretrained(pretrained_run)
    eval_config = config.eval.model_copy(update={"task_overrides": {}})
    wild = eval_config.finetune.model_copy(update={"lr": 1e30, "max_train_examples": 200, "seeds": [0, 1]})
    config = RunConfig.model_validate(
        {
            **config.model_dump(mode="json"),
            "eval": {**eval_config.model_dump(mode="json"), "finetune": wild.model_dump()},
        }
    )
    result = evaluate_downstream(model, config, tokenizer, specials, torch.device("cpu"), tmp_path, log=lambda m: None)
    entry = result["synthetic-pair"]
    assert set(entry["diverged_seeds"]) == {"0", "1"}
    assert entry["metrics"]["accuracy"]["seeds"] == {} and np.isnan(entry["metrics"]["accuracy"]["median"])
    assert (tmp_path / "synthetic-pair" / entry["key"] / "seed-0.diverged").is_file()


def test_checkpoint_and_tokenizer_must_match(pretrained_run, tmp_path, capsys):
    import shutil

    from tokenizers import Tokenizer

    copy = tmp_path / "run"
    shutil.copytree(pretrained_run, copy)
    other = Tokenizer.from_file(str(copy / "checkpoint" / "tokenizer.json"))
    other.add_tokens(["an-extra-token"])
    other.save(str(copy / "checkpoint" / "tokenizer.json"))
    assert main(["eval", str(copy)]) == 2
    assert "checkpoint/tokenizer.json" in capsys.readouterr().err  # not the file written with the model
    write_contents(copy / "checkpoint", CHECKPOINT_FILES)  # a whole checkpoint whose parts do not match
    assert main(["eval", str(copy)]) == 2
    assert "do not belong together" in capsys.readouterr().err


def test_synthetic_pair_task_is_balanced_and_deterministic():
    first, second = synthetic_pair_task(0, 400, 100), synthetic_pair_task(0, 400, 100)
    assert first.train_a == second.train_a and np.array_equal(first.dev_labels, second.dev_labels)
    assert 0.4 < first.train_labels.mean() < 0.6
    assert majority_baseline("synthetic-pair", first)["accuracy"] == pytest.approx(
        max(first.dev_labels.mean(), 1 - first.dev_labels.mean())
    )


def _glue_dir(tmp_path: Path, dev_rows: str, header: str = "sentence\tlabel") -> Path:
    folder = tmp_path / "glue" / "SST-2"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text(f"{header}\ngood film .\t1\nbad film .\t0\n")
    (folder / "dev.tsv").write_text(f"{header}\n{dev_rows}")
    return tmp_path / "glue"


def test_broken_task_directories_fail_clearly(tmp_path, write_suite, capsys):
    with pytest.raises(TaskDataError, match="no column sentence"):
        load_glue_task(TASKS["sst2"], str(_glue_dir(tmp_path / "a", "nice .\t1\n", header="text\tlabel")))
    with pytest.raises(
        TaskDataError, match=r"dev.tsv: line 2: label '2' \(label\) is not in the label set \['0', '1'\]"
    ):
        load_glue_task(TASKS["sst2"], str(_glue_dir(tmp_path / "b", "nice .\t2\n")))

    missing = tmp_path / "c" / "glue"
    (missing / "SST-2").mkdir(parents=True)
    (missing / "SST-2" / "train.tsv").write_text("sentence\tlabel\nok .\t1\n")
    suite = tiny_suite()
    suite["base"]["eval"].update({"tasks": ["sst2"], "glue_dir": str(missing)})
    assert main(["run", str(write_suite(suite)), "--out", str(tmp_path / "r")]) == 2
    assert "dev.tsv not found" in capsys.readouterr().err

    # a bad column is found before any training, and nothing is written
    suite["base"]["eval"]["glue_dir"] = str(_glue_dir(tmp_path / "d", "nice .\t1\n", header="text\tlabel"))
    assert main(["run", str(write_suite(suite, "bad-column.yaml")), "--out", str(tmp_path / "r2")]) == 2
    assert "no column sentence" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()


def test_a_chosen_dev_split_is_scored(tmp_path, write_suite, capsys):
    glue = _glue_dir(tmp_path, "nice .\t1\n")
    (glue / "SST-2" / "test_labelled.tsv").write_text("sentence\tlabel\nfine .\t1\nawful .\t0\nok .\t1\n")
    data = load_glue_task(TASKS["sst2"], str(glue), dev_split="test_labelled")
    assert data.dev_a == ["fine .", "awful .", "ok ."]
    suite = tiny_suite()
    suite["base"]["eval"].update({"tasks": ["sst2"], "glue_dir": str(glue), "dev_splits": {"sst2": "nope"}})
    assert main(["run", str(write_suite(suite)), "--out", str(tmp_path / "r")]) == 2
    assert "nope.tsv not found" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED_GLUE / "SST-2" / "dev.tsv").is_file(), reason="../shared/data/glue is not present")
@pytest.mark.parametrize("task,dev_rows", [("sst2", 872), ("rte", 277), ("mrpc", 408), ("cola", 1043), ("stsb", 1500)])
def test_real_glue_files_load_with_their_layouts(task, dev_rows):
    data = load_glue_task(TASKS[task], str(SHARED_GLUE))
    assert len(data.dev_a) == len(data.dev_labels) == dev_rows
    assert (data.dev_b is not None) == TASKS[task].is_pair
    assert all(data.dev_a[:20])


def test_task_files_read_json_jsonl_and_tsv_pairs(tmp_path):
    rows = [("A man sleeps.", "Someone rests.", "entailment"), ("It rains.", "It is dry.", "contradiction"),
            ("Cats purr.", "Dogs bark.", "neutral")]  # fmt: skip
    jsonl = tmp_path / "dev.jsonl"
    jsonl.write_text("".join(json.dumps({"premise": a, "hypothesis": b, "label": y}) + "\n" for a, b, y in rows))
    keyed = tmp_path / "train.json"  # an object of rows keyed by id, with text_a / text_b names
    keyed.write_text(json.dumps({str(i): {"text_a": a, "text_b": b, "label": y} for i, (a, b, y) in enumerate(rows)}))
    data = load_task("mnli", None, 0, None, None, files=(str(keyed), str(jsonl)))
    assert data.train_a == [a for a, _, _ in rows] and data.dev_b == [b for _, b, _ in rows]
    assert data.train_labels.tolist() == data.dev_labels.tolist() == [0, 2, 1]  # entailment, contradiction, neutral

    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("index\tsentence1\tsentence2\tlabel\n0\tA\tB\tentailment\n1\tC\tD\tnot_entailment\n")
    rte = load_task("rte", None, 0, None, None, files=(str(tsv), str(tsv)))
    assert rte.dev_a == ["A", "C"] and rte.dev_labels.tolist() == [0, 1]


def test_bad_task_files_fail_naming_the_file(tmp_path):
    unlabeled = tmp_path / "rows.jsonl"
    unlabeled.write_text(json.dumps({"premise": "a", "hypothesis": "b"}) + "\n")
    with pytest.raises(TaskDataError, match="rows.jsonl: no text or label field"):
        load_task("mnli", None, 0, None, None, files=(str(unlabeled), str(unlabeled)))
    odd = tmp_path / "rows.jsonl"
    odd.write_text(json.dumps({"premise": "a", "hypothesis": "b", "label": "maybe"}) + "\n")
    with pytest.raises(TaskDataError, match=r"rows.jsonl: line 1: label 'maybe' \(label\) is not in the label set"):
        load_task("mnli", None, 0, None, None, files=(str(odd), str(odd)))
    with pytest.raises(TaskDataError, match="expected a .tsv, .jsonl or .json file"):
        load_task("mnli", None, 0, None, None, files=(str(tmp_path / "x.csv"), str(odd)))
    with pytest.raises(ValueError, match=r"task mnli: .*missing.json not found \(eval.task_files.mnli\)"):
        RunConfig.model_validate({"train": {"steps": 1}, "eval": {"tasks": ["mnli"], "task_files": {
            "mnli": {"train": str(tmp_path / "missing.json"), "dev": str(odd)}}}})  # fmt: skip


def test_jsonl_task_files_split_on_newlines_only_and_name_a_bad_line(tmp_path):
    texts = ["plain", "a NEL\u0085inside", "a line separator\u2028inside", "a paragraph separator\u2029too"]
    jsonl = tmp_path / "rows.jsonl"  # ensure_ascii=False: the separators stay raw, as in real JSONL releases
    jsonl.write_text("".join(json.dumps({"sentence": t, "label": i % 2}, ensure_ascii=False) + "\r\n"
                             for i, t in enumerate(texts)), encoding="utf-8")  # fmt: skip
    data = load_task("sst2", None, 0, None, None, files=(str(jsonl), str(jsonl)))
    assert data.train_a == texts and data.dev_labels.tolist() == [0, 1, 0, 1]

    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps({"sentence": f"row {i}", "label": 0}) for i in range(1, 8)]
    lines[5] = '{"sentence": "row 6", "label": 0'  # line 6 is cut short
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(TaskDataError, match=r"bad\.jsonl: line 6 is not valid JSON"):
        load_task("sst2", None, 0, None, None, files=(str(bad), str(jsonl)))


SHARED_IMDB = SHARED_GLUE.parent / "imdb" / "train.jsonl"


@pytest.mark.skipif(not SHARED_IMDB.is_file(), reason="../shared/data/imdb is not present")
def test_local_imdb_jsonl_loads_every_row():
    # the reviews hold raw U+0085: a split on every Unicode line break fails mid-string here
    data = load_task("sst2", None, 0, None, None, files=(str(SHARED_IMDB), str(SHARED_IMDB)))
    assert len(data.train_a) == len(data.dev_labels) == 25_000
    assert np.bincount(data.train_labels).tolist() == [12_500, 12_500]


SHARED_MNLI = SHARED_GLUE.parent / "mnli"


@pytest.mark.skipif(not (SHARED_MNLI / "dev_matched.jsonl").is_file(), reason="../shared/data/mnli is not present")
def test_local_mnli_files_load_as_the_suites_name_them():
    data = load_task("mnli", None, 0, None, None, files=(
        str(SHARED_MNLI / "ppft_train_subset" / "train.json"), str(SHARED_MNLI / "dev_matched.jsonl")))  # fmt: skip
    assert len(data.train_a) == 8999 and len(data.dev_a) == 9815
    assert np.bincount(data.dev_labels).tolist() == [3479, 3123, 3213]  # entailment / neutral / contradiction
    assert data.dev_a[0] == "The new rights are nice enough"
