"""The evaluator of span-extraction tasks (SQuAD, harness/squad.py): fine-tune a copy of the pretrained
encoder with a start/end head on the training questions' windows, predict the dev questions' answer
texts, score them with the official EM / F1.

The protocol is eval.finetune's (epochs, lr, batch size in windows, warmup, weight decay, max_len,
seeds, caps on questions); `pooling` does not apply. With `lr_grid` the learning rate is chosen
first on the training questions alone: every 5th of their articles held back and scored by F1.
Per seed the predicted texts are kept as predictions/<task>/seed-<s>.json (question id -> text),
the gold answers beside them (gold.json), so the scores can be recomputed.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.config import FinetuneConfig, RunConfig
from harness.data.batches import collate
from harness.data.masking import IGNORE
from harness.data.tokenizer import SpecialTokens
from harness.integrity import reuse_kept, write_kept_json, write_kept_text
from harness.model import PretrainingModel, SpanExtractor
from harness.records import atomic_write_json, read_json
from harness.squad import (
    MAX_ANSWER_TOKENS,
    NO_ANSWER_THRESHOLD,
    SPAN_TASKS,
    Question,
    SpanTaskSpec,
    SquadData,
    Window,
    answers_from_logits,
    article_split,
    baseline_predictions,
    gold_answers,
    load_squad,
    squad_metrics,
    windows,
)
from harness.train import autocast_for, choose_lr, finetune_steps

SELECTION_EVERY = 5  # choosing the lr: every 5th training article held back (~20%)


def squad_data_for(config: RunConfig, name: str) -> SquadData:
    """The task's questions as the run's eval config asks: files or the hub, capped."""
    protocol = config.eval.finetune_for(name)
    files = (config.eval.task_files or {}).get(name)
    return load_squad(
        name, (files.train, files.dev) if files else None, protocol.max_train_examples, protocol.max_eval_examples
    )


def _batch(rows: list[Window], pad: int, device: torch.device):
    mb = collate([(w.input_ids, w.token_types, np.full_like(w.input_ids, IGNORE), 0) for w in rows], pad).to(device)
    targets = torch.tensor([[w.start, w.end] for w in rows], dtype=torch.int64, device=device)
    return mb, targets


@dataclass
class SpanResult:
    predictions: dict[str, str] | None  # question id -> answer text; None when the seed diverged
    diverged_at_step: int | None


def finetune_span(
    pretrained: PretrainingModel,
    spec: SpanTaskSpec,
    train: list[Question],
    dev: list[Question],
    tokenizer,
    specials: SpecialTokens,
    config: FinetuneConfig,
    max_len: int,
    seed: int,
    device: torch.device,
    precision: str,
) -> SpanResult:
    """Fine-tune a copy of the encoder on the training questions' windows (start and end cross-entropy,
    averaged), then predict every dev question's answer text. No early stopping, dev read once."""
    torch.manual_seed(seed)
    token_types = pretrained.roberta.config.token_types
    model = SpanExtractor(copy.deepcopy(pretrained.roberta)).to(device)
    train_rows = windows(train, tokenizer, specials, max_len, token_types)

    def step_loss(picked: np.ndarray) -> torch.Tensor:
        mb, targets = _batch([train_rows[i] for i in picked], specials.pad, device)
        with autocast_for(precision, device):
            start, end = model(mb.input_ids, mb.token_type_ids, mb.attention_mask)
        return (F.cross_entropy(start, targets[:, 0]) + F.cross_entropy(end, targets[:, 1])) / 2

    diverged_at = finetune_steps(model, len(train_rows), step_loss, config, seed, device)
    if diverged_at is not None:
        return SpanResult(None, diverged_at)
    return SpanResult(predict_answers(model, spec, dev, tokenizer, specials, max_len, device, precision), None)


@torch.no_grad()
def predict_answers(
    model: SpanExtractor,
    spec: SpanTaskSpec,
    questions: list[Question],
    tokenizer,
    specials: SpecialTokens,
    max_len: int,
    device: torch.device,
    precision: str,
) -> dict[str, str]:
    model.eval()
    rows = windows(questions, tokenizer, specials, max_len, model.roberta.config.token_types)
    starts, ends = [], []
    for i in range(0, len(rows), 64):
        block = rows[i : i + 64]
        mb, _ = _batch(block, specials.pad, device)
        with autocast_for(precision, device):
            start, end = model(mb.input_ids, mb.token_type_ids, mb.attention_mask)
        for r, w in enumerate(block):
            starts.append(start[r, : len(w.input_ids)].cpu().numpy())
            ends.append(end[r, : len(w.input_ids)].cpu().numpy())
    return answers_from_logits(questions, rows, starts, ends, spec.unanswerable)


