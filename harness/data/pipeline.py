"""The data flow for one run, stage by stage, each stage cached by the hash of its inputs:

corpus -> documents (train / held-out split) -> sentences -> tokenizer -> token ids -> input format

Masking and batching happen on the fly (see batches.py): they are cheap, seeded per (seed, epoch,
index), and depend on the run seed, so caching them would only duplicate the sequences per seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from harness.config import DataConfig
from harness.data.cache import StageCache
from harness.data.formats import FORMATS, Sequences
from harness.data.sentences import split_sentences
from harness.data.sources import load_documents
from harness.data.tokenizer import (
    SpecialTokens,
    TokenizedCorpus,
    encode_documents,
    load_tokenizer,
    special_tokens,
    train_tokenizer,
)

HELDOUT_SPLIT_SEED = 0  # fixed: every run, whatever its seed, holds out the same documents


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    specials: SpecialTokens
    vocab_size: int
    train: Sequences
    heldout: Sequences
    stage_keys: dict[str, str] = field(default_factory=dict)
    tokenizer_dir: Path | None = None


def _write_jsonl(path: Path, rows: list) -> None:
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _read_jsonl(path: Path) -> list:
    with path.open() as f:
        return [json.loads(line) for line in f]


def prepare_data(config: DataConfig, cache: StageCache, heldout_sequences: int) -> PreparedData:
    keys: dict[str, str] = {}

    def build_documents(out: Path) -> None:
        documents = load_documents(config.corpus)
        heldout_count = max(1, round(len(documents) * config.heldout_fraction))
        if heldout_count >= len(documents):
            raise ValueError(f"corpus has {len(documents)} documents: too few to hold any out for evaluation")
        order = np.random.default_rng(HELDOUT_SPLIT_SEED).permutation(len(documents))
        heldout = set(order[:heldout_count].tolist())
        _write_jsonl(out / "train.jsonl", [d for i, d in enumerate(documents) if i not in heldout])
        _write_jsonl(out / "heldout.jsonl", [d for i, d in enumerate(documents) if i in heldout])

    corpus_inputs = {"corpus": config.corpus.model_dump(mode="json"), "heldout_fraction": config.heldout_fraction}
    keys["documents"], documents_dir = cache.get_or_build("documents", corpus_inputs, build_documents)

    def build_sentences(out: Path) -> None:
        for split in ("train", "heldout"):
            sentences = split_sentences(_read_jsonl(documents_dir / f"{split}.jsonl"))
            if not any(sentences):
                raise ValueError(f"no sentence found in the {split} documents")
            _write_jsonl(out / f"{split}.jsonl", [s for s in sentences if s])

    splitter = {"documents": keys["documents"], "splitter": f"blingfire-{version('blingfire')}"}
    keys["sentences"], sentences_dir = cache.get_or_build("sentences", splitter, build_sentences)

    def build_tokenizer(out: Path) -> None:
        def stream():
            with (sentences_dir / "train.jsonl").open() as f:
                for line in f:
                    yield from json.loads(line)

        train_tokenizer(stream(), config.tokenizer, out)

    tok_inputs = {"sentences": keys["sentences"], "tokenizer": config.tokenizer.model_dump(mode="json")}
    keys["tokenizer"], tokenizer_dir = cache.get_or_build("tokenizer", tok_inputs, build_tokenizer)
    tokenizer = load_tokenizer(tokenizer_dir)
    specials = special_tokens(tokenizer, config.tokenizer.kind)

    def build_token_ids(out: Path) -> None:
        for split in ("train", "heldout"):
            (out / split).mkdir()
            encode_documents(tokenizer, _read_jsonl(sentences_dir / f"{split}.jsonl")).save(out / split)

    ids_inputs = {"sentences": keys["sentences"], "tokenizer": keys["tokenizer"]}
    keys["token_ids"], ids_dir = cache.get_or_build("token_ids", ids_inputs, build_token_ids)

    def formatted(split: str, format_name: str, limit: int | None) -> tuple[str, Sequences]:
        def build(out: Path) -> None:
            corpus = TokenizedCorpus.load(ids_dir / split)
            sequences = FORMATS[format_name](corpus, specials, config.max_seq_len, config.seed, config.short_seq_prob)
            if limit is not None and len(sequences) > limit:
                end = sequences.offsets[limit]
                sequences = Sequences(
                    sequences.tokens[:end],
                    sequences.token_types[:end],
                    sequences.offsets[: limit + 1],
                    sequences.nsp_labels[:limit],
                )
            sequences.save(out)

        inputs = {
            "token_ids": keys["token_ids"],
            "split": split,
            "format": format_name,
            "limit": limit,
            "max_seq_len": config.max_seq_len,
            "seed": config.seed,
            "short_seq_prob": config.short_seq_prob,
        }
        key, directory = cache.get_or_build("format", inputs, build)
        return key, Sequences.load(directory)

    keys["format"], train = formatted("train", config.format, None)
    # held-out text is always packed FULL-SENTENCES: one yardstick for every arm's perplexity
    keys["heldout"], heldout = formatted("heldout", "full_sentences", heldout_sequences)
    return PreparedData(
        tokenizer=tokenizer,
        specials=specials,
        vocab_size=tokenizer.get_vocab_size(),
        train=train,
        heldout=heldout,
        stage_keys=keys,
        tokenizer_dir=tokenizer_dir,
    )
