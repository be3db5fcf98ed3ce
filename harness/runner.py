"""One run, end to end: data (cached stages) -> model -> trainer -> evaluator -> run record."""

from __future__ import annotations

import math
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

import harness
from harness.checkpoint import Checkpointer
from harness.config import ConfigError, ModelConfig, RunConfig, deep_merge, has_path, run_id_of, validate_run_config
from harness.data.batches import PretrainingBatches
from harness.data.cache import StageCache
from harness.data.formats import Sequences
from harness.data.pipeline import PreparedData, prepare_data
from harness.data.tokenizer import SpecialTokens, special_tokens, unknown_token_rate
from harness.distributed import NOT_DISTRIBUTED, Distributed
from harness.evaluate import evaluate_downstream, fixed_mask_batches, flat_downstream_metrics, heldout_mlm
from harness.integrity import CHECKPOINT_FILES, checkpoint_problem, write_contents
from harness.interrupt import StopSignals
from harness.model import PretrainingModel, plain_state_dict
from harness.records import SCHEMA_VERSION, RunRecord, plain_mode
from harness.references import bits_per_byte, heldout_references
from harness.suite import Run
from harness.train import Diverged, Interrupted, RunGuards, TrainResult, planned_steps, train


def code_version() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{harness.__version__}+{sha}" if sha else harness.__version__


def load_pretrained(
    run_dir: Path, config: RunConfig | None = None
) -> tuple[RunConfig, PretrainingModel, Tokenizer, SpecialTokens]:
    """A finished run's config, model and tokenizer, checked against each other. With `config`, the
    run is evaluated as that config says, which must describe the same pretrained model (the same run
    id); without it, as its own config.json says."""
    header = RunRecord(run_dir).config
    if header is None:
        raise ValueError(f"{run_dir}: no config.json: not a run directory")
    if header.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"{run_dir}: written by record schema {header.get('schema_version')}, this is {SCHEMA_VERSION}"
        )
    if config is None:
        config = RunConfig.model_validate(header["config"])
    elif run_id_of(header["config"]) != config.run_id():
        raise ValueError(
            f"{run_dir}: pretrained with another config (run id {run_id_of(header['config'])}, not {config.run_id()})"
        )
    weights = run_dir / "checkpoint" / "model.safetensors"
    tokenizer_file = run_dir / "checkpoint" / "tokenizer.json"
    if not weights.is_file() or not tokenizer_file.is_file():
        raise ValueError(f"{run_dir}: no checkpoint (model.safetensors + tokenizer.json): has the run finished?")
    tokenizer, state = load_checkpoint(run_dir)
    rows = state["roberta.embeddings.word_embeddings.weight"].shape[0]
    if rows != tokenizer.get_vocab_size():
        raise ValueError(
            f"{run_dir}: the checkpoint has {rows} word embeddings but its tokenizer {tokenizer.get_vocab_size()} "
            "tokens: they do not belong together"
        )
    specials = special_tokens(tokenizer, config.data.tokenizer.kind)
    model = PretrainingModel(config.model, rows, specials.pad, nsp=config.data.nsp)
    model.load_state_dict(state)
    return config, model, tokenizer, specials


def load_checkpoint(run_dir: Path) -> tuple[Tokenizer, dict[str, torch.Tensor]]:
    """A finished run's tokenizer and weights, once they pass their content check; a damaged one is a
    ValueError naming the file and what is wrong with it (never a loader's traceback)."""
    folder = run_dir / "checkpoint"
    problem = checkpoint_problem(run_dir)
    if problem:
        raise ValueError(f"damaged: {problem}; `harness run` of its suite trains the run again")
    try:
        return Tokenizer.from_file(str(folder / "tokenizer.json")), load_file(str(folder / "model.safetensors"))
    except Exception as err:  # tokenizers and safetensors raise their own types: whatever they say, name the file
        raise ValueError(f"checkpoint/ cannot be loaded ({type(err).__name__}: {err})") from None


