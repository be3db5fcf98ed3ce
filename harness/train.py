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
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
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
    # the fused kernel exists for CPU too, and on a tiny model the per-parameter loop of the default
    # CPU implementation costs ~4x as long (1.6 vs 6.3 ms a step at 2 x 128)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=device.type in ("cuda", "cpu"))


def finetune_steps(
    model: nn.Module,
    examples: int,
    step_loss,
    config,
    seed: int,
    device: torch.device,
) -> int | None:
    """The downstream fine-tuning loop every task type shares: seeded shuffled passes over `examples`
    rows in batches of `config.batch_size`, `config.epochs` of them, AdamW (0.9, 0.98, 1e-6) with
    linear warmup and decay, clipping at 1.0. `step_loss(picked)` returns the loss of the rows picked.
    Returns the step at which the loss went non-finite (the seed diverged), else None."""
    steps_per_epoch = math.ceil(examples / config.batch_size)
    total_steps = max(1, round(config.epochs * steps_per_epoch))
    warmup = int(config.warmup_fraction * total_steps)
    optimizer = adamw(model, config.lr, config.weight_decay, (0.9, 0.98), 1e-6, device)
    rng = np.random.default_rng(seed)
    order = np.array([], dtype=np.int64)
    model.train()
    for step in range(total_steps):
        if len(order) < config.batch_size:
            order = np.concatenate([order, rng.permutation(examples)])
        picked, order = order[: config.batch_size], order[config.batch_size :]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total_steps, warmup, config.lr, "linear")
        loss = step_loss(picked)
        if not torch.isfinite(loss):
            return step + 1
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return None


def choose_lr(grid: list[float], scores: dict[str, float | None]) -> float:
    """The best-scoring lr of a grid (ties: the first in grid order); none scoring: the smallest."""
    scored = [lr for lr in grid if scores[str(lr)] is not None]
    return max(scored, key=lambda lr: scores[str(lr)]) if scored else min(grid)


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


class Interrupted(KeyboardInterrupt):
    """A stop was requested (SIGINT/SIGTERM): training stopped at the boundary after `step`, having
    checkpointed there when it has a checkpointer."""

    def __init__(self, step: int, total_steps: int):
        super().__init__(f"stopped at step {step} of {total_steps}")
        self.step = step


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
    # polled at every step boundary: True stops the run there, checkpointed (harness/interrupt.py)
    stop_requested: Callable[[], bool] = lambda: False


SPIKE_WINDOW = 50
NO_ROW_LIMIT = 10**9  # micro-batch rows before any out-of-memory error


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
    state = resume(guards.checkpointer, model, optimizer, batches, ranks.rank, total_steps)
    resumed_from_step, restored_tokens = state.step, state.tokens_seen
    step_model = model_for_steps(model, compile_model, ranks, log)
    warmup_steps = int(config.warmup_fraction * total_steps)
    setup = Setup(model, step_model, optimizer, config, device, guards, warmup_steps, log)
    upcoming = Prefetcher(batches, total_steps - state.step, pin=device.type == "cuda")
    try:  # the prefetch thread stops however training ends
        clock = Clock()
        report = StepReport(log, total_steps, state, progress, ranks.is_main)
        while state.step < total_steps:
            lr = lr_at(state.step, total_steps, warmup_steps, config.lr, config.schedule)
            done = optimizer_step(setup, state, upcoming.next_step(), lr)
            if ranks.is_main and (due(state.step, config.log_every) or state.step == total_steps):
                report.log_step(state, done)
            # the evaluation after the last step is the caller's
            if evaluate is not None and due(state.step, config.eval_every) and state.step < total_steps:
                log_heldout(setup, evaluate, state, clock)
            stopping = state.step < total_steps and ranks.any(guards.stop_requested())
            if guards.checkpointer is not None and (stopping or guards.checkpointer.due(state.step, total_steps)):
                save_checkpoint(setup, state, upcoming.position)
            if stopping:
                report.bar.close()
                raise Interrupted(state.step, total_steps)
            report.bar.update(1)
        report.bar.close()
        return TrainResult(
            steps=total_steps,
            tokens_seen=state.tokens_seen,
            sequences_seen=state.sequences_seen,
            train_loss=final_train_loss(state.recent_losses, total_steps),
            wall_s=clock.wall_s(),
            train_s=clock.train_s(),
            tokens_this_attempt=state.tokens_seen - restored_tokens,
            resumed_from_step=resumed_from_step,
        )
    finally:
        upcoming.close()


