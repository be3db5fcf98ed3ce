"""Data stages as pure functions on small hand-built inputs, plus the cached pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from harness.config import DataConfig, FilesCorpus, HubCorpus, MaskingConfig, SyntheticCorpus, TokenizerConfig
from harness.data.batches import PretrainingBatches
from harness.data.cache import StageCache, stage_key
from harness.data.formats import FORMATS, NO_PAIR, NOT_NEXT, full_sentences
from harness.data.masking import IGNORE, mask_sequence, random_ordinary_tokens
from harness.data.pipeline import (
    StageOutput,
    documents_inputs,
    format_inputs,
    prepare_data,
    sentences_inputs,
    token_ids_inputs,
    tokenizer_inputs,
)
from harness.data.sentences import split_document
from harness.data.sources import DataSourceError, iter_documents
from harness.data.synthetic import generate_corpus, generate_topic_task, make_world
from harness.data.tokenizer import SpecialTokens, TokenizedCorpus, unknown_token_rate

SPECIALS = SpecialTokens(cls=0, sep=2, pad=1, mask=4, unk=3, pair_separator=(2, 2))


def corpus_of(documents: list[list[list[int]]]) -> TokenizedCorpus:
    sentences = [np.asarray(s, dtype=np.int32) for doc in documents for s in doc]
    lengths = [len(s) for s in sentences]
    tokens = np.concatenate(sentences)
    return TokenizedCorpus(
        tokens,
        np.ones(len(tokens), dtype=np.uint8),
        np.concatenate([[0], np.cumsum(lengths)]),
        np.concatenate([[0], np.cumsum([len(d) for d in documents])]),
    )


# ------------------------------------------------------------------------------------- masking


def test_masking_is_a_pure_function_of_seed_epoch_index():
    tokens = np.arange(5, 105)
    config = MaskingConfig()
    a = mask_sequence(tokens, SPECIALS, 1000, config, seed=3, epoch=1, index=7)
    b = mask_sequence(tokens, SPECIALS, 1000, config, seed=3, epoch=1, index=7)
    c = mask_sequence(tokens, SPECIALS, 1000, config, seed=3, epoch=2, index=7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_masking_with_only_mask_replacement_is_exactly_checkable():
    tokens = np.asarray([0, *range(10, 110), 2, 1, 1])  # cls, 100 ordinary tokens, sep, pad, pad
    config = MaskingConfig(mask_prob=0.2, replace_mask=1.0, replace_random=0.0, keep=0.0)
    inputs, labels = mask_sequence(tokens, SPECIALS, 1000, config, seed=0, epoch=0, index=0)
    predicted = labels != IGNORE
    assert predicted.sum() == 20
    assert np.all(inputs[predicted] == SPECIALS.mask)
    assert np.array_equal(labels[predicted], tokens[predicted])
    assert np.array_equal(inputs[~predicted], tokens[~predicted])
    assert not predicted[[0, 101, 102, 103]].any(), "special tokens are never selected"


def test_mask_rate_and_split_over_many_draws():
    tokens = np.arange(5, 133)
    config = MaskingConfig()
    chosen = replaced = randomised = 0
    for index in range(400):
        inputs, labels = mask_sequence(tokens, SPECIALS, 500, config, seed=1, epoch=0, index=index)
        predicted = labels != IGNORE
        chosen += predicted.sum()
        replaced += (inputs[predicted] == SPECIALS.mask).sum()
        randomised += ((inputs[predicted] != SPECIALS.mask) & (inputs[predicted] != labels[predicted])).sum()
    assert abs(chosen / (400 * len(tokens)) - 0.15) < 0.005
    assert abs(replaced / chosen - 0.8) < 0.02
    assert 0.07 < randomised / chosen < 0.11  # 10% minus random draws that hit the original token


def test_static_masking_cycles_dupe_factor_masks():
    tokens = np.arange(5, 69)
    config = MaskingConfig(kind="static", dupe_factor=3)
    masks = {tuple(mask_sequence(tokens, SPECIALS, 500, config, 0, epoch, 5)[1]) for epoch in range(12)}
    assert len(masks) == 3
    same = [mask_sequence(tokens, SPECIALS, 500, config, 0, e, 5)[1] for e in (1, 4, 7)]
    assert all(np.array_equal(same[0], m) for m in same)
    dynamic = MaskingConfig(kind="dynamic")
    assert len({tuple(mask_sequence(tokens, SPECIALS, 500, dynamic, 0, e, 5)[1]) for e in range(12)}) == 12


def test_random_replacements_never_pick_special_tokens():
    specials = SpecialTokens(cls=3, sep=7, pad=0, mask=9, unk=8, pair_separator=(7,))
    draws = random_ordinary_tokens(np.random.default_rng(0), 20000, specials, 12)
    assert set(np.unique(draws)) == {1, 2, 4, 5, 6, 10, 11}


# ------------------------------------------------------------------------------------- formats


def test_full_sentences_packs_whole_sentences_across_documents_with_a_separator():
    corpus = corpus_of([[[10, 11], [12]], [[20, 21]], [[30, 31, 32, 33, 34, 35]], [[40, 41, 42, 43, 44, 45, 46, 47]]])
    sequences = full_sentences(corpus, SPECIALS, max_seq_len=10, seed=0, short_seq_prob=0.0)
    got = [sequences[i][0].tolist() for i in range(len(sequences))]
    # capacity 8: docs 0 and 1 share a sequence with one separator between them; doc 2 (6 tokens)
    # does not fit after them with its separator, and no separator dangles at a sequence's end
    assert got == [
        [0, 10, 11, 12, 2, 20, 21, 2],
        [0, 30, 31, 32, 33, 34, 35, 2],
        [0, 40, 41, 42, 43, 44, 45, 46, 47, 2],
    ]
    assert sequences.documents.tolist() == [2, 1, 1]
    assert set(sequences.nsp_labels.tolist()) == {NO_PAIR}


def test_doc_sentences_never_crosses_a_document():
    corpus = corpus_of([[[10, 11], [12]], [[20], [21]]])
    sequences = FORMATS["doc_sentences"](corpus, SPECIALS, 16, 0, 0.0)
    assert [sequences[i][0].tolist() for i in range(len(sequences))] == [[0, 10, 11, 12, 2], [0, 20, 21, 2]]


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_respects_max_length_and_segment_ids(name):
    rng = np.random.default_rng(0)
    documents = [[rng.integers(10, 50, size=rng.integers(3, 9)).tolist() for _ in range(6)] for _ in range(20)]
    sequences = FORMATS[name](corpus_of(documents), SPECIALS, 24, 0, 0.1)
    assert len(sequences) > 0
    for i in range(len(sequences)):
        tokens, types, nsp = sequences[i]
        assert len(tokens) <= 24 and tokens[0] == SPECIALS.cls and tokens[-1] == SPECIALS.sep
        if name.endswith("pair"):
            assert nsp in (0, 1) and types[0] == 0 and types[-1] == 1
            assert list(np.flatnonzero(np.diff(types))) == [np.flatnonzero(types == 1)[0] - 1]
        else:
            assert nsp == NO_PAIR and not types.any()
    if name.endswith("pair"):
        assert 0.3 < (sequences.nsp_labels == NOT_NEXT).mean() < 0.75


# ------------------------------------------------------------------------------------- batches


def test_tokens_per_step_is_reached_and_accumulates_into_micro_batches():
    documents = [[list(range(10, 10 + n)) for n in (5, 7, 9)] for _ in range(30)]
    sequences = FORMATS["doc_sentences"](corpus_of(documents), SPECIALS, 32, 0, 0.0)
    batches = PretrainingBatches(sequences, SPECIALS, 100, MaskingConfig(), 0, micro_batch_size=4, tokens_per_step=200)
    step = batches.next_step()
    tokens = sum(mb.real_tokens for mb in step)
    assert 200 <= tokens < 200 + 32
    assert all(mb.input_ids.shape[0] <= 4 for mb in step)
    # padding only to each micro-batch's own longest sequence
    assert all(mb.attention_mask[:, -1].any() for mb in step)


def test_batches_resume_from_state_dict():
    documents = [[list(range(10, 30))] for _ in range(10)]
    sequences = FORMATS["doc_sentences"](corpus_of(documents), SPECIALS, 32, 0, 0.0)

    def make():
        return PretrainingBatches(sequences, SPECIALS, 100, MaskingConfig(), 5, micro_batch_size=3, batch_size=3)

    straight = make()
    expected = [straight.next_step() for _ in range(7)][-1]
    resumed = make()
    for _ in range(4):
        resumed.next_step()
    state = resumed.state_dict()
    again = make()
    again.load_state_dict(state)
    for _ in range(2):
        again.next_step()
    got = again.next_step()
    assert all(np.array_equal(a.input_ids, b.input_ids) for a, b in zip(expected, got))


# ------------------------------------------------------------------------------ synthetic corpus


def test_synthetic_corpus_is_deterministic_and_entities_recur():
    first, second = generate_corpus(20, seed=3), generate_corpus(20, seed=3)
    assert [d.text for d in first] == [d.text for d in second]
    assert [d.text for d in generate_corpus(20, seed=4)] != [d.text for d in first]
    world_names = set(make_world(3).names)
    for doc in first:
        mentions = [w.strip(".") for w in doc.text.split() if w.strip(".") in world_names]
        assert len(set(mentions)) <= 4, "a small cast per document"
        assert len(mentions) >= len(doc.sentences), "the cast recurs in every sentence"
    train, dev = generate_topic_task(seed=3, train_examples=300, dev_examples=100)
    assert len({e.label for e in train}) == 6 and len(dev) == 100
    assert not {e.text for e in train} & {e.text for e in dev}


def test_sentence_splitter_keeps_synthetic_sentences():
    doc = generate_corpus(1, seed=0)[0]
    assert split_document(doc.text) == list(doc.sentences)


# -------------------------------------------------------------------------------------- sources


def test_local_text_jsonl_and_parquet_sources(tmp_path):
    text = tmp_path / "c.txt"
    text.write_text("First doc. Still first.\nSecond line of first.\n\nSecond doc here.\n")
    assert list(iter_documents(FilesCorpus(source="files", paths=[str(text)]))) == [
        "First doc. Still first.\nSecond line of first.",
        "Second doc here.",
    ]
    per_line = FilesCorpus(source="files", paths=[str(text)], text_layout="document_per_line")
    assert len(list(iter_documents(per_line))) == 3
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": t}) for t in ["Alpha doc.", "Beta doc."]) + "\n")
    assert list(iter_documents(FilesCorpus(source="files", paths=[str(jsonl)], text_field="body"))) == [
        "Alpha doc.",
        "Beta doc.",
    ]
    with pytest.raises(DataSourceError, match="no field 'text'"):
        list(iter_documents(FilesCorpus(source="files", paths=[str(jsonl)])))
    import pandas as pd

    parquet = tmp_path / "c.parquet"
    pd.DataFrame({"text": ["Gamma doc.", "Delta doc."]}).to_parquet(parquet)
    assert list(iter_documents(FilesCorpus(source="files", paths=[str(parquet)]))) == ["Gamma doc.", "Delta doc."]


def test_hub_source_offline_fails_with_a_clear_message(tmp_path):
    code = (
        "from harness.config import HubCorpus\n"
        "from harness.data.sources import iter_documents, DataSourceError\n"
        "try:\n"
        "    list(iter_documents(HubCorpus(source='hub', name='Salesforce/wikitext', config='wikitext-103-raw-v1')))\n"
        "except DataSourceError as e:\n"
        "    print('ERR', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "ERR could not load hub dataset 'Salesforce/wikitext'" in out.stdout, out.stdout + out.stderr
    assert "offline mode is set" in out.stdout and "source=files" in out.stdout


def test_empty_corpus_is_an_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    config = DataConfig(corpus=FilesCorpus(source="files", paths=[str(empty)]))
    with pytest.raises(DataSourceError, match="no non-empty document"):
        prepare_data(config, StageCache(tmp_path / "cache"), heldout_sequences=4)
    assert HubCorpus(source="hub", name="x").split == "train"


# ------------------------------------------------------------------------------------- pipeline


def in_order(inputs: dict) -> list:
    """Items in order: the order is what inputs.json beside a stage shows."""
    return list(inputs.items())


def test_stage_key_inputs_are_those_of_the_caches_already_built(tmp_path):
    """Keys find the stages built before: they change only on purpose (a bumped STAGE_VERSIONS), never
    by a refactor. Library versions are part of some keys, so they are read, not written, here."""
    config = DataConfig(
        corpus=SyntheticCorpus(source="synthetic", documents=120),
        tokenizer=TokenizerConfig(vocab_size=1024),
        max_seq_len=64,
    )
    documents = documents_inputs(config)
    assert in_order(documents) == in_order(
        {"corpus": {"source": "synthetic", "documents": 120, "seed": 0}, "files": [], "heldout_fraction": 0.05,
         "version": 3}
    )  # fmt: skip
    assert stage_key("documents", documents) == "9a1d0b5274e5834f"

    text = tmp_path / "corpus.txt"
    text.write_text("One sentence. Another one.\n\nA second document.\n")
    files = documents_inputs(DataConfig(corpus=FilesCorpus(source="files", paths=[str(text)])))
    assert files["corpus"] == {"source": "files", "paths": [str(text)], "format": None, "text_field": "text",
                               "text_layout": "blank_line_separated", "max_documents": None}  # fmt: skip
    assert files["files"] == [{"path": str(text.resolve()), "bytes": 47, "mtime_ns": text.stat().st_mtime_ns}]

    upstream, other = StageOutput("0123456789abcdef", tmp_path), StageOutput("fedcba9876543210", tmp_path)
    assert in_order(sentences_inputs(upstream)) == in_order(
        {"documents": upstream.key, "splitter": f"blingfire-{version('blingfire')}", "version": 2}
    )
    assert in_order(tokenizer_inputs(config, upstream)) == in_order(
        {"sentences": upstream.key, "tokenizer": {"kind": "byte_bpe", "vocab_size": 1024, "min_frequency": 2,
         "lowercase": False}, "library": f"tokenizers-{version('tokenizers')}", "version": 1}
    )  # fmt: skip
    given = tmp_path / "tokenizer.json"
    given.write_text("{}")
    with_file = config.model_copy(update={"tokenizer": TokenizerConfig(file=str(given))})
    assert in_order(tokenizer_inputs(with_file, upstream)) == in_order(
        {"file_sha256": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "kind": "byte_bpe",
         "version": 1}
    )  # fmt: skip
    assert in_order(token_ids_inputs(upstream, other)) == in_order(
        {"sentences": upstream.key, "tokenizer": other.key, "version": 2}
    )
    heldout = format_inputs(config, upstream, "heldout", "full_sentences", 16)
    assert in_order(heldout) == in_order(
        {"token_ids": upstream.key, "split": "heldout", "format": "full_sentences", "limit": 16, "max_seq_len": 64,
         "seed": 12345, "short_seq_prob": 0.1, "version": 4}
    )  # fmt: skip
    assert stage_key("format", heldout) == "c10f1ac26b5821b3"


def test_each_stage_is_keyed_by_its_inputs_and_its_upstream_key(tmp_path):
    config = DataConfig(
        corpus=SyntheticCorpus(source="synthetic", documents=60),
        tokenizer=TokenizerConfig(vocab_size=512),
        max_seq_len=64,
        format="segment_pair",
    )
    data = prepare_data(config, StageCache(tmp_path), heldout_sequences=8)
    keys = data.stage_keys

    def built(stage: str) -> StageOutput:
        return StageOutput(keys[stage], Path())

    assert list(keys) == ["documents", "sentences", "tokenizer", "token_ids", "format", "heldout", "heldout_own"]
    assert keys == {
        "documents": stage_key("documents", documents_inputs(config)),
        "sentences": stage_key("sentences", sentences_inputs(built("documents"))),
        "tokenizer": stage_key("tokenizer", tokenizer_inputs(config, built("sentences"))),
        "token_ids": stage_key("token_ids", token_ids_inputs(built("sentences"), built("tokenizer"))),
        "format": stage_key("format", format_inputs(config, built("token_ids"), "train", "segment_pair", None)),
        "heldout": stage_key("format", format_inputs(config, built("token_ids"), "heldout", "full_sentences", 8)),
        "heldout_own": stage_key("format", format_inputs(config, built("token_ids"), "heldout", "segment_pair", 8)),
    }
    for stage, directory in data.stage_dirs.items():
        assert directory == tmp_path / ("format" if stage.startswith("heldout") else stage) / keys[stage]


def test_arms_sharing_corpus_and_tokenizer_share_cached_stages(tmp_path):
    base = DataConfig(
        corpus=SyntheticCorpus(source="synthetic", documents=60),
        tokenizer=TokenizerConfig(vocab_size=512),
        max_seq_len=64,
    )
    first = StageCache(tmp_path)
    a = prepare_data(base, first, heldout_sequences=8)
    assert first.hits == [] and "tokenizer" in first.misses

    # another arm with the same corpus and tokenizer but another format: only the format is new
    second = StageCache(tmp_path)
    b = prepare_data(base.model_copy(update={"format": "segment_pair"}), second, heldout_sequences=8)
    assert second.hits == ["documents", "sentences", "tokenizer", "token_ids", "format"]  # held-out format reused
    assert second.misses == ["format", "format"]  # the training split, and the held-out one in its own format
    assert a.stage_keys["tokenizer"] == b.stage_keys["tokenizer"]
    assert a.stage_keys["format"] != b.stage_keys["format"]
    assert len(list((tmp_path / "tokenizer").iterdir())) == 1

    # a different vocabulary invalidates the tokenizer and everything after it, not the sentences
    third = StageCache(tmp_path)
    prepare_data(base.model_copy(update={"tokenizer": TokenizerConfig(vocab_size=600)}), third, heldout_sequences=8)
    assert third.hits == ["documents", "sentences"]


@pytest.mark.parametrize("kind", ["byte_bpe", "wordpiece", "char_bpe"])
def test_every_tokenizer_kind_trains_with_its_special_tokens(kind, tmp_path):
    config = DataConfig(
        corpus=SyntheticCorpus(source="synthetic", documents=40),
        tokenizer=TokenizerConfig(kind=kind, vocab_size=400),
        max_seq_len=64,
    )
    data = prepare_data(config, StageCache(tmp_path), heldout_sequences=4)
    assert data.vocab_size <= 400
    tokens, _, _ = data.train[0]
    assert tokens[0] == data.specials.cls and tokens[-1] == data.specials.sep
    expected_cls = "[CLS]" if kind == "wordpiece" else "<s>"
    assert data.tokenizer.id_to_token(data.specials.cls) == expected_cls


def test_hub_wikitext_rows_become_articles(monkeypatch):
    import datasets

    # Salesforce/wikitext rows: '' between paragraphs, text rows end in ' \n', titles ' = T = \n'
    rows = ["", " = Alpha = \n", "", " First paragraph . \n", "", " = = Section = = \n", "", " Second . \n",
            "", " = Beta = \n", "", " Only paragraph . \n"]  # fmt: skip
    table = datasets.Dataset.from_dict({"text": rows})
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: table)
    by_article = HubCorpus(source="hub", name="Salesforce/wikitext", text_layout="wikitext")
    assert list(iter_documents(by_article)) == ["First paragraph .\nSecond .", "Only paragraph ."]
    by_row = HubCorpus(source="hub", name="Salesforce/wikitext")
    assert len(list(iter_documents(by_row))) == 6  # every non-empty row is its own document


def test_unknown_token_rate_counts_text_tokens_only():
    specials = SpecialTokens(cls=0, sep=2, pad=1, mask=4, unk=3, pair_separator=(2, 2))
    tokens = np.array([0, 7, 3, 8, 9, 2, 1, 1, 4, 3, 2])  # CLS, SEP, pad and mask are structure, not text
    assert unknown_token_rate(tokens, specials) == pytest.approx(2 / 5)  # text: 7 3 8 9 3


def test_datasets_progress_bars_stay_out_of_the_harness_output():
    from harness.data.sources import datasets_module

    datasets = datasets_module()
    assert not datasets.is_progress_bar_enabled()