def evaluation_config(run_dir: Path, changes: dict[str, Any], tasks: list[str] | None = None) -> RunConfig:
    """A finished run's own config with `changes` to its eval section (`harness eval --set eval.KEY=...`)
    and, with `tasks`, eval.tasks set to them; validated, errors naming `--set` for keys it set and
    the run's config.json for the rest."""
    header = RunRecord(run_dir).config
    if header is None:
        raise ValueError(f"{run_dir}: no config.json: not a run directory")
    overrides = {"eval": {**changes, **({"tasks": list(tasks)} if tasks else {})}}
    try:
        return validate_run_config(deep_merge(header["config"], overrides), str(run_dir / "config.json"))
    except ConfigError as err:
        # a key given on the command line, or a check of the eval section as a whole once it was changed
        if overrides["eval"] and (err.key_path in ("", "eval") or has_path(overrides, err.key_path)):
            raise ConfigError("--set" if changes else "--task", err.key_path, err.message) from None
        raise


SHAPE_FIELDS = ("layers", "hidden", "heads", "ffn", "max_len", "token_types", "norm", "positions")
HEADS_OF_NSP = ("pooler.", "nsp_head.")


def shape(model_config: ModelConfig, name: str) -> Any:
    if name == "positions":
        return model_config.positions or "learned"  # unset: learned, as before the field existed
    return getattr(model_config, name)


def start_from(model: PretrainingModel, source_dir: Path, config: RunConfig, log=print) -> None:
    """Continued pretraining: the start checkpoint's weights into `model`, whose shape must match.
    An NSP head the source lacks starts fresh; one this run does not use is left behind."""
    source_config, source_model, _, _ = load_pretrained(source_dir)
    differ = [
        f"{name} {shape(config.model, name)} here, {shape(source_config.model, name)} in the checkpoint"
        for name in SHAPE_FIELDS
        if shape(config.model, name) != shape(source_config.model, name)
    ]
    if differ:
        raise ValueError(f"model.init_from {source_dir}: the model differs: {'; '.join(differ)}")
    if source_config.data.tokenizer.kind != config.data.tokenizer.kind:
        raise ValueError(
            f"model.init_from {source_dir}: its tokenizer is {source_config.data.tokenizer.kind}, "
            f"data.tokenizer.kind here is {config.data.tokenizer.kind}"
        )
    missing, unexpected = model.load_state_dict(plain_state_dict(source_model), strict=False)
    stray = [k for k in [*missing, *unexpected] if not k.startswith(HEADS_OF_NSP)]
    if stray:
        raise ValueError(f"model.init_from {source_dir}: weights do not fit: {stray[:5]}")
    fresh = " (NSP head starts fresh)" if missing else ""
    log(f"  starting from the weights of {source_dir}{fresh}")


def evaluate_run(
    run_dir: Path,
    device: torch.device,
    tasks: list[str] | None = None,
    log=print,
    config: RunConfig | None = None,
    keep_config: bool = False,
) -> dict[str, Any]:
    """(Re-)evaluate a finished run downstream, as its config.json or `config` (which must describe the
    same pretrained model: `load_pretrained`) says; task/seed pairs already on disk under their key
    are scored, not fine-tuned again. Returns the tasks evaluated; summary.json gets them merged in,
    and with `keep_config` config.json takes `config`'s eval section (a suite's run brought up to
    date: its record then says how it was evaluated)."""
    config, model, tokenizer, specials = load_pretrained(run_dir, config)
    model.to(device)
    downstream = evaluate_downstream(model, config, tokenizer, specials, device, run_dir / "predictions", tasks, log)
    record = RunRecord(run_dir)
    summary = record.summary or {}
    summary.pop("schema_version", None)
    summary["downstream"] = {**summary.get("downstream", {}), **downstream}
    summary["metrics"] = {**summary.get("metrics", {}), **flat_downstream_metrics(downstream)}
    if keep_config:
        record.set_eval(config.eval.model_dump(mode="json"))
    record.finish(summary)
    return downstream