@dataclass
class LoopState:
    """What the loop carries from one optimizer step to the next; a checkpoint carries it across attempts."""

    step: int = 0  # optimizer steps done
    tokens_seen: int = 0  # real (non-pad) tokens
    sequences_seen: int = 0
    recent_losses: list[float] = field(default_factory=list)  # every step's MLM loss: spike check, train_loss
    max_rows: int = NO_ROW_LIMIT  # micro-batch rows; halved on out-of-memory errors

    def checkpoint(self, data_position: dict[str, int] | None) -> dict[str, Any]:
        return {**asdict(self), "data": data_position}

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> LoopState:
        # checkpoints written before out-of-memory halving existed have no max_rows
        max_rows = saved.get("max_rows", NO_ROW_LIMIT)
        return cls(saved["step"], saved["tokens_seen"], saved["sequences_seen"], list(saved["recent_losses"]), max_rows)


@dataclass
class Setup:
    """What every optimizer step works with: fixed for the run, but for `step_model`, which falls back to
    the eager model when compilation fails at its first call."""

    model: nn.Module  # the eager model: its parameters are clipped, stepped, evaluated and saved
    step_model: nn.Module  # what forward and backward run through: the model compiled and/or DDP-wrapped
    optimizer: torch.optim.AdamW
    config: TrainConfig
    device: torch.device
    guards: RunGuards
    warmup_steps: int
    log: Callable[[dict[str, Any]], None]

    @property
    def ranks(self) -> Distributed:
        return self.guards.distributed


@dataclass
class StepDone:
    """One optimizer step's numbers, for the metrics line."""

    lr: float
    mlm_loss: float
    grad_norm: float  # before clipping
    pairs: int  # NSP pairs in the step; 0 without NSP
    nsp_total: torch.Tensor  # the step's summed NSP loss, on the device: read only when logged

    @property
    def nsp_loss(self) -> float:
        return float(self.nsp_total) / self.pairs


def resume(
    checkpointer: Any, model: nn.Module, optimizer: torch.optim.Optimizer, batches: StepSource, rank: int, steps: int
) -> LoopState:
    """The loop state of the latest checkpoint, with the model, optimizer, RNGs and data source put back
    as they were saved; a fresh state when there is no checkpoint."""
    found = checkpointer.latest() if checkpointer is not None else None
    if found is None:
        return LoopState()
    saved = checkpointer.restore(found, model, optimizer, rank)
    batches.load_state_dict(saved["data"])
    print(f"  resuming from {found.path.name} (step {saved['step']} of {steps})", file=sys.stderr, flush=True)
    return LoopState.from_checkpoint(saved)


def model_for_steps(
    model: nn.Module, compile_model: bool, ranks: Distributed, log: Callable[[dict[str, Any]], None]
) -> nn.Module:
    """What forward and backward run through: the model, compiled when asked, wrapped for DDP under torchrun."""
    step_model = compile_or_eager(model, log) if compile_model else model
    if not ranks.enabled:
        return step_model
    from torch.nn.parallel import DistributedDataParallel

    # heads that a micro-batch may not use (NSP without pairs) must not stall the gradient sync
    return DistributedDataParallel(step_model, find_unused_parameters=getattr(model, "nsp_head", None) is not None)


