"""The held-out floor and bits per byte: hand-checked pieces, and a real run that records them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from tokenizers import Tokenizer, models

from harness.cli import main
from harness.references import bits_per_byte, context_free_floor, token_surface_bytes


def test_context_free_floor_by_hand():
    frequencies = np.array([0.0, 0.5, 0.3, 0.2])  # id 0 is <mask>, never a target
    labels = np.array([1, 2, 3, 3])
    inputs = np.array([0, 0, 3, 2])  # masked, masked, kept (3 -> 3), random (3 shown as 2)
    losses, correct = context_free_floor(labels, inputs, frequencies, mask_id=0)
    vocab = 4
    kept = 0.2 * (1 + 1 / vocab) / (0.2 + 1 / vocab)  # p(label = shown token)
    random = 0.2 * (0 + 1 / vocab) / (0.3 + 1 / vocab)  # p(3 | 2 shown)
    assert losses == pytest.approx(-np.log([0.5, 0.3, kept, random]))
    # at a mask the most frequent token (1) is guessed; elsewhere the shown token
    assert correct.tolist() == [True, False, True, False]


def test_surface_bytes_per_tokenizer_kind():
    vocab = {"<s>": 0, "Ġthe": 1, "é": 2, "##ing": 3, "run</w>": 4, "naïve": 5}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<s>"))
    tokenizer.add_special_tokens(["<s>"])
    assert token_surface_bytes(tokenizer, "byte_bpe")[:3].tolist() == [0, 4, 1]  # one byte per byte-level char
    assert token_surface_bytes(tokenizer, "wordpiece")[3] == 3
    assert token_surface_bytes(tokenizer, "char_bpe")[4] == 3
    assert token_surface_bytes(tokenizer, "wordpiece")[5] == len("naïve".encode())


def test_bits_per_byte():
    assert bits_per_byte(math.log(2), 10, 5) == pytest.approx(2.0)
    assert math.isnan(bits_per_byte(1.0, 10, 0))


def test_a_run_records_its_floor_and_bits_per_byte(tmp_path, write_suite):
    from conftest import tiny_suite

    suite = tiny_suite(arms={"only": {}}, metrics=["heldout_bpb"])
    out = tmp_path / "results"
    assert main(["run", str(write_suite(suite)), "--out", str(out)]) == 0
    (summary_path,) = out.glob("t/*/summary.json")
    summary = json.loads(summary_path.read_text())
    refs, metrics = summary["references"], summary["metrics"]
    assert refs["heldout_masked"] > 0 and refs["heldout_masked_bytes"] > refs["heldout_masked"]
    # bits per byte is the same loss in other units: the ratio of the two is fixed by the data
    ratio = refs["heldout_masked"] / math.log(2) / refs["heldout_masked_bytes"]
    assert metrics["heldout_bpb"] == pytest.approx(metrics["heldout_loss"] * ratio)
    assert refs["heldout_unigram_bpb"] == pytest.approx(refs["heldout_unigram_loss"] * ratio)
    assert 0 < refs["heldout_unigram_acc"] < 1 and refs["heldout_loss_noise"] > 0
    curve = [json.loads(line) for line in (summary_path.parent / "metrics.jsonl").read_text().splitlines()]
    assert any("heldout_bpb" in row for row in curve)
    # the floor is a function of the data: filling it in afterwards gives the same numbers
    del summary["references"]
    summary_path.write_text(json.dumps(summary))
    assert main(["references", str(out / "t")]) == 0
    assert json.loads(summary_path.read_text())["references"] == pytest.approx(refs)


def test_bits_per_byte_is_lower_is_better():
    from harness.config import lower_is_better

    assert lower_is_better("heldout_bpb") and lower_is_better("heldout_loss") and not lower_is_better("heldout_acc")
