"""The paper's definitions, checked: exact sequences on hand-built documents, and rates measured
over thousands of seeded draws."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_data import SPECIALS, corpus_of

from harness.cli import main
from harness.config import DataConfig, FilesCorpus, MaskingConfig, SyntheticCorpus, TokenizerConfig
from harness.data.batches import PretrainingBatches
from harness.data.cache import StageCache
from harness.data.formats import FORMATS, IS_NEXT, NOT_NEXT, segment_pair
from harness.data.masking import IGNORE, mask_sequence
from harness.data.pipeline import prepare_data
from harness.data.sources import iter_documents

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
WIKITEXT_VALID = SHARED / "wikitext-2-raw" / "wiki.valid.raw"


def random_corpus(documents: int, seed: int = 0, max_sentences: int = 30):
    """Documents of 1-30 sentences of 3-25 ordinary tokens (ids 10..999), ids unique per position
    so a token tells which document and sentence it came from."""
    rng = np.random.default_rng(seed)
    docs = [
        [rng.integers(10, 1000, size=rng.integers(3, 26)).tolist() for _ in range(rng.integers(1, max_sentences + 1))]
        for _ in range(documents)
    ]
    return corpus_of(docs), docs


# ----------------------------------------------------------------------------------- readers


def test_wikitext_titles_start_documents_and_headings_are_dropped(tmp_path):
    raw = tmp_path / "w.raw"
    lines = [" ", " = First = ", " ", " Alpha one . Alpha two .", " ", " = = Section = = ", " ", " Alpha three .",
             " = x = y = ", " ", " = Second = ", " ", " Beta one .", " "]  # fmt: skip
    raw.write_text("\n".join(lines) + "\n")
    docs = list(iter_documents(FilesCorpus(source="files", paths=[str(raw)], text_layout="wikitext")))
    # ' = x = y = ' matches the title pattern but has no blank line before it: an equation, kept as text
    assert docs == ["Alpha one . Alpha two .\nAlpha three .\n= x = y =", "Beta one ."]


def test_wikiextractor_documents(tmp_path):
    raw = tmp_path / "wiki_00"
    raw.write_text('<doc id="1" title="A">\nA\n\nFirst para.\nSecond para.\n</doc>\n<doc id="2">\nB\n\nOnly.\n</doc>\n')
    docs = list(iter_documents(FilesCorpus(source="files", paths=[str(raw)], text_layout="doc_tags")))
    assert docs == ["First para.\nSecond para.", "Only."]


@pytest.mark.skipif(not WIKITEXT_VALID.is_file(), reason="../shared/data/wikitext-2-raw is not present")
def test_wikitext2_valid_has_its_60_articles():
    corpus = FilesCorpus(source="files", paths=[str(WIKITEXT_VALID)], text_layout="wikitext")
    docs = list(iter_documents(corpus))
    assert len(docs) == 60
    assert docs[0].startswith("Homarus gammarus , known as the European lobster")


# --------------------------------------------------------------------------- exact sequences


def test_segment_pair_exact_structure_on_hand_built_documents():
    docs = [[[10, 11], [12, 13], [14, 15], [16, 17]], [[20, 21], [22, 23], [24, 25]], [[30, 31], [32, 33]]]
    corpus, _ = corpus_of(docs), docs
    sequences = segment_pair(corpus, SPECIALS, max_seq_len=10, seed=3, short_seq_prob=0.0)
    assert len(sequences) > 0
    for i in range(len(sequences)):
        tokens, types, label = sequences[i]
        tokens, types = tokens.tolist(), types.tolist()
        assert tokens[0] == SPECIALS.cls and tokens[-1] == SPECIALS.sep and len(tokens) <= 10
        boundary = tokens.index(SPECIALS.sep)
        assert tokens[boundary : boundary + 2] == [2, 2], "RoBERTa-style </s></s> between segments"
        a, b = tokens[1:boundary], tokens[boundary + 2 : -1]
        assert types == [0] * (boundary + 2) + [1] * (len(b) + 1)
        doc_of = lambda t: t // 10 - 1  # noqa: E731
        assert len({doc_of(t) for t in a}) == 1 and len({doc_of(t) for t in b}) == 1
        if label == IS_NEXT:
            assert doc_of(a[0]) == doc_of(b[0]) and b[0] == a[-1] + 1, "B continues A"
        else:
            assert label == NOT_NEXT and doc_of(a[0]) != doc_of(b[0])
        assert sequences.documents[i] == (1 if label == IS_NEXT else 2)


def test_doc_sentences_never_cross_and_full_sentences_do():
    corpus, _ = random_corpus(300)
    doc = FORMATS["doc_sentences"](corpus, SPECIALS, 128, 0, 0.0)
    full = FORMATS["full_sentences"](corpus, SPECIALS, 128, 0, 0.0)
    assert (doc.documents == 1).all()
    assert (full.documents > 1).sum() > len(full) // 4
    # every token of the corpus appears once, in order, in both packings
    plain = np.asarray(corpus.tokens)
    for sequences in (doc, full):
        body = np.asarray(sequences.tokens)
        assert np.array_equal(body[~np.isin(body, SPECIALS.ids)], plain)


@pytest.mark.parametrize("max_sentences", [8, 30])
@pytest.mark.parametrize("name", ["segment_pair", "sentence_pair"])
def test_nsp_positive_rate_is_one_half(name, max_sentences):
    # short documents too: that is where a forced NotNext for last sentences would tilt the rate
    corpus, _ = random_corpus(3000, seed=1, max_sentences=max_sentences)
    sequences = FORMATS[name](corpus, SPECIALS, 128, 7, 0.1)
    assert len(sequences) > 2000
    positive = float((sequences.nsp_labels == IS_NEXT).mean())
    assert abs(positive - 0.5) < 0.02, positive


def test_short_seq_prob_shortens_about_a_tenth_of_segment_pairs():
    corpus, _ = random_corpus(2000, seed=2)
    long_only = FORMATS["segment_pair"](corpus, SPECIALS, 128, 0, 0.0)
    with_short = FORMATS["segment_pair"](corpus, SPECIALS, 128, 0, 0.1)
    assert with_short.lengths.mean() < long_only.lengths.mean()
    assert np.median(with_short.lengths) > 100


# ----------------------------------------------------------------------------------- masking


def test_mask_rate_and_exact_split_over_thousands_of_draws():
    tokens = np.asarray([SPECIALS.cls, *range(10, 136), SPECIALS.sep])
    config = MaskingConfig()
    maskable = chosen = as_mask = kept = 0
    for index in range(3000):
        inputs, labels = mask_sequence(tokens, SPECIALS, 50_000, config, seed=5, epoch=0, index=index)
        predicted = labels != IGNORE
        assert not predicted[[0, -1]].any()
        maskable += 126
        chosen += predicted.sum()
        as_mask += (inputs[predicted] == SPECIALS.mask).sum()
        kept += (inputs[predicted] == labels[predicted]).sum()
    assert abs(chosen / maskable - 0.15) < 0.005
    assert abs(as_mask / chosen - 0.8) < 0.01
    assert abs(kept / chosen - 0.1) < 0.01
    assert abs(1 - (as_mask + kept) / chosen - 0.1) < 0.01


@pytest.mark.parametrize("epochs", [1, 2, 7, 25])
def test_static_masking_has_exactly_dupe_factor_masks_over_any_epochs(epochs):
    tokens = np.arange(10, 74)
    config = MaskingConfig(kind="static", dupe_factor=5)
    for index in range(20):
        masks = {mask_sequence(tokens, SPECIALS, 500, config, 0, e, index)[1].tobytes() for e in range(epochs)}
        assert len(masks) == min(epochs, 5)


def test_dynamic_masks_are_new_each_epoch_and_identical_across_processes():
    tokens = np.arange(10, 74)
    config = MaskingConfig()
    here = [mask_sequence(tokens, SPECIALS, 500, config, 11, epoch, 4)[1] for epoch in range(6)]
    assert len({m.tobytes() for m in here}) == 6
    code = (
        "import numpy as np\n"
        "from harness.config import MaskingConfig\n"
        "from harness.data.masking import mask_sequence\n"
        "from harness.data.tokenizer import SpecialTokens\n"
        "s = SpecialTokens(cls=0, sep=2, pad=1, mask=4, unk=3, pair_separator=(2, 2))\n"
        "print(mask_sequence(np.arange(10, 74), s, 500, MaskingConfig(), 11, 3, 4)[1].tobytes().hex())\n"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == here[3].tobytes().hex()


def test_max_predictions_caps_masked_positions():
    config = MaskingConfig(max_predictions=5)
    for index in range(50):
        _, labels = mask_sequence(np.arange(10, 200), SPECIALS, 500, config, 0, 0, index)
        assert (labels != IGNORE).sum() <= 5


@pytest.mark.parametrize("kind", ["byte_bpe", "wordpiece"])
def test_whole_word_masking_masks_every_piece_of_a_word(kind, tmp_path):
    config = DataConfig(
        corpus=SyntheticCorpus(source="synthetic", documents=60),
        tokenizer=TokenizerConfig(kind=kind, vocab_size=300),  # small: words split into several pieces
        max_seq_len=64,
    )
    data = prepare_data(config, StageCache(tmp_path), heldout_sequences=4)
    masking = MaskingConfig(whole_word=True)
    multi_piece_words = 0
    for index in range(len(data.train)):
        ids, _, _ = data.train[index]
        starts = data.train.word_starts_of(index).astype(bool)
        _, labels = mask_sequence(ids, data.specials, data.vocab_size, masking, 0, 0, index, starts)
        word_of = np.cumsum(starts)
        predicted = labels != IGNORE
        for word in np.unique(word_of[predicted]):
            members = word_of == word
            assert predicted[members].all(), "a word is masked whole or not at all"
            multi_piece_words += members.sum() > 1
    assert multi_piece_words > 50, "the check must meet words of several pieces"


# ----------------------------------------------------------------------------- tokens per step


def test_steps_average_tokens_per_step_rather_than_overshooting():
    corpus, _ = random_corpus(800, seed=6)
    sequences = FORMATS["full_sentences"](corpus, SPECIALS, 512, 0, 0.0)
    batches = PretrainingBatches(sequences, SPECIALS, 1000, MaskingConfig(), 0, 64, tokens_per_step=4096)
    per_step = [sum(mb.real_tokens for mb in batches.next_step()) for _ in range(200)]
    assert abs(np.mean(per_step) / 4096 - 1) < 0.02, np.mean(per_step)


def test_tokens_per_step_are_equal_across_the_four_formats():
    corpus, _ = random_corpus(1500, seed=4)
    means = {}
    for name, fn in FORMATS.items():
        sequences = fn(corpus, SPECIALS, 128, 0, 0.1)
        batches = PretrainingBatches(sequences, SPECIALS, 1000, MaskingConfig(), 0, 64, tokens_per_step=4096)
        means[name] = np.mean([sum(mb.real_tokens for mb in batches.next_step()) for _ in range(30)])
    low, high = min(means.values()), max(means.values())
    assert high / low < 1.05, means


# --------------------------------------------------------------------------------- bad input


def test_bad_data_inputs_fail_clearly(tmp_path, write_suite):
    corpus, _ = random_corpus(5)
    with pytest.raises(ValueError, match="no room for two segments"):
        FORMATS["segment_pair"](corpus, SPECIALS, 4, 0, 0.1)
    with pytest.raises(ValueError, match="at least two documents"):
        FORMATS["sentence_pair"](corpus_of([[[10, 11], [12]]]), SPECIALS, 16, 0, 0.0)
    sequences = FORMATS["doc_sentences"](corpus, SPECIALS, 64, 0, 0.0)
    with pytest.raises(ValueError, match="exceeds the .* training sequences"):
        PretrainingBatches(sequences, SPECIALS, 1000, MaskingConfig(), 0, 8, batch_size=len(sequences) + 1)
    with pytest.raises(ValueError, match="exceeds the corpus's"):
        PretrainingBatches(sequences, SPECIALS, 1000, MaskingConfig(), 0, 8, tokens_per_step=10**9)
    from conftest import tiny_suite

    suite = tiny_suite()
    suite["base"]["data"]["tokenizer"]["vocab_size"] = 200
    path = write_suite(suite)
    assert main(["run", str(path), "--out", str(tmp_path / "r")]) == 2
    missing = write_suite(
        {**tiny_suite(), "base": {**tiny_suite()["base"], "data": {"corpus": {"source": "hub", "name": "x/y"}}}},
        "hub.yaml",
    )
    # `harness data` builds in-process: a corpus it cannot read is exit 2 with a message, no traceback
    import os

    os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        assert main(["data", str(missing), "--out", str(tmp_path / "r")]) == 2
    finally:
        del os.environ["HF_DATASETS_OFFLINE"], os.environ["HF_HUB_OFFLINE"]


def test_editing_a_corpus_file_rebuilds_its_documents(tmp_path):
    text = tmp_path / "c.txt"
    text.write_text("\n\n".join(f"Document {i} has a sentence. And another one." for i in range(40)))
    corpus = FilesCorpus(source="files", paths=[str(text)])
    config = DataConfig(corpus=corpus, tokenizer=TokenizerConfig(vocab_size=300), max_seq_len=32)
    first = prepare_data(config, StageCache(tmp_path / "cache"), 4)
    text.write_text(text.read_text() + "\n\nA new document at the end. It was appended.")
    second = prepare_data(config, StageCache(tmp_path / "cache"), 4)
    assert first.stage_keys["documents"] != second.stage_keys["documents"]


# ------------------------------------------------------------------------------ harness data


@pytest.mark.skipif(not WIKITEXT_VALID.is_file(), reason="../shared/data/wikitext-2-raw is not present")
def test_harness_data_on_wikitext2_for_every_format_and_two_tokenizers(write_suite, tmp_path, capsys):
    arms = {
        f"{fmt}-{kind}": {"data": {"format": fmt, "nsp": fmt.endswith("pair"), "tokenizer": {"kind": kind}}}
        for fmt in FORMATS
        for kind in ("byte_bpe", "wordpiece")
    }
    suite = {
        "name": "wt2",
        "base": {
            "data": {
                "corpus": {"source": "files", "paths": [str(WIKITEXT_VALID)], "text_layout": "wikitext"},
                "tokenizer": {"vocab_size": 4000},
                "max_seq_len": 128,
            },
            "train": {"tokens_per_step": 8192, "steps": 10},
        },
        "arms": arms,
        "seeds": [0],
    }
    path = write_suite(suite)
    assert main(["data", str(path), "--out", str(tmp_path / "r"), "--json"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert set(report) == set(arms)
    for arm, stats in report.items():
        assert stats["documents"]["train"] + stats["documents"]["heldout"] == 60
        assert stats["mask"]["special_tokens_masked"] == 0
        assert abs(stats["mask"]["rate"] - 0.15) < 0.01
        if "pair" in arm:
            assert abs(stats["nsp_positive_rate"] - 0.5) < 0.05
        if arm.startswith("doc_sentences"):
            assert stats["sequences_spanning_documents"] == 0
        if arm.endswith("byte_bpe"):
            assert stats["unknown_token_rate"] == 0.0
    per_step = [s["tokens_per_step"]["mean"] for s in report.values()]
    assert max(per_step) / min(per_step) < 1.05
