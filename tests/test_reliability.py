"""Crash safety: exact resume after SIGKILL, corrupt checkpoints, divergence, out-of-memory halving,
full disks, concurrent suites, shards, torchrun data parallelism, incompatible results."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_suite

from harness.checkpoint import Checkpointer, verify
from harness.cli import main, shard_runs
from harness.records import RunRecord
from harness.suite import load_suite

STEPS = 30


def resume_suite(**changes) -> dict:
    suite = tiny_suite(arms={"dynamic": {}}, **changes)
    suite["base"]["train"].update({"steps": STEPS, "log_every": 1, "eval_every": 10})
    return suite


def write(path: Path, suite: dict) -> Path:
    path.write_text(yaml.safe_dump(suite))
    return path


def harness_command(suite_path: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "harness", "run", str(suite_path), "--out", str(out), "--no-progress",
            "--no-report", "--checkpoint-every", "4", *extra]  # fmt: skip


def only_run(out: Path) -> RunRecord:
    (directory,) = [p for p in (out / "t").iterdir() if p.is_dir()]
    return RunRecord(directory)


def train_rows(record: RunRecord) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in record.metrics() if "train_loss" in r]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    path = write(root / "s.yaml", resume_suite())
    done = subprocess.run(harness_command(path, root / "r"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return only_run(root / "r")


def kill_at_step(path: Path, out: Path, step: int) -> None:
    """Start a run and SIGKILL it once its metrics show `step` (a point between two checkpoints)."""
    process = subprocess.Popen(harness_command(path, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            metrics = list(out.glob("t/*/metrics.jsonl"))
            if metrics and any(f'"step": {step},' in line for line in metrics[0].read_text().splitlines()):
                break
            if process.poll() is not None:
                pytest.fail("the run ended before the kill point")
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize("kill_step", [6, 17])
def test_sigkill_and_resume_is_bit_identical(tmp_path, uninterrupted, kill_step):
    path = write(tmp_path / "s.yaml", resume_suite())
    out = tmp_path / "r"
    kill_at_step(path, out, kill_step)
    record = only_run(out)
    assert record.status["state"] == "running"
    assert list((record.dir / "checkpoints").glob("step-*")), "checkpoints were written before the kill"
    done = subprocess.run(harness_command(path, out), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "resuming from step-" in done.stderr
    assert record.is_done()
    assert record.summary["metrics"] == uninterrupted.summary["metrics"]
    assert train_rows(record) == train_rows(uninterrupted)
    assert not (record.dir / "checkpoints").exists(), "training state is dropped once the run is done"


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, uninterrupted):
    path = write(tmp_path / "s.yaml", resume_suite())
    out = tmp_path / "r"
    kill_at_step(path, out, 14)
    checkpoints = only_run(out).dir / "checkpoints"
    newest = sorted(checkpoints.glob("step-*"))[-1]
    tensors = newest / "tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-100])  # a write cut short
    (checkpoints / ".tmp-step-000000016-999").mkdir()  # debris of a write interrupted mid-way
    with (only_run(out).dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 15, "tok')  # the line the kill cut short
    assert "bytes" in verify(newest)
    done = subprocess.run(harness_command(path, out), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"checkpoint {newest.name} is unusable" in done.stderr and "falling back" in done.stderr
    assert only_run(out).summary["metrics"] == uninterrupted.summary["metrics"]


def _disk_full() -> Exception:
    return OSError(errno.ENOSPC, "No space left on device")


def _writer_error() -> Exception:
    from safetensors import SafetensorError

    return SafetensorError("File too large")  # what the safetensors writer raises on a short write


@pytest.mark.parametrize("failure", [_disk_full, _writer_error])
def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, capsys, failure):
    import harness.checkpoint as checkpoint_module

    real_save = checkpoint_module.save_file
    calls = {"n": 0}

    def save_until_the_disk_fills(tensors, filename):
        calls["n"] += 1
        if calls["n"] == 2:
            real_save(tensors, filename)  # half the file reaches the disk, then it is full
            with open(filename, "r+b") as f:
                f.truncate(100)
            raise failure()
        real_save(tensors, filename)

    monkeypatch.setattr(checkpoint_module, "save_file", save_until_the_disk_fills)
    path = write(tmp_path / "s.yaml", resume_suite())
    args = ["run", str(path), "--out", str(tmp_path / "r"), "--no-progress", "--no-report", "--checkpoint-every", "4"]
    kept: list[list[str]] = []
    real_prune = Checkpointer._prune

    def watch(self):
        real_prune(self)
        kept.append(sorted(p.name for p in self.directory.glob("step-*")))

    monkeypatch.setattr(Checkpointer, "_prune", watch)
    assert main(args) == 0
    assert "checkpoint at step 8 not written (" in capsys.readouterr().err
    # after the failed write at step 8 the checkpoint of step 4 was still there, whole
    assert kept[0] == ["step-000000004"] and kept[1] == ["step-000000004", "step-000000012"]
    assert only_run(tmp_path / "r").is_done()


def test_nan_marks_the_run_diverged_and_the_next_run_trains(tmp_path, monkeypatch, capsys):
    import harness.runner

    real_train = harness.runner.train
    calls = {"n": 0}

    def train_with_a_nan_at_step_5(model, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            forward = model.forward
            steps = {"n": 0}

            def poisoned(*a, **k):
                out = forward(*a, **k)
                steps["n"] += model.training
                if model.training and steps["n"] >= 5:
                    out.mlm_loss_sum = out.mlm_loss_sum * float("nan")
                return out

            model.forward = poisoned
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(harness.runner, "train", train_with_a_nan_at_step_5)
    suite = resume_suite()
    suite["base"]["train"]["micro_batch_size"] = 64  # one forward per step: the 5th forward is step 5
    suite["arms"] = {"first": {}, "second": {"train": {"lr": 1e-3}}}
    path = write(tmp_path / "s.yaml", suite)
    args = ["run", str(path), "--out", str(tmp_path / "r"), "--no-progress", "--no-report", "--jobs", "1"]
    assert main(args) == 0  # --jobs 1: the patched trainer is this process's
    states = {}
    for directory in (tmp_path / "r" / "t").iterdir():
        if directory.is_dir():
            record = RunRecord(directory)
            states[record.config["arm"]] = record.status
    assert states["first"]["state"] == "diverged"
    assert states["first"]["divergence"]["step"] == 5 and states["first"]["divergence"]["last_good_step"] == 4
    assert states["second"]["state"] == "done"
    assert "1 run(s) diverged" in capsys.readouterr().err


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_step(tmp_path, monkeypatch, capsys):
    from harness.model import PretrainingModel

    def run_once(out: Path) -> RunRecord:
        suite = resume_suite()
        suite["base"]["model"].update({"dropout": 0.0, "attention_dropout": 0.0})
        suite["base"]["train"].update({"steps": 6, "micro_batch_size": 16})
        path = write(tmp_path / "s.yaml", suite)
        assert main(["run", str(path), "--out", str(out), "--no-progress", "--no-report"]) == 0
        return only_run(out)

    reference = run_once(tmp_path / "plain")
    real_forward = PretrainingModel.forward

    def limited(self, input_ids, *args, **kwargs):
        if self.training and input_ids.shape[0] > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(PretrainingModel, "forward", limited)
    halved = run_once(tmp_path / "oom")
    events = [r for r in halved.metrics() if r.get("event") == "out_of_memory"]
    assert [e["micro_batch_rows"] for e in events] == [8, 4]
    assert "out of memory at step 1" in capsys.readouterr().err
    ref, got = reference.summary["metrics"], halved.summary["metrics"]
    assert got["heldout_loss"] == pytest.approx(ref["heldout_loss"], rel=1e-5)


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_records_checkpoints_and_cache_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    """Temp-file writers (mkstemp, mkdtemp, safetensors) leave 0o600 / 0o700: a team sharing a results
    directory could not read it. Every file and directory a run writes has open()'s mode instead."""
    import harness.records

    suite = tiny_suite(arms={"dynamic": {}})
    suite["base"]["train"].update({"steps": 2, "log_every": 1})
    path = write(tmp_path / "s.yaml", suite)
    previous = os.umask(umask)
    harness.records._umask.cache_clear()
    try:
        assert main(["run", str(path), "--out", str(tmp_path / "r"), "--no-progress", "--no-report"]) == 0
        model = torch.nn.Linear(2, 2)  # a finished run keeps no training checkpoints: one written here
        optimizer = torch.optim.AdamW(model.parameters())
        assert Checkpointer(tmp_path / "r" / "checkpoints", every_steps=1).save(1, model, optimizer, {}) is not None
    finally:
        os.umask(previous)
        harness.records._umask.cache_clear()
    written = list((tmp_path / "r").rglob("*"))
    names = {p.name for p in written}
    assert {"config.json", "status.json", "summary.json", "suite.json", "model.safetensors", "tensors.safetensors",
            "state.json", "tokens.npy"} <= names  # fmt: skip
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in written}
    wrong = {p: mode for p, mode in modes.items() if mode != oct(dir_mode if (tmp_path / p).is_dir() else file_mode)}
    assert not wrong


