"""`harness bench`: training-step throughput of our model against Hugging Face's reference on the
same configuration, interleaved A B A B, with a step-time breakdown, peak memory, FLOPs and MFU.

Timings on shared machines drift by whole factors from minute to minute, so every comparison is
made in one process, alternating the two sides after warm-up, and reported as ratios of adjacent
measurements; their median is the figure to quote.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.config import MaskingConfig, ModelConfig
from harness.data.masking import mask_sequence
from harness.data.tokenizer import SpecialTokens
from harness.model import PretrainingModel, set_fast_path
from harness.train import Prefetcher, adamw, autocast_for, try_compile

# The benchmark's model sizes (the speed issue's definitions; `tiny` here is the PERF-NOTES size,
# larger than the training preset of the same name).
BENCH_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"layers": 4, "hidden": 256, "heads": 4, "ffn": 1024},
    "small": {"layers": 4, "hidden": 512, "heads": 8, "ffn": 2048},
    "base": {"layers": 12, "hidden": 768, "heads": 12, "ffn": 3072},
}
# RoBERTa's special-token ids in its 50265-token vocabulary
SPECIALS = SpecialTokens(cls=0, sep=2, pad=1, mask=4, unk=3, pair_separator=(2, 2))
# dense bf16 tensor throughput from the vendors' datasheets (no sparsity), TFLOP/s
DATASHEET_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}
LR, BETAS, EPS, WEIGHT_DECAY = 1e-4, (0.9, 0.98), 1e-6, 0.01


@dataclass(frozen=True)
class FastPath:
    """Each switch of the fast path; `plain()` is the path with all of them off."""

    masked_only_logits: bool = True  # project only masked positions to the vocabulary
    sdpa: bool = True  # fused scaled-dot-product attention instead of explicit softmax(QK^T)V
    bf16: bool = False  # bf16 autocast (default on for CUDA)
    optimizer: str = "foreach"  # fused (CUDA) | foreach | loop
    compile: bool = False  # torch.compile
    skip_padding: bool = True  # position-wise layers on the real tokens' rows alone (CPU)

    @staticmethod
    def best(device: torch.device) -> FastPath:
        cuda = device.type == "cuda"
        return FastPath(bf16=cuda, optimizer="fused" if cuda else "foreach", compile=cuda)

    @staticmethod
    def plain() -> FastPath:
        return FastPath(
            masked_only_logits=False, sdpa=False, bf16=False, optimizer="loop", compile=False, skip_padding=False
        )


@dataclass
class BenchSpec:
    preset: str = "tiny"
    seq: int = 128
    vocab: int = 50265
    batch: int = 32
    device: str = "cpu"
    steps: int = 6  # timed steps per measurement
    pairs: int = 3  # A B rounds
    warmup: int = 2
    mask_prob: float = 0.15
    shape: dict[str, int] | None = None  # layers/hidden/heads/ffn instead of the preset's (tests)

    def model_config(self) -> ModelConfig:
        shape = self.shape or BENCH_PRESETS[self.preset]
        return ModelConfig(**shape, max_len=self.seq, dropout=0.1, attention_dropout=0.1)


class Phases:
    """Wall time per phase of a step; CUDA is synchronised at each boundary so time lands where it is spent."""

    def __init__(self, device: torch.device):
        self.device = device
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start


def token_rows(spec: BenchSpec, count: int, seed: int = 0) -> np.ndarray:
    """Full-length sequences of random ordinary tokens, `<s> ... </s>` like packed RoBERTa input."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(5, spec.vocab, size=(count, spec.seq), dtype=np.int64)
    rows[:, 0], rows[:, -1] = SPECIALS.cls, SPECIALS.sep
    return rows


