"""Sequences -> optimizer steps: a seeded order per epoch, masking on the fly, micro-batches padded
only to their own longest sequence.

A step holds either a fixed number of sequences (`batch_size`) or as many as reach a target of real
tokens (`tokens_per_step`), which keeps tokens per step equal across formats whose sequences differ
in length (RoBERTa raises the batch for SENTENCE-PAIR and DOC-SENTENCES in exactly this way).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from harness.config import MaskingConfig
from harness.data.formats import Sequences
from harness.data.masking import IGNORE, mask_sequence
from harness.data.tokenizer import SpecialTokens


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [B, L] int64
    token_type_ids: torch.Tensor  # [B, L] int64
    attention_mask: torch.Tensor  # [B, L] bool, True at real tokens
    mlm_labels: torch.Tensor  # [B, L] int64, IGNORE where not predicted
    nsp_labels: torch.Tensor  # [B] int64, -1 where no pair

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def masked_tokens(self) -> int:
        return int((self.mlm_labels != IGNORE).sum())

    @property
    def rows(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: slice) -> MicroBatch:
        """Some of the rows (a smaller micro-batch after an out-of-memory error; one rank's share)."""
        return MicroBatch(*(t[rows] for t in vars(self).values()))

    def pin_memory(self) -> MicroBatch:
        return MicroBatch(*(t.pin_memory() for t in vars(self).values()))

    def to(self, device: torch.device) -> MicroBatch:
        return MicroBatch(*(t.to(device, non_blocking=True) for t in vars(self).values()))


def collate(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]], pad_id: int) -> MicroBatch:
    """rows of (input ids, token types, labels, nsp label) -> padded tensors."""
    width = max(len(r[0]) for r in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    types = np.zeros((len(rows), width), dtype=np.int64)
    labels = np.full((len(rows), width), IGNORE, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=bool)
    for i, (ids, tt, lab, _) in enumerate(rows):
        input_ids[i, : len(ids)] = ids
        types[i, : len(ids)] = tt
        labels[i, : len(ids)] = lab
        mask[i, : len(ids)] = True
    nsp = np.asarray([r[3] for r in rows], dtype=np.int64)
    return MicroBatch(*(torch.from_numpy(a) for a in (input_ids, types, mask, labels, nsp)))


class PretrainingBatches:
    """Serves optimizer steps forever, epoch after epoch; its position is (epoch, cursor)."""

    def __init__(
        self,
        sequences: Sequences,
        specials: SpecialTokens,
        vocab_size: int,
        masking: MaskingConfig,
        seed: int,
        micro_batch_size: int,
        batch_size: int | None = None,
        tokens_per_step: int | None = None,
        copies: tuple[Sequences, ...] = (),
    ):
        """`copies`: static masking's copies of the training split, each packed with its own seed
        (copy 0 is `sequences`); epoch e serves copy e mod their count. Empty: `sequences` alone."""
        if (batch_size is None) == (tokens_per_step is None):
            raise ValueError("give exactly one of batch_size or tokens_per_step")
        self.sequences = sequences
        self.copies = copies or (sequences,)
        self.lengths = sequences.lengths
        self.specials = specials
        self.vocab_size = vocab_size
        self.masking = masking
        self.seed = seed
        self.micro_batch_size = micro_batch_size
        self.batch_size = batch_size
        self.tokens_per_step = tokens_per_step
        if batch_size is not None and batch_size > len(sequences):
            raise ValueError(f"batch_size {batch_size} exceeds the {len(sequences)} training sequences")
        if tokens_per_step is not None and tokens_per_step > int(self.lengths.sum()):
            raise ValueError(f"tokens_per_step {tokens_per_step} exceeds the corpus's {int(self.lengths.sum())} tokens")
        self.epoch = 0
        self.cursor = 0
        self._order = self._epoch_order(0)

    def _copy(self, epoch: int) -> Sequences:
        return self.copies[epoch % len(self.copies)]

    def _epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(len(self._copy(epoch)))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self._order = self._epoch_order(self.epoch)

    @property
    def mean_tokens_per_step(self) -> float:
        if self.tokens_per_step is not None:
            return float(self.tokens_per_step)
        return float(self.batch_size * self.lengths.mean())

    def _next_index(self) -> int:
        if self.cursor == len(self._order):
            self.epoch += 1
            self.cursor = 0
            self._order = self._epoch_order(self.epoch)
        index = int(self._order[self.cursor])
        self.cursor += 1
        return index

    def _room_for_next(self, tokens: int) -> bool:
        """Add the next sequence while that leaves the step closer to tokens_per_step than stopping
        would, so steps average the target instead of always overshooting it."""
        if tokens == 0:
            return True
        if self.cursor < len(self._order):
            upcoming = self._copy(self.epoch).lengths[self._order[self.cursor]]
        else:
            upcoming = self._copy(self.epoch + 1).lengths[self._epoch_order(self.epoch + 1)[0]]
        return tokens + upcoming / 2 <= self.tokens_per_step

    def next_step(self) -> list[MicroBatch]:
        """The next optimizer step's micro-batches (sequences masked for the epoch they are served in)."""
        rows = []
        tokens = 0
        while (self.batch_size is not None and len(rows) < self.batch_size) or (
            self.tokens_per_step is not None and self._room_for_next(tokens)
        ):
            epoch = self.epoch if self.cursor < len(self._order) else self.epoch + 1
            index = self._next_index()
            sequences = self._copy(epoch)
            ids, types, nsp = sequences[index]
            word_starts = sequences.word_starts_of(index) if self.masking.whole_word else None
            inputs, labels = mask_sequence(
                ids, self.specials, self.vocab_size, self.masking, self.seed, epoch, index, word_starts
            )
            rows.append((inputs, types, labels, nsp))
            tokens += len(ids)
        # micro-batches grouped by length so each pads little
        rows.sort(key=lambda r: len(r[0]))
        size = self.micro_batch_size
        return [collate(rows[i : i + size], self.specials.pad) for i in range(0, len(rows), size)]