def test_two_concurrent_runs_of_one_suite_train_each_run_once(tmp_path):
    suite = resume_suite(seeds=[0, 1])
    suite["arms"] = {"a": {}, "b": {"train": {"lr": 1e-3}}}
    path = write(tmp_path / "s.yaml", suite)
    command = [sys.executable, "-m", "harness", "run", str(path), "--out", str(tmp_path / "r"), "--no-progress",
               "--no-report"]  # fmt: skip
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    printed = "".join(out for out, _ in outputs)
    assert printed.count(": training on ") == 4, printed
    for directory in (tmp_path / "r" / "t").iterdir():
        if directory.is_dir():
            record = RunRecord(directory)
            assert record.is_done()
            steps = [r["step"] for r in record.metrics() if "train_loss" in r]
            assert steps == list(range(1, STEPS + 1)), "one training, not two interleaved"


def test_shards_cover_every_run_exactly_once(write_suite):
    suite = load_suite(write_suite(tiny_suite(seeds=[0, 1, 2, 3, 4])))
    for count in (1, 2, 3, 7):
        shards = [shard_runs(suite.runs, (index, count)) for index in range(1, count + 1)]
        ids = [run.run_id for shard in shards for run in shard]
        assert sorted(ids) == sorted(run.run_id for run in suite.runs)
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


