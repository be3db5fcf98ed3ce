"""One run, end to end: data (cached stages) -> model -> trainer -> evaluator -> run record."""

from __future__ import annotations

import math
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import harness
from harness.data.batches import PretrainingBatches
from harness.data.cache import StageCache
from harness.data.pipeline import PreparedData, prepare_data
from harness.evaluate import evaluate_downstream, fixed_mask_batches, heldout_mlm
from harness.model import PretrainingModel
from harness.records import RunRecord
from harness.suite import Run
from harness.train import planned_steps, train


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


def execute_run(
    run: Run, run_dir: Path, cache: StageCache, device: torch.device, progress: bool = True, log=print
) -> dict[str, Any]:
    """Train and evaluate one run, recording everything under run_dir. Raises on failure after
    recording the run as failed with its error."""
    record = RunRecord(run_dir)
    config = run.config
    header = run.header
    record.start(header, config.model_dump(mode="json"))
    started = time.perf_counter()
    try:
        data = prepare_data(config.data, cache, config.eval.heldout_sequences)
        train_cfg = config.train
        batches = PretrainingBatches(
            data.train,
            data.specials,
            data.vocab_size,
            config.masking,
            train_cfg.seed,
            train_cfg.micro_batch_size,
            train_cfg.batch_size,
            train_cfg.tokens_per_step,
        )
        steps = planned_steps(train_cfg, batches.mean_tokens_per_step)
        log(describe_plan(data, batches, steps, run))

        torch.manual_seed(train_cfg.seed)
        model = PretrainingModel(config.model, data.vocab_size, data.specials.pad, nsp=config.data.nsp)
        heldout_batches = fixed_mask_batches(data.heldout, data.specials, data.vocab_size, config.eval)

        def evaluate_heldout() -> dict[str, float]:
            return heldout_mlm(model, heldout_batches, device, train_cfg.precision)

        result = train(
            model, batches, train_cfg, steps, device, record.append_metrics, evaluate_heldout, progress=progress
        )
        heldout = evaluate_heldout()
        record.append_metrics({"step": result.steps, "tokens": result.tokens_seen, **heldout})
        downstream = evaluate_downstream(model, config, data.tokenizer, data.specials, device)

        checkpoint = run_dir / "checkpoint"
        checkpoint.mkdir(exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(checkpoint / "model.safetensors"))
        data.tokenizer.save(str(checkpoint / "tokenizer.json"))

        metrics = {"train_loss": result.train_loss, **heldout}
        metrics.update({f"{task}.{r['metric']}": r["median"] for task, r in downstream.items()})
        summary = {
            **header,
            "metrics": metrics,
            "downstream": downstream,
            "budget": {
                "steps": result.steps,
                "tokens": result.tokens_seen,
                "sequences": result.sequences_seen,
                "epochs": round(batches.epoch + batches.cursor / len(data.train), 3),
            },
            "wall_s": round(time.perf_counter() - started, 2),
            "train_tokens_per_s": round(result.tokens_seen / max(result.wall_s, 1e-9), 1),
            "stage_keys": data.stage_keys,
            "environment": {
                "device": str(device),
                "torch": torch.__version__,
                "python": platform.python_version(),
                "code": code_version(),
                "threads": torch.get_num_threads(),
            },
        }
        record.finish(summary)
        return summary
    except BaseException as err:
        state = "failed"
        record.set_status(
            state,
            error=f"{type(err).__name__}: {err}",
            traceback=traceback.format_exc(limit=20),
            interrupted=isinstance(err, KeyboardInterrupt),
        )
        raise
    finally:
        sys.stdout.flush()
