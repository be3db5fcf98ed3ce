"""The one trainer every run goes through. It knows nothing of ablations: it gets a model, a source
of optimizer steps and a TrainConfig, and returns what it did.
"""

from __future__ import annotations

import math
import queue
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from harness.config import TrainConfig
from harness.data.batches import MicroBatch

PLAIN_PROGRESS_S = 15.0


class StepSource(Protocol):
    def next_step(self) -> list[MicroBatch]: ...


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, schedule: str) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup to `peak`, then decay to 0."""
    if warmup_steps and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if schedule == "constant":
        return peak
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak * (1.0 - progress)


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    return adamw(model, config.lr, config.weight_decay, (config.beta1, config.beta2), config.eps, device)


def adamw(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], eps: float, device: torch.device
) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only (not on biases or LayerNorms)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=device.type == "cuda")


def autocast_for(precision: str, device: torch.device):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()


def planned_steps(config: TrainConfig, tokens_per_step: float) -> int:
    if config.steps is not None:
        return config.steps
    return max(1, math.ceil(config.token_budget / tokens_per_step))


class Prefetcher:
    """Builds the next steps' micro-batches on a background thread while the current step computes
    (masking and collation are numpy work that releases the GIL for most of its time). Steps come out
    in exactly the source's order, so results do not depend on it; on CUDA they are pinned, so the
    copy to the device can overlap too."""

    def __init__(self, source: StepSource, steps: int, depth: int = 2, pin: bool = False):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._fill, args=(source, steps, pin), daemon=True)
        self._thread.start()

    def _fill(self, source: StepSource, steps: int, pin: bool) -> None:
        try:
            for _ in range(steps):
                step = source.next_step()
                self._queue.put([mb.pin_memory() for mb in step] if pin else step)
        except BaseException as err:  # handed to the training thread, raised there
            self._queue.put(err)

    def next_step(self) -> list[MicroBatch]:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item


def compile_or_eager(model: nn.Module, log: Callable[[dict[str, Any]], None]) -> nn.Module:
    """torch.compile when it works here; the eager model (and a logged reason) when it does not."""
    try:
        return torch.compile(model)
    except Exception as err:  # no compiler toolchain, unsupported platform or model
        _compile_failed(err, log)
        return model


def _compile_failed(err: Exception, log: Callable[[dict[str, Any]], None]) -> None:
    print(f"  torch.compile unavailable ({type(err).__name__}: {err}); training eagerly", file=sys.stderr)
    log({"event": "compile_failed", "error": f"{type(err).__name__}: {err}"})


@dataclass
class TrainResult:
    steps: int
    tokens_seen: int  # real (non-pad) tokens
    sequences_seen: int
    train_loss: float  # mean MLM loss over the last 10% of steps
    wall_s: float


def train(
    model: nn.Module,
    batches: StepSource,
    config: TrainConfig,
    total_steps: int,
    device: torch.device,
    log: Callable[[dict[str, Any]], None],
    evaluate: Callable[[], dict[str, float]] | None = None,
    progress: bool = True,
    compile_model: bool = False,
) -> TrainResult:
    """Train for `total_steps` optimizer steps, logging to `log` and evaluating every eval_every steps.
    `compile_model` runs the steps through torch.compile (the eager model is what callers keep and save)."""
    model.to(device).train()
    optimizer = build_optimizer(model, config, device)
    step_model = compile_or_eager(model, log) if compile_model else model
    upcoming = Prefetcher(batches, total_steps, pin=device.type == "cuda")
    warmup_steps = int(config.warmup_fraction * total_steps)
    tokens_seen = sequences_seen = 0
    recent_losses: list[float] = []
    window_tokens, window_start = 0, time.perf_counter()
    start = time.perf_counter()
    # a live bar on a terminal; in a log file, a plain line every PLAIN_PROGRESS_S seconds instead
    live = progress and sys.stderr.isatty()
    bar = tqdm(total=total_steps, disable=not live, file=sys.stderr, leave=False, dynamic_ncols=True)
    last_plain = start

    for step in range(total_steps):
        lr = lr_at(step, total_steps, warmup_steps, config.lr, config.schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        host_batches = upcoming.next_step()
        # normalise by the whole step's counts so accumulation equals one large batch exactly (counted
        # on the host copies: counting on the device would wait for it)
        step_masked = sum(mb.masked_tokens for mb in host_batches)
        step_pairs = sum(int((mb.nsp_labels >= 0).sum()) for mb in host_batches)
        real_tokens = [mb.real_tokens for mb in host_batches]
        micro_batches = [mb.to(device) for mb in host_batches]
        # summed on the device, read once per step: a read per micro-batch would stall a GPU's queue
        mlm_total = torch.zeros((), device=device)
        nsp_total = torch.zeros((), device=device)
        for mb, real in zip(micro_batches, real_tokens):
            inputs = (mb.input_ids, mb.token_type_ids, mb.attention_mask, mb.mlm_labels, mb.nsp_labels)
            with autocast_for(config.precision, device):
                try:
                    out = step_model(*inputs)
                except Exception as err:  # compilation happens at the first call: fall back there
                    if step_model is model:
                        raise
                    _compile_failed(err, log)
                    step_model = model
                    out = model(*inputs)
            loss = out.mlm_loss_sum / max(1, step_masked)
            mlm_total += out.mlm_loss_sum.detach()
            if out.nsp_loss_sum is not None and step_pairs:
                loss = loss + out.nsp_loss_sum / step_pairs
                nsp_total += out.nsp_loss_sum.detach()
            loss.backward()
            tokens_seen += real
            window_tokens += real
            sequences_seen += mb.input_ids.shape[0]
        grad_norm = (
            float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm))
            if config.clip_norm > 0
            else float(torch.norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])))
        )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        mlm_loss = float(mlm_total) / max(1, step_masked)
        recent_losses.append(mlm_loss)
        if not math.isfinite(mlm_loss):
            raise FloatingPointError(f"loss is {mlm_loss} at step {step + 1} (lr {lr:.3g}, grad norm {grad_norm:.3g})")
        if (step + 1) % config.log_every == 0 or step + 1 == total_steps:
            now = time.perf_counter()
            record = {
                "step": step + 1,
                "tokens": tokens_seen,
                "train_loss": round(mlm_loss, 5),
                "lr": lr,
                "grad_norm": round(grad_norm, 4),
                "tokens_per_s": round(window_tokens / max(now - window_start, 1e-9), 1),
            }
            if step_pairs:
                record["nsp_loss"] = round(float(nsp_total) / step_pairs, 5)
            log(record)
            bar.set_postfix(
                loss=f"{mlm_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}", refresh=False
            )
            if progress and not live and now - last_plain >= PLAIN_PROGRESS_S:
                speed = record["tokens_per_s"]
                line = f"  step {step + 1}/{total_steps} loss {mlm_loss:.3f} lr {lr:.2e} {speed:.0f} tok/s"
                print(line, file=sys.stderr, flush=True)
                last_plain = now
            window_tokens, window_start = 0, now
        if (
            evaluate is not None
            and config.eval_every
            and (step + 1) % config.eval_every == 0
            and step + 1 < total_steps
        ):
            model.eval()
            log({"step": step + 1, "tokens": tokens_seen, **evaluate()})
            model.train()
        bar.update(1)
    bar.close()
    tail = recent_losses[-max(1, total_steps // 10) :]
    return TrainResult(
        steps=total_steps,
        tokens_seen=tokens_seen,
        sequences_seen=sequences_seen,
        train_loss=sum(tail) / len(tail),
        wall_s=time.perf_counter() - start,
    )