def fill_references(run_dir: Path, cache: StageCache, log=print) -> bool:
    """Add the held-out floors (harness/references.py) to a finished run recorded before they
    existed, from its data alone: the stages are rebuilt from the run's config (or found in the
    cache), nothing is trained. Returns whether the record changed."""
    record = RunRecord(run_dir)
    summary = record.summary
    if summary is None or "references" in summary or record.config is None:
        return False
    config = RunConfig.model_validate(record.config["config"])
    data = prepare_data(config.data, cache, config.eval.heldout_sequences)
    summary.pop("schema_version", None)
    summary["references"] = data_references(config, data)
    record.rewrite_summary(summary)  # the state untouched, the summary's check renewed
    log(f"{run_dir}: held-out floors added (unigram loss {summary['references']['heldout_unigram_loss']:.3f})")
    return True


class RunPruned(Exception):
    """Raised by an `on_eval` hook to stop a run early (a search's pruner); recorded as `pruned`."""


def data_references(config: RunConfig, data: PreparedData) -> dict[str, float]:
    """The held-out floors and byte counts of a run's data (harness/references.py), on the shared
    FULL-SENTENCES yardstick (heldout_*) and on the run's own format (heldout_own_*: the same numbers
    when that is FULL-SENTENCES)."""

    def floors(heldout: Sequences) -> dict[str, float]:
        return heldout_references(
            data.train, heldout, data.tokenizer, config.data.tokenizer.kind, data.specials, data.vocab_size,
            config.eval,
        )  # fmt: skip

    yardstick = floors(data.heldout)
    own = floors(data.heldout_own) if data.heldout_own is not None else yardstick
    return {**yardstick, **{own_format_name(key): value for key, value in own.items()}}


def own_format_name(metric: str) -> str:
    """heldout_loss -> heldout_own_loss: the metric scored on the run's own format."""
    return metric.replace("heldout_", "heldout_own_", 1)


def describe_plan(data: PreparedData, batches: PretrainingBatches, steps: int, run: Run) -> str:
    lengths = data.train.lengths
    per_step = batches.mean_tokens_per_step
    sequences_per_step = per_step / lengths.mean()
    micro = max(1, math.ceil(sequences_per_step / run.config.train.micro_batch_size))
    passes = steps * per_step / lengths.sum()
    return (
        f"  {len(data.train):,} sequences, {int(lengths.sum()):,} tokens (mean {lengths.mean():.1f}/seq), "
        f"vocab {data.vocab_size:,}\n"
        f"  {per_step:,.0f} tokens/step (~{sequences_per_step:.0f} seqs, ~{micro} micro-batches), "
        f"~{per_step * run.config.masking.mask_prob:,.0f} masked/step, {steps} steps, "
        f"{steps * per_step:,.0f} tokens, {passes:.2f} passes over the data"
    )


@dataclass(frozen=True)
class RunOptions:
    """How a run is executed, not what it computes: none of this is part of the run id."""

    compile_model: bool = False
    checkpoint_every: int = 200  # optimizer steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2
    spike_factor: float = 0.0  # loss > factor x recent median stops the run as diverged (0: off)
    distributed: Distributed = NOT_DISTRIBUTED
    # SIGINT/SIGTERM as a stop at the next step boundary (harness/interrupt.py); None: Python's own handling
    stop: StopSignals | None = None