def optimizer_step(setup: Setup, state: LoopState, host_batches: list[MicroBatch], lr: float) -> StepDone:
    """One optimizer step at learning rate `lr` over one step's micro-batches: accumulate the gradients,
    clip them, stop if the loss diverged, step. Advances `state` by the step."""
    for group in setup.optimizer.param_groups:
        group["lr"] = lr
    # normalise by the whole step's counts so accumulation equals one large batch exactly (counted
    # on the host copies: counting on the device would wait for it)
    masked = sum(mb.masked_tokens for mb in host_batches)
    pairs = sum(int((mb.nsp_labels >= 0).sum()) for mb in host_batches)
    mlm_total, nsp_total = accumulate_within_memory(setup, state, host_batches, masked, pairs)
    state.tokens_seen += sum(mb.real_tokens for mb in host_batches)
    state.sequences_seen += sum(mb.rows for mb in host_batches)
    grad_norm = clip_gradients(setup.model, setup.config.clip_norm)
    mlm_loss = float(mlm_total) / max(1, masked)
    check_divergence(state, mlm_loss, grad_norm, lr, setup.guards.spike_factor, setup.warmup_steps)
    setup.optimizer.step()
    setup.optimizer.zero_grad(set_to_none=True)
    state.recent_losses.append(mlm_loss)
    state.step += 1
    return StepDone(lr, mlm_loss, grad_norm, pairs, nsp_total)


def accumulate_within_memory(
    setup: Setup, state: LoopState, host_batches: list[MicroBatch], masked: int, pairs: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accumulate the step's gradients; after an out-of-memory error, again in micro-batches of half as
    many rows (for the rest of the run), until they fit or fall below min_micro_batch."""
    while True:
        try:
            mlm_total, nsp_total, setup.step_model = _accumulate(setup, host_batches, state.max_rows, masked, pairs)
            return mlm_total, nsp_total
        except Exception as err:
            if not is_out_of_memory(err) or setup.ranks.enabled:
                raise
            setup.optimizer.zero_grad(set_to_none=True)
            if setup.device.type == "cuda":
                torch.cuda.empty_cache()
            widest = max(mb.rows for mb in host_batches)
            state.max_rows = min(state.max_rows, widest) // 2
            if state.max_rows < setup.guards.min_micro_batch:
                raise
            # accumulation is normalised by the whole step, so smaller micro-batches give the same step
            setup.log({"event": "out_of_memory", "step": state.step + 1, "micro_batch_rows": state.max_rows})
            print(f"  out of memory at step {state.step + 1}: micro-batches of {state.max_rows} rows, more "
                  "accumulation", file=sys.stderr, flush=True)  # fmt: skip


def clip_gradients(model: nn.Module, clip_norm: float) -> float:
    """The gradients' total norm before clipping, having clipped them to `clip_norm` (0: no clipping)."""
    if clip_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm))
    return float(torch.norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])))


def check_divergence(
    state: LoopState, mlm_loss: float, grad_norm: float, lr: float, spike_factor: float, warmup_steps: int
) -> None:
    """Raise Diverged, before the optimizer steps, when the loss or gradient norm is NaN/inf, or when after
    warmup the loss exceeds spike_factor x the median of the recent steps' (0: no spike check)."""
    step, last_good_step = state.step + 1, state.step
    if not math.isfinite(mlm_loss) or not math.isfinite(grad_norm):
        raise Diverged(f"loss {mlm_loss}, grad norm {grad_norm}", step, last_good_step, lr, grad_norm)
    if spike_factor > 0 and state.step >= warmup_steps and len(state.recent_losses) >= 10:
        typical = statistics.median(state.recent_losses[-SPIKE_WINDOW:])
        if mlm_loss > spike_factor * typical:
            raise Diverged(f"loss spike {mlm_loss:.3f} > {spike_factor} x median {typical:.3f}",
                           step, last_good_step, lr, grad_norm)  # fmt: skip


