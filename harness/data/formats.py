"""Input formats (RoBERTa §4.2): tokenized documents -> training sequences, with segment ids and NSP labels.

Every format is a pure function of (documents, special tokens, max length, seed, short_seq_prob)
registered in FORMATS. NSP labels follow BERT / Hugging Face: 0 = B is A's real continuation,
1 = B is from another document, -1 = no pair.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data.tokenizer import SpecialTokens, TokenizedCorpus

IS_NEXT, NOT_NEXT, NO_PAIR = 0, 1, -1


@dataclass(frozen=True)
class Sequences:
    """Training sequences, flat: sequence i is tokens[offsets[i]:offsets[i+1]] (specials included)."""

    tokens: np.ndarray
    token_types: np.ndarray
    offsets: np.ndarray
    nsp_labels: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, int]:
        start, end = self.offsets[i], self.offsets[i + 1]
        return self.tokens[start:end], self.token_types[start:end], int(self.nsp_labels[i])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def save(self, directory: Path) -> None:
        for name in ("tokens", "token_types", "offsets", "nsp_labels"):
            np.save(directory / f"{name}.npy", getattr(self, name))

    @classmethod
    def load(cls, directory: Path) -> Sequences:
        names = ("tokens", "token_types", "offsets", "nsp_labels")
        return cls(*(np.load(directory / f"{n}.npy", mmap_mode="r") for n in names))


class SequenceWriter:
    def __init__(self) -> None:
        self.tokens: list[np.ndarray] = []
        self.types: list[np.ndarray] = []
        self.lengths: list[int] = []
        self.nsp: list[int] = []

    def add(self, segments: list[np.ndarray | list[int]], types: list[int], nsp_label: int = NO_PAIR) -> None:
        pieces = [np.asarray(s, dtype=np.int32) for s in segments]
        self.tokens.extend(pieces)
        self.types.extend(np.full(len(p), t, dtype=np.int8) for p, t in zip(pieces, types))
        self.lengths.append(sum(len(p) for p in pieces))
        self.nsp.append(nsp_label)

    def finish(self) -> Sequences:
        if not self.lengths:
            raise ValueError("the input format produced no sequence: is the corpus empty?")
        return Sequences(
            tokens=np.concatenate(self.tokens),
            token_types=np.concatenate(self.types),
            offsets=np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64),
            nsp_labels=np.asarray(self.nsp, dtype=np.int8),
        )


def _pack_sentences(
    corpus: TokenizedCorpus, specials: SpecialTokens, max_seq_len: int, cross_documents: bool
) -> Sequences:
    capacity = max_seq_len - 2  # room left by <cls> ... <sep>
    out = SequenceWriter()
    buffer: list[np.ndarray] = []
    used = 0

    def emit() -> None:
        nonlocal buffer, used
        if used:
            out.add([[specials.cls], *buffer, [specials.sep]], [0] * (len(buffer) + 2))
        buffer, used = [], 0

    for d in range(corpus.num_documents):
        for sentence in corpus.document(d):
            sentence = sentence[:capacity]  # a sentence longer than a whole sequence is cut
            if used + len(sentence) > capacity:
                emit()
            buffer.append(sentence)
            used += len(sentence)
        if not cross_documents:
            emit()
        elif used and used + 1 <= capacity:
            buffer.append(np.asarray([specials.sep], dtype=np.int32))  # the extra separator at a document end
            used += 1
        else:
            emit()
    emit()
    return out.finish()


def full_sentences(
    corpus: TokenizedCorpus, specials: SpecialTokens, max_seq_len: int, seed: int, short_seq_prob: float
) -> Sequences:
    """Contiguous whole sentences up to max_seq_len, crossing documents with an extra separator."""
    return _pack_sentences(corpus, specials, max_seq_len, cross_documents=True)


def doc_sentences(
    corpus: TokenizedCorpus, specials: SpecialTokens, max_seq_len: int, seed: int, short_seq_prob: float
) -> Sequences:
    """As full_sentences, but a sequence never crosses a document boundary."""
    return _pack_sentences(corpus, specials, max_seq_len, cross_documents=False)


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: random.Random) -> None:
    """BERT's truncate_seq_pair: trim the longer side, from the front or the back at random."""
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def _random_other_document(corpus: TokenizedCorpus, current: int, rng: random.Random) -> int:
    if corpus.num_documents < 2:
        raise ValueError("pair formats need at least two documents for random (NotNext) segments")
    other = rng.randrange(corpus.num_documents - 1)
    return other + 1 if other >= current else other


