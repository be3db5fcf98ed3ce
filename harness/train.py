"""The one trainer every run goes through. It knows nothing of ablations: it gets a model, a source
of optimizer steps and a TrainConfig, and returns what it did.
"""

from __future__ import annotations

import math
import sys
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
) -> TrainResult:
    """Train for `total_steps` optimizer steps, logging to `log` and evaluating every eval_every steps."""
    model.to(device).train()
    optimizer = build_optimizer(model, config, device)
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
        micro_batches = [mb.to(device) for mb in batches.next_step()]
        # normalise by the whole step's counts so accumulation equals one large batch exactly
        step_masked = sum(mb.masked_tokens for mb in micro_batches)
        step_pairs = sum(int((mb.nsp_labels >= 0).sum()) for mb in micro_batches)
        mlm_total = nsp_total = 0.0
        for mb in micro_batches:
            with autocast_for(config.precision, device):
                out = model(mb.input_ids, mb.token_type_ids, mb.attention_mask, mb.mlm_labels, mb.nsp_labels)
            loss = out.mlm_loss_sum / max(1, step_masked)
            mlm_total += float(out.mlm_loss_sum.detach())
            if out.nsp_loss_sum is not None and step_pairs:
                loss = loss + out.nsp_loss_sum / step_pairs
                nsp_total += float(out.nsp_loss_sum.detach())
            loss.backward()
            tokens_seen += mb.real_tokens
            window_tokens += mb.real_tokens
            sequences_seen += mb.input_ids.shape[0]
        grad_norm = (
            float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm))
            if config.clip_norm > 0
            else float(torch.norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])))
        )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        mlm_loss = mlm_total / max(1, step_masked)
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
                record["nsp_loss"] = round(nsp_total / step_pairs, 5)
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
