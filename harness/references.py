"""What a held-out MLM score means: the frequency-only (unigram) floor, and bits per byte.

A model that has learned no context predicts each masked token from how often it occurs, and,
where the 80-10-10 rule left a real token in place, from that token: its loss is the unigram
floor of the masked positions. Every run records that floor, computed from the training split's
token counts on exactly the positions the held-out evaluation masks, so the report can say "has
not learned context" instead of comparing two models that both sit on it.

Per-token loss depends on the tokenizer (a 50K vocabulary has fewer, longer tokens than a 30K
one), so arms with different tokenizers are compared in bits per byte: the masked positions'
summed loss in bits over the UTF-8 bytes of their text. The bytes of a masked token are the
bytes of its surface text (markers such as `##`, `</w>` removed; a byte-level token's leading
`Ġ` is the space it stands for), plus one byte for the space before a word-initial token where
the tokenizer drops spaces (WordPiece, char-level BPE). Whitespace between words thus counts
once per word for every tokenizer.

Pure functions of data: nothing here needs a model, so records written before these fields
existed are filled in from their data alone (`harness references`).
"""

from __future__ import annotations

import math

import numpy as np
from tokenizers import Tokenizer

from harness.config import EvalConfig
from harness.data.formats import Sequences
from harness.data.masking import IGNORE, mask_sequence
from harness.data.tokenizer import SpecialTokens

NOISE_SE = 2.0  # "within noise": within two standard errors
# depend on how text is cut into tokens
PER_TOKEN_METRICS = (
    "heldout_loss", "heldout_ppl", "heldout_acc", "heldout_own_loss", "heldout_own_ppl", "heldout_own_acc",
)  # fmt: skip


def token_surface_bytes(tokenizer: Tokenizer, kind: str) -> np.ndarray:
    """UTF-8 bytes of each vocabulary entry's text, special tokens 0."""
    vocab = tokenizer.get_vocab()
    sizes = np.zeros(tokenizer.get_vocab_size(), dtype=np.int64)
    specials = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
    for token, index in vocab.items():
        if token in specials:
            continue
        if kind == "byte_bpe":
            sizes[index] = len(token)  # every character of a byte-level token stands for one byte
        elif kind == "wordpiece":
            sizes[index] = len(token.removeprefix("##").encode("utf-8"))
        else:
            sizes[index] = len(token.removesuffix("</w>").encode("utf-8"))
    return sizes


def heldout_targets(
    heldout: Sequences, specials: SpecialTokens, vocab_size: int, config: EvalConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label ids, input ids, word-start flags) of every position the fixed held-out mask predicts,
    in the order `evaluate.fixed_mask_batches` scores them. The input is `<mask>`, a random token
    or the label itself (the 80-10-10 rule)."""
    from harness.evaluate import EVAL_MASKING

    labels, inputs, starts = [], [], []
    for index in range(len(heldout)):
        ids, _, _ = heldout[index]
        row_inputs, row_labels = mask_sequence(ids, specials, vocab_size, EVAL_MASKING, config.mask_seed, 0, index)
        picked = row_labels != IGNORE
        labels.append(row_labels[picked])
        inputs.append(row_inputs[picked])
        starts.append(heldout.word_starts_of(index)[picked])
    if not labels:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8)
    return np.concatenate(labels), np.concatenate(inputs), np.concatenate(starts)


def context_free_floor(
    labels: np.ndarray, inputs: np.ndarray, frequencies: np.ndarray, mask_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-position loss (nats) and correctness of the best predictor that sees no context: the
    token frequencies, plus what the position's own input says under the 80-10-10 rule.

    At a `<mask>` input it predicts the frequencies. At any other input x the label is x itself
    (kept, 10%) or anything (x is a uniform random replacement, 10%): the posterior is
    p(y) ∝ f(y)·([y = x] + 1/V), which a model learns without any context, so a model that has
    only learned it has not learned context."""
    vocab = len(frequencies)
    shown = inputs != mask_id
    label_freq, input_freq = frequencies[labels], frequencies[inputs]
    prob = np.where(
        shown,
        label_freq * ((labels == inputs) + 1.0 / vocab) / (input_freq + 1.0 / vocab),
        label_freq,
    )
    prediction = np.where(shown, inputs, int(np.argmax(frequencies)))
    return -np.log(prob), prediction == labels


def heldout_references(
    train: Sequences,
    heldout: Sequences,
    tokenizer: Tokenizer,
    kind: str,
    specials: SpecialTokens,
    vocab_size: int,
    config: EvalConfig,
) -> dict[str, float]:
    """The context-free floor of the held-out positions and what bits per byte needs.

    heldout_unigram_loss / _acc / _bpb: the training split's token frequencies (add-one smoothed,
    special tokens excluded) with the 80-10-10 rule (`context_free_floor`), scored on the held-out
    masked positions. heldout_loss_noise: two standard errors of a mean loss over these positions
    (the spread of the per-position floor loss over sqrt(count)); a model within it of the floor
    has not learned context. heldout_masked / heldout_masked_bytes: how many positions, and their
    bytes."""
    counts = np.bincount(np.asarray(train.tokens, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    counts = counts[:vocab_size]
    smoothed = counts + 1.0
    smoothed[list(specials.ids)] = 0
    labels, inputs, starts = heldout_targets(heldout, specials, vocab_size, config)
    if not len(labels):
        raise ValueError("the held-out split has no maskable token: no held-out reference can be computed")
    losses, correct = context_free_floor(labels, inputs, smoothed / smoothed.sum(), specials.mask)
    masked_bytes = token_surface_bytes(tokenizer, kind)[labels].sum()
    if kind != "byte_bpe":
        masked_bytes += int(starts.sum())
    loss = float(losses.mean())
    return {
        "heldout_unigram_loss": loss,
        "heldout_unigram_acc": float(correct.mean()),
        "heldout_unigram_bpb": bits_per_byte(loss, len(labels), int(masked_bytes)),
        "heldout_loss_noise": NOISE_SE * float(losses.std(ddof=1) if len(losses) > 1 else 0.0) / math.sqrt(len(losses)),
        "heldout_masked": float(len(labels)),
        "heldout_masked_bytes": float(masked_bytes),
    }


def bits_per_byte(mean_loss_nats: float, masked: int, masked_bytes: int) -> float:
    """Summed loss of the masked positions in bits, over their bytes."""
    if masked_bytes <= 0:
        return math.nan
    return mean_loss_nats * masked / math.log(2) / masked_bytes


def per_token_refusal(metric: str, arm: str, arm_tokenizer: str, baseline: str, baseline_tokenizer: str) -> str:
    """The message refusing a per-token comparison across tokenizers, or '' when it is fine."""
    if metric not in PER_TOKEN_METRICS or not arm_tokenizer or not baseline_tokenizer:
        return ""
    if arm_tokenizer == baseline_tokenizer:
        return ""
    return (
        f"{metric} is per token and {arm} ({arm_tokenizer}) and {baseline} ({baseline_tokenizer}) cut text into "
        "different tokens: compare heldout_bpb (bits per byte) instead"
    )