SLURM_ARRAY = Path(__file__).resolve().parents[1] / "ablations" / "slurm" / "suite-array.sh"


def test_the_slurm_array_script_activates_the_venv_and_passes_out(tmp_path):
    """The script as sbatch runs it, from a submit directory with a stand-in .venv whose `harness` notes
    its arguments; `--dry-run` (passed through) lists the shard's runs and trains nothing."""
    assert subprocess.run(["bash", "-n", str(SLURM_ARRAY)]).returncode == 0
    submit = tmp_path / "repo"
    (submit / "ablations").mkdir(parents=True)
    write(submit / "ablations" / "s.yaml", tiny_suite())  # two arms, one seed: one run per shard of 2
    for venv in (submit / ".venv", tmp_path / "elsewhere"):
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "activate").write_text(f'export VIRTUAL_ENV="{venv}"\nexport PATH="{venv}/bin:$PATH"\n')
        shim = venv / "bin" / "harness"
        shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{venv}/args"\nexec "{sys.executable}" -m harness "$@"\n')
        shim.chmod(0o755)

    def sbatch(task: int, **variables: str) -> list[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("VENV", "OUT")}
        env.update(SLURM_SUBMIT_DIR=str(submit), SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_TASK_COUNT="2")
        command = ["bash", str(SLURM_ARRAY), "ablations/s.yaml", "--dry-run"]
        done = subprocess.run(command, cwd=tmp_path, env={**env, **variables}, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert f"shard {task}/2: 1 of them" in done.stdout and done.stdout.count("to run") == 1
        return (Path(variables.get("VENV", submit / ".venv")) / "args").read_text().split()

    # the defaults: the submit directory's .venv, and results/ there
    assert sbatch(1) == ["run", "ablations/s.yaml", "--out", "results", "--shard", "1/2", "--no-report",
                         "--no-progress", "--dry-run"]  # fmt: skip
    args = sbatch(2, VENV=str(tmp_path / "elsewhere"), OUT=str(tmp_path / "shared-results"))
    assert args[args.index("--out") + 1] == str(tmp_path / "shared-results") and "2/2" in args
    assert not (submit / "results").exists() and not (tmp_path / "shared-results").exists()


def test_bad_shards_and_incompatible_results_are_refused(write_suite, tmp_path, capsys):
    path = write_suite(tiny_suite())
    assert main(["run", str(path), "--shard", "3/2", "--out", str(tmp_path / "r")]) == 2
    assert "expected 1 <= I <= N" in capsys.readouterr().err
    run = load_suite(path).runs[0]
    old = tmp_path / "r" / "t" / run.run_id
    old.mkdir(parents=True)
    (old / "config.json").write_text(json.dumps({"schema_version": 0, "suite": "t"}))
    assert main(["run", str(path), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "written by record schema 0; this version writes 1" in capsys.readouterr().err
    assert json.loads((old / "config.json").read_text())["schema_version"] == 0, "left untouched"


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun")
def test_torchrun_two_gloo_processes_match_one_process(tmp_path):
    suite = resume_suite()
    suite["base"]["model"].update({"dropout": 0.0, "attention_dropout": 0.0})  # no per-rank randomness
    suite["base"]["train"].update({"steps": 12, "micro_batch_size": 4})
    path = write(tmp_path / "s.yaml", suite)
    single = subprocess.run(harness_command(path, tmp_path / "one"), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "harness", "run",
               str(path), "--out", str(tmp_path / "two"), "--no-progress", "--no-report"]  # fmt: skip
    double = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert double.returncode == 0, double.stdout + double.stderr
    one, two = only_run(tmp_path / "one"), only_run(tmp_path / "two")
    assert two.summary["environment"]["world_size"] == 2
    assert two.summary["budget"] == one.summary["budget"], "same global batch, same data"
    # stated tolerance: the gradient is summed in another order across ranks (float32)
    for name in ("heldout_loss", "train_loss"):
        assert two.summary["metrics"][name] == pytest.approx(one.summary["metrics"][name], rel=1e-4)
    assert [r["train_loss"] for r in train_rows(two)] == pytest.approx(
        [r["train_loss"] for r in train_rows(one)], rel=1e-4
    )


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
