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
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (inputs, labels): labels hold the original id at predicted positions, IGNORE elsewhere.

    The number of masked positions is mask_prob × maskable rounded up or down at random, so the
    rate is exact in expectation even for short sequences. Special tokens are never selected.
    """
    rng = np.random.default_rng([seed, mask_epoch(config, epoch), index])
    tokens = np.asarray(tokens)
    maskable = np.flatnonzero(~np.isin(tokens, specials.ids))
    count = int(np.floor(config.mask_prob * len(maskable) + rng.random()))
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
