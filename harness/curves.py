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

from harness.records import is_json_number, kind_of, read_jsonl, read_record

ACCURACY_MARKS = (0.15, 0.20, 0.25, 0.30)
CURVE_KEYS = ("step", "tokens", "train_s", "heldout_loss", "heldout_acc", "heldout_bpb")
FINAL_KEYS = ("heldout_loss", "heldout_acc", "heldout_bpb")


class MalformedRun(ValueError):
    """A run record whose files hold the wrong shape of JSON: named by file, skipped, reported."""


def _object(document: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = document.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedRun(f"{where}: {key!r} is {kind_of(value)} where a JSON object is expected")
    return value


def _record(run_dir: Path, name: str) -> dict[str, Any] | None:
    document, problem = read_record(run_dir / name)
    if problem:
        raise MalformedRun(f"{name}: {problem}")
    return document


def _points(run_dir: Path) -> list[dict[str, Any]]:
    """The held-out evaluations of metrics.jsonl, in order. A line a crash cut short is skipped (the run
    resumed past it); a row whose curve values are not numbers is a damaged record, not a point to plot."""
    points = []
    for row in read_jsonl(run_dir / "metrics.jsonl"):
        if "heldout_loss" not in row:
            continue
        point = {k: row[k] for k in CURVE_KEYS if k in row}
        wrong = [k for k, v in point.items() if not (is_json_number(v) or v is None)]
        if wrong or not is_json_number(point.get("tokens")):
            what = f"{', '.join(wrong)} not a number" if wrong else "no tokens"
            raise MalformedRun(f"metrics.jsonl: a held-out row at step {row.get('step')!r}: {what}")
        points.append(point)
    return points


def run_curve(run_dir: Path) -> dict[str, Any] | None:
    """One finished run's held-out curve and its config's distinguishing facts; None if unfinished.
    Raises MalformedRun, naming the file, when a record holds the wrong shape of JSON."""
    header, summary = _record(run_dir, "config.json"), _record(run_dir, "summary.json")
    if not header or not summary:
        return None
    points = _points(run_dir)
    config = _object(header, "config", "config.json")
    sections = ("model", "data", "masking", "train")
    model, data, masking, train = (_object(config, k, "config.json: config") for k in sections)
    metrics = _object(summary, "metrics", "summary.json")
    references = _object(summary, "references", "summary.json")
    first = {}
    for mark in ACCURACY_MARKS:
        passed = [p for p in points if (p.get("heldout_acc") or 0) >= mark]
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
        "threads": _object(summary, "environment", "summary.json").get("threads"),
        "final": {k: v if is_json_number(v := metrics.get(k)) else None for k in FINAL_KEYS},
        "unigram": {
            k.removeprefix("heldout_unigram_"): v
            for k, v in references.items()
            if k.startswith("heldout_unigram_") and is_json_number(v)
        },
        "first_reached_accuracy": first,
        "curve": points,
    }


def collect_curves(directories: list[Path], problems: list[str] | None = None) -> dict[str, Any]:
    """The curves of every finished run under the directories; a run whose record is damaged is left
    out and, with `problems`, named there."""
    runs = []
    for directory in directories:
        for config_path in sorted(Path(directory).glob("*/config.json")):
            try:
                curve = run_curve(config_path.parent)
            except MalformedRun as err:
                if problems is not None:
                    problems.append(f"{config_path.parent}: {err} (left out)")
                continue
            if curve is not None:
                runs.append(curve)
    return {
        "what": "held-out MLM loss / accuracy / bits per byte against tokens and seconds of training "
        "(evaluations excluded), per finished run",
        "runs": runs,
    }


def _or_nan(value: Any) -> float:
    return math.nan if value is None else value


def describe(document: dict[str, Any]) -> str:
    lines = [f"{'arm':<16} {'seed':>4} {'final acc':>9} {'bpb':>6} {'unigram acc':>11}  first ≥30% (s)"]
    for run in document["runs"]:
        final, unigram = run["final"], run["unigram"]
        reached = run["first_reached_accuracy"].get("0.30")
        when = f"{reached['train_s']:.0f}" if reached and reached["train_s"] is not None else "never"
        lines.append(
            f"{run['arm']!s:<16} {run['seed']!s:>4} {_or_nan(final.get('heldout_acc')):>9.3f} "
            f"{_or_nan(final.get('heldout_bpb')):>6.3f} {unigram.get('acc', math.nan):>11.3f}  {when}"
        )
    return "\n".join(lines)


def write_curves(directories: list[Path], out: Path, problems: list[str] | None = None) -> dict[str, Any]:
    from harness.records import atomic_write_json

    document = collect_curves(directories, problems)
    atomic_write_json(Path(out), json.loads(json.dumps(document)))
    return document