def select_span_lr(
    pretrained: PretrainingModel,
    spec: SpanTaskSpec,
    train: list[Question],
    tokenizer,
    specials: SpecialTokens,
    config: FinetuneConfig,
    max_len: int,
    seed: int,
    device: torch.device,
    precision: str,
) -> dict:
    """The lr of `config.lr_grid` with the best F1 on held-back training articles (one fine-tuning with
    `seed` per lr). Dev questions are never read. A diverged lr is never chosen; none scoring: the smallest."""
    fit, back = article_split(train, SELECTION_EVERY)
    gold = gold_answers(back)
    scores: dict[str, float | None] = {}
    for lr in config.lr_grid:
        result = finetune_span(
            pretrained, spec, fit, back, tokenizer, specials, config.model_copy(update={"lr": lr}), max_len, seed,
            device, precision,
        )  # fmt: skip
        scores[str(lr)] = None if result.predictions is None else squad_metrics(gold, result.predictions)["f1"]
    return {
        "grid": list(config.lr_grid),
        "metric": "f1",
        "scores": scores,
        "chosen": choose_lr(config.lr_grid, scores),
        "split": f"training articles, every {SELECTION_EVERY}th held back",
        "fit_examples": len(fit),
        "held_back_examples": len(back),
    }


def evaluate_span_task(
    pretrained: PretrainingModel,
    config: RunConfig,
    name: str,
    tokenizer,
    specials: SpecialTokens,
    device: torch.device,
    folder: Path,
    log=print,
) -> dict:
    """One span-extraction task x every fine-tuning seed, skipping seeds whose predictions are on disk;
    the result has the shape of a classification task's (metrics per seed and their median, diverged
    seeds, the floor as `majority_baseline`, example counts, protocol, dev split)."""
    spec = SPAN_TASKS[name]
    protocol = config.eval.finetune_for(name)
    data = squad_data_for(config, name)
    folder.mkdir(parents=True, exist_ok=True)
    gold = gold_answers(data.dev)
    atomic_write_json(folder / "gold.json", gold)
    max_len = protocol.max_len or config.data.max_seq_len
    selection = None
    if protocol.lr_grid is not None:
        reuse_kept(folder, "lr_selection.json", log, "the learning rate is chosen again")
        selection = read_json(folder / "lr_selection.json")
        if selection is None or selection.get("grid") != list(protocol.lr_grid):
            started = time.perf_counter()
            selection = select_span_lr(
                pretrained, spec, data.train, tokenizer, specials, protocol, max_len, config.eval.finetune.seeds[0],
                device, config.train.precision,
            )  # fmt: skip
            write_kept_json(folder / "lr_selection.json", selection)
            took = time.perf_counter() - started
            log(f"  {name}: lr {selection['chosen']} chosen (F1 per lr {selection['scores']}) in {took:.0f}s")
        protocol = protocol.model_copy(update={"lr": selection["chosen"]})
    per_seed: dict[str, dict[str, float]] = {}
    diverged: dict[str, int] = {}
    for seed in config.eval.finetune.seeds:
        done, failed = folder / f"seed-{seed}.json", folder / f"seed-{seed}.diverged"
        for kept in (done, failed):
            reuse_kept(folder, kept.name, log, f"seed {seed} is fine-tuned again")
        if not done.is_file() and not failed.is_file():
            started = time.perf_counter()
            result = finetune_span(
                pretrained, spec, data.train, data.dev, tokenizer, specials, protocol, max_len, seed, device,
                config.train.precision,
            )  # fmt: skip
            if result.predictions is None:
                write_kept_text(failed, str(result.diverged_at_step))
            else:
                write_kept_json(done, result.predictions)
            log(f"  {name} seed {seed}: fine-tuned in {time.perf_counter() - started:.0f}s")
        if failed.is_file():
            diverged[str(seed)] = int(failed.read_text())
        else:
            per_seed[str(seed)] = squad_metrics(gold, read_json(done))
    names = [m for m in spec.metrics if any(m in v for v in per_seed.values())] or list(spec.metrics[:2])
    metrics = {
        metric: {
            "seeds": {s: v[metric] for s, v in per_seed.items() if metric in v},
            "median": statistics.median(v[metric] for v in per_seed.values()) if per_seed else float("nan"),
        }
        for metric in names
    }
    result = {
        "metrics": metrics,
        "diverged_seeds": diverged,
        "majority_baseline": squad_metrics(gold, baseline_predictions(spec, data.dev)),
        "train_examples": len(data.train),
        "dev_examples": len(data.dev),
        "protocol": protocol.model_dump(mode="json"),
        "dev_split": data.split,
        "span": {"max_answer_tokens": MAX_ANSWER_TOKENS, "doc_stride": "half the context room, at most 128",
                 "no_answer_threshold": NO_ANSWER_THRESHOLD if spec.unanswerable else None},
    }  # fmt: skip
    if selection is not None:
        result["lr_selection"] = selection
    return result
