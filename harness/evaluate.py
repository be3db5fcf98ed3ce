"""The one evaluator every run goes through.

- Held-out MLM loss and perplexity on packed held-out sequences with a *fixed* mask: the default
  15% / 80-10-10 mask seeded by `eval.mask_seed` and the sequence index, whatever the arm's own
  masking, so every arm that shares a tokenizer is scored on the same positions.
- Downstream tasks (harness/tasks.py): fine-tune a copy of the pretrained encoder with a head on
  the first token or the mean of the real tokens (classification or regression), once per
  fine-tuning seed, and score the dev split with scikit-learn's / SciPy's metrics.
- Pairs are written the way the encoder was pretrained: B in segment 1 after a pair format
  (SEGMENT-PAIR, SENTENCE-PAIR: BERT), in segment 0 after a one-segment format (FULL-SENTENCES,
  DOC-SENTENCES: RoBERTa's `<s> A </s></s> B </s>`), so no arm fine-tunes through an untrained
  segment embedding.
- With `finetune.lr_grid`, each task's learning rate is chosen first, on its training examples
  alone (a seeded 80/20 split of them); the dev split is read only to score the final fine-tunings.
- Span-extraction tasks (SQuAD) have their own data, head and metrics: harness/evaluate_span.py.
- Everything a task leaves is filed under its key (harness/downstream.py), so another protocol of the
  same task on the same model never mixes with, nor overwrites, an earlier one.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from harness.config import EvalConfig, FinetuneConfig, MaskingConfig, RunConfig
from harness.data.batches import MicroBatch, collate
from harness.data.formats import Sequences
from harness.data.masking import IGNORE, mask_sequence
from harness.data.tokenizer import SpecialTokens
from harness.downstream import pair_segment, task_identity, task_key, write_identity
from harness.evaluate_span import evaluate_span_task, squad_data_for
from harness.integrity import reuse_kept, save_array, write_kept_json, write_kept_text
from harness.model import PretrainingModel, SequenceClassifier
from harness.records import read_json
from harness.squad import SPAN_TASKS, SquadData
from harness.tasks import TaskData, TaskDataError, TaskSpec, load_task, majority_baseline, score, split_rows
from harness.train import autocast_for, choose_lr, finetune_steps

EVAL_MASKING = MaskingConfig()  # the yardstick mask: the paper's defaults, independent of the arm


def fixed_mask_batches(
    heldout: Sequences, specials: SpecialTokens, vocab_size: int, config: EvalConfig, segments: bool = False
) -> list[MicroBatch]:
    """The held-out sequences under the fixed mask, in evaluation batches. Segment ids are all 0 (one
    segment, the yardstick) unless `segments`: then as packed (a pair format's B in segment 1)."""
    rows = []
    for index in range(len(heldout)):
        ids, types, _ = heldout[index]
        inputs, labels = mask_sequence(ids, specials, vocab_size, EVAL_MASKING, config.mask_seed, 0, index)
        rows.append((inputs, types.astype(np.int64) if segments else np.zeros_like(types), labels, -1))
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
        correct += int(out.mlm_correct)
    model.train(was_training)
    loss = loss_sum / max(1, masked)
    return {"heldout_loss": loss, "heldout_ppl": math.exp(min(loss, 50.0)), "heldout_acc": correct / max(1, masked)}


def encode_examples(
    texts_a: list[str],
    texts_b: list[str] | None,
    labels: np.ndarray,
    tokenizer,
    specials: SpecialTokens,
    max_len: int,
    token_types: int,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    """[cls] A [sep] / [cls] A <pair sep> B [sep], the longer side trimmed first to fit max_len; B in
    segment `specials.pair_segment` (0 where the encoder has one segment embedding)."""
    ids_a = [e.ids for e in tokenizer.encode_batch(texts_a, add_special_tokens=False)]
    ids_b = [e.ids for e in tokenizer.encode_batch(texts_b, add_special_tokens=False)] if texts_b else None
    rows = []
    for i, a in enumerate(ids_a):
        if ids_b is None:
            seq = [specials.cls, *a[: max_len - 2], specials.sep]
            types = [0] * len(seq)
        else:
            b = ids_b[i]
            room = max_len - 2 - len(specials.pair_separator)
            while len(a) + len(b) > room:  # longest first, from the back
                a, b = (a[:-1], b) if len(a) >= len(b) else (a, b[:-1])
            seq = [specials.cls, *a, *specials.pair_separator, *b, specials.sep]
            second = specials.pair_segment if token_types > 1 else 0
            types = [0] * (len(a) + 1 + len(specials.pair_separator)) + [second] * (len(b) + 1)
        seq_array = np.asarray(seq, dtype=np.int64)
        rows.append((seq_array, np.asarray(types, dtype=np.int64), np.full_like(seq_array, IGNORE), labels[i]))
    return rows


def _collate_task(rows, pad_id: int, regression: bool) -> MicroBatch:
    mb = collate([(r[0], r[1], r[2], 0) for r in rows], pad_id)
    mb.nsp_labels = torch.tensor([r[3] for r in rows], dtype=torch.float32 if regression else torch.int64)
    return mb


@dataclass
class FinetuneResult:
    predictions: np.ndarray | None  # None when the seed diverged
    diverged_at_step: int | None


def finetune_task(
    pretrained: PretrainingModel,
    spec: TaskSpec,
    data: TaskData,
    tokenizer,
    specials: SpecialTokens,
    config: FinetuneConfig,
    max_len: int,
    seed: int,
    device: torch.device,
    precision: str,
    dropout: float,
) -> FinetuneResult:
    """Fine-tune a copy of the encoder on the task's train split, predict its dev split. A fixed
    protocol: no early stopping, no looking at dev until the end."""
    torch.manual_seed(seed)
    token_types = pretrained.roberta.config.token_types
    model = SequenceClassifier(
        copy.deepcopy(pretrained.roberta), spec.num_outputs, dropout, config.pooling or "first"
    ).to(device)
    train_rows = encode_examples(
        data.train_a, data.train_b, data.train_labels, tokenizer, specials, max_len, token_types
    )
    dev_rows = encode_examples(data.dev_a, data.dev_b, data.dev_labels, tokenizer, specials, max_len, token_types)

    def step_loss(picked: np.ndarray) -> torch.Tensor:
        mb = _collate_task([train_rows[i] for i in picked], specials.pad, spec.is_regression).to(device)
        with autocast_for(precision, device):
            outputs = model(mb.input_ids, mb.token_type_ids, mb.attention_mask).float()
        if spec.is_regression:
            return torch.nn.functional.mse_loss(outputs.squeeze(-1), mb.nsp_labels)
        return torch.nn.functional.cross_entropy(outputs, mb.nsp_labels)

    diverged_at = finetune_steps(model, len(train_rows), step_loss, config, seed, device)
    if diverged_at is not None:
        return FinetuneResult(None, diverged_at)

    model.eval()
    predictions = []
    with torch.no_grad():
        for i in range(0, len(dev_rows), 128):
            mb = _collate_task(dev_rows[i : i + 128], specials.pad, spec.is_regression).to(device)
            with autocast_for(precision, device):
                outputs = model(mb.input_ids, mb.token_type_ids, mb.attention_mask).float()
            predictions.append(outputs.squeeze(-1) if spec.is_regression else outputs.argmax(-1))
    return FinetuneResult(torch.cat(predictions).cpu().numpy(), None)


SELECTION_HELD_BACK = 0.2  # share of the training examples held back to score each lr of a grid


def selection_split(data: TaskData, seed: int) -> TaskData:
    """The task's training examples alone, split for choosing the lr: a seeded 80% to fine-tune on
    (as `train`), the other 20% to score (as `dev`). Nothing of the task's own dev split is in it."""
    n = len(data.train_a)
    if n < 2:
        raise ValueError(f"choosing a learning rate needs at least 2 training examples, the task has {n}")
    return split_rows(data.train_a, data.train_b, data.train_labels, SELECTION_HELD_BACK, seed)


def select_lr(
    pretrained: PretrainingModel,
    spec: TaskSpec,
    data: TaskData,
    tokenizer,
    specials: SpecialTokens,
    config: FinetuneConfig,
    max_len: int,
    seed: int,
    device: torch.device,
    precision: str,
    dropout: float,
) -> dict:
    """The learning rate of `config.lr_grid` that scores best on held-back training examples (one
    fine-tuning with `seed` per lr; the split is seeded with it too). Only the training fields of
    `data` are read. A diverged fine-tuning, or a score that is not a number, is recorded as None and
    never chosen; if no lr scores, the smallest is used."""
    split = selection_split(data, seed)
    metric = spec.metrics[0]
    scores: dict[str, float | None] = {}
    for lr in config.lr_grid:
        result = finetune_task(
            pretrained, spec, split, tokenizer, specials, config.model_copy(update={"lr": lr}), max_len, seed,
            device, precision, dropout,
        )  # fmt: skip
        value = None if result.predictions is None else score(spec, split.dev_labels, result.predictions)[metric]
        scores[str(lr)] = value if value is not None and math.isfinite(value) else None
    return {
        "grid": list(config.lr_grid),
        "metric": metric,
        "scores": scores,
        "chosen": choose_lr(config.lr_grid, scores),
        "split": f"80/20 of train, seed {seed}",
        "fit_examples": len(split.train_a),
        "held_back_examples": len(split.dev_a),
    }


def task_data_for(config: RunConfig, name: str) -> TaskData | SquadData:
    """The task's data as the run's eval config asks: source, caps and dev split."""
    if name in SPAN_TASKS:
        return squad_data_for(config, name)
    protocol = config.eval.finetune_for(name)
    files = (config.eval.task_files or {}).get(name)
    return load_task(
        config.eval.task(name), config.eval.glue_dir, getattr(config.data.corpus, "seed", 0),
        protocol.max_train_examples, protocol.max_eval_examples, config.eval.dev_splits.get(name),
        (files.train, files.dev) if files else None,
    )  # fmt: skip


def evaluate_downstream(
    pretrained: PretrainingModel,
    config: RunConfig,
    tokenizer,
    specials: SpecialTokens,
    device: torch.device,
    predictions_dir: Path,
    tasks: list[str] | None = None,
    log=print,
) -> dict[str, dict]:
    """Every task x fine-tuning seed, skipping pairs whose predictions are already on disk.

    Per task and key (harness/downstream.py: its definition and protocol) and per seed the dev
    predictions are kept (predictions/<task>/<key>/seed-<s>.npy, labels beside them), so any metric
    can be recomputed; a seed whose loss went NaN is kept as diverged and left out of the median, with
    the count shown. With an lr grid the choice is made first and kept beside them (lr_selection.json),
    then used by every seed."""
    results: dict[str, dict] = {}
    dump = config.model_dump(mode="json")
    specials = replace(specials, pair_segment=pair_segment(dump))
    names = tasks if tasks is not None else config.eval.tasks
    specs = {name: config.eval.task(name) for name in names if name not in SPAN_TASKS}
    for name in names:  # every name known (built in, span or declared by the run) before any work
        if name in SPAN_TASKS:  # span extraction: its own windows, head, predictions and metrics
            identity = task_identity(dump, name)
            folder = predictions_dir / name / task_key(identity)
            folder.mkdir(parents=True, exist_ok=True)
            write_identity(folder, identity)
            results[name] = evaluate_span_task(pretrained, config, name, tokenizer, specials, device, folder, log)
            results[name]["key"] = task_key(identity)
            continue
        spec = specs[name]
        protocol = config.eval.finetune_for(name)
        data = task_data_for(config, name)
        identity = task_identity(dump, name)
        key = task_key(identity)
        folder = predictions_dir / name / key
        folder.mkdir(parents=True, exist_ok=True)
        write_identity(folder, identity)
        keep_labels(folder, name, data.dev_labels, log)
        max_len = protocol.max_len or config.data.max_seq_len
        selection = None
        if protocol.lr_grid is not None:
            reuse_kept(folder, "lr_selection.json", log, "the learning rate is chosen again")
            selection = read_json(folder / "lr_selection.json")
            if selection is None or selection.get("grid") != list(protocol.lr_grid):
                started = time.perf_counter()
                selection = select_lr(
                    pretrained, spec, data, tokenizer, specials, protocol, max_len, config.eval.finetune.seeds[0],
                    device, config.train.precision, config.model.dropout,
                )  # fmt: skip
                write_kept_json(folder / "lr_selection.json", selection)
                shown = ", ".join(f"{lr} {'-' if v is None else f'{v:.4f}'}" for lr, v in selection["scores"].items())
                log(f"  {name}: lr {selection['chosen']} chosen ({shown}) in {time.perf_counter() - started:.0f}s")
            protocol = protocol.model_copy(update={"lr": selection["chosen"]})
        per_seed: dict[str, dict[str, float]] = {}
        diverged: dict[str, int] = {}
        for seed in config.eval.finetune.seeds:
            done, failed = folder / f"seed-{seed}.npy", folder / f"seed-{seed}.diverged"
            for kept in (done, failed):
                reuse_kept(folder, kept.name, log, f"seed {seed} is fine-tuned again")
            if not done.is_file() and not failed.is_file():
                started = time.perf_counter()
                result = finetune_task(
                    pretrained, spec, data, tokenizer, specials, protocol, max_len, seed, device,
                    config.train.precision, config.model.dropout,
                )  # fmt: skip
                if result.predictions is None:
                    write_kept_text(failed, str(result.diverged_at_step))
                else:
                    save_array(done, result.predictions)
                log(f"  {name} seed {seed}: fine-tuned in {time.perf_counter() - started:.0f}s")
            if failed.is_file():
                diverged[str(seed)] = int(failed.read_text())
            else:
                per_seed[str(seed)] = score(spec, data.dev_labels, np.load(done))
        metrics = {
            metric: {
                "seeds": {s: v[metric] for s, v in per_seed.items()},
                "median": statistics.median(v[metric] for v in per_seed.values()) if per_seed else float("nan"),
            }
            for metric in spec.metrics
        }
        results[name] = {
            "key": key,
            "metrics": metrics,
            "diverged_seeds": diverged,
            "majority_baseline": majority_baseline(spec, data),
            "train_examples": len(data.train_a),
            "dev_examples": len(data.dev_a),
            "protocol": protocol.model_dump(mode="json"),
            "dev_split": dev_split_name(spec, config.eval.dev_splits.get(name)),
        }
        if selection is not None:
            results[name]["lr_selection"] = selection
    return results


def keep_labels(folder: Path, task: str, labels: np.ndarray, log=print) -> None:
    """The dev labels beside the predictions, written once. Where the task's data is read from is not
    part of its key (harness/downstream.py), so labels that differ from those kept mean other data
    under the same key: refused, rather than scoring old predictions against new labels."""
    path = folder / "labels.npy"
    reuse_kept(folder, path.name, log, "written again")
    if not path.is_file():
        save_array(path, labels)
    elif not np.array_equal(np.load(path), labels):
        raise TaskDataError(
            f"{task}: the dev labels read now differ from those kept with the predictions in {folder} (the task's "
            "data changed, e.g. another eval.glue_dir): move that folder away to fine-tune on the new data"
        )


def dev_split_name(spec: TaskSpec, chosen: str | None) -> str:
    """What a summary calls the scored split: the chosen one, a GLUE file stem, or the task's dev file."""
    d = spec.definition
    if chosen is not None:
        return chosen
    if d.glue is not None:
        return d.glue.dev
    if d.dev is not None:
        return d.dev.file or f"{d.dev.from_train:g} of {d.train.file}"
    return d.hub.dev if d.hub is not None else "dev"


def flat_downstream_metrics(downstream: dict[str, dict]) -> dict[str, float]:
    """`<task>.<metric>`: the median over fine-tuning seeds, as the paper reports."""
    return {f"{task}.{m}": r["metrics"][m]["median"] for task, r in downstream.items() for m in r["metrics"]}
