"""The fine-tuning protocol's options: the learning rate chosen on training examples alone
(`finetune.lr_grid`), and mean pooling over the real tokens (`finetune.pooling`)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from harness.config import ModelConfig, RunConfig, validate_run_config
from harness.data.cache import StageCache
from harness.data.pipeline import prepare_data
from harness.evaluate import evaluate_downstream, select_lr, selection_split
from harness.model import Encoder, PretrainingModel, SequenceClassifier
from harness.tasks import TASKS, synthetic_topic_task

GRID = [1e-4, 1e-3, 1e-2]


def run_config(**finetune) -> RunConfig:
    return validate_run_config(
        {
            "model": {"layers": 1, "hidden": 32, "heads": 2, "ffn": 64, "max_len": 64, "dropout": 0.0},
            "data": {
                "corpus": {"source": "synthetic", "documents": 60},
                "max_seq_len": 48,
                "tokenizer": {"vocab_size": 512},
            },  # fmt: skip
            "train": {"batch_size": 8, "steps": 1},
            "eval": {
                "tasks": ["synthetic-topic"],
                "finetune": {"epochs": 2, "batch_size": 16, "seeds": [0, 1], "max_train_examples": 80, **finetune},
            },
        },  # fmt: skip
        "test",
    )


@pytest.fixture(scope="module")
def encoder_and_tokenizer(tmp_path_factory):
    """A random-init tiny encoder and a tokenizer trained on a small synthetic corpus."""
    config = run_config()
    data = prepare_data(config.data, StageCache(tmp_path_factory.mktemp("cache")), heldout_sequences=4)
    torch.manual_seed(0)
    model = PretrainingModel(config.model, data.vocab_size, data.specials.pad, nsp=False)
    return model, data.tokenizer, data.specials


def topic_data():
    return synthetic_topic_task(0, 80, 40)


class Untouchable(list):
    """A dev field that fails the test the moment anything reads it."""

    def _fail(self, *args, **kwargs):
        raise AssertionError("the dev split was read while choosing the learning rate")

    __getitem__ = __iter__ = __len__ = __eq__ = _fail


class UntouchableLabels(np.ndarray):
    def __array_finalize__(self, obj):
        pass

    def __getitem__(self, key):
        raise AssertionError("the dev labels were read while choosing the learning rate")

    def __array__(self, *args, **kwargs):
        raise AssertionError("the dev labels were read while choosing the learning rate")


def test_the_selection_split_holds_training_examples_only():
    data = topic_data()
    split = selection_split(data, seed=3)
    assert (len(split.train_a), len(split.dev_a)) == (64, 16)
    assert sorted(split.train_a + split.dev_a) == sorted(data.train_a)
    again = selection_split(data, seed=3)
    assert again.dev_a == split.dev_a and np.array_equal(again.dev_labels, split.dev_labels)
    assert selection_split(data, seed=4).dev_a != split.dev_a
    held_back = dict(zip(data.train_a, data.train_labels))
    assert all(held_back[text] == label for text, label in zip(split.dev_a, split.dev_labels))


def test_choosing_the_lr_never_reads_the_dev_split(encoder_and_tokenizer):
    model, tokenizer, specials = encoder_and_tokenizer
    data = topic_data()
    poisoned = replace(data, dev_a=Untouchable(), dev_labels=np.zeros(3).view(UntouchableLabels))
    protocol = run_config(lr_grid=GRID).eval.finetune_for("synthetic-topic")
    selection = select_lr(model, TASKS["synthetic-topic"], poisoned, tokenizer, specials, protocol, 48, 0,
                          torch.device("cpu"), "fp32", 0.0)  # fmt: skip
    assert selection["grid"] == GRID and set(selection["scores"]) == {str(lr) for lr in GRID}
    assert selection["chosen"] in GRID and selection["split"] == "80/20 of train, seed 0"
    best = max(v for v in selection["scores"].values() if v is not None)
    assert selection["scores"][str(selection["chosen"])] == best
    assert (selection["metric"], selection["fit_examples"], selection["held_back_examples"]) == ("accuracy", 64, 16)


def test_garbage_dev_labels_choose_the_same_lr_and_the_chosen_lr_is_used(encoder_and_tokenizer, tmp_path, monkeypatch):
    """End to end: the same run with true and with flipped, garbled dev examples makes the same
    choice with the same scores; only the dev scores (read after the choice) differ."""
    import harness.evaluate as evaluate

    model, tokenizer, specials = encoder_and_tokenizer
    config = run_config(lr_grid=GRID, pooling="mean")
    true = topic_data()
    garbage = replace(true, dev_a=["zzz qqq"] * len(true.dev_a), dev_labels=(true.dev_labels + 1) % 6)
    results = {}
    for name, data in (("true", true), ("garbage", garbage)):
        monkeypatch.setattr(evaluate, "task_data_for", lambda config, task, data=data: data)
        results[name] = evaluate_downstream(model, config, tokenizer, specials, torch.device("cpu"),
                                            tmp_path / name, log=lambda m: None)["synthetic-topic"]  # fmt: skip
    chosen = results["true"]["lr_selection"]
    assert chosen == results["garbage"]["lr_selection"]
    key = results["true"]["key"]
    for name, data in (("true", true), ("garbage", garbage)):  # dev was read, after the choice
        assert np.array_equal(np.load(tmp_path / name / "synthetic-topic" / key / "labels.npy"), data.dev_labels)
    for result in results.values():
        assert result["protocol"]["lr"] == chosen["chosen"] and result["protocol"]["lr_grid"] == GRID
        assert result["protocol"]["pooling"] == "mean"
    assert (tmp_path / "true" / "synthetic-topic" / key / "lr_selection.json").is_file()

    # the choice is kept with the predictions: evaluating again fine-tunes nothing
    monkeypatch.setattr(evaluate, "task_data_for", lambda config, task: true)
    monkeypatch.setattr(evaluate, "finetune_task", lambda *a, **k: pytest.fail("fine-tuned again"))
    again = evaluate_downstream(model, config, tokenizer, specials, torch.device("cpu"), tmp_path / "true",
                                log=lambda m: None)  # fmt: skip
    assert again["synthetic-topic"] == results["true"]


def test_without_a_grid_nothing_is_chosen_and_lr_is_used(encoder_and_tokenizer, tmp_path, monkeypatch):
    import harness.evaluate as evaluate

    model, tokenizer, specials = encoder_and_tokenizer
    monkeypatch.setattr(evaluate, "task_data_for", lambda config, task: topic_data())
    result = evaluate_downstream(model, run_config(lr=3e-4), tokenizer, specials, torch.device("cpu"), tmp_path,
                                 log=lambda m: None)["synthetic-topic"]  # fmt: skip
    assert "lr_selection" not in result and result["protocol"]["lr"] == 3e-4
    assert not (tmp_path / "synthetic-topic" / result["key"] / "lr_selection.json").exists()


def test_task_overrides_take_the_new_fields():
    config = validate_run_config(
        {
            "train": {"batch_size": 8, "steps": 1},
            "eval": {
                "tasks": ["sst2", "rte"],
                "finetune": {"lr_grid": [1e-3], "pooling": "mean"},
                "task_overrides": {"rte": {"lr_grid": [1e-4, 3e-4], "pooling": "first"}},
            },
        },  # fmt: skip
        "x",
    )
    assert (config.eval.finetune_for("sst2").lr_grid, config.eval.finetune_for("sst2").pooling) == ([1e-3], "mean")
    assert (config.eval.finetune_for("rte").lr_grid, config.eval.finetune_for("rte").pooling) == ([1e-4, 3e-4], "first")


@pytest.mark.parametrize("positions,norm", [(None, "post"), ("rope", "pre")])
def test_mean_pooling_ignores_padding(positions, norm):
    config = ModelConfig(layers=2, hidden=32, heads=2, ffn=64, max_len=32, positions=positions, norm=norm)
    torch.manual_seed(0)
    pad = 1
    heads = {pooling: SequenceClassifier(Encoder(config, 50, pad), 3, 0.1, pooling) for pooling in ("first", "mean")}
    ids = torch.tensor([[0, 7, 8, 9, 10, 2]])
    padded = torch.cat([ids, torch.full((1, 5), pad)], dim=1)
    for model in heads.values():
        model.eval()
        with torch.no_grad():
            short = model(ids, torch.zeros_like(ids), torch.ones_like(ids, dtype=torch.bool))
            mask = torch.arange(padded.shape[1])[None] < ids.shape[1]
            long = model(padded, torch.zeros_like(padded), mask)
            # in a batch beside a longer sequence, too
            batch = torch.cat([padded, torch.arange(11)[None] + 20])
            batched = model(batch, torch.zeros_like(batch), torch.cat([mask, torch.ones_like(mask)]))
        torch.testing.assert_close(short, long, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(short, batched[:1], rtol=1e-5, atol=1e-6)
    # mean pooling really averages: it is not the first token's vector
    encoder = heads["mean"].roberta
    with torch.no_grad():
        hidden = encoder(ids, torch.zeros_like(ids), torch.ones_like(ids, dtype=torch.bool))
    assert not torch.allclose(hidden.mean(1), hidden[:, 0])


def test_unknown_pooling_is_refused():
    with pytest.raises(ValueError, match="first or mean"):
        SequenceClassifier(Encoder(ModelConfig(), 50, 1), 2, 0.1, "max")
