"""The one trainer every run goes through. It knows nothing of ablations: it gets a model, a source
of optimizer steps and a TrainConfig, and returns what it did.
"""

from __future__ import annotations

import math
import queue
import statistics
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
from harness.distributed import NOT_DISTRIBUTED, Distributed

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
    copy to the device can overlap too. `position` is the source's position after the last step
    handed out (what a checkpoint must record, not the source's own position, which runs ahead)."""

    def __init__(self, source: StepSource, steps: int, depth: int = 2, pin: bool = False):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.position: dict[str, int] | None = source.state_dict() if hasattr(source, "state_dict") else None
        self._thread = threading.Thread(target=self._fill, args=(source, steps, pin), daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        """Queue an item unless the consumer has gone (close()); never block forever."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, source: StepSource, steps: int, pin: bool) -> None:
        try:
            for _ in range(steps):
                step = source.next_step()
                after = source.state_dict() if hasattr(source, "state_dict") else None
                if not self._put(([mb.pin_memory() for mb in step] if pin else step, after)):
                    return
        except BaseException as err:  # handed to the training thread, raised there
            self._put(err)

    def next_step(self) -> list[MicroBatch]:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        step, self.position = item
        return step

    def close(self) -> None:
        """Stop the thread (a run that ends early must not leave it holding batches)."""
        self._stop.set()
        self._thread.join(timeout=5)


class Diverged(FloatingPointError):
    """The loss became NaN/inf or spiked: the run stops, recorded as diverged with its last good step."""

    def __init__(self, reason: str, step: int, last_good_step: int, lr: float, grad_norm: float):
        super().__init__(
            f"{reason} at step {step} (last good step {last_good_step}, lr {lr:.3g}, grad norm {grad_norm:.3g})"
        )
        self.details = {"reason": reason, "step": step, "last_good_step": last_good_step, "lr": lr,
                        "grad_norm": grad_norm}  # fmt: skip


def split_rows(micro_batches: list[MicroBatch], max_rows: int) -> list[MicroBatch]:
    """Micro-batches of at most max_rows rows (after an out-of-memory error halved the size)."""
    return [mb.select(slice(i, i + max_rows)) for mb in micro_batches for i in range(0, mb.rows, max_rows)]


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def try_compile(model: nn.Module) -> tuple[nn.Module, Exception | None]:
    """torch.compile, or the eager model and the reason when compilation is unavailable here."""
    try:
        return torch.compile(model), None
    except Exception as err:  # no compiler toolchain, unsupported platform or model
        return model, err


def compile_or_eager(model: nn.Module, log: Callable[[dict[str, Any]], None]) -> nn.Module:
    """torch.compile when it works here; the eager model (and a logged reason) when it does not."""
    step_model, error = try_compile(model)
    if error is not None:
        _compile_failed(error, log)
    return step_model


def _compile_failed(err: Exception, log: Callable[[dict[str, Any]], None]) -> None:
    print(f"  torch.compile unavailable ({type(err).__name__}: {err}); training eagerly", file=sys.stderr)
    log({"event": "compile_failed", "error": f"{type(err).__name__}: {err}"})


@dataclass
class TrainResult:
    steps: int
    tokens_seen: int  # real (non-pad) tokens
    sequences_seen: int
    train_loss: float  # mean MLM loss over the last 10% of steps
    wall_s: float  # of this attempt
    train_s: float  # of this attempt, held-out evaluations left out
    tokens_this_attempt: int = 0  # tokens_seen less what a checkpoint had already counted
    resumed_from_step: int = 0


@dataclass
class RunGuards:
    """How a run protects itself; none of it changes a run's result, so none of it is in the run id."""

    checkpointer: Any = None  # harness.checkpoint.Checkpointer: save every N steps, resume from the latest
    spike_factor: float = 0.0  # stop as diverged when the loss exceeds factor x the recent median (0: off)
    min_micro_batch: int = 1  # out-of-memory halving stops here and the run fails
    distributed: Distributed = NOT_DISTRIBUTED


SPIKE_WINDOW = 50


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
    guards: RunGuards | None = None,
) -> TrainResult:
    """Train for `total_steps` optimizer steps, logging to `log` and evaluating every eval_every steps.
    `compile_model` runs the steps through torch.compile (the eager model is what callers keep and save).
    With a checkpointer in `guards` the run continues from its latest checkpoint and saves new ones."""
    guards = guards or RunGuards()
    ranks = guards.distributed
    model.to(device).train()
    optimizer = build_optimizer(model, config, device)
    warmup_steps = int(config.warmup_fraction * total_steps)
    first_step, tokens_seen, sequences_seen = 0, 0, 0
    recent_losses: list[float] = []
    max_rows = 10**9  # micro-batch rows; halved on out-of-memory errors
    found = guards.checkpointer.latest() if guards.checkpointer is not None else None
    if found is not None:
        state = guards.checkpointer.restore(found, model, optimizer, ranks.rank)
        first_step, tokens_seen, sequences_seen = state["step"], state["tokens_seen"], state["sequences_seen"]
        recent_losses = list(state["recent_losses"])
        max_rows = state.get("max_rows", max_rows)
        batches.load_state_dict(state["data"])
        print(f"  resuming from {found.path.name} (step {first_step} of {total_steps})", file=sys.stderr, flush=True)
    step_model = compile_or_eager(model, log) if compile_model else model
    if ranks.enabled:
        from torch.nn.parallel import DistributedDataParallel

        # heads that a micro-batch may not use (NSP without pairs) must not stall the gradient sync
        step_model = DistributedDataParallel(
            step_model, find_unused_parameters=getattr(model, "nsp_head", None) is not None
        )
    main = ranks.is_main
    upcoming = Prefetcher(batches, total_steps - first_step, pin=device.type == "cuda")
    restored_tokens = tokens_seen
    try:  # the prefetch thread stops however training ends
        window_tokens, window_start = 0, time.perf_counter()
        start = time.perf_counter()
        eval_s = 0.0
        # a live bar on a terminal; in a log file, a plain line every PLAIN_PROGRESS_S seconds instead
        live = progress and sys.stderr.isatty() and main
        bar = tqdm(total=total_steps, initial=first_step, disable=not live, file=sys.stderr, leave=False,
                   dynamic_ncols=True)  # fmt: skip
        last_plain = start

        for step in range(first_step, total_steps):
            lr = lr_at(step, total_steps, warmup_steps, config.lr, config.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            host_batches = upcoming.next_step()
            # normalise by the whole step's counts so accumulation equals one large batch exactly (counted
            # on the host copies: counting on the device would wait for it)
            step_masked = sum(mb.masked_tokens for mb in host_batches)
            step_pairs = sum(int((mb.nsp_labels >= 0).sum()) for mb in host_batches)
            step_tokens = sum(mb.real_tokens for mb in host_batches)
            while True:
                try:
                    mlm_total, nsp_total, step_model = _accumulate(
                        step_model, model, host_batches, max_rows, step_masked, step_pairs, device, config, ranks, log
                    )
                    break
                except Exception as err:
                    if not is_out_of_memory(err) or ranks.enabled:
                        raise
                    optimizer.zero_grad(set_to_none=True)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    widest = max(mb.rows for mb in host_batches)
                    max_rows = min(max_rows, widest) // 2
                    if max_rows < guards.min_micro_batch:
                        raise
                    # accumulation is normalised by the whole step, so smaller micro-batches give the same step
                    log({"event": "out_of_memory", "step": step + 1, "micro_batch_rows": max_rows})
                    print(f"  out of memory at step {step + 1}: micro-batches of {max_rows} rows, more accumulation",
                          file=sys.stderr, flush=True)  # fmt: skip
            tokens_seen += step_tokens
            window_tokens += step_tokens
            sequences_seen += sum(mb.rows for mb in host_batches)
            grad_norm = (
                float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm))
                if config.clip_norm > 0
                else float(torch.norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])))
            )
            mlm_loss = float(mlm_total) / max(1, step_masked)
            if not math.isfinite(mlm_loss) or not math.isfinite(grad_norm):
                raise Diverged(f"loss {mlm_loss}, grad norm {grad_norm}", step + 1, step, lr, grad_norm)
            if guards.spike_factor > 0 and step >= warmup_steps and len(recent_losses) >= 10:
                typical = statistics.median(recent_losses[-SPIKE_WINDOW:])
                if mlm_loss > guards.spike_factor * typical:
                    raise Diverged(f"loss spike {mlm_loss:.3f} > {guards.spike_factor} x median {typical:.3f}",
                                   step + 1, step, lr, grad_norm)  # fmt: skip
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            recent_losses.append(mlm_loss)
            if main and ((step + 1) % config.log_every == 0 or step + 1 == total_steps):
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
                if main:
                    model.eval()
                    evaluating = time.perf_counter()
                    # train_s: this attempt's seconds of training so far, evaluations left out
                    train_s = round(evaluating - start - eval_s, 2)
                    log({"step": step + 1, "tokens": tokens_seen, "train_s": train_s, **evaluate()})
                    eval_s += time.perf_counter() - evaluating
                    model.train()
                ranks.barrier()
            if guards.checkpointer is not None and guards.checkpointer.due(step + 1, total_steps):
                rng_by_rank = None
                if ranks.enabled:  # each rank draws its own dropout masks: keep every rank's generator
                    from harness.checkpoint import rng_state

                    rng_by_rank = [None] * ranks.world
                    torch.distributed.all_gather_object(rng_by_rank, rng_state())
                if main:
                    state = {
                        "step": step + 1,
                        "tokens_seen": tokens_seen,
                        "sequences_seen": sequences_seen,
                        "recent_losses": recent_losses,
                        "max_rows": max_rows,
                        "data": upcoming.position,
                    }
                    guards.checkpointer.save(step + 1, model, optimizer, state, rng_by_rank)
                ranks.barrier()
            bar.update(1)
        bar.close()
        tail = recent_losses[-max(1, total_steps // 10) :]
        return TrainResult(
            steps=total_steps,
            tokens_seen=tokens_seen,
            sequences_seen=sequences_seen,
            train_loss=sum(tail) / len(tail) if tail else math.nan,
            wall_s=time.perf_counter() - start,
            train_s=time.perf_counter() - start - eval_s,
            tokens_this_attempt=tokens_seen - restored_tokens,
            resumed_from_step=first_step,
        )
    finally:
        upcoming.close()


def _accumulate(
    step_model: nn.Module,
    model: nn.Module,
    host_batches: list[MicroBatch],
    max_rows: int,
    step_masked: int,
    step_pairs: int,
    device: torch.device,
    config: TrainConfig,
    ranks: Distributed,
    log: Callable[[dict[str, Any]], None],
) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    """Forward and backward over one step's micro-batches, gradients summed into the parameters.
        Losses are normalised by the whole step's masked tokens and pairs, so any split of the step into
        micro-batches, or over ranks, gives the same gradient. Returns the step's summed losses and the
    model to step with next (the eager one after a failed compilation)."""
    micro_batches = split_rows(host_batches, max_rows)
    # summed on the device, read once per step: a read per micro-batch would stall a GPU's queue
    mlm_total = torch.zeros((), device=device)
    nsp_total = torch.zeros((), device=device)
    for index, mb in enumerate(micro_batches):
        share, weight = mb, 1.0
        if ranks.enabled:
            # rank r takes rows r, r + world, ...; a rank left without rows runs one row at weight 0 so
            # every rank joins every gradient sync
            share = mb.select(slice(ranks.rank, None, ranks.world))
            if share.rows == 0:
                share, weight = mb.select(slice(0, 1)), 0.0
        share = share.to(device)
        inputs = (share.input_ids, share.token_type_ids, share.attention_mask, share.mlm_labels, share.nsp_labels)
        last = index == len(micro_batches) - 1
        with step_model.no_sync() if ranks.enabled and not last else nullcontext():
            with autocast_for(config.precision, device):
                try:
                    out = step_model(*inputs)
                except Exception as err:  # compilation happens at the first call: fall back there
                    if step_model is model or ranks.enabled or is_out_of_memory(err):
                        raise
                    _compile_failed(err, log)
                    step_model = model
                    out = model(*inputs)
            loss = out.mlm_loss_sum / max(1, step_masked)
            if out.nsp_loss_sum is not None and step_pairs:
                loss = loss + out.nsp_loss_sum / step_pairs
            # gradient sync averages over ranks; the world factor turns that back into the step's sum
            scale = weight * ranks.world
            if scale != 1.0:
                loss = loss * scale
            loss.backward()
        if weight:
            mlm_total += out.mlm_loss_sum.detach()
            if out.nsp_loss_sum is not None and step_pairs:
                nsp_total += out.nsp_loss_sum.detach()
    if ranks.enabled:  # every rank reads the whole step's loss
        totals = torch.stack([mlm_total, nsp_total])
        torch.distributed.all_reduce(totals)
        mlm_total, nsp_total = totals[0], totals[1]
    return mlm_total, nsp_total, step_model
