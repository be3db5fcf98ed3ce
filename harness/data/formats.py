"""Input formats (RoBERTa §4.2): tokenized documents -> training sequences, with segment ids and NSP labels.

Every format is a pure function of (documents, special tokens, max length, seed, short_seq_prob)
registered in FORMATS. A run of consecutive sentences of one document is one contiguous slice of
the corpus's flat token array, so formats work on sentence indices and copy slices.

NSP labels follow BERT / Hugging Face: 0 = B is A's real continuation, 1 = B is from another
document, -1 = no pair. `documents` counts the documents each sequence draws text from.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data.tokenizer import SpecialTokens, TokenizedCorpus

IS_NEXT, NOT_NEXT, NO_PAIR = 0, 1, -1
FIELDS = ("tokens", "token_types", "word_starts", "offsets", "nsp_labels", "documents")


@dataclass(frozen=True)
class Sequences:
    """Training sequences, flat: sequence i is tokens[offsets[i]:offsets[i+1]] (specials included)."""

    tokens: np.ndarray  # int32
    token_types: np.ndarray  # int8, segment id per token
    word_starts: np.ndarray  # uint8, 1 where a token begins a word (specials count as words)
    offsets: np.ndarray  # int64, len = sequences + 1
    nsp_labels: np.ndarray  # int8 per sequence
    documents: np.ndarray  # int32 per sequence: how many documents its text comes from

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, int]:
        start, end = self.offsets[i], self.offsets[i + 1]
        return self.tokens[start:end], self.token_types[start:end], int(self.nsp_labels[i])

    def word_starts_of(self, i: int) -> np.ndarray:
        return self.word_starts[self.offsets[i] : self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def head(self, count: int) -> Sequences:
        """The first `count` sequences."""
        if count >= len(self):
            return self
        end = self.offsets[count]
        return Sequences(
            self.tokens[:end], self.token_types[:end], self.word_starts[:end],
            self.offsets[: count + 1], self.nsp_labels[:count], self.documents[:count],
        )  # fmt: skip

    def save(self, directory: Path) -> None:
        for name in FIELDS:
            np.save(directory / f"{name}.npy", getattr(self, name))

    @classmethod
    def load(cls, directory: Path) -> Sequences:
        return cls(*(np.load(directory / f"{n}.npy", mmap_mode="r") for n in FIELDS))


class _Growable:
    """An append-only numpy buffer that doubles when full (no list of small arrays)."""

    def __init__(self, dtype: type, capacity: int = 1 << 16):
        self.data = np.empty(capacity, dtype=dtype)
        self.size = 0

    def extend(self, values: np.ndarray | list[int]) -> None:
        values = np.asarray(values)
        needed = self.size + len(values)
        if needed > len(self.data):
            grown = np.empty(max(needed, 2 * len(self.data)), dtype=self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : needed] = values
        self.size = needed

    def array(self) -> np.ndarray:
        return self.data[: self.size]  # a view: no second copy of the largest array


# A piece of a sequence: (token ids, word starts, segment id)
Piece = tuple[np.ndarray, np.ndarray, int]


class SequenceWriter:
    def __init__(self) -> None:
        self.tokens = _Growable(np.int32)
        self.types = _Growable(np.int8)
        self.word_starts = _Growable(np.uint8)
        self.lengths: list[int] = []
        self.nsp: list[int] = []
        self.documents: list[int] = []

    def special(self, *token_ids: int, segment: int = 0) -> Piece:
        ids = np.asarray(token_ids, dtype=np.int32)
        return ids, np.ones(len(ids), dtype=np.uint8), segment

    def add(self, pieces: list[Piece], nsp_label: int = NO_PAIR, documents: int = 1) -> None:
        length = 0
        for tokens, word_starts, segment in pieces:
            self.tokens.extend(tokens)
            self.word_starts.extend(word_starts)
            self.types.extend(np.full(len(tokens), segment, dtype=np.int8))
            length += len(tokens)
        self.lengths.append(length)
        self.nsp.append(nsp_label)
        self.documents.append(documents)

    def finish(self) -> Sequences:
        if not self.lengths:
            raise ValueError("the input format produced no sequence: the corpus has no usable sentence")
        return Sequences(
            tokens=self.tokens.array(),
            token_types=self.types.array(),
            word_starts=self.word_starts.array(),
            offsets=np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64),
            nsp_labels=np.asarray(self.nsp, dtype=np.int8),
            documents=np.asarray(self.documents, dtype=np.int32),
        )


def _slice(corpus: TokenizedCorpus, first_sentence: int, end_sentence: int) -> Piece:
    """Sentences [first, end) of the corpus as one segment-0 piece (a contiguous slice)."""
    start, end = corpus.sent_offsets[first_sentence], corpus.sent_offsets[end_sentence]
    return corpus.tokens[start:end], corpus.word_starts[start:end], 0


def _pack_sentences(
    corpus: TokenizedCorpus, specials: SpecialTokens, max_seq_len: int, cross_documents: bool
) -> Sequences:
    capacity = max_seq_len - 2  # room left by <cls> ... <sep>
    out = SequenceWriter()
    pieces: list[Piece] = []
    used = 0
    documents_in_buffer: set[int] = set()

    def emit() -> None:
        nonlocal pieces, used
        if used:
            pieces_with_specials = [out.special(specials.cls), *pieces, out.special(specials.sep)]
            out.add(pieces_with_specials, documents=len(documents_in_buffer))
        pieces, used = [], 0
        documents_in_buffer.clear()

    for d in range(corpus.num_documents):
        for s in range(int(corpus.doc_offsets[d]), int(corpus.doc_offsets[d + 1])):
            tokens, word_starts, _ = _slice(corpus, s, s + 1)
            tokens, word_starts = tokens[:capacity], word_starts[:capacity]  # a sentence longer than a sequence is cut
            # entering a new document in a non-empty buffer costs the extra separator between them
            boundary = 1 if used and d not in documents_in_buffer else 0
            if used + boundary + len(tokens) > capacity:
                emit()
                boundary = 0
            if boundary:
                pieces.append(out.special(specials.sep))
            pieces.append((tokens, word_starts, 0))
            used += boundary + len(tokens)
            documents_in_buffer.add(d)
        if not cross_documents:
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


def _truncate_pair(len_a: int, len_b: int, max_tokens: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """BERT's truncate_seq_pair on lengths: trim the longer side, from the front or the back at
    random, until both fit. Returns [start, end) of what is kept of each side."""
    a, b = [0, len_a], [0, len_b]
    while (a[1] - a[0]) + (b[1] - b[0]) > max_tokens:
        longer = a if (a[1] - a[0]) > (b[1] - b[0]) else b
        if rng.random() < 0.5:
            longer[0] += 1
        else:
            longer[1] -= 1
    return a, b


def _pair_room(specials: SpecialTokens, max_seq_len: int) -> int:
    """Tokens left for A + B once <cls>, the pair separator and the final <sep> are placed."""
    room = max_seq_len - 2 - len(specials.pair_separator)
    if room < 2:
        raise ValueError(f"max_seq_len {max_seq_len} leaves no room for two segments")
    return room


def _random_other_document(corpus: TokenizedCorpus, current: int, rng: random.Random) -> int:
    if corpus.num_documents < 2:
        raise ValueError("pair formats need at least two documents for random (NotNext) segments")
    other = rng.randrange(corpus.num_documents - 1)
    return other + 1 if other >= current else other


def _emit_pair(out: SequenceWriter, specials: SpecialTokens, a: Piece, b: Piece, label: int, rng: random.Random,
               max_tokens: int) -> None:  # fmt: skip
    keep_a, keep_b = _truncate_pair(len(a[0]), len(b[0]), max_tokens, rng)
    a = (a[0][keep_a[0] : keep_a[1]], a[1][keep_a[0] : keep_a[1]].copy(), 0)
    b = (b[0][keep_b[0] : keep_b[1]], b[1][keep_b[0] : keep_b[1]].copy(), 1)
    if len(a[0]) == 0 or len(b[0]) == 0:
        return
    a[1][0] = b[1][0] = 1  # a cut word's remainder is a word of its own for whole-word masking
    out.add(
        [out.special(specials.cls), a, out.special(*specials.pair_separator), b, out.special(specials.sep, segment=1)],
        nsp_label=label,
        documents=1 if label == IS_NEXT else 2,
    )


def segment_pair(
    corpus: TokenizedCorpus, specials: SpecialTokens, max_seq_len: int, seed: int, short_seq_prob: float
) -> Sequences:
    """BERT's create_instances_from_document: multi-sentence segments A and B, B the real
    continuation with p=0.5, else a run of sentences from another document (one deliberate
    difference, for one-sentence chunks, keeps the positive rate at 0.5)."""
    rng = random.Random(seed)
    max_tokens = _pair_room(specials, max_seq_len)
    out = SequenceWriter()
    offsets = corpus.sent_offsets
    for d in range(corpus.num_documents):
        first, last = int(corpus.doc_offsets[d]), int(corpus.doc_offsets[d + 1])
        target = rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens
        chunk_start = first
        i = first
        while i < last:
            chunk_end = i + 1  # the chunk is sentences [chunk_start, chunk_end)
            if i == last - 1 or offsets[chunk_end] - offsets[chunk_start] >= target:
                if chunk_end - chunk_start == 1:
                    # BERT forces NotNext for a one-sentence chunk, which tilts its labels towards
                    # NotNext (0.435 positives at 64 tokens on the quickstart corpus). Here such a
                    # chunk takes in the next sentence, so either label can follow, or is dropped
                    # at a document's end: every pair's label is a fair coin.
                    if i == last - 1:
                        break
                    i += 1
                    chunk_end += 1
                chunk_len = chunk_end - chunk_start
                a_end = chunk_start + rng.randint(1, chunk_len - 1)
                a = _slice(corpus, chunk_start, a_end)
                random_next = rng.random() < 0.5
                if random_next:
                    label = NOT_NEXT
                    other = _random_other_document(corpus, d, rng)
                    o_first, o_last = int(corpus.doc_offsets[other]), int(corpus.doc_offsets[other + 1])
                    b_start = rng.randrange(o_first, o_last)
                    b_end = b_start + 1
                    while b_end < o_last and offsets[b_end] - offsets[b_start] < target - len(a[0]):
                        b_end += 1
                    b = _slice(corpus, b_start, b_end)
                    i = a_end - 1  # the chunk's unused sentences go back for the next chunk
                else:
                    label = IS_NEXT
                    b = _slice(corpus, a_end, chunk_end)
                _emit_pair(out, specials, a, b, label, rng, max_tokens)
                chunk_start = i + 1
            i += 1
    return out.finish()


def sentence_pair(
    corpus: TokenizedCorpus, specials: SpecialTokens, max_seq_len: int, seed: int, short_seq_prob: float
) -> Sequences:
    """One sentence each side: B is the next sentence with p=0.5, else a sentence of another
    document. Only sentences that have a next one start a pair, so either label is always possible
    and the positive rate is 0.5 (a forced NotNext for last sentences would tilt it)."""
    rng = random.Random(seed)
    max_tokens = _pair_room(specials, max_seq_len)
    out = SequenceWriter()
    for d in range(corpus.num_documents):
        first, last = int(corpus.doc_offsets[d]), int(corpus.doc_offsets[d + 1])
        i = first
        while i < last - 1:  # a document's last sentence has no next: it never starts a pair
            a = _slice(corpus, i, i + 1)
            if rng.random() < 0.5:
                _emit_pair(out, specials, a, _slice(corpus, i + 1, i + 2), IS_NEXT, rng, max_tokens)
                i += 2
            else:
                other = _random_other_document(corpus, d, rng)
                b_index = rng.randrange(int(corpus.doc_offsets[other]), int(corpus.doc_offsets[other + 1]))
                _emit_pair(out, specials, a, _slice(corpus, b_index, b_index + 1), NOT_NEXT, rng, max_tokens)
                i += 1
    return out.finish()


FormatFn = Callable[[TokenizedCorpus, SpecialTokens, int, int, float], Sequences]

FORMATS: dict[str, FormatFn] = {
    "full_sentences": full_sentences,
    "doc_sentences": doc_sentences,
    "segment_pair": segment_pair,
    "sentence_pair": sentence_pair,
}
# formats whose packing draws at random from their seed (target lengths, NSP partners, truncation):
# BERT draws those again for every static-masking copy; the others pack the same way whatever the seed
SEEDED_FORMATS = ("segment_pair", "sentence_pair")


def copy_seed(seed: int, copy: int) -> int:
    """The format seed of static masking's copy `copy`: copy 0 keeps `seed` itself."""
    return seed if copy == 0 else int(np.random.SeedSequence([seed, copy]).generate_state(1)[0])