def _emit_pair(out: SequenceWriter, specials: SpecialTokens, a: list[int], b: list[int], label: int) -> None:
    sep_a = list(specials.pair_separator)
    out.add([[specials.cls], a, sep_a, b, [specials.sep]], [0, 0, 0, 1, 1], label)


def segment_pair(
    corpus: TokenizedCorpus, specials: SpecialTokens, max_seq_len: int, seed: int, short_seq_prob: float
) -> Sequences:
    """BERT's create_instances_from_document: multi-sentence segments A and B, B the real
    continuation with p=0.5, else a run of sentences from another document."""
    rng = random.Random(seed)
    max_tokens = max_seq_len - 2 - len(specials.pair_separator)
    if max_tokens < 2:
        raise ValueError(f"max_seq_len {max_seq_len} leaves no room for two segments")
    out = SequenceWriter()
    for d in range(corpus.num_documents):
        document = corpus.document(d)
        target = rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens
        chunk: list[np.ndarray] = []
        length = 0
        i = 0
        while i < len(document):
            chunk.append(document[i])
            length += len(document[i])
            if i == len(document) - 1 or length >= target:
                a_end = 1 if len(chunk) < 2 else rng.randint(1, len(chunk) - 1)
                a = [t for s in chunk[:a_end] for t in s.tolist()]
                if len(chunk) == 1 or rng.random() < 0.5:
                    label = NOT_NEXT
                    other = corpus.document(_random_other_document(corpus, d, rng))
                    b: list[int] = []
                    for sentence in other[rng.randrange(len(other)) :]:
                        b.extend(sentence.tolist())
                        if len(b) >= target - len(a):
                            break
                    i -= len(chunk) - a_end  # the unused sentences go back for the next chunk
                else:
                    label = IS_NEXT
                    b = [t for s in chunk[a_end:] for t in s.tolist()]
                _truncate_pair(a, b, max_tokens, rng)
                if a and b:
                    _emit_pair(out, specials, a, b, label)
                chunk, length = [], 0
            i += 1
    return out.finish()


def sentence_pair(
    corpus: TokenizedCorpus, specials: SpecialTokens, max_seq_len: int, seed: int, short_seq_prob: float
) -> Sequences:
    """One sentence each side: B is the next sentence with p=0.5, else a sentence of another document."""
    rng = random.Random(seed)
    max_tokens = max_seq_len - 2 - len(specials.pair_separator)
    if max_tokens < 2:
        raise ValueError(f"max_seq_len {max_seq_len} leaves no room for two segments")
    out = SequenceWriter()
    for d in range(corpus.num_documents):
        document = corpus.document(d)
        i = 0
        while i < len(document):
            a = document[i].tolist()
            if i + 1 < len(document) and rng.random() >= 0.5:
                b, label = document[i + 1].tolist(), IS_NEXT
                i += 2
            else:
                other = corpus.document(_random_other_document(corpus, d, rng))
                b, label = other[rng.randrange(len(other))].tolist(), NOT_NEXT
                i += 1
            _truncate_pair(a, b, max_tokens, rng)
            if a and b:
                _emit_pair(out, specials, a, b, label)
    return out.finish()


FormatFn = Callable[[TokenizedCorpus, SpecialTokens, int, int, float], Sequences]

FORMATS: dict[str, FormatFn] = {
    "full_sentences": full_sentences,
    "doc_sentences": doc_sentences,
    "segment_pair": segment_pair,
    "sentence_pair": sentence_pair,
}
