"""Rotary position embeddings (model.positions = rope): scores depend only on offsets, the model
equals the learned one where positions play no part, it is position-aware, and it trains."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from conftest import tiny_suite
from safetensors.torch import load_file

import harness.model
from harness.cli import main
from harness.config import ModelConfig
from harness.data.masking import IGNORE
from harness.model import PretrainingModel, Rotary, SelfAttention, rotate, set_fast_path
from harness.records import RunRecord
from harness.runner import load_pretrained

VOCAB, PAD = 50, 1


def config(**changes) -> ModelConfig:
    # weights larger than BERT's 0.02 init: attention far from uniform, so positions visibly matter
    shape = dict(layers=2, hidden=32, heads=2, ffn=64, max_len=32, dropout=0.0, attention_dropout=0.0, init_std=0.2)
    return ModelConfig(**{**shape, **changes})


def batch(length: int = 12):
    """Two sequences, the second right-padded, with both segment ids and a few MLM targets."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, VOCAB, (2, length), generator=g)
    mask = torch.ones(2, length, dtype=torch.bool)
    mask[1, length - 4 :] = False
    ids[~mask] = PAD
    types = torch.zeros_like(ids)
    types[:, length // 2 :] = 1
    labels = torch.full_like(ids, IGNORE)
    labels[0, [1, 4, 9]], labels[1, [2, 6]] = ids[0, [1, 4, 9]], ids[1, [2, 6]]
    return ids, types, mask, labels, torch.tensor([0, 1])


# ------------------------------------------------------------------ the defining property


def test_rotated_scores_depend_only_on_the_offset():
    torch.manual_seed(0)
    head_dim = 16
    cos, sin = Rotary(head_dim, 128)(128)  # [128, head_dim/2] each
    q, k = torch.randn(head_dim), torch.randn(head_dim)

    def score(m: int, n: int) -> float:  # q placed at position m, k at n
        qm = rotate(q.view(1, 1, 1, head_dim), cos[m : m + 1], sin[m : m + 1])
        kn = rotate(k.view(1, 1, 1, head_dim), cos[n : n + 1], sin[n : n + 1])
        return float((qm * kn).sum())

    for m, n in [(0, 0), (3, 1), (1, 3), (10, 2), (7, 7), (0, 9)]:
        for shift in (1, 5, 40, 100):
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=1e-5), (m, n, shift)
    by_offset = {d: score(6 + d, 6) for d in range(-6, 7)}  # offsets m - n = -6 .. 6
    for d in range(1, 7):  # another offset, or the same one the other way round, scores differently
        assert abs(by_offset[d] - by_offset[0]) > 1e-2 and abs(by_offset[-d] - by_offset[0]) > 1e-2
        assert abs(by_offset[d] - by_offset[-d]) > 1e-2
    assert rotate(q.view(1, 1, 1, -1), cos[:1], sin[:1]).flatten().equal(q), "position 0 is not rotated"
    assert math.isclose(float(rotate(q.view(1, 1, 1, -1), cos[5:6], sin[5:6]).norm()), float(q.norm()), rel_tol=1e-6)


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
def test_attention_sees_offsets_not_absolute_positions(sdpa):
    """Through the real attention layer: queries and keys rotated by the same table, so a sequence moved
    `shift` positions later (the slots before it masked out) gives its tokens the same outputs."""
    torch.manual_seed(0)
    attention = SelfAttention(config(positions="rope")).eval()
    attention.use_sdpa = sdpa
    rotary = Rotary(16, 32)
    length, shift = 10, 7
    x = torch.randn(2, length, 32)
    at_start = attention(x, torch.ones(2, 1, 1, length, dtype=torch.bool), rotary(length))
    moved = torch.cat([torch.randn(2, shift, 32), x], dim=1)  # [B, shift + L, H]
    attend = torch.ones(2, 1, 1, shift + length, dtype=torch.bool)
    attend[..., :shift] = False
    later = attention(moved, attend, rotary(shift + length))[:, shift:]
    assert (later - at_start).abs().max() < 1e-5
    unrotated = attention(x, torch.ones(2, 1, 1, length, dtype=torch.bool))
    assert (unrotated - at_start).abs().max() > 1e-3, "the rotation changes the attention output"


# ------------------------------------------------------- the same model but for positions


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_rope_at_angle_zero_is_the_learned_model_without_its_position_table(norm, sdpa):
    """The learned model with its position table zeroed and the rope model with every angle 0 share all
    other weights and must agree exactly: anything else that rope changed would show here."""
    torch.manual_seed(0)
    learned = PretrainingModel(config(norm=norm), VOCAB, PAD, nsp=True).eval()
    rope = PretrainingModel(config(norm=norm, positions="rope"), VOCAB, PAD, nsp=True).eval()
    state = learned.state_dict()
    table = "roberta.embeddings.position_embeddings.weight"
    assert set(state) - set(rope.state_dict()) == {table} and set(rope.state_dict()) <= set(state)
    rope.load_state_dict({k: v for k, v in state.items() if k != table}, strict=True)
    assert sum(p.numel() for p in learned.parameters()) - sum(p.numel() for p in rope.parameters()) == 32 * 32
    with torch.no_grad():
        learned.roberta.embeddings.position_embeddings.weight.zero_()
    rotary = rope.roberta.rotary
    turning = rotary.cos.clone(), rotary.sin.clone()
    rotary.cos.fill_(1.0)  # every angle 0: the rotation is the identity
    rotary.sin.zero_()
    for model in (learned, rope):
        set_fast_path(model, sdpa=sdpa)
    ids, types, mask, labels, nsp = batch()
    with torch.no_grad():
        ours, theirs = rope(ids, types, mask, labels, nsp), learned(ids, types, mask, labels, nsp)
        hidden_rope, hidden_learned = rope.roberta(ids, types, mask), learned.roberta(ids, types, mask)
    assert torch.allclose(hidden_rope, hidden_learned, rtol=0, atol=1e-6)
    assert float(ours.mlm_loss_sum) == pytest.approx(float(theirs.mlm_loss_sum), abs=1e-5)
    assert float(ours.nsp_loss_sum) == pytest.approx(float(theirs.nsp_loss_sum), abs=1e-5)
    rotary.cos.copy_(turning[0])
    rotary.sin.copy_(turning[1])
    with torch.no_grad():
        assert (rope.roberta(ids, types, mask) - hidden_learned).abs().max() > 1e-3, "real angles change it"


