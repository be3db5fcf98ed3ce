"""The fast path changes speed, never results: every switch against the plain path on a fixed batch."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from harness.bench import BenchSpec, FastPath, OursSide, flops_per_token, run_bench, token_rows
from harness.data.masking import IGNORE
from harness.model import PretrainingModel, plain_state_dict

SHAPE = {"layers": 2, "hidden": 64, "heads": 4, "ffn": 128}
SPEC = BenchSpec(preset="tiny", seq=32, vocab=600, batch=4, steps=1, pairs=1, warmup=1, shape=SHAPE)
CPU = torch.device("cpu")


def one_step(fast: FastPath, side: OursSide | None = None) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss of one training step on a fixed batch (dropout off) and the weights after it."""
    side = side or OursSide(SPEC, fast, CPU, token_rows(SPEC, 8))
    side.model.eval()  # no dropout: the paths must agree exactly, not in distribution
    batch = side.batch()
    types = torch.zeros_like(batch["input_ids"])
    attend = torch.ones_like(batch["input_ids"], dtype=torch.bool)
    attend[:, -5:] = False  # some padding, so the attention masks are exercised
    labels = batch["labels"].masked_fill(~attend, IGNORE)  # as in real batches, padding is never predicted
    with torch.autocast("cpu", dtype=torch.bfloat16) if fast.bf16 else torch.autocast("cpu", enabled=False):
        out = side.forward_model(batch["input_ids"], types, attend, labels)
    loss = out.mlm_loss_sum / out.masked
    loss.backward()
    side.optimizer.step()
    return float(loss.detach()), plain_state_dict(side.model)


@pytest.fixture(scope="module")
def plain():
    return one_step(FastPath.plain())


@pytest.mark.parametrize(
    ("switch", "tolerance"),
    [
        ({"masked_only_logits": True}, 1e-5),
        ({"sdpa": True}, 1e-5),
        ({"optimizer": "foreach"}, 1e-6),
        ({"skip_padding": True}, 1e-5),
        ({"masked_only_logits": True, "sdpa": True, "optimizer": "foreach", "skip_padding": True}, 1e-5),
        ({"bf16": True}, 2e-2),
    ],
)
def test_each_switch_gives_the_plain_loss_and_update(plain, switch, tolerance):
    plain_loss, plain_weights = plain
    loss, weights = one_step(replace(FastPath.plain(), **switch))
    assert loss == pytest.approx(plain_loss, rel=tolerance)
    assert plain_loss > 5.0, "an untrained model over 600 tokens: near ln(600)"
    if not switch.get("bf16"):
        worst = max(float((weights[k] - plain_weights[k]).abs().max()) for k in weights)
        assert worst < 1e-5, worst


def test_a_compiled_model_matches_and_its_checkpoint_loads_uncompiled(plain):
    plain_loss, _ = plain
    fast = replace(FastPath.plain(), compile=True)
    side = OursSide(SPEC, fast, CPU, token_rows(SPEC, 8))
    if side.compile_state != "compiled":
        pytest.skip(f"torch.compile unavailable here: {side.compile_state}")
    loss, weights = one_step(fast, side)
    assert loss == pytest.approx(plain_loss, rel=1e-4)
    compiled_keys = list(side.forward_model.state_dict())
    assert any(k.startswith("_orig_mod.") for k in compiled_keys), "torch.compile wraps the module"
    assert not any("_orig_mod" in k for k in weights)
    fresh = PretrainingModel(SPEC.model_config(), SPEC.vocab, 1, nsp=False)
    fresh.load_state_dict(weights, strict=True)


def test_flops_per_token_follow_the_stated_formula():
    spec = BenchSpec(preset="base", seq=512)
    flops = flops_per_token(spec)
    layers, hidden, ffn, vocab = 12, 768, 3072, 50265
    body = 6 * layers * (4 * hidden**2 + 2 * hidden * ffn)
    attention = 12 * layers * hidden * 512
    head = 6 * (hidden**2 + hidden * vocab)
    assert flops["model"] == pytest.approx(body + attention + 0.15 * head)
    assert flops["model_all_positions_head"] == pytest.approx(body + attention + head)


def test_bench_against_hf_reports_pairs_memory_and_phases():
    pytest.importorskip("transformers")
    report = run_bench(SPEC, vs_hf=True, switches=False, log=lambda *_: None)
    vs = report["vs_hf"]
    assert len(vs["pairs"]) == 1 and vs["median_ratio"] > 0
    assert set(vs["median_phases_ms"]["ours"]) == {"data", "forward", "backward", "optimizer"}
    assert report["peak_memory_mb"]["ours"] > 50 and report["peak_memory_mb"]["hf"] > 50
    # both models have the same body: the parameter counts differ only by HF's extra position rows, the
    # pooler-free MLM head and token-type rows
    assert abs(report["parameters"]["ours"] - report["parameters"]["hf"]) < 0.05 * report["parameters"]["hf"]


def test_prefetcher_keeps_the_order_and_raises_the_source_error():
    from harness.train import Prefetcher

    class Source:
        def __init__(self):
            self.served = 0

        def next_step(self):
            self.served += 1
            if self.served == 4:
                raise ValueError("bad data at step 4")
            return [self.served]

    upcoming = Prefetcher(Source(), steps=6)
    assert [upcoming.next_step() for _ in range(3)] == [[1], [2], [3]]
    with pytest.raises(ValueError, match="bad data at step 4"):
        upcoming.next_step()


def test_training_falls_back_to_eager_when_compilation_fails(monkeypatch):
    from test_train import tiny_training

    def broken_compile(model, *args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("no compiler here")

        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    eager_losses, _ = tiny_training(compile_model=False)
    fallback_losses, events = tiny_training(compile_model=True)
    assert fallback_losses == eager_losses
    assert events == [{"event": "compile_failed", "error": "RuntimeError: no compiler here"}]


@pytest.mark.parametrize("positions", ["learned", "rope"])
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_skipping_the_padding_changes_no_real_output_nor_gradient(norm, positions):
    """The layers on the real tokens' rows alone give the padded path's hidden states at every real
    position and the same gradients; the padding's own states come back as zeros."""
    from harness.config import ModelConfig

    config = ModelConfig(**SHAPE, max_len=16, dropout=0.0, attention_dropout=0.0, norm=norm, positions=positions)
    torch.manual_seed(0)
    model = PretrainingModel(config, 50, 1, nsp=False)
    ids = torch.randint(5, 50, (3, 16))
    real = torch.ones(3, 16, dtype=torch.bool)
    real[0, 9:], real[2, 4:] = False, False  # rows of three lengths, one unpadded
    results = []
    for skip in (False, True):
        model.zero_grad()
        model.roberta.skip_padding = skip
        hidden = model.roberta(ids, torch.zeros_like(ids), real)
        (hidden[real] ** 2).sum().backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((hidden.detach(), grads))
    (padded, padded_grads), (skipped, skipped_grads) = results
    assert (skipped[real] - padded[real]).abs().max() < 1e-5
    assert bool((skipped[~real] == 0).all())
    assert padded_grads.keys() == skipped_grads.keys()
    for name, grad in padded_grads.items():
        assert (skipped_grads[name] - grad).abs().max() < 1e-4, name