def _optimizer(model: torch.nn.Module, kind: str, device: torch.device) -> torch.optim.Optimizer:
    if kind == "fused":
        return adamw(model, LR, WEIGHT_DECAY, BETAS, EPS, device)
    optimizer = adamw(model, LR, WEIGHT_DECAY, BETAS, EPS, torch.device("cpu"))  # never fused off CUDA
    for group in optimizer.param_groups:
        group["foreach"] = kind == "foreach"
    return optimizer


def compiled(model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """The model to time and what it is: `compiled`, or eager with why compilation failed."""
    step_model, error = try_compile(model)
    return step_model, "compiled" if error is None else f"eager (compile failed: {type(error).__name__})"


class Side:
    """One side of a comparison: a model, its optimizer and its data path. A step is timed in four
    phases: waiting for the batch, forward (with the loss), backward, optimizer."""

    name = "side"
    device: torch.device
    fast: FastPath
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer

    def next_batch(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def step(self, phases: Phases) -> None:
        with phases("data"):
            batch = self.next_batch()
        with phases("forward"):
            with autocast_for("bf16" if self.fast.bf16 else "fp32", self.device):
                loss = self.loss(batch)
        with phases("backward"):
            loss.backward()
        with phases("optimizer"):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.last_loss = float(loss.detach())

    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


class OursSide(Side):
    name = "ours"

    def __init__(self, spec: BenchSpec, fast: FastPath, device: torch.device, rows: np.ndarray):
        torch.manual_seed(0)
        self.spec, self.fast, self.device, self.rows = spec, fast, device, rows
        self.model = PretrainingModel(spec.model_config(), spec.vocab, SPECIALS.pad, nsp=False).to(device)
        set_fast_path(self.model, fast.masked_only_logits, fast.sdpa, fast.skip_padding)
        self.model.train()
        self.optimizer = _optimizer(self.model, fast.optimizer, device)
        self.forward_model, self.compile_state = compiled(self.model) if fast.compile else (self.model, "eager")
        self.masking = MaskingConfig(mask_prob=spec.mask_prob)
        self.cursor = 0
        self.upcoming: Prefetcher | None = None

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        """Masked exactly as the trainer masks (per sequence, seeded), on the host."""
        chosen = [(self.cursor * self.spec.batch + i) % len(self.rows) for i in range(self.spec.batch)]
        self.cursor += 1
        spec = self.spec
        masked = [mask_sequence(self.rows[i], SPECIALS, spec.vocab, self.masking, 0, self.cursor, i) for i in chosen]
        inputs, labels = zip(*masked)
        tensors = {"input_ids": torch.from_numpy(np.stack(inputs)), "labels": torch.from_numpy(np.stack(labels))}
        if self.device.type == "cuda":
            tensors = {k: v.pin_memory() for k, v in tensors.items()}
        return [tensors]

    def batch(self) -> dict[str, torch.Tensor]:
        """The next batch on the device. Built ahead on a background thread, as the trainer's
        Prefetcher does, so the `data` phase is the time spent waiting for it plus the copy."""
        if self.upcoming is None:
            self.upcoming = Prefetcher(self, steps=10**9)
        return {k: v.to(self.device, non_blocking=True) for k, v in self.upcoming.next_step()[0].items()}

    def next_batch(self) -> dict[str, torch.Tensor]:
        batch = self.batch()
        batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
        batch["attention_mask"] = torch.ones_like(batch["input_ids"], dtype=torch.bool)
        return batch

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["input_ids"]
        out = self.forward_model(ids, batch["token_type_ids"], batch["attention_mask"], batch["labels"])
        return out.mlm_loss_sum / max(1, out.masked)


class HFSide(Side):
    """RobertaForMaskedLM + DataCollatorForLanguageModeling + torch AdamW, as the HF MLM example runs."""

    name = "hf"

    def __init__(self, spec: BenchSpec, fast: FastPath, device: torch.device, rows: np.ndarray):
        from transformers import DataCollatorForLanguageModeling, RobertaConfig, RobertaForMaskedLM

        torch.manual_seed(0)
        self.spec, self.fast, self.device, self.rows = spec, fast, device, rows
        shape = spec.model_config()
        config = RobertaConfig(
            vocab_size=spec.vocab,
            hidden_size=shape.hidden,
            num_hidden_layers=shape.layers,
            num_attention_heads=shape.heads,
            intermediate_size=shape.ffn,
            max_position_embeddings=spec.seq + SPECIALS.pad + 1,  # RoBERTa's positions start after the pad id
            type_vocab_size=1,
            pad_token_id=SPECIALS.pad,
            bos_token_id=SPECIALS.cls,
            eos_token_id=SPECIALS.sep,
            hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
        )
        config._attn_implementation = "sdpa"
        self.model = RobertaForMaskedLM(config).to(device)
        self.model.train()
        self.optimizer = _optimizer(self.model, "fused" if fast.optimizer == "fused" else "foreach", device)
        self.forward_model, self.compile_state = compiled(self.model) if fast.compile else (self.model, "eager")
        self.collator = DataCollatorForLanguageModeling(_hf_tokenizer(spec.vocab), mlm_probability=spec.mask_prob)
        self.cursor = 0

    def next_batch(self) -> dict[str, torch.Tensor]:
        """The collator in the training loop's thread, as the example scripts run it (no workers)."""
        chosen = [(self.cursor * self.spec.batch + i) % len(self.rows) for i in range(self.spec.batch)]
        self.cursor += 1
        batch = self.collator([{"input_ids": self.rows[i].tolist()} for i in chosen])
        pin = self.device.type == "cuda"
        return {k: (v.pin_memory() if pin else v).to(self.device, non_blocking=True) for k, v in batch.items()}

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.forward_model(**batch).loss


def _hf_tokenizer(vocab: int):
    """A fast tokenizer with RoBERTa's special tokens over a vocabulary of `vocab` ids: all the
    collator needs (mask id, special-token mask, random-token range)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    names = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocabulary = {name: i for i, name in enumerate(names)} | {f"t{i}": i for i in range(len(names), vocab)}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocabulary, unk_token="<unk>")),
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
    )


def measure(side, steps: int, device: torch.device) -> dict[str, Any]:
    phases = Phases(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        side.step(phases)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    tokens = steps * side.spec.batch * side.spec.seq
    return {
        "tokens_per_s": tokens / wall,
        "step_ms": 1000 * wall / steps,
        "phases_ms": {k: round(1000 * v / steps, 2) for k, v in phases.totals.items()},
    }


def interleave(a, b, spec: BenchSpec, device: torch.device, log=print) -> dict[str, Any]:
    """Warm both up, then A B A B ...; each pair's ratio is a/b tokens per second."""
    for side in (a, b):
        measure(side, spec.warmup, device)
    rounds = []
    for index in range(spec.pairs):
        first, second = measure(a, spec.steps, device), measure(b, spec.steps, device)
        ratio = first["tokens_per_s"] / second["tokens_per_s"]
        rounds.append({a.name: first, b.name: second, "ratio": ratio})
        log(
            f"  pair {index + 1}/{spec.pairs}: {a.name} {first['tokens_per_s']:,.0f} tok/s, "
            f"{b.name} {second['tokens_per_s']:,.0f} tok/s, ratio {ratio:.2f}"
        )
    return {
        "pairs": rounds,
        "median_ratio": statistics.median(r["ratio"] for r in rounds),
        "median_tokens_per_s": {s.name: statistics.median(r[s.name]["tokens_per_s"] for r in rounds) for s in (a, b)},
        "median_phases_ms": {
            s.name: {
                k: statistics.median(r[s.name]["phases_ms"][k] for r in rounds) for k in rounds[0][s.name]["phases_ms"]
            }
            for s in (a, b)
        },
    }


def flops_per_token(spec: BenchSpec) -> dict[str, float]:
    """Training FLOPs per token (forward + backward = 3 x forward, 2 FLOPs per multiply-add):
    6 x (encoder weight-matrix parameters) + 12 x layers x hidden x seq for the attention scores and
    mixing, + 6 x (hidden^2 + hidden x vocab) x mask rate for the MLM head, which needs only the
    masked positions. Embedding lookups cost no FLOPs."""
    shape = spec.model_config()
    per_layer = 4 * shape.hidden**2 + 2 * shape.hidden * shape.ffn
    body = 6 * shape.layers * per_layer
    attention = 12 * shape.layers * shape.hidden * spec.seq
    head = 6 * (shape.hidden**2 + shape.hidden * spec.vocab) * spec.mask_prob
    full_head = 6 * (shape.hidden**2 + shape.hidden * spec.vocab)
    return {"model": body + attention + head, "model_all_positions_head": body + attention + full_head}


def measured_peak_tflops(device: torch.device, size: int = 8192, repeats: int = 20) -> float:
    """Dense bf16 matmul throughput on this device, now."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def datasheet_tflops(name: str) -> float | None:
    return next((v for key, v in DATASHEET_BF16_TFLOPS.items() if key in name), None)


def peak_memory_mb(side_name: str, spec: BenchSpec, fast: FastPath, device: torch.device) -> float | None:
    """Peak memory of training steps of one side alone. CUDA: the allocator's peak in this process;
    CPU: the peak RSS of a fresh process running only that side (one process's peak cannot be split)."""
    if device.type == "cuda":
        side = make_side(side_name, spec, fast, device)
        torch.cuda.reset_peak_memory_stats(device)
        measure(side, 2, device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        del side
        torch.cuda.empty_cache()
        return round(peak, 1)
    probe = {"side": side_name, "spec": asdict(spec), "fast": asdict(fast)}
    done = subprocess.run(
        [sys.executable, "-m", "harness.bench", json.dumps(probe)], capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        return None
    return float(done.stdout.strip().splitlines()[-1])


def make_side(name: str, spec: BenchSpec, fast: FastPath, device: torch.device):
    rows = token_rows(spec, max(4 * spec.batch, 64))
    return (OursSide if name == "ours" else HFSide)(spec, fast, device, rows)


def machine(device: torch.device) -> dict[str, Any]:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


SWITCHES = ("masked_only_logits", "sdpa", "bf16", "optimizer", "compile")


def switch_worth(spec: BenchSpec, device: torch.device, log=print) -> dict[str, Any]:
    """Each fast-path switch turned off alone, measured against the best path, interleaved."""
    best = FastPath.best(device)
    rows = token_rows(spec, max(4 * spec.batch, 64))
    results = {}
    for name in SWITCHES:
        value = getattr(best, name)
        if name == "optimizer":
            off = replace(best, optimizer="loop")
        else:
            off = replace(best, **{name: not value})
        if name == "bf16" and device.type != "cuda":
            off = replace(best, bf16=True)  # on a CPU the question is whether turning it on helps
        on_side, off_side = OursSide(spec, best, device, rows), OursSide(spec, off, device, rows)
        on_side.name, off_side.name = "on", "off"
        log(f"switch {name}: {getattr(best, name)} vs {getattr(off, name)}")
        outcome = interleave(on_side, off_side, spec, device, log)
        results[name] = {
            "best": getattr(best, name),
            "alternative": getattr(off, name),
            "median_ratio_best_over_alternative": outcome["median_ratio"],
            "median_tokens_per_s": outcome["median_tokens_per_s"],
            "compile_state": {"best": on_side.compile_state, "alternative": off_side.compile_state},
        }
    return results


def run_bench(spec: BenchSpec, vs_hf: bool, switches: bool, log=print) -> dict[str, Any]:
    device = torch.device(spec.device)
    fast = FastPath.best(device)
    rows = token_rows(spec, max(4 * spec.batch, 64))
    ours = OursSide(spec, fast, device, rows)
    report: dict[str, Any] = {
        "machine": machine(device),
        "spec": asdict(spec),
        "fast_path": asdict(fast),
        "parameters": {"ours": ours.parameters()},
        "compile_state": {"ours": ours.compile_state},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    shape = f"{spec.preset} seq {spec.seq} batch {spec.batch} vocab {spec.vocab}"
    log(f"bench {shape} on {device}: {ours.parameters():,} parameters")
    if vs_hf:
        hf = HFSide(spec, fast, device, rows)
        report["parameters"]["hf"] = hf.parameters()
        report["compile_state"]["hf"] = hf.compile_state
        report["vs_hf"] = interleave(ours, hf, spec, device, log)
        del hf
    else:
        measure(ours, spec.warmup, device)
        single = [measure(ours, spec.steps, device) for _ in range(spec.pairs)]
        report["ours"] = {"median_tokens_per_s": statistics.median(m["tokens_per_s"] for m in single), "runs": single}
    del ours
    report["peak_memory_mb"] = {
        name: peak_memory_mb(name, spec, fast, device) for name in (["ours", "hf"] if vs_hf else ["ours"])
    }
    flops = flops_per_token(spec)
    report["flops_per_token"] = flops
    if device.type == "cuda":
        tokens_per_s = (
            report["vs_hf"]["median_tokens_per_s"]["ours"] if vs_hf else report["ours"]["median_tokens_per_s"]
        )
        measured = measured_peak_tflops(device)
        sheet = datasheet_tflops(torch.cuda.get_device_name(device))
        achieved = tokens_per_s * flops["model"] / 1e12
        report["mfu"] = {
            "achieved_tflops": achieved,
            "measured_peak_bf16_tflops": measured,
            "datasheet_bf16_tflops": sheet,
            "mfu_vs_measured": achieved / measured,
            "mfu_vs_datasheet": achieved / sheet if sheet else None,
        }
    if switches:
        report["switches"] = switch_worth(spec, device, log)
    return report


def summarize(report: dict[str, Any]) -> str:
    lines = []
    if "vs_hf" in report:
        vs = report["vs_hf"]
        tps = vs["median_tokens_per_s"]
        speeds = f"ours {tps['ours']:,.0f} tok/s, hf {tps['hf']:,.0f} tok/s"
        lines.append(f"{speeds}, median paired ratio ours/hf {vs['median_ratio']:.2f}")
        for name, phases in vs["median_phases_ms"].items():
            lines.append(f"  {name} step ms: " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
    memory = report.get("peak_memory_mb", {})
    if memory:
        lines.append("peak memory MB: " + ", ".join(f"{k} {v}" for k, v in memory.items()))
    lines.append(f"model FLOPs/token: {report['flops_per_token']['model']:.3g}")
    if "mfu" in report:
        m = report["mfu"]
        lines.append(
            f"MFU {m['mfu_vs_measured']:.1%} of measured {m['measured_peak_bf16_tflops']:.0f} TFLOP/s"
            + (
                f", {m['mfu_vs_datasheet']:.1%} of datasheet {m['datasheet_bf16_tflops']:.0f}"
                if m["mfu_vs_datasheet"]
                else ""
            )
        )
    for name, s in report.get("switches", {}).items():
        lines.append(
            f"switch {name}: {s['best']} vs {s['alternative']}: {s['median_ratio_best_over_alternative']:.2f}x"
        )
    return "\n".join(lines)


def _memory_probe(argument: str) -> None:
    """Child process of peak_memory_mb: a few steps of one side, then print the peak RSS in MB."""
    from harness.data.cache import peak_rss_mb

    probe = json.loads(argument)
    spec, fast = BenchSpec(**probe["spec"]), FastPath(**probe["fast"])
    side = make_side(probe["side"], spec, fast, torch.device("cpu"))
    measure(side, 2, torch.device("cpu"))
    print(peak_rss_mb())


if __name__ == "__main__":
    _memory_probe(sys.argv[1])