def test_every_attention_layer_rotates_queries_and_keys(monkeypatch):
    calls = []

    def counting(x, cos, sin):
        calls.append(x.shape)
        return rotate(x, cos, sin)

    monkeypatch.setattr(harness.model, "rotate", counting)
    model = PretrainingModel(config(layers=3, positions="rope"), VOCAB, PAD, nsp=False).eval()
    ids, types, mask, _, _ = batch()
    with torch.no_grad():
        model.roberta(ids, types, mask)
    assert calls == [torch.Size([2, 2, 12, 16])] * (2 * 3), "q and k, in each of the 3 layers"
    monkeypatch.undo()
    calls.clear()
    PretrainingModel(config(layers=3), VOCAB, PAD, nsp=False).eval().roberta(ids, types, mask)
    assert not calls, "the learned model rotates nothing"


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_sdpa_and_explicit_softmax_agree_with_rope(norm):
    torch.manual_seed(0)
    model = PretrainingModel(config(norm=norm, positions="rope"), VOCAB, PAD, nsp=False).eval()
    ids, types, mask, _, _ = batch()
    with torch.no_grad():
        fast = model.roberta(ids, types, mask)
        set_fast_path(model, sdpa=False)
        explicit = model.roberta(ids, types, mask)
    assert (fast - explicit)[mask].abs().max() < 1e-5


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
def test_rope_under_bf16_autocast(sdpa):
    torch.manual_seed(0)
    model = PretrainingModel(config(positions="rope"), VOCAB, PAD, nsp=False).eval()
    set_fast_path(model, sdpa=sdpa)
    ids, types, mask, labels, _ = batch()
    with torch.no_grad():
        full = model(ids, types, mask, labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(ids, types, mask, labels)
    assert torch.isfinite(half.mlm_loss_sum)
    assert float(half.mlm_loss_sum) == pytest.approx(float(full.mlm_loss_sum), rel=0.02)


def test_odd_head_dim_is_refused_for_rope():
    with pytest.raises(ValueError, match="must be even"):
        ModelConfig(hidden=30, heads=2, positions="rope")
    ModelConfig(hidden=30, heads=2)  # learned positions do not care


# -------------------------------------------------------------------- position-aware


def test_permuting_tokens_changes_the_output():
    """Without positions an encoder is permutation-equivariant (the control: a learned model whose
    table is zero); with rope, permuting the tokens changes what each token's output is."""
    torch.manual_seed(0)
    rope = PretrainingModel(config(positions="rope"), VOCAB, PAD, nsp=False).eval()
    no_positions = PretrainingModel(config(), VOCAB, PAD, nsp=False).eval()
    with torch.no_grad():
        no_positions.roberta.embeddings.position_embeddings.weight.zero_()
    ids = torch.randint(5, VOCAB, (1, 12), generator=torch.Generator().manual_seed(3))
    types, mask = torch.zeros_like(ids), torch.ones_like(ids, dtype=torch.bool)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for model, aware in ((rope, True), (no_positions, False)):
            permuted_then_encoded = model.roberta(ids[:, order], types, mask)
            encoded_then_permuted = model.roberta(ids, types, mask)[:, order]
            gap = float((permuted_then_encoded - encoded_then_permuted).abs().max())
            if aware:
                assert gap > 1e-2, "rope: the output depends on the order of the tokens"
            else:
                assert gap < 1e-5, "control: without positions the order does not matter"


# ------------------------------------------------------------------ through the trainer


def test_a_rope_model_trains_through_the_shared_trainer(tmp_path):
    suite = tiny_suite(arms={"rope": {"model": {"positions": "rope"}}})
    suite["base"]["train"].update({"steps": 3, "log_every": 1})
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    assert main(["run", str(path), "--out", str(tmp_path / "results"), "--no-progress", "--no-report"]) == 0
    (run_dir,) = [p for p in (tmp_path / "results" / "t").iterdir() if p.is_dir()]
    record = RunRecord(run_dir)
    losses = [r["train_loss"] for r in record.metrics() if "train_loss" in r]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    metrics = record.summary["metrics"]
    assert math.isfinite(metrics["heldout_loss"])
    weights = load_file(str(run_dir / "checkpoint" / "model.safetensors"))
    assert not any("position_embeddings" in k for k in weights), "no position table, no rotation tables saved"
    assert metrics["parameters"] == sum(v.numel() for k, v in weights.items())
    config, model, _, _ = load_pretrained(run_dir)
    assert config.model.positions == "rope" and model.roberta.rotary is not None
