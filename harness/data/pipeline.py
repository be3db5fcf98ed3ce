"""The data flow for one run, stage by stage, each stage cached by the hash of its inputs:

corpus -> documents (train / held-out split) -> sentences -> tokenizer -> token ids -> input format

Every stage streams: documents and sentences pass through one at a time (JSON lines on disk),
token ids are appended to memory-mapped files, so preparing a corpus needs memory for its token
ids, not for its text. Masking and batching happen on the fly (batches.py): they are cheap, seeded
per (seed, epoch, index), and depend on the run seed, so caching them would only copy the
sequences once per seed. Static masking's copies are the exception where the format draws at
random (SEGMENT-PAIR, SENTENCE-PAIR): each copy is packed with its own seed, as BERT's
create_pretraining_data re-draws segmentation and NSP partners for every duplicate.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from harness.config import DataConfig, FilesCorpus
from harness.data.cache import StageCache, stage_key
from harness.data.formats import FORMATS, SEEDED_FORMATS, Sequences, copy_seed
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
    train: Sequences  # static masking's copy 0
    heldout: Sequences  # packed FULL-SENTENCES, whatever the run's format: the yardstick every arm shares
    heldout_own: Sequences | None = None  # packed in the run's own format, where that is another one
    # static masking's copies of the training split, each packed with its own seed (copy 0 is `train`);
    # just `train` where the format packs the same whatever the seed, or masking is dynamic
    train_copies: tuple[Sequences, ...] = ()
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


def prepare_data(config: DataConfig, cache: StageCache, heldout_sequences: int, copies: int = 1) -> PreparedData:
    """The run's data, stage by stage: each stage's output is loaded from the cache under the key of its
    inputs (its own config and its upstream stage's key), or built and cached. `copies`: how many
    copies of the training split static masking serves (its dupe_factor; 1 for dynamic masking)."""
    documents = cached(cache, "documents", documents_inputs(config), build_documents, config)
    sentences = cached(cache, "sentences", sentences_inputs(documents), build_sentences, documents, config)
    saved_tokenizer = cached(
        cache, "tokenizer", tokenizer_inputs(config, sentences), build_tokenizer, config, sentences
    )
    tokenizer = load_tokenizer(saved_tokenizer.dir)
    specials = special_tokens(tokenizer, config.tokenizer.kind)
    token_ids = cached(
        cache, "token_ids", token_ids_inputs(sentences, saved_tokenizer), build_token_ids, tokenizer, sentences
    )
    train = formatted(cache, config, specials, token_ids, "train", config.format, None)
    drawn = copies if config.format in SEEDED_FORMATS else 1  # unseeded formats: every copy is the same
    more = [formatted(cache, config, specials, token_ids, "train", config.format, None, c) for c in range(1, drawn)]
    # held-out text packed FULL-SENTENCES is one yardstick for every arm; packed in the arm's own
    # format it is what the arm was trained to read (the two differ for pair and document formats)
    heldout = formatted(cache, config, specials, token_ids, "heldout", "full_sentences", heldout_sequences)
    own = None
    if config.format != "full_sentences":
        own = formatted(cache, config, specials, token_ids, "heldout", config.format, heldout_sequences)
    stages = {"documents": documents, "sentences": sentences, "tokenizer": saved_tokenizer, "token_ids": token_ids,
              "format": train, "heldout": heldout, **({"heldout_own": own} if own else {}),
              **{f"format_copy_{c}": stage for c, stage in enumerate(more, 1)}}  # fmt: skip
    train_sequences = Sequences.load(train.dir)
    return PreparedData(
        tokenizer=tokenizer,
        specials=specials,
        vocab_size=tokenizer.get_vocab_size(),
        train=train_sequences,
        train_copies=(train_sequences, *(Sequences.load(stage.dir) for stage in more)),
        heldout=Sequences.load(heldout.dir),
        heldout_own=Sequences.load(own.dir) if own else None,
        stage_keys={name: stage.key for name, stage in stages.items()},
        stage_dirs={name: stage.dir for name, stage in stages.items()},
    )


def cached_train_sequences(config: DataConfig, cache_root: Path) -> Sequences | None:
    """The training sequences when every stage up to them is in the stage cache at `cache_root`
    already, else None; builds, downloads and writes nothing (a dry run's look at the data). Follows
    prepare_data's chain of keys."""
    root = Path(cache_root)
    try:
        documents = _cached_stage(root, "documents", documents_inputs(config))
        sentences = documents and _cached_stage(root, "sentences", sentences_inputs(documents))
        saved_tokenizer = sentences and _cached_stage(root, "tokenizer", tokenizer_inputs(config, sentences))
        token_ids = saved_tokenizer and _cached_stage(root, "token_ids", token_ids_inputs(sentences, saved_tokenizer))
        inputs = token_ids and format_inputs(config, token_ids, "train", config.format, None)
        train = inputs and _cached_stage(root, "format", inputs)
        return Sequences.load(train.dir) if train else None
    except (OSError, ValueError, DataSourceError):  # corpus files gone, a damaged stage: not known
        return None


def _cached_stage(cache_root: Path, stage: str, inputs: dict[str, Any]) -> StageOutput | None:
    key = stage_key(stage, inputs)
    directory = cache_root / stage / key
    return StageOutput(key, directory) if (directory / "inputs.json").is_file() else None


@dataclass(frozen=True)
class StageOutput:
    key: str  # the hash of the stage's inputs
    dir: Path


def cached(
    cache: StageCache, stage: str, inputs: dict[str, Any], build: Callable[..., None], *args: Any
) -> StageOutput:
    """The stage's output cached under its inputs, built by `build(*args, out)` when not cached yet."""
    return StageOutput(*cache.get_or_build(stage, inputs, partial(build, *args)))


# Each stage below: the inputs that make its cache key (insertion order is kept in the inputs.json
# written beside it), then how it is built into a fresh directory `out`.

# ----------------------------------------------------------------- documents: train / held-out split


# corpus fields added after documents stages were built: part of the key only when set, so the stages
# built before they existed are found again
CORPUS_ADDED_LATER = ("encoding",)


def corpus_inputs(corpus: Any) -> dict[str, Any]:
    dump = corpus.model_dump(mode="json")
    return {k: v for k, v in dump.items() if not (k in CORPUS_ADDED_LATER and v is None)}


def documents_inputs(config: DataConfig) -> dict[str, Any]:
    return {
        "corpus": corpus_inputs(config.corpus),
        "files": corpus_fingerprint(config.corpus),
        "heldout_fraction": config.heldout_fraction,
        "version": STAGE_VERSIONS["documents"],
    }


def build_documents(config: DataConfig, out: Path) -> None:
    counts = dict.fromkeys(SPLITS, 0)
    with (out / "train.jsonl").open("w") as train, (out / "heldout.jsonl").open("w") as heldout:
        for index, document in enumerate(iter_documents(config.corpus)):
            split = "heldout" if is_heldout(index, config.heldout_fraction) else "train"
            (heldout if split == "heldout" else train).write(json.dumps(document) + "\n")
            counts[split] += 1
    check_split(counts, config)
    (out / "stats.json").write_text(json.dumps({"documents": counts}))


def check_split(counts: dict[str, int], config: DataConfig) -> None:
    """Documents enough to hold some out and train on the rest."""
    total = sum(counts.values())
    if total == 0:
        raise DataSourceError(f"corpus {describe(config.corpus)} has no non-empty document")
    if counts["heldout"] == 0 or counts["train"] == 0:
        raise DataSourceError(
            f"corpus {describe(config.corpus)} has {total} document(s): too few to hold out every "
            f"{heldout_period(config.heldout_fraction)}th for evaluation and train on the rest"
        )


def no_sentences(split: str, config: DataConfig) -> DataSourceError:
    return DataSourceError(f"no sentence found in any {split} document of {describe(config.corpus)}")


def check_corpus(config: DataConfig, cache: StageCache) -> None:
    """Read a corpus of files once, writing nothing, as its documents and sentences stages will: a
    file that does not decode or parse, too few documents to split, or a split without one sentence
    is a DataSourceError before any run is registered. Skipped when its documents stage is cached
    (the files were read whole then, and their sizes and times are part of its key), and for other
    sources: the synthetic corpus is always sound, and reading a hub corpus is downloading it."""
    if not isinstance(config.corpus, FilesCorpus):
        return
    key = stage_key("documents", documents_inputs(config))
    if (cache.root / "documents" / key / "inputs.json").is_file():
        return
    counts = dict.fromkeys(SPLITS, 0)
    with_sentences: set[str] = set()
    for index, document in enumerate(iter_documents(config.corpus)):
        split = "heldout" if is_heldout(index, config.heldout_fraction) else "train"
        counts[split] += 1
        if split not in with_sentences and split_document(document):  # splitting only until one is found
            with_sentences.add(split)
    check_split(counts, config)
    for split in SPLITS:
        if split not in with_sentences:
            raise no_sentences(split, config)


# ------------------------------------------------------------------ sentences: each document split


def sentences_inputs(documents: StageOutput) -> dict[str, Any]:
    return {
        "documents": documents.key,
        "splitter": f"blingfire-{version('blingfire')}",
        "version": STAGE_VERSIONS["sentences"],
    }


def build_sentences(documents: StageOutput, config: DataConfig, out: Path) -> None:
    stats: dict[str, Any] = {}
    for split in SPLITS:
        kept = dropped = sentences = 0
        with (out / f"{split}.jsonl").open("w") as f:
            for document in _iter_jsonl(documents.dir / f"{split}.jsonl"):
                split_doc = split_document(document)
                if not split_doc:
                    dropped += 1  # e.g. only markup or whitespace: nothing to train on
                    continue
                f.write(json.dumps(split_doc) + "\n")
                kept += 1
                sentences += len(split_doc)
        if kept == 0:
            raise no_sentences(split, config)
        stats[split] = {"documents": kept, "documents_without_sentences": dropped, "sentences": sentences}
    (out / "stats.json").write_text(json.dumps(stats))


# ----------------------------------------------------- tokenizer: trained on the train sentences


def tokenizer_inputs(config: DataConfig, sentences: StageOutput) -> dict[str, Any]:
    if config.tokenizer.file:  # a given tokenizer: its bytes, not the corpus, make it what it is
        digest = hashlib.sha256(Path(config.tokenizer.file).read_bytes()).hexdigest()
        return {"file_sha256": digest, "kind": config.tokenizer.kind, "version": STAGE_VERSIONS["tokenizer"]}
    return {
        "sentences": sentences.key,
        "tokenizer": config.tokenizer.model_dump(mode="json", exclude={"file"}),
        "library": f"tokenizers-{version('tokenizers')}",
        "version": STAGE_VERSIONS["tokenizer"],
    }


def build_tokenizer(config: DataConfig, sentences: StageOutput, out: Path) -> None:
    if config.tokenizer.file:  # a given tokenizer (continued pretraining): copied, not trained
        shutil.copyfile(config.tokenizer.file, out / "tokenizer.json")
        return
    train_sentences = (s for doc in _iter_jsonl(sentences.dir / "train.jsonl") for s in doc)
    train_tokenizer(train_sentences, config.tokenizer, out)


# ------------------------------------------------------------- token ids: every sentence encoded


def token_ids_inputs(sentences: StageOutput, saved_tokenizer: StageOutput) -> dict[str, Any]:
    return {"sentences": sentences.key, "tokenizer": saved_tokenizer.key, "version": STAGE_VERSIONS["token_ids"]}


def build_token_ids(tokenizer: Tokenizer, sentences: StageOutput, out: Path) -> None:
    for split in SPLITS:
        (out / split).mkdir()
        encode_documents(tokenizer, _iter_jsonl(sentences.dir / f"{split}.jsonl"), out / split)


# ------------------------------------------------------ format: one split packed into sequences


def format_inputs(
    config: DataConfig, token_ids: StageOutput, split: str, format_name: str, limit: int | None, copy: int = 0
) -> dict[str, Any]:
    return {
        "token_ids": token_ids.key, "split": split, "format": format_name, "limit": limit,
        "max_seq_len": config.max_seq_len, "seed": config.seed, "short_seq_prob": config.short_seq_prob,
        "version": STAGE_VERSIONS["format"], **({"copy": copy} if copy else {}),  # copy 0: the key as before copies
    }  # fmt: skip


def build_format(
    config: DataConfig,
    specials: SpecialTokens,
    token_ids: StageOutput,
    split: str,
    format_name: str,
    limit: int | None,
    copy: int,
    out: Path,
) -> None:
    """The split's sequences in `format_name`, the first `limit` of them when given; static masking's
    copy `copy` packed with its own seed."""
    corpus = TokenizedCorpus.load(token_ids.dir / split)
    seed = copy_seed(config.seed, copy)
    sequences = FORMATS[format_name](corpus, specials, config.max_seq_len, seed, config.short_seq_prob)
    (sequences.head(limit) if limit is not None else sequences).save(out)


def formatted(
    cache: StageCache,
    config: DataConfig,
    specials: SpecialTokens,
    token_ids: StageOutput,
    split: str,
    format_name: str,
    limit: int | None,
    copy: int = 0,
) -> StageOutput:
    """The format stage for one split (train and held-out are packed separately, maybe differently)."""
    inputs = format_inputs(config, token_ids, split, format_name, limit, copy)
    return cached(cache, "format", inputs, build_format, config, specials, token_ids, split, format_name, limit, copy)