def execute_run(
    run: Run,
    run_dir: Path,
    cache: StageCache,
    device: torch.device,
    progress: bool = True,
    log=print,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    options: RunOptions | None = None,
) -> dict[str, Any] | None:
    """Train and evaluate one run, recording everything under run_dir. A run with a checkpoint
    continues from it. Raises on failure after recording the run as failed (or diverged, or pruned)
    with its error, and on KeyboardInterrupt (Interrupted: stopped at a step boundary by
    `options.stop`) after recording it as interrupted. `on_eval` sees every held-out evaluation
    during training and may raise RunPruned to stop the run. Under torchrun every rank trains; rank 0
    alone records, evaluates and returns the summary (the others return None)."""
    options = options or RunOptions()
    config, pretrained = run.config, pretrains(run.config)
    checkpointer = Checkpointer(run_dir / "checkpoints", options.checkpoint_every, options.keep_checkpoints)
    record = start_record(run, run_dir, checkpointer, options.distributed)  # None on ranks other than 0
    started = time.perf_counter()
    try:
        data = prepare_data(config.data, cache, config.eval.heldout_sequences, masking_copies(config))
        batches = pretraining_batches(config, data)
        steps = planned_steps(config.train, batches.mean_tokens_per_step) if pretrained else 0
        log(describe_plan(data, batches, steps, run) if pretrained else "  no pretraining: evaluated as initialised")
        if record is not None:  # for progress shown by another process (`harness run --jobs`)
            record.update_status(planned_steps=steps)

        model = build_model(config, data, log)
        references = data_references(config, data)
        evaluate_heldout = heldout_evaluator(model, config, data, references, device)
        log_metrics = metrics_logger(record, on_eval)
        result = pretrain(model, batches, config, steps, device, log_metrics, evaluate_heldout, progress,
                          checkpointer, options)  # fmt: skip
        if record is None:
            return None  # not rank 0: training was this process's share

        # the finished model's, recorded as the final metrics row: on the yardstick and on its own format
        heldout = evaluate_heldout()
        heldout.update(own_format_evaluator(model, config, data, references, device, lambda: heldout)())
        record.append_metrics(final_row(result, heldout))
        downstream = evaluate_downstream(model, config, data.tokenizer, data.specials, device, run_dir / "predictions",
                                         log=log)  # fmt: skip
        save_finished(model, data.tokenizer, run_dir / "checkpoint")
        summary = finished_summary(run, data, batches, model, result, heldout, references, downstream, started,
                                   device, options)  # fmt: skip
        record.finish(summary)
        # the training state is only for resuming; the finished model is in checkpoint/
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        return summary
    except KeyboardInterrupt as err:
        if record is not None:
            record_interruption(record, err, checkpointer, options.stop)
        raise
    except BaseException as err:
        if record is not None:
            record_failure(record, err)
        raise
    finally:
        sys.stdout.flush()


def start_record(run: Run, run_dir: Path, checkpointer: Checkpointer, ranks: Distributed) -> RunRecord | None:
    """Rank 0 starts the run's record, or resumes it at its latest checkpoint. Under torchrun the
    other ranks get None: rank 0 alone records."""
    record = RunRecord(run_dir)
    if ranks.is_main:
        found = checkpointer.latest()
        if found is None:
            record.start(run.header, run.config.model_dump(mode="json"))
        else:
            record.resume(found.step)
    ranks.barrier()  # the other ranks read the checkpoint rank 0 has just vetted
    return record if ranks.is_main else None


def masking_copies(config: RunConfig) -> int:
    """How many copies of the training split the run's masking serves: static masking's dupe_factor."""
    return config.masking.dupe_factor if config.masking.kind == "static" else 1


def pretrains(config: RunConfig) -> bool:
    """False for a random-init control (train.pretrain false): evaluated as initialised."""
    return config.train.pretrain is not False  # unset: pretrain, as before the field existed


def pretraining_batches(config: RunConfig, data: PreparedData) -> PretrainingBatches:
    train_cfg = config.train
    return PretrainingBatches(
        data.train, data.specials, data.vocab_size, config.masking, train_cfg.seed, train_cfg.micro_batch_size,
        train_cfg.batch_size, train_cfg.tokens_per_step, data.train_copies,
    )  # fmt: skip


