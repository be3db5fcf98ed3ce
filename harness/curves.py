"""Held-out learning curves of finished runs as one JSON document: what a recipe comparison commits
(`harness curves results/cpu-recipe --out results/bench/cpu-recipe.json`).

Per run: every held-out evaluation (tokens seen, seconds of training so far with evaluations left
out, loss, accuracy, bits per byte), the run's unigram floor, and when it first passed each
accuracy mark. Read from the run records only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from harness.records import read_json, read_jsonl

ACCURACY_MARKS = (0.15, 0.20, 0.25, 0.30)
CURVE_KEYS = ("step", "tokens", "train_s", "heldout_loss", "heldout_acc", "heldout_bpb")


def run_curve(run_dir: Path) -> dict[str, Any] | None:
    """One finished run's held-out curve and its config's distinguishing facts; None if unfinished."""
    header, summary = read_json(run_dir / "config.json"), read_json(run_dir / "summary.json")
    if not header or not summary:
        return None
    points = [{k: row[k] for k in CURVE_KEYS if k in row} for row in read_jsonl(run_dir / "metrics.jsonl")
              if "heldout_loss" in row]  # fmt: skip
    config = header.get("config", {})
    model, data, masking, train = (config.get(k, {}) for k in ("model", "data", "masking", "train"))
    first = {}
    for mark in ACCURACY_MARKS:
        passed = [p for p in points if p.get("heldout_acc", 0) >= mark]
        first[f"{mark:.2f}"] = {"train_s": passed[0].get("train_s"), "tokens": passed[0]["tokens"]} if passed else None
    return {
        "arm": header.get("arm"),
        "seed": header.get("seed"),
        "run_id": header.get("run_id", run_dir.name),
        "recipe": {
            "positions": model.get("positions") or "learned",
            "norm": model.get("norm"),
            "layers": model.get("layers"),
            "hidden": model.get("hidden"),
            "mask_prob": masking.get("mask_prob"),
            "max_seq_len": data.get("max_seq_len"),
            "tokens_per_step": train.get("tokens_per_step"),
            "lr": train.get("lr"),
            "token_budget": train.get("token_budget"),
        },
        "threads": (summary.get("environment") or {}).get("threads"),
        "final": {k: summary.get("metrics", {}).get(k) for k in ("heldout_loss", "heldout_acc", "heldout_bpb")},
        "unigram": {
            k.removeprefix("heldout_unigram_"): v
            for k, v in (summary.get("references") or {}).items()
            if k.startswith("heldout_unigram_")
        },  # fmt: skip
        "first_reached_accuracy": first,
        "curve": points,
    }


def collect_curves(directories: list[Path]) -> dict[str, Any]:
    runs = []
    for directory in directories:
        for config_path in sorted(Path(directory).glob("*/config.json")):
            curve = run_curve(config_path.parent)
            if curve is not None:
                runs.append(curve)
    return {
        "what": "held-out MLM loss / accuracy / bits per byte against tokens and seconds of training "
        "(evaluations excluded), per finished run",
        "runs": runs,
    }


def describe(document: dict[str, Any]) -> str:
    lines = [f"{'arm':<16} {'seed':>4} {'final acc':>9} {'bpb':>6} {'unigram acc':>11}  first ≥30% (s)"]
    for run in document["runs"]:
        final, unigram = run["final"], run["unigram"]
        reached = run["first_reached_accuracy"].get("0.30")
        when = f"{reached['train_s']:.0f}" if reached and reached["train_s"] is not None else "never"
        lines.append(
            f"{run['arm']:<16} {run['seed']:>4} {final.get('heldout_acc') or math.nan:>9.3f} "
            f"{final.get('heldout_bpb') or math.nan:>6.3f} {unigram.get('acc', math.nan):>11.3f}  {when}"
        )
    return "\n".join(lines)


def write_curves(directories: list[Path], out: Path) -> dict[str, Any]:
    from harness.records import atomic_write_json

    document = collect_curves(directories)
    atomic_write_json(Path(out), json.loads(json.dumps(document)))
    return document
