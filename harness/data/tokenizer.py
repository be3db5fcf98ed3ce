"""Train (or load from cache) a tokenizer on the corpus, and turn sentences into token ids.

Three kinds, each with its model family's special tokens:
- byte_bpe: RoBERTa / GPT-2 byte-level BPE; never produces an unknown token;
- wordpiece: BERT's WordPiece;
- char_bpe: BPE over characters (the original BERT-era "char BPE" of RoBERTa §4.4).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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
    # segment id of a pair's second text when fine-tuning: 1 (BERT) only where pretraining trained
    # segment 1; a recipe pretrained on one segment writes pairs as RoBERTa does, by separators alone
    pair_segment: int = 1

    @property
    def ids(self) -> tuple[int, ...]:
        return (self.cls, self.sep, self.pad, self.mask, self.unk)


def unknown_token_rate(tokens: np.ndarray, specials: SpecialTokens) -> float:
    """Share of text tokens that are the unknown token; the other specials (CLS, SEP, pad, mask) are
    structure, not text, and are left out of the count."""
    tokens = np.asarray(tokens)
    structure = np.isin(tokens, [specials.cls, specials.sep, specials.pad, specials.mask])
    text_tokens = int(tokens.size - np.count_nonzero(structure))
    return int(np.count_nonzero(tokens == specials.unk)) / max(1, text_tokens)


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
        raise ValueError(
            f"vocab_size {config.vocab_size} is smaller than the special tokens plus the corpus's alphabet "
            f"({tokenizer.get_vocab_size()} entries): raise data.tokenizer.vocab_size"
        )
    tokenizer.save(str(out_dir / "tokenizer.json"))
    return tokenizer


def load_tokenizer(directory: Path) -> Tokenizer:
    return Tokenizer.from_file(str(directory / "tokenizer.json"))


@dataclass(frozen=True)
class TokenizedCorpus:
    """Token ids of every sentence, flat, with offsets: sentence s is tokens[sent_offsets[s]:sent_offsets[s+1]],
    document d is sentences doc_offsets[d] .. doc_offsets[d+1]. word_starts marks the first token of
    each word as the tokenizer's pre-tokenizer split it (for whole-word masking)."""

    tokens: np.ndarray
    word_starts: np.ndarray
    sent_offsets: np.ndarray
    doc_offsets: np.ndarray

    @property
    def num_documents(self) -> int:
        return len(self.doc_offsets) - 1

    @property
    def num_sentences(self) -> int:
        return len(self.sent_offsets) - 1

    @classmethod
    def load(cls, directory: Path) -> TokenizedCorpus:
        # memory-mapped: the token ids of a large corpus are never all in RAM at once
        tokens = (
            np.memmap(directory / "tokens.bin", dtype=np.int32, mode="r")
            if (directory / "tokens.bin").stat().st_size
            else np.zeros(0, np.int32)
        )
        starts = (
            np.memmap(directory / "word_starts.bin", dtype=np.uint8, mode="r") if len(tokens) else np.zeros(0, np.uint8)
        )
        return cls(tokens, starts, np.load(directory / "sent_offsets.npy"), np.load(directory / "doc_offsets.npy"))


def word_starts_of(word_ids: list[int | None]) -> np.ndarray:
    """1 where a token's pre-tokenized word differs from the previous token's."""
    ids = np.asarray([-1 if w is None else w for w in word_ids], dtype=np.int64)
    starts = np.ones(len(ids), dtype=np.uint8)
    if len(ids) > 1:
        starts[1:] = ids[1:] != ids[:-1]
    return starts


def encode_documents(
    tokenizer: Tokenizer, documents: Iterable[list[str]], out_dir: Path, chunk_sentences: int = 20_000
) -> TokenizedCorpus:
    """Encode documents (lists of sentences) in chunks, appending ids to files as it goes, so memory
    holds one chunk of text at a time plus the per-sentence offsets."""
    sentence_lengths: list[int] = []
    doc_sizes: list[int] = []
    pending: list[str] = []
    with (out_dir / "tokens.bin").open("wb") as tokens_file, (out_dir / "word_starts.bin").open("wb") as starts_file:

        def flush() -> None:
            for enc in tokenizer.encode_batch(pending, add_special_tokens=False):
                tokens_file.write(np.asarray(enc.ids, dtype=np.int32).tobytes())
                starts_file.write(word_starts_of(enc.word_ids).tobytes())
                sentence_lengths.append(len(enc.ids))
            pending.clear()

        for sentences in documents:
            pending.extend(sentences)
            doc_sizes.append(len(sentences))
            if len(pending) >= chunk_sentences:
                flush()
        flush()
    np.save(out_dir / "sent_offsets.npy", np.concatenate([[0], np.cumsum(sentence_lengths, dtype=np.int64)]))
    np.save(out_dir / "doc_offsets.npy", np.concatenate([[0], np.cumsum(doc_sizes, dtype=np.int64)]))
    return TokenizedCorpus.load(out_dir)