def build_model(config: RunConfig, data: PreparedData, log=print) -> PretrainingModel:
    """A model initialised from train.seed, then given model.init_from's weights when set."""
    torch.manual_seed(config.train.seed)
    model = PretrainingModel(config.model, data.vocab_size, data.specials.pad, nsp=config.data.nsp)
    if config.model.init_from:
        start_from(model, Path(config.model.init_from), config, log)
    return model


def heldout_evaluator(
    model: PretrainingModel, config: RunConfig, data: PreparedData, references: dict[str, float], device: torch.device
) -> Callable[[], dict[str, float]]:
    """Held-out MLM scores of `model` as it is now, under the fixed mask (eval.mask_seed, shared by every
    arm), plus bits per byte, which compares arms with different tokenizers (harness/references.py)."""
    heldout_batches = fixed_mask_batches(data.heldout, data.specials, data.vocab_size, config.eval)
    masked, masked_bytes = int(references["heldout_masked"]), int(references["heldout_masked_bytes"])

    def evaluate_heldout() -> dict[str, float]:
        scores = heldout_mlm(model, heldout_batches, device, config.train.precision)
        return {**scores, "heldout_bpb": bits_per_byte(scores["heldout_loss"], masked, masked_bytes)}

    return evaluate_heldout


def own_format_evaluator(
    model: PretrainingModel,
    config: RunConfig,
    data: PreparedData,
    references: dict[str, float],
    device: torch.device,
    yardstick: Callable[[], dict[str, float]],
) -> Callable[[], dict[str, float]]:
    """Held-out scores on the run's own format (heldout_own_*), segments as packed: what the arm was
    trained to read. Scored once, on the finished model; for a FULL-SENTENCES run, the yardstick's."""
    if data.heldout_own is None:
        return lambda: {own_format_name(key): value for key, value in yardstick().items()}
    batches = fixed_mask_batches(data.heldout_own, data.specials, data.vocab_size, config.eval, segments=True)
    masked, masked_bytes = int(references["heldout_own_masked"]), int(references["heldout_own_masked_bytes"])

    def evaluate_own() -> dict[str, float]:
        scores = heldout_mlm(model, batches, device, config.train.precision)
        scores["heldout_bpb"] = bits_per_byte(scores["heldout_loss"], masked, masked_bytes)
        return {own_format_name(key): value for key, value in scores.items()}

    return evaluate_own


def metrics_logger(
    record: RunRecord | None, on_eval: Callable[[dict[str, Any]], None] | None
) -> Callable[[dict[str, Any]], None]:
    """Training's metric rows go to metrics.jsonl (rank 0 only); held-out ones also to `on_eval`."""

    def log_metrics(row: dict[str, Any]) -> None:
        if record is not None:
            record.append_metrics(row)
        if on_eval is not None and "heldout_loss" in row:
            on_eval(row)

    return log_metrics


def pretrain(
    model: PretrainingModel,
    batches: PretrainingBatches,
    config: RunConfig,
    steps: int,
    device: torch.device,
    log_metrics: Callable[[dict[str, Any]], None],
    evaluate_heldout: Callable[[], dict[str, float]],
    progress: bool,
    checkpointer: Checkpointer,
    options: RunOptions,
) -> TrainResult:
    """Pretraining with held-out evaluations along the way; a control skips it."""
    ranks, stop = options.distributed, options.stop
    guards = RunGuards(checkpointer, options.spike_factor, distributed=ranks)
    if not pretrains(config):  # a control: not one optimizer step, so no training loss either
        model.to(device)
        return TrainResult(steps=0, tokens_seen=0, sequences_seen=0, train_loss=math.nan, wall_s=0.0, train_s=0.0)
    if stop is not None:  # a signal while training stops it at the next step boundary, checkpointed
        guards.stop_requested = stop.requested
    with stop.deferred() if stop is not None else nullcontext():
        return train(
            model, batches, config.train, steps, device, log_metrics, evaluate_heldout, progress and ranks.is_main,
            options.compile_model, guards,
        )  # fmt: skip


