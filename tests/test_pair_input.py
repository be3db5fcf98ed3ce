"""Pairs are fine-tuned the way the encoder was pretrained: B in segment 1 only after a pair format
(BERT); after a one-segment format (RoBERTa) the separator alone marks B, segment 1 never used."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import harness.evaluate as evaluate
from harness.config import validate_run_config
from harness.data.cache import StageCache
from harness.data.pipeline import prepare_data
from harness.downstream import pair_segment, task_identity
from harness.model import PretrainingModel


def run_config(data_format: str, **model):
    return validate_run_config(
        {
            "model": {"layers": 1, "hidden": 32, "heads": 2, "ffn": 64, "max_len": 64, **model},
            "data": {
                "corpus": {"source": "synthetic", "documents": 60},
                "format": data_format,
                "max_seq_len": 48,
                "tokenizer": {"vocab_size": 512},
            },  # fmt: skip
            "train": {"batch_size": 8, "steps": 1},
            "eval": {"tasks": ["synthetic-pair"], "finetune": {"epochs": 1, "seeds": [0], "max_train_examples": 16}},
        },
        "test",
    )


@pytest.mark.parametrize(
    ("data_format", "expected"),
    [("full_sentences", 0), ("doc_sentences", 0), ("segment_pair", 1), ("sentence_pair", 1)],
)
def test_pair_segment_follows_the_pretraining_format(data_format, expected):
    assert pair_segment(run_config(data_format).model_dump(mode="json")) == expected


def test_task_keys_change_only_where_the_pair_input_changed():
    bert = run_config("segment_pair").model_dump(mode="json")
    roberta = run_config("full_sentences").model_dump(mode="json")
    assert "pair_segment" not in task_identity(bert, "synthetic-pair")  # BERT's keys are as before
    assert task_identity(roberta, "synthetic-pair")["pair_segment"] == 0
    assert "pair_segment" not in task_identity(roberta, "synthetic-topic")  # one text: nothing changed
    one_segment_model = run_config("full_sentences", token_types=1).model_dump(mode="json")
    assert "pair_segment" not in task_identity(one_segment_model, "synthetic-pair")  # segment 0 before too


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    config = run_config("full_sentences")
    return prepare_data(config.data, StageCache(tmp_path_factory.mktemp("cache")), heldout_sequences=4)


def test_encode_examples_puts_b_in_the_pair_segment(prepared):
    labels = np.array([0, 1])
    args = (["a first text", "another"], ["a second text", "more"], labels, prepared.tokenizer)
    for segment in (0, 1):
        rows = evaluate.encode_examples(*args, replace(prepared.specials, pair_segment=segment), 48, 2)
        for ids, types, _, _ in rows:
            pair_separator = prepared.specials.pair_separator
            separator = ids.tolist().index(pair_separator[0]) + len(pair_separator)  # where B starts
            assert set(types[:separator].tolist()) == {0}
            assert set(types[separator:].tolist()) == {segment}


@pytest.mark.parametrize(("data_format", "expected"), [("full_sentences", {0}), ("segment_pair", {0, 1})])
def test_downstream_fine_tunes_pairs_as_pretrained(prepared, tmp_path, monkeypatch, data_format, expected):
    """The token types the classifier is trained on, read from what evaluate_downstream encodes."""
    config = run_config(data_format)
    seen: list[set[int]] = []
    real = evaluate.encode_examples

    def spy(*args, **kwargs):
        rows = real(*args, **kwargs)
        seen.append({int(t) for row in rows for t in row[1]})
        return rows

    monkeypatch.setattr(evaluate, "encode_examples", spy)
    torch.manual_seed(0)
    model = PretrainingModel(config.model, prepared.vocab_size, prepared.specials.pad, nsp=False)
    evaluate.evaluate_downstream(
        model, config, prepared.tokenizer, prepared.specials, torch.device("cpu"), tmp_path, log=lambda *_: None
    )
    assert seen and all(types == expected for types in seen)
