"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is a directory `checkpoints/step-<N>/` holding `tensors.safetensors` (model weights,
optimizer moments, RNG states: tensors only, so loading never unpickles anything) and `state.json`
(step, data position, counters, optimizer hyperparameters, the tensors file's size and SHA-256).
It is written into a temporary directory and renamed into place, so a crash or a full disk leaves
the previous checkpoint as it was; a checkpoint whose tensors do not match their recorded size and
hash is skipped in favour of the one before it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from harness.model import plain_state_dict
from harness.records import plain_mode

CHECKPOINT_FORMAT = 2  # 2: RNG states per rank
TENSORS = "tensors.safetensors"
STATE = "state.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{index}"] = state
    version, python_state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    plain = {
        "python": [version, list(python_state), gauss],
        "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)],
    }
    return tensors, plain


def set_rng_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng/cuda/"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    version, python_state, gauss = plain["python"]
    random.setstate((version, tuple(python_state), gauss))
    kind, keys, position, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))


@dataclass
class Found:
    path: Path
    step: int
    state: dict[str, Any]


class Checkpointer:
    """Saves every `every_steps` optimizer steps and at the end, keeps the newest `keep`."""

    def __init__(self, directory: Path, every_steps: int, keep: int = 2, log=None):
        self.directory = Path(directory)
        self.every_steps = every_steps
        self.keep = max(1, keep)
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        # latest()'s answer until the next save: the runner vets the checkpoint, then the trainer resumes
        # from it, and each check hashes the whole tensor file
        self._latest: tuple[Found | None] | None = None

    def due(self, step: int, total_steps: int) -> bool:
        return step == total_steps or (self.every_steps > 0 and step % self.every_steps == 0)

    def save(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: dict[str, Any],
        rng_by_rank: list[tuple[dict[str, torch.Tensor], dict[str, Any]]] | None = None,
    ) -> Path | None:
        """Write a checkpoint; on an error (a full disk) keep the previous one and return None.
        Under torchrun, `rng_by_rank` holds every rank's RNG states (dropout differs per rank)."""
        self._latest = None
        self.directory.mkdir(parents=True, exist_ok=True)
        work = self.directory / f".tmp-step-{step:09d}-{os.getpid()}"
        final = self.directory / f"step-{step:09d}"
        try:
            tensors = {f"model/{k}": v for k, v in plain_state_dict(model).items()}
            optim = optimizer.state_dict()
            optim_plain: dict[str, Any] = {"param_groups": optim["param_groups"], "state": {}}
            for param_id, values in optim["state"].items():
                for name, value in values.items():
                    if torch.is_tensor(value):
                        tensors[f"optim/{param_id}/{name}"] = value.detach().cpu().contiguous()
                    else:
                        optim_plain["state"].setdefault(str(param_id), {})[name] = value
            rng_by_rank = rng_by_rank or [rng_state()]
            rng_plain: dict[str, Any] = {}
            for rank, (rank_tensors, rank_plain) in enumerate(rng_by_rank):
                tensors.update({f"rank{rank}/{k}": v for k, v in rank_tensors.items()})
                rng_plain[str(rank)] = rank_plain
            if work.exists():
                shutil.rmtree(work)
            work.mkdir()
            save_file(tensors, str(work / TENSORS))
            plain_mode(work / TENSORS)
            payload = {
                "format": CHECKPOINT_FORMAT,
                "step": step,
                "tensors_bytes": (work / TENSORS).stat().st_size,
                "tensors_sha256": _sha256(work / TENSORS),
                "state": state,
                "optimizer": optim_plain,
                "rng": rng_plain,
            }
            with (work / STATE).open("w") as f:
                json.dump(payload, f)
                f.flush()
                os.fsync(f.fileno())
            with (work / TENSORS).open("rb") as f:
                os.fsync(f.fileno())
            if final.exists():  # an older attempt's checkpoint of the same step
                shutil.rmtree(final)
            os.rename(work, final)
            _fsync_dir(self.directory)
        except Exception as err:  # OSError from the filesystem, SafetensorError from its writer (a full disk)
            shutil.rmtree(work, ignore_errors=True)
            self.log(f"  checkpoint at step {step} not written ({type(err).__name__}: {err}); the previous one is kept")
            return None
        self._prune()
        return final

    def _prune(self) -> None:
        done = sorted(self.directory.glob("step-*"))
        for old in done[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def latest(self) -> Found | None:
        """The newest checkpoint that verifies; corrupt ones are named and skipped, leftovers of an
        interrupted write removed."""
        if self._latest is None:
            self._latest = (self._find_latest(),)
        return self._latest[0]

    def _find_latest(self) -> Found | None:
        if not self.directory.is_dir():
            return None
        for leftover in self.directory.glob(".tmp-step-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for path in sorted(self.directory.glob("step-*"), reverse=True):
            problem = verify(path)
            if problem is None:
                payload = json.loads((path / STATE).read_text())
                return Found(path, int(payload["step"]), payload)
            self.log(f"  checkpoint {path.name} is unusable ({problem}); falling back to the one before it")
        return None

    def restore(
        self, found: Found, model: nn.Module, optimizer: torch.optim.Optimizer, rank: int = 0
    ) -> dict[str, Any]:
        """Load weights, optimizer and this rank's RNG states; returns the trainer's own state (step,
        data position...)."""
        tensors = load_file(str(found.path / TENSORS))
        model.load_state_dict({k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")})
        plain = found.state["optimizer"]
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optim/"):
                _, param_id, name = key.split("/", 2)
                state.setdefault(int(param_id), {})[name] = value
        for param_id, values in plain["state"].items():
            state.setdefault(int(param_id), {}).update(values)
        optimizer.load_state_dict({"state": state, "param_groups": plain["param_groups"]})
        prefix = f"rank{rank}/"
        if str(rank) not in found.state["rng"]:
            raise ValueError(f"{found.path.name} holds no RNG state for rank {rank}: saved with another world size")
        set_rng_state(
            {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}, found.state["rng"][str(rank)]
        )
        return found.state["state"]


def verify(path: Path) -> str | None:
    """None when the checkpoint is whole; otherwise what is wrong with it."""
    try:
        payload = json.loads((path / STATE).read_text())
    except FileNotFoundError:
        return f"no {STATE}"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{STATE} is not valid JSON"
    if payload.get("format") != CHECKPOINT_FORMAT:
        return f"written in checkpoint format {payload.get('format')}, this version reads {CHECKPOINT_FORMAT}"
    tensors = path / TENSORS
    if not tensors.is_file():
        return f"no {TENSORS}"
    size = tensors.stat().st_size
    if size != payload.get("tensors_bytes"):
        return f"{TENSORS} has {size} bytes, {payload.get('tensors_bytes')} were written"
    if _sha256(tensors) != payload.get("tensors_sha256"):
        return f"{TENSORS} does not match its SHA-256"
    return None