def final_row(result: TrainResult, heldout: dict[str, float]) -> dict[str, Any]:
    return {"step": result.steps, "tokens": result.tokens_seen, "train_s": round(result.train_s, 2), "final": True,
            **heldout}  # fmt: skip


def save_finished(model: PretrainingModel, tokenizer: Tokenizer, checkpoint: Path) -> None:
    """The finished model and its tokenizer, as load_pretrained reads them."""
    checkpoint.mkdir(exist_ok=True)
    save_file(plain_state_dict(model), str(checkpoint / "model.safetensors"))
    plain_mode(checkpoint / "model.safetensors")
    tokenizer.save(str(checkpoint / "tokenizer.json"))
    write_contents(checkpoint, CHECKPOINT_FILES)  # checked before every reuse (harness/integrity.py)


def finished_summary(
    run: Run,
    data: PreparedData,
    batches: PretrainingBatches,
    model: PretrainingModel,
    result: TrainResult,
    heldout: dict[str, float],
    references: dict[str, float],
    downstream: dict[str, Any],
    started: float,
    device: torch.device,
    options: RunOptions,
) -> dict[str, Any]:
    """summary.json: the run's header, metrics, held-out floors, downstream scores, budget and environment."""
    pretrained = pretrains(run.config)
    metrics = {
        **({"train_loss": result.train_loss} if pretrained else {}),
        **heldout,
        "parameters": float(sum(p.numel() for p in model.parameters())),  # tied weights counted once
        "heldout_unk_rate": unknown_token_rate(data.heldout.tokens, data.specials),
    }
    metrics.update(flat_downstream_metrics(downstream))
    return {
        **run.header,
        "metrics": metrics,
        "references": references,
        "downstream": downstream,
        "budget": {
            "steps": result.steps,
            "tokens": result.tokens_seen,
            "sequences": result.sequences_seen,
            "epochs": round(batches.epoch + batches.cursor / len(data.train), 3) if pretrained else 0.0,
        },
        "wall_s": round(time.perf_counter() - started, 2),
        # this attempt's tokens over this attempt's time: a resumed run does not count restored tokens
        "train_tokens_per_s": round(result.tokens_this_attempt / max(result.wall_s, 1e-9), 1),
        "resumed_from_step": result.resumed_from_step,
        "stage_keys": data.stage_keys,
        "environment": environment(device, options),
    }


def environment(device: torch.device, options: RunOptions) -> dict[str, Any]:
    return {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "code": code_version(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "compile": options.compile_model,
        "world_size": options.distributed.world,
    }


def record_failure(record: RunRecord, err: BaseException) -> None:
    """The run's status after `err`: pruned (a search stopped it), diverged (with what the guards
    saw) or failed. Call it while handling `err`: the traceback recorded is the one being handled."""
    state = "pruned" if isinstance(err, RunPruned) else "diverged" if isinstance(err, Diverged) else "failed"
    record.set_status(
        state,
        error=f"{type(err).__name__}: {err}",
        traceback=traceback.format_exc(limit=20),
        **({"divergence": err.details} if isinstance(err, Diverged) else {}),
    )


def record_interruption(
    record: RunRecord, err: KeyboardInterrupt, checkpointer: Checkpointer, stop: StopSignals | None
) -> None:
    """The run's status after Ctrl-C or SIGTERM: interrupted, not failed, with the signal, where it
    stopped and the step the next attempt resumes from (its latest checkpoint; 0: the start)."""
    cause = (stop.received if stop is not None else None) or "KeyboardInterrupt"
    where = str(err) if isinstance(err, Interrupted) else "stopped at once"
    found = checkpointer.latest()
    resume_step = found.step if found is not None else 0
    record.set_status(
        "interrupted",
        error=f"{cause}: {where}; the next attempt resumes from step {resume_step}",
        signal=cause,
        resume_step=resume_step,
    )
