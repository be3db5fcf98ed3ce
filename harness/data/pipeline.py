"""The data flow for one run, stage by stage, each stage cached by the hash of its inputs:

corpus -> documents (train / held-out split) -> sentences -> tokenizer -> token ids -> input format

Every stage streams: documents and sentences pass through one at a time (JSON lines on disk),
token ids are appended to memory-mapped files, so preparing a corpus needs memory for its token
ids, not for its text. Masking and batching happen on the fly (batches.py): they are cheap, seeded
per (seed, epoch, index), and depend on the run seed, so caching them would only copy the
sequences once per seed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from harness.config import DataConfig, FilesCorpus
from harness.data.cache import StageCache
from harness.data.formats import FORMATS, Sequences
from harness.data.sentences import split_document
from harness.data.sources import DataSourceError, describe, iter_documents
from harness.data.tokenizer import (
    SpecialTokens,
    TokenizedCorpus,
    encode_documents,
    load_tokenizer,
    special_tokens,
    train_tokenizer,
)

SPLITS = ("train", "heldout")
# Part of every stage's cache key: bump a stage's number when its code changes what it writes, so
# caches built by older code are not reused.
STAGE_VERSIONS = {"documents": 3, "sentences": 2, "tokenizer": 1, "token_ids": 2, "format": 4}


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    specials: SpecialTokens
    vocab_size: int
    train: Sequences
    heldout: Sequences
    stage_keys: dict[str, str] = field(default_factory=dict)
    stage_dirs: dict[str, Path] = field(default_factory=dict)

    def stats(self, stage: str) -> dict[str, Any]:
        path = self.stage_dirs[stage] / "stats.json"
        return json.loads(path.read_text()) if path.is_file() else {}


def heldout_period(fraction: float) -> int:
    return max(2, round(1 / fraction))


def is_heldout(index: int, fraction: float) -> bool:
    """Every k-th document (k = 1/fraction), from the middle of the first k: a split decided per
    document, so it streams, the same for every run, spread over the whole corpus."""
    period = heldout_period(fraction)
    return index % period == period // 2


def corpus_fingerprint(corpus: Any) -> list[dict[str, Any]]:
    """Resolved path, size and modification time of every corpus file: editing a file in place,
    or the same relative path naming another file, makes a new documents stage, not a stale hit."""
    if not isinstance(corpus, FilesCorpus):
        return []
    return [
        {"path": str(path.resolve()), "bytes": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns}
        for path in corpus.files()
    ]


def _iter_jsonl(path: Path) -> Iterator[Any]:
    with path.open() as f:
        for line in f:
            yield json.loads(line)


def prepare_data(config: DataConfig, cache: StageCache, heldout_sequences: int) -> PreparedData:
    keys: dict[str, str] = {}
    dirs: dict[str, Path] = {}

    def build_documents(out: Path) -> None:
        counts = dict.fromkeys(SPLITS, 0)
        with (out / "train.jsonl").open("w") as train, (out / "heldout.jsonl").open("w") as heldout:
            for index, document in enumerate(iter_documents(config.corpus)):
                split = "heldout" if is_heldout(index, config.heldout_fraction) else "train"
                (heldout if split == "heldout" else train).write(json.dumps(document) + "\n")
                counts[split] += 1
        total = sum(counts.values())
        if total == 0:
            raise DataSourceError(f"corpus {describe(config.corpus)} has no non-empty document")
        if counts["heldout"] == 0 or counts["train"] == 0:
            raise DataSourceError(
                f"corpus {describe(config.corpus)} has {total} document(s): too few to hold out every "
                f"{heldout_period(config.heldout_fraction)}th for evaluation and train on the rest"
            )
        (out / "stats.json").write_text(json.dumps({"documents": counts}))

    corpus_inputs = {
        "corpus": config.corpus.model_dump(mode="json"),
        "files": corpus_fingerprint(config.corpus),
        "heldout_fraction": config.heldout_fraction,
        "version": STAGE_VERSIONS["documents"],
    }
    keys["documents"], dirs["documents"] = cache.get_or_build("documents", corpus_inputs, build_documents)

    def build_sentences(out: Path) -> None:
        stats: dict[str, Any] = {}
        for split in SPLITS:
            kept = dropped = sentences = 0
            with (out / f"{split}.jsonl").open("w") as f:
                for document in _iter_jsonl(dirs["documents"] / f"{split}.jsonl"):
                    split_doc = split_document(document)
                    if not split_doc:
                        dropped += 1  # e.g. only markup or whitespace: nothing to train on
                        continue
                    f.write(json.dumps(split_doc) + "\n")
                    kept += 1
                    sentences += len(split_doc)
            if kept == 0:
                raise DataSourceError(f"no sentence found in any {split} document of {describe(config.corpus)}")
            stats[split] = {"documents": kept, "documents_without_sentences": dropped, "sentences": sentences}
        (out / "stats.json").write_text(json.dumps(stats))

    splitter = {
        "documents": keys["documents"],
        "splitter": f"blingfire-{version('blingfire')}",
        "version": STAGE_VERSIONS["sentences"],
    }
    keys["sentences"], dirs["sentences"] = cache.get_or_build("sentences", splitter, build_sentences)

    def build_tokenizer(out: Path) -> None:
        if config.tokenizer.file:  # a given tokenizer (continued pretraining): copied, not trained
            shutil.copyfile(config.tokenizer.file, out / "tokenizer.json")
            return
        sentences = (s for doc in _iter_jsonl(dirs["sentences"] / "train.jsonl") for s in doc)
        train_tokenizer(sentences, config.tokenizer, out)

    if config.tokenizer.file:
        digest = hashlib.sha256(Path(config.tokenizer.file).read_bytes()).hexdigest()
        tok_inputs = {"file_sha256": digest, "kind": config.tokenizer.kind, "version": STAGE_VERSIONS["tokenizer"]}
    else:
        tok_inputs = {
            "sentences": keys["sentences"],
            "tokenizer": config.tokenizer.model_dump(mode="json", exclude={"file"}),
            "library": f"tokenizers-{version('tokenizers')}",
            "version": STAGE_VERSIONS["tokenizer"],
        }
    keys["tokenizer"], dirs["tokenizer"] = cache.get_or_build("tokenizer", tok_inputs, build_tokenizer)
    tokenizer = load_tokenizer(dirs["tokenizer"])
    specials = special_tokens(tokenizer, config.tokenizer.kind)

    def build_token_ids(out: Path) -> None:
        for split in SPLITS:
            (out / split).mkdir()
            encode_documents(tokenizer, _iter_jsonl(dirs["sentences"] / f"{split}.jsonl"), out / split)

    ids_inputs = {
        "sentences": keys["sentences"],
        "tokenizer": keys["tokenizer"],
        "version": STAGE_VERSIONS["token_ids"],
    }
    keys["token_ids"], dirs["token_ids"] = cache.get_or_build("token_ids", ids_inputs, build_token_ids)

    def formatted(split: str, format_name: str, limit: int | None) -> tuple[str, Path]:
        def build(out: Path) -> None:
            corpus = TokenizedCorpus.load(dirs["token_ids"] / split)
            sequences = FORMATS[format_name](corpus, specials, config.max_seq_len, config.seed, config.short_seq_prob)
            (sequences.head(limit) if limit is not None else sequences).save(out)

        inputs = {
            "token_ids": keys["token_ids"], "split": split, "format": format_name, "limit": limit,
            "max_seq_len": config.max_seq_len, "seed": config.seed, "short_seq_prob": config.short_seq_prob,
            "version": STAGE_VERSIONS["format"],
        }  # fmt: skip
        return cache.get_or_build("format", inputs, build)

    keys["format"], dirs["format"] = formatted("train", config.format, None)
    # held-out text is always packed FULL-SENTENCES: one yardstick for every arm's perplexity
    keys["heldout"], dirs["heldout"] = formatted("heldout", "full_sentences", heldout_sequences)
    return PreparedData(
        tokenizer=tokenizer,
        specials=specials,
        vocab_size=tokenizer.get_vocab_size(),
        train=Sequences.load(dirs["format"]),
        heldout=Sequences.load(dirs["heldout"]),
        stage_keys=keys,
        stage_dirs=dirs,
    )
