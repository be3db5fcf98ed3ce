"""Train (or load from cache) a tokenizer on the corpus, and turn sentences into token ids.

Three kinds, each with its model family's special tokens:
- byte_bpe: RoBERTa / GPT-2 byte-level BPE; never produces an unknown token;
- wordpiece: BERT's WordPiece;
- char_bpe: BPE over characters (the original BERT-era "char BPE" of RoBERTa §4.4).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from harness.config import TokenizerConfig


@dataclass(frozen=True)
class SpecialTokens:
    cls: int
    sep: int
    pad: int
    mask: int
    unk: int
    pair_separator: tuple[int, ...]  # between segments A and B: RoBERTa '</s></s>', BERT '[SEP]'

    @property
    def ids(self) -> tuple[int, ...]:
        return (self.cls, self.sep, self.pad, self.mask, self.unk)


ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _special_names(kind: str) -> list[str]:
    return BERT_SPECIALS if kind == "wordpiece" else ROBERTA_SPECIALS


def special_tokens(tokenizer: Tokenizer, kind: str) -> SpecialTokens:
    def tid(token: str) -> int:
        found = tokenizer.token_to_id(token)
        if found is None:
            raise ValueError(f"tokenizer lacks special token {token}")
        return found

    if kind == "wordpiece":
        return SpecialTokens(tid("[CLS]"), tid("[SEP]"), tid("[PAD]"), tid("[MASK]"), tid("[UNK]"), (tid("[SEP]"),))
    return SpecialTokens(tid("<s>"), tid("</s>"), tid("<pad>"), tid("<mask>"), tid("<unk>"), (tid("</s>"),) * 2)


def build_tokenizer(config: TokenizerConfig) -> tuple[Tokenizer, trainers.Trainer]:
    specials = _special_names(config.kind)
    lower = [normalizers.Lowercase()] if config.lowercase else []
    if config.kind == "byte_bpe":
        tokenizer = Tokenizer(models.BPE())
        if lower:
            tokenizer.normalizer = normalizers.Sequence(lower)
        # prefix space: a sentence's first word gets the same pieces as it would mid-document
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=config.vocab_size,
            min_frequency=config.min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    elif config.kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=config.lowercase)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=config.vocab_size,
            min_frequency=config.min_frequency,
            special_tokens=specials,
            show_progress=False,
        )
    else:
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>", end_of_word_suffix="</w>"))
        tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), *lower])
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.BPEDecoder(suffix="</w>")
        trainer = trainers.BpeTrainer(
            vocab_size=config.vocab_size,
            min_frequency=config.min_frequency,
            special_tokens=specials,
            end_of_word_suffix="</w>",
            show_progress=False,
        )
    return tokenizer, trainer


def train_tokenizer(sentences: Iterator[str], config: TokenizerConfig, out_dir: Path) -> Tokenizer:
    tokenizer, trainer = build_tokenizer(config)
    tokenizer.train_from_iterator(sentences, trainer)
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise ValueError(f"trained vocabulary {tokenizer.get_vocab_size()} exceeds {config.vocab_size}")
    tokenizer.save(str(out_dir / "tokenizer.json"))
    return tokenizer


def load_tokenizer(directory: Path) -> Tokenizer:
    return Tokenizer.from_file(str(directory / "tokenizer.json"))


@dataclass(frozen=True)
class TokenizedCorpus:
    """Token ids of every sentence, flat, with offsets: sentence s is tokens[sent_offsets[s]:sent_offsets[s+1]],
    document d is sentences doc_offsets[d] .. doc_offsets[d+1]."""

    tokens: np.ndarray
    sent_offsets: np.ndarray
    doc_offsets: np.ndarray

    @property
    def num_documents(self) -> int:
        return len(self.doc_offsets) - 1

    def document(self, d: int) -> list[np.ndarray]:
        first, last = self.doc_offsets[d], self.doc_offsets[d + 1]
        return [self.tokens[self.sent_offsets[s] : self.sent_offsets[s + 1]] for s in range(first, last)]

    def save(self, directory: Path) -> None:
        for name in ("tokens", "sent_offsets", "doc_offsets"):
            np.save(directory / f"{name}.npy", getattr(self, name))

    @classmethod
    def load(cls, directory: Path) -> TokenizedCorpus:
        # memory-mapped: the token ids of a large corpus are never all in RAM at once
        return cls(*(np.load(directory / f"{n}.npy", mmap_mode="r") for n in ("tokens", "sent_offsets", "doc_offsets")))


def encode_documents(tokenizer: Tokenizer, documents: list[list[str]], chunk: int = 10_000) -> TokenizedCorpus:
    flat = [s for doc in documents for s in doc]
    lengths = np.zeros(len(flat), dtype=np.int64)
    pieces: list[np.ndarray] = []
    for start in range(0, len(flat), chunk):
        encoded = tokenizer.encode_batch(flat[start : start + chunk], add_special_tokens=False)
        for i, enc in enumerate(encoded):
            pieces.append(np.asarray(enc.ids, dtype=np.int32))
            lengths[start + i] = len(enc.ids)
    sent_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    doc_offsets = np.concatenate([[0], np.cumsum([len(d) for d in documents])]).astype(np.int64)
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    return TokenizedCorpus(tokens, sent_offsets, doc_offsets)
