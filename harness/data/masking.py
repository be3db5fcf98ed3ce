"""MLM masking as a pure function of (sequence, seed, epoch, index).

Dynamic masking draws a new mask for every epoch. Static masking (BERT) fixes `dupe_factor`
masks per sequence and cycles through them across epochs; it is the same function with the epoch
taken modulo `dupe_factor`, which gives exactly the masks materialised copies would hold, without
storing `dupe_factor` copies of the data.
"""

from __future__ import annotations

import numpy as np

from harness.config import MaskingConfig
from harness.data.tokenizer import SpecialTokens

IGNORE = -100  # label of a position that is not predicted (PyTorch's cross_entropy default)


def mask_epoch(config: MaskingConfig, epoch: int) -> int:
    """Which of the sequence's masks serves at this epoch."""
    return epoch % config.dupe_factor if config.kind == "static" else epoch


def mask_sequence(
    tokens: np.ndarray,
    specials: SpecialTokens,
    vocab_size: int,
    config: MaskingConfig,
    seed: int,
    epoch: int,
    index: int,
    word_starts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (inputs, labels): labels hold the original id at predicted positions, IGNORE elsewhere.

    The number of masked positions is mask_prob × maskable rounded up or down at random, so the
    rate is exact in expectation even for short sequences, then capped by max_predictions.
    Special tokens are never selected. With whole_word, words are drawn in random order and taken
    whole while they fit in that number (BERT's rule), so every piece of a chosen word is predicted.
    """
    rng = np.random.default_rng([seed, mask_epoch(config, epoch), index])
    tokens = np.asarray(tokens)
    is_maskable = ~np.isin(tokens, specials.ids)
    maskable = np.flatnonzero(is_maskable)
    count = int(np.floor(config.mask_prob * len(maskable) + rng.random()))
    if config.max_predictions is not None:
        count = min(count, config.max_predictions)
    if config.whole_word:
        if word_starts is None:
            raise ValueError("whole-word masking needs the word starts of the sequence")
        chosen = _whole_words(is_maskable, np.asarray(word_starts, dtype=bool), count, rng)
    else:
        chosen = rng.choice(maskable, size=min(count, len(maskable)), replace=False)

    inputs = tokens.astype(np.int64).copy()
    labels = np.full(len(tokens), IGNORE, dtype=np.int64)
    labels[chosen] = tokens[chosen]
    action = rng.random(len(chosen))
    to_mask = chosen[action < config.replace_mask]
    to_random = chosen[(action >= config.replace_mask) & (action < config.replace_mask + config.replace_random)]
    inputs[to_mask] = specials.mask
    inputs[to_random] = random_ordinary_tokens(rng, len(to_random), specials, vocab_size)
    return inputs, labels


def _whole_words(is_maskable: np.ndarray, word_starts: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of whole words drawn in random order, each taken if it still fits in `count`."""
    # a word starts at a marked start or right after a special token
    after_special = np.concatenate([[True], ~is_maskable[:-1]])
    word_of = np.cumsum(word_starts | after_special) - 1
    words = np.unique(word_of[is_maskable])
    chosen: list[np.ndarray] = []
    taken = 0
    for word in rng.permutation(words):
        positions = np.flatnonzero((word_of == word) & is_maskable)
        if taken + len(positions) > count:
            continue
        chosen.append(positions)
        taken += len(positions)
        if taken == count:
            break
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


def random_ordinary_tokens(
    rng: np.random.Generator, count: int, specials: SpecialTokens, vocab_size: int
) -> np.ndarray:
    """Uniform draws over the vocabulary without the special tokens."""
    special = np.sort(np.unique(specials.ids))
    draws = rng.integers(0, vocab_size - len(special), size=count)
    # shift each draw past the special ids at or below it, so specials are skipped exactly
    for sid in special:
        draws = draws + (draws >= sid)
    return draws
