"""SQuAD in the harness: its metrics known to suites, and fine-tuning end to end on a tiny synthetic
SQuAD-format file (predictions and scores for every dev question, seeds kept and not redone, the lr
chosen on training articles, divergence)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_squad

from harness.config import metric_names, validate_run_config
from harness.data.cache import StageCache
from harness.data.pipeline import prepare_data
from harness.evaluate import evaluate_downstream, flat_downstream_metrics
from harness.model import PretrainingModel
from harness.squad import squad_metrics


def test_squad_metrics_are_known_to_suites():
    names = metric_names()
    assert {"squad.f1", "squad.exact", "squad2.f1", "squad2.exact", "squad2.no_ans_f1"} <= set(names)


def squad_config(path: Path, tasks: list[str], **finetune):
    return validate_run_config(
        {
            "model": {"layers": 1, "hidden": 32, "heads": 2, "ffn": 64, "max_len": 64, "dropout": 0.0},
            "data": {"corpus": {"source": "synthetic", "documents": 60}, "max_seq_len": 48,
                     "tokenizer": {"vocab_size": 512}},
            "train": {"batch_size": 8, "steps": 1},
            "eval": {
                "tasks": tasks,
                "task_files": {t: {"train": str(path), "dev": str(path)} for t in tasks},
                "finetune": {"epochs": 2, "lr": 1e-3, "batch_size": 16, "seeds": [0, 1], **finetune},
            },
        },
        "test",
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    path = synthetic_squad(tmp_path_factory.mktemp("squad") / "s.json")
    config = squad_config(path, ["squad"])
    data = prepare_data(config.data, StageCache(tmp_path_factory.mktemp("cache")), heldout_sequences=4)
    torch.manual_seed(0)
    return PretrainingModel(config.model, data.vocab_size, data.specials.pad, nsp=False), data.tokenizer, data.specials


def folder(result: dict, out, task: str):
    """Where a task's files are filed: under the key its result names (harness/downstream.py)."""
    return out / task / result[task]["key"]


def test_a_tiny_fine_tuning_predicts_and_scores_every_dev_question(tiny_encoder, tmp_path):
    model, tokenizer, specials = tiny_encoder
    path = synthetic_squad(tmp_path / "s.json")
    config = squad_config(path, ["squad"])
    out = tmp_path / "predictions"
    result = evaluate_downstream(model, config, tokenizer, specials, torch.device("cpu"), out, log=lambda m: None)
    entry = result["squad"]
    assert entry["train_examples"] == 32 and entry["dev_examples"] == 8
    assert set(entry["metrics"]) == {"f1", "exact"} and set(entry["metrics"]["f1"]["seeds"]) == {"0", "1"}
    gold = json.loads((folder(result, out, "squad") / "gold.json").read_text())
    predicted = json.loads((folder(result, out, "squad") / "seed-0.json").read_text())
    assert set(predicted) == set(gold) and all(isinstance(t, str) for t in predicted.values())
    assert squad_metrics(gold, predicted)["f1"] == entry["metrics"]["f1"]["seeds"]["0"]
    assert all(0.0 <= v <= 1.0 for m in entry["metrics"].values() for v in m["seeds"].values())
    assert set(entry["majority_baseline"]) == {"exact", "f1"}
    assert flat_downstream_metrics(result)["squad.f1"] == entry["metrics"]["f1"]["median"]
    before = (folder(result, out, "squad") / "seed-0.json").stat().st_mtime_ns
    evaluate_downstream(model, config, tokenizer, specials, torch.device("cpu"), out, log=lambda m: None)
    assert (folder(result, out, "squad") / "seed-0.json").stat().st_mtime_ns == before  # done seeds are not redone


def test_squad2_chooses_its_lr_on_training_articles_and_scores_no_answers(tiny_encoder, tmp_path):
    model, tokenizer, specials = tiny_encoder
    path = synthetic_squad(tmp_path / "s2.json", unanswerable=True)
    config = squad_config(path, ["squad2"], lr_grid=[1e-4, 1e-3], seeds=[0])
    out = tmp_path / "predictions"
    entry = evaluate_downstream(model, config, tokenizer, specials, torch.device("cpu"), out, log=lambda m: None)[
        "squad2"
    ]
    assert set(entry["metrics"]) == {"f1", "exact", "has_ans_f1", "no_ans_f1"}
    assert entry["majority_baseline"]["f1"] == pytest.approx(1 / 3)  # every third question is unanswerable
    selection = entry["lr_selection"]
    assert selection["chosen"] in (1e-4, 1e-3) and entry["protocol"]["lr"] == selection["chosen"]
    assert selection["fit_examples"] + selection["held_back_examples"] == entry["train_examples"] == 48
    assert (out / "squad2" / entry["key"] / "lr_selection.json").is_file()


def test_a_diverging_squad_seed_is_recorded_and_left_out(tiny_encoder, tmp_path):
    model, tokenizer, specials = tiny_encoder
    config = squad_config(synthetic_squad(tmp_path / "s.json"), ["squad"], lr=1e30, seeds=[0])
    out = tmp_path / "predictions"
    entry = evaluate_downstream(model, config, tokenizer, specials, torch.device("cpu"), out, log=lambda m: None)[
        "squad"
    ]
    assert set(entry["diverged_seeds"]) == {"0"} and ((out / "squad" / entry["key"]) / "seed-0.diverged").is_file()
    assert entry["metrics"]["f1"]["seeds"] == {} and np.isnan(entry["metrics"]["f1"]["median"])
