"""Trainer pieces without a GPU: schedule, accumulation, and the end-to-end path through the CLI."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_suite
from safetensors.torch import load_file
from test_data import SPECIALS, corpus_of

from harness.cli import main
from harness.config import EvalConfig, MaskingConfig, ModelConfig, TrainConfig
from harness.data.batches import PretrainingBatches
from harness.data.formats import FORMATS
from harness.data.tokenizer import TokenizedCorpus
from harness.evaluate import fixed_mask_batches, heldout_mlm
from harness.model import PretrainingModel
from harness.records import RunRecord
from harness.train import lr_at, train


def test_lr_warms_up_linearly_then_decays_to_zero():
    lrs = [lr_at(s, 100, 10, 1e-3, "linear") for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[10] == pytest.approx(1e-3) and lrs[55] == pytest.approx(5e-4)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lr_at(100, 100, 10, 1e-3, "linear") == 0.0
    assert lr_at(55, 100, 10, 1e-3, "cosine") == pytest.approx(5e-4)
    assert lr_at(80, 100, 10, 1e-3, "constant") == 1e-3


def _sequences():
    rng = np.random.default_rng(0)
    documents = [[rng.integers(10, 60, size=rng.integers(4, 12)).tolist() for _ in range(5)] for _ in range(30)]
    corpus: TokenizedCorpus = corpus_of(documents)
    return FORMATS["full_sentences"](corpus, SPECIALS, 32, 0, 0.0)


def _train_once(micro_batch_size: int) -> PretrainingModel:
    torch.manual_seed(0)
    model = PretrainingModel(
        ModelConfig(layers=1, hidden=32, heads=2, ffn=64, max_len=32, dropout=0.0, attention_dropout=0.0),
        64,
        SPECIALS.pad,
        nsp=False,
    )
    batches = PretrainingBatches(_sequences(), SPECIALS, 64, MaskingConfig(), 0, micro_batch_size, batch_size=16)
    config = TrainConfig(batch_size=16, steps=3, micro_batch_size=micro_batch_size, warmup_fraction=0.0)
    train(model, batches, config, 3, torch.device("cpu"), lambda row: None, progress=False)
    return model


def tiny_training(compile_model: bool) -> tuple[list[float], list[dict]]:
    """Training losses of 3 steps of a 1-layer model, and the non-metric events the trainer logged."""
    torch.manual_seed(0)
    model = PretrainingModel(ModelConfig(layers=1, hidden=32, heads=2, ffn=64, max_len=32), 64, SPECIALS.pad, False)
    batches = PretrainingBatches(_sequences(), SPECIALS, 64, MaskingConfig(), 0, 8, batch_size=16)
    config = TrainConfig(batch_size=16, steps=3, micro_batch_size=8, log_every=1)
    rows: list[dict] = []
    train(model, batches, config, 3, torch.device("cpu"), rows.append, progress=False, compile_model=compile_model)
    return [r["train_loss"] for r in rows if "train_loss" in r], [r for r in rows if "event" in r]


def test_nsp_head_reads_a_pooled_first_token_as_bert_does():
    model = PretrainingModel(ModelConfig(layers=1, hidden=32, heads=2, ffn=64, max_len=32), 64, SPECIALS.pad, nsp=True)
    names = {name for name, _ in model.named_parameters()}
    assert {"pooler.weight", "pooler.bias", "nsp_head.weight"} <= names
    assert not any(
        n.startswith("pooler") for n, _ in PretrainingModel(model.roberta.config, 64, 1, nsp=False).named_parameters()
    )


def test_gradient_accumulation_equals_one_large_batch():
    whole, accumulated = _train_once(16), _train_once(3)
    for (name, a), (_, b) in zip(whole.state_dict().items(), accumulated.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_heldout_evaluation_is_deterministic_and_independent_of_the_arm_mask():
    sequences = _sequences()
    torch.manual_seed(0)
    model = PretrainingModel(ModelConfig(layers=1, hidden=32, heads=2, ffn=64, max_len=32), 64, SPECIALS.pad, False)
    batches = fixed_mask_batches(sequences, SPECIALS, 64, EvalConfig(batch_size=7))
    again = fixed_mask_batches(sequences, SPECIALS, 64, EvalConfig(batch_size=7))
    assert all(torch.equal(a.mlm_labels, b.mlm_labels) for a, b in zip(batches, again))
    model.train()  # evaluation must switch dropout off by itself
    first = heldout_mlm(model, batches, torch.device("cpu"), "fp32")
    second = heldout_mlm(model, batches, torch.device("cpu"), "fp32")
    assert first == second
    assert model.training, "evaluation restores the training mode"


# ------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def finished_suite(tmp_path_factory):
    """One tiny suite run through the CLI: 2 arms, 1 seed, a downstream task."""
    root = tmp_path_factory.mktemp("e2e")
    suite = tiny_suite(metrics=["heldout_ppl", "synthetic-topic.accuracy"])
    suite["base"]["train"].update({"steps": 40, "eval_every": 20})
    suite["base"]["eval"].update(
        {"tasks": ["synthetic-topic"], "finetune": {"epochs": 1, "max_train_examples": 64, "max_eval_examples": 32}}
    )
    path = root / "suite.yaml"
    path.write_text(json.dumps(suite))
    out = root / "results"
    code = main(["run", str(path), "--out", str(out), "--no-progress"])
    return path, out, code


def test_end_to_end_records_every_run_and_loss_falls(finished_suite, capsys):
    _, out, code = finished_suite
    assert code == 0
    records = [RunRecord(p) for p in sorted((out / "t").iterdir()) if p.is_dir()]
    assert len(records) == 2
    for record in records:
        assert record.status["state"] == "done"
        config = record.config
        assert config["schema_version"] == 1 and config["config"]["train"]["steps"] == 40
        summary = record.summary
        assert summary["run_id"] == record.dir.name
        assert summary["budget"]["steps"] == 40
        assert abs(summary["budget"]["tokens"] / (40 * 1024) - 1) < 0.05, "steps average tokens_per_step"
        assert 0.0 <= summary["metrics"]["synthetic-topic.accuracy"] <= 1.0
        train_losses = [r["train_loss"] for r in record.metrics() if "train_loss" in r]
        assert len(train_losses) == 20
        assert np.mean(train_losses[-3:]) < np.mean(train_losses[:3]) - 0.5, train_losses
        heldout = [r for r in record.metrics() if "heldout_loss" in r]
        assert [r["step"] for r in heldout] == [20, 40]
        assert (record.dir / "checkpoint" / "model.safetensors").is_file()


def test_second_run_trains_nothing(finished_suite, capsys):
    path, out, _ = finished_suite
    before = {p: p.stat().st_mtime_ns for p in out.glob("t/*/summary.json")}
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("already done, skipped") == 2
    assert "nothing trained" in printed
    assert {p: p.stat().st_mtime_ns for p in out.glob("t/*/summary.json")} == before
    assert "dynamic" in printed and "1/1" in printed  # the table, one row per arm


def test_run_ends_with_the_suite_report(finished_suite):
    path, out, _ = finished_suite
    report = out / "reports" / "t"  # inside the results root
    summary = pd.read_csv(report / "summary.csv")
    assert set(summary["arm"]) == {"dynamic", "static"}
    assert set(summary.query("metric == 'heldout_ppl'")["n"]) == {1}
    assert "static vs dynamic" in (report / "report.md").read_text()
    assert (report / "figures" / "curves.png").is_file()
    manifest = json.loads((out / "t" / "suite.json").read_text())
    assert list(manifest["spec"]["arms"]) == ["dynamic", "static"]


def test_perplexity_is_identical_for_two_calls_on_a_checkpoint(finished_suite):
    from harness.config import RunConfig
    from harness.data.cache import StageCache
    from harness.data.pipeline import prepare_data

    _, out, _ = finished_suite
    record = RunRecord(next(p for p in (out / "t").iterdir() if p.is_dir()))
    config = RunConfig.model_validate(record.config["config"])
    data = prepare_data(config.data, StageCache(out / "_cache"), config.eval.heldout_sequences)
    model = PretrainingModel(config.model, data.vocab_size, data.specials.pad, config.data.nsp)
    model.load_state_dict(load_file(str(record.dir / "checkpoint" / "model.safetensors")))
    batches = fixed_mask_batches(data.heldout, data.specials, data.vocab_size, config.eval)
    first = heldout_mlm(model, batches, torch.device("cpu"), "fp32")
    second = heldout_mlm(copy.deepcopy(model), batches, torch.device("cpu"), "fp32")
    assert first == second
    assert first["heldout_loss"] == pytest.approx(record.summary["metrics"]["heldout_loss"], rel=1e-6)


def test_ls_lists_runs_with_status_and_headline(finished_suite, capsys):
    _, out, _ = finished_suite
    assert main(["ls", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count(" done ") == 2 and "heldout_ppl=" in printed


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_failing_run_is_recorded_and_the_suite_goes_on(tmp_path, jobs):
    suite = tiny_suite()
    suite["arms"]["offline"] = {"data": {"corpus": {"source": "hub", "name": "no/such-dataset"}}}
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps(suite))
    # a subprocess: `datasets` reads the offline switch when first imported
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    command = [sys.executable, "-m", "harness", "run", str(path), "--out", str(tmp_path / "r"), "--no-progress",
               "--jobs", jobs]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    states = {}
    for directory in (tmp_path / "r" / "t").iterdir():
        if not directory.is_dir():
            continue  # suite.json
        record = RunRecord(directory)
        states[record.config["arm"]] = record.status
    assert states["dynamic"]["state"] == states["static"]["state"] == "done"
    assert states["offline"]["state"] == "failed"
    assert "could not load hub dataset 'no/such-dataset'" in states["offline"]["error"]
    assert "offline seed=0" in done.stderr and ": FAILED: DataSourceError: could not load" in done.stderr
    assert "1 run(s) failed" in done.stderr


def test_every_run_is_pending_before_the_first_one_trains(write_suite, tmp_path, monkeypatch, capsys):
    path = write_suite(tiny_suite(seeds=[0, 1]))
    out = tmp_path / "r"
    states_seen = []

    def stop_at_once(run, run_dir, *args, **kwargs):
        states_seen.append(sorted(RunRecord(p).status["state"] for p in (out / "t").iterdir() if p.is_dir()))
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr("harness.runner.execute_run", stop_at_once)  # in this process: --jobs 1
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--jobs", "1"]) == 1
    assert states_seen[0] == ["pending"] * 4
    assert main(["ls", str(out)]) == 0
    assert capsys.readouterr().out.count(" pending ") == 4


def test_dry_run_trains_nothing(write_suite, tmp_path, capsys):
    path = write_suite(tiny_suite())
    assert main(["run", str(path), "--out", str(tmp_path / "r"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "to run" in printed and '"tokens_per_step": 1024' in printed
    assert not (tmp_path / "r").exists()


def test_shipped_quickstart_dry_run(capsys):
    quickstart = Path(__file__).resolve().parents[1] / "ablations" / "quickstart.yaml"
    assert main(["run", str(quickstart), "--dry-run", "--out", "/nonexistent-dir-for-dry-run"]) == 0
    assert "quickstart" in capsys.readouterr().out
