"""Two confounds between arms, removed: static masking's copies are packed anew as BERT's are (a pair
format's segmentation and NSP partners re-drawn per copy), and held-out text is scored on each arm's
own format beside the shared FULL-SENTENCES yardstick."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_suite

from harness.cli import main
from harness.config import DataConfig, MaskingConfig
from harness.data.batches import PretrainingBatches
from harness.data.cache import StageCache
from harness.data.masking import IGNORE
from harness.data.pipeline import prepare_data

PAIR_DATA = {
    "corpus": {"source": "synthetic", "documents": 60, "seed": 0},
    "tokenizer": {"kind": "byte_bpe", "vocab_size": 512},
    "max_seq_len": 48,
    "format": "segment_pair",
    "nsp": True,
}


@pytest.fixture(scope="module")
def pair_copies(tmp_path_factory):
    config = DataConfig.model_validate(PAIR_DATA)
    return prepare_data(config, StageCache(tmp_path_factory.mktemp("cache")), heldout_sequences=4, copies=2)


def contents(sequences) -> list[tuple[tuple[int, ...], int]]:
    return [(tuple(int(t) for t in sequences[i][0]), sequences[i][2]) for i in range(len(sequences))]


def test_static_copies_of_a_pair_format_differ_in_segmentation(pair_copies):
    first, second = pair_copies.train_copies
    assert first is pair_copies.train
    assert contents(first) != contents(second)
    assert not np.array_equal(first.token_types, second.token_types)  # where B starts moved


def test_a_format_that_ignores_its_seed_has_one_copy(tmp_path):
    config = DataConfig.model_validate({**PAIR_DATA, "format": "full_sentences", "nsp": False})
    data = prepare_data(config, StageCache(tmp_path), heldout_sequences=4, copies=3)
    assert len(data.train_copies) == 1


def test_each_epoch_serves_its_copy_and_static_masks_repeat_with_it(pair_copies):
    """Epoch e serves copy e mod 2, and epoch 2 repeats epoch 0's masks exactly, sequence by sequence."""
    masking = MaskingConfig(kind="static", dupe_factor=2)
    copies = pair_copies.train_copies
    batches = PretrainingBatches(
        copies[0], pair_copies.specials, pair_copies.vocab_size, masking, 0, 4, batch_size=1, copies=copies
    )
    epochs: list[dict[tuple[int, ...], tuple[int, ...]]] = []
    for epoch in range(3):
        served: dict[tuple[int, ...], tuple[int, ...]] = {}
        for _ in range(len(copies[epoch % 2])):
            (mb,) = batches.next_step()
            inputs, labels = mb.input_ids[0].numpy(), mb.mlm_labels[0].numpy()
            original = np.where(labels != IGNORE, labels, inputs)
            served[tuple(original.tolist())] = tuple(inputs.tolist())
        epochs.append(served)
    for epoch, served in enumerate(epochs):
        assert set(served) == {text for text, _ in contents(copies[epoch % 2])}
    assert epochs[2] == epochs[0]


def summaries(out) -> dict[str, dict]:
    found = {}
    for path in out.glob("t/*/summary.json"):
        summary = json.loads(path.read_text())
        found[summary["arm"]] = summary
    return found


def test_heldout_is_scored_on_the_yardstick_and_on_each_arms_own_format(write_suite, tmp_path):
    suite = tiny_suite(
        arms={"full": {}, "pairs": {"data": {"format": "segment_pair", "nsp": True}}},
    )
    suite["base"]["train"]["steps"] = 4
    out = tmp_path / "out"
    assert main(["run", str(write_suite(suite)), "--out", str(out), "--no-progress", "--no-report"]) == 0
    found = summaries(out)
    full, pairs = found["full"]["metrics"], found["pairs"]["metrics"]
    for name in ("loss", "acc", "bpb", "ppl"):
        assert full[f"heldout_own_{name}"] == full[f"heldout_{name}"]  # FULL-SENTENCES is its own format
    assert pairs["heldout_own_loss"] != pairs["heldout_loss"]  # segment pairs read other sequences
    references = found["pairs"]["references"]
    assert references["heldout_own_masked"] != references["heldout_masked"]
    assert "heldout_own" in found["pairs"]["stage_keys"] and "heldout_own" not in found["full"]["stage_keys"]