class Clock:
    """This attempt's seconds, with held-out evaluations counted apart: train_s leaves them out."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.eval_s = 0.0

    @contextmanager
    def evaluation(self) -> Iterator[float]:
        """Leaves the time inside out of train_s; gives train_s so far."""
        evaluating = time.perf_counter()
        yield evaluating - self.start - self.eval_s
        self.eval_s += time.perf_counter() - evaluating

    def wall_s(self) -> float:
        return time.perf_counter() - self.start

    def train_s(self) -> float:
        return time.perf_counter() - self.start - self.eval_s


def due(step: int, every: int) -> bool:
    """Whether `step` is one of every `every` steps (never when `every` is 0)."""
    return every > 0 and step % every == 0


def final_train_loss(recent_losses: list[float], total_steps: int) -> float:
    """The mean MLM loss over the last 10% of steps."""
    tail = recent_losses[-max(1, total_steps // 10) :]
    return sum(tail) / len(tail) if tail else math.nan


def log_heldout(setup: Setup, evaluate: Callable[[], dict[str, float]], state: LoopState, clock: Clock) -> None:
    """A held-out row (on the main rank, while the others wait), with this attempt's seconds of training
    so far, evaluations left out."""
    if setup.ranks.is_main:
        setup.model.eval()
        with clock.evaluation() as train_s:
            setup.log({"step": state.step, "tokens": state.tokens_seen, "train_s": round(train_s, 2), **evaluate()})
        setup.model.train()
    setup.ranks.barrier()


def save_checkpoint(setup: Setup, state: LoopState, data_position: dict[str, int] | None) -> None:
    """Checkpoint the model, optimizer, RNGs and loop state, with the data source's position after this step."""
    ranks = setup.ranks
    rng_by_rank = None
    if ranks.enabled:  # each rank draws its own dropout masks: keep every rank's generator
        from harness.checkpoint import rng_state

        rng_by_rank = [None] * ranks.world
        torch.distributed.all_gather_object(rng_by_rank, rng_state())
    if ranks.is_main:
        setup.guards.checkpointer.save(state.step, setup.model, setup.optimizer, state.checkpoint(data_position),
                                       rng_by_rank)  # fmt: skip
    ranks.barrier()


class StepReport:
    """The metrics line every log_every steps, and progress meanwhile: a live bar on a terminal; in a log
    file, a plain line every PLAIN_PROGRESS_S seconds instead."""

    def __init__(
        self, log: Callable[[dict[str, Any]], None], total_steps: int, state: LoopState, progress: bool, main: bool
    ):
        self.log, self.total_steps, self.progress = log, total_steps, progress
        self.live = progress and sys.stderr.isatty() and main
        self.bar = tqdm(total=total_steps, initial=state.step, disable=not self.live, file=sys.stderr, leave=False,
                        dynamic_ncols=True)  # fmt: skip
        # tokens_per_s is over the steps since the last metrics line
        self.window_start, self.window_tokens_from = time.perf_counter(), state.tokens_seen
        self.last_plain = self.window_start

    def log_step(self, state: LoopState, done: StepDone) -> None:
        now = time.perf_counter()
        window_tokens = state.tokens_seen - self.window_tokens_from
        record = {
            "step": state.step,
            "tokens": state.tokens_seen,
            "train_loss": round(done.mlm_loss, 5),
            "lr": done.lr,
            "grad_norm": round(done.grad_norm, 4),
            "tokens_per_s": round(window_tokens / max(now - self.window_start, 1e-9), 1),
        }
        if done.pairs:
            record["nsp_loss"] = round(done.nsp_loss, 5)
        self.log(record)
        speed = record["tokens_per_s"]
        self.bar.set_postfix(loss=f"{done.mlm_loss:.3f}", lr=f"{done.lr:.2e}", tok_s=f"{speed:.0f}", refresh=False)
        if self.progress and not self.live and now - self.last_plain >= PLAIN_PROGRESS_S:
            line = f"  step {state.step}/{self.total_steps} loss {done.mlm_loss:.3f} lr {done.lr:.2e} {speed:.0f} tok/s"
            print(line, file=sys.stderr, flush=True)
            self.last_plain = now
        self.window_start, self.window_tokens_from = now, state.tokens_seen


def _accumulate(
    setup: Setup, host_batches: list[MicroBatch], max_rows: int, step_masked: int, step_pairs: int
) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    """Forward and backward over one step's micro-batches, gradients summed into the parameters.
    Losses are normalised by the whole step's masked tokens and pairs, so any split of the step into
    micro-batches, or over ranks, gives the same gradient. Returns the step's summed losses and the
    model to step with next (the eager one after a failed compilation)."""
    model, step_model, device, ranks = setup.model, setup.step_model, setup.device, setup.ranks
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
            with autocast_for(setup.config.precision, device):
                try:
                    out = step_model(*inputs)
                except Exception as err:  # compilation happens at the first call: fall back there
                    if step_model is model or ranks.enabled or is_out_of_memory(err):
                        raise
                    _compile_failed(err, setup.log)
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
