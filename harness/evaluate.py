"""The one evaluator every run goes through.

- Held-out MLM loss and perplexity on packed held-out sequences with a *fixed* mask: the default
  15% / 80-10-10 mask seeded by `eval.mask_seed` and the sequence index, whatever the arm's own
  masking, so every arm that shares a tokenizer is scored on the same positions.
- Downstream tasks: fine-tune a copy of the pretrained encoder with a classification head, once
  per fine-tuning seed, and score the dev split with scikit-learn's metrics.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import accuracy_score

from harness.config import EvalConfig, FinetuneConfig, MaskingConfig, RunConfig
from harness.data.batches import MicroBatch, collate
from harness.data.formats import Sequences
from harness.data.masking import IGNORE, mask_sequence
from harness.data.synthetic import generate_topic_task
from harness.data.tokenizer import SpecialTokens
from harness.model import PretrainingModel, SequenceClassifier
from harness.train import adamw, autocast_for, lr_at

EVAL_MASKING = MaskingConfig()  # the yardstick mask: the paper's defaults, independent of the arm


def fixed_mask_batches(
    heldout: Sequences, specials: SpecialTokens, vocab_size: int, config: EvalConfig
) -> list[MicroBatch]:
    rows = []
    for index in range(len(heldout)):
        ids, types, _ = heldout[index]
        inputs, labels = mask_sequence(ids, specials, vocab_size, EVAL_MASKING, config.mask_seed, 0, index)
        rows.append((inputs, np.zeros_like(types), labels, -1))
    return [collate(rows[i : i + config.batch_size], specials.pad) for i in range(0, len(rows), config.batch_size)]


@torch.no_grad()
def heldout_mlm(
    model: PretrainingModel, batches: list[MicroBatch], device: torch.device, precision: str
) -> dict[str, float]:
    """Mean MLM loss over every masked held-out position, its perplexity, and top-1 accuracy."""
    was_training = model.training
    model.eval()
    loss_sum, masked, correct = 0.0, 0, 0
    for mb in batches:
        mb = mb.to(device)
        with autocast_for(precision, device):
            out = model(mb.input_ids, mb.token_type_ids, mb.attention_mask, mb.mlm_labels)
        loss_sum += float(out.mlm_loss_sum)
        masked += out.masked
        correct += out.mlm_correct
    model.train(was_training)
    loss = loss_sum / max(1, masked)
    return {"heldout_loss": loss, "heldout_ppl": math.exp(min(loss, 50.0)), "heldout_acc": correct / max(1, masked)}


@dataclass(frozen=True)
class TaskData:
    train_texts: list[str]
    train_labels: list[int]
    dev_texts: list[str]
    dev_labels: list[int]
    num_labels: int


def _synthetic_topic(config: RunConfig) -> TaskData:
    finetune = config.eval.finetune
    train, dev = generate_topic_task(
        seed=config.data.corpus.seed,
        train_examples=finetune.max_train_examples or 2000,
        dev_examples=finetune.max_eval_examples or 500,
    )
    return TaskData(
        [e.text for e in train],
        [e.label for e in train],
        [e.text for e in dev],
        [e.label for e in dev],
        num_labels=6,
    )


TASKS: dict[str, Callable[[RunConfig], TaskData]] = {"synthetic-topic": _synthetic_topic}
TASK_METRICS: dict[str, Callable[[list[int], list[int]], float]] = {"synthetic-topic": accuracy_score}


def _encode(texts: list[str], labels: list[int], tokenizer, specials: SpecialTokens, max_len: int):
    rows = []
    for text, label in zip(texts, labels):
        ids = tokenizer.encode(text, add_special_tokens=False).ids[: max_len - 2]
        seq = np.asarray([specials.cls, *ids, specials.sep], dtype=np.int64)
        rows.append((seq, np.zeros_like(seq), np.full_like(seq, IGNORE), label))
    return rows


def finetune_task(
    pretrained: PretrainingModel,
    task: TaskData,
    tokenizer,
    specials: SpecialTokens,
    max_len: int,
    config: FinetuneConfig,
    seed: int,
    device: torch.device,
    precision: str,
    dropout: float,
) -> tuple[list[int], list[int]]:
    """Fine-tune a copy of the encoder on the task's train split; returns (dev predictions, dev labels)."""
    torch.manual_seed(seed)
    model = SequenceClassifier(copy.deepcopy(pretrained.roberta), task.num_labels, dropout).to(device)
    train_rows = _encode(task.train_texts, task.train_labels, tokenizer, specials, max_len)
    dev_rows = _encode(task.dev_texts, task.dev_labels, tokenizer, specials, max_len)
    steps_per_epoch = math.ceil(len(train_rows) / config.batch_size)
    total_steps = max(1, round(config.epochs * steps_per_epoch))
    warmup = int(config.warmup_fraction * total_steps)
    optimizer = adamw(model, config.lr, config.weight_decay, (0.9, 0.98), 1e-6, device)
    rng = np.random.default_rng(seed)
    order = np.array([], dtype=np.int64)
    model.train()
    for step in range(total_steps):
        if len(order) < config.batch_size:
            order = np.concatenate([order, rng.permutation(len(train_rows))])
        picked, order = order[: config.batch_size], order[config.batch_size :]
        mb = collate([train_rows[i] for i in picked], specials.pad).to(device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total_steps, warmup, config.lr, "linear")
        with autocast_for(precision, device):
            logits = model(mb.input_ids, mb.token_type_ids, mb.attention_mask)
        loss = torch.nn.functional.cross_entropy(logits.float(), mb.nsp_labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.eval()
    predictions: list[int] = []
    with torch.no_grad():
        for i in range(0, len(dev_rows), 128):
            mb = collate(dev_rows[i : i + 128], specials.pad).to(device)
            with autocast_for(precision, device):
                predictions.extend(model(mb.input_ids, mb.token_type_ids, mb.attention_mask).argmax(-1).tolist())
    return predictions, list(task.dev_labels)


def evaluate_downstream(
    pretrained: PretrainingModel, config: RunConfig, tokenizer, specials: SpecialTokens, device: torch.device
) -> dict[str, dict]:
    """Every task in eval.tasks, every fine-tuning seed: per-seed scores and their median."""
    results: dict[str, dict] = {}
    for name in config.eval.tasks:
        task = TASKS[name](config)
        scores = {}
        for seed in config.eval.finetune.seeds:
            predictions, labels = finetune_task(
                pretrained,
                task,
                tokenizer,
                specials,
                config.data.max_seq_len,
                config.eval.finetune,
                seed,
                device,
                config.train.precision,
                config.model.dropout,
            )
            scores[str(seed)] = float(TASK_METRICS[name](labels, predictions))
        results[name] = {"metric": "accuracy", "seeds": scores, "median": statistics.median(scores.values())}
    return results
