"""Where a run's downstream results live, and which of them a run still lacks.

A run's id says nothing of its downstream tasks (harness/config.py: `run_id_of`), so one pretrained
model is fine-tuned on any number of tasks, under any number of protocols, without pretraining again.
Each task's results are filed under a key: a hash of what decides them besides the model, namely
the task's definition, its fine-tuning protocol (the seeds aside: each seed is kept on its own), its
longest input, the split scored and any files given for it. Where the task's GLUE files lie
(`eval.glue_dir`) or whether they come from the hub is not part of the key: it is the same data.

    predictions/<task>/<key>/task.json         the key and what it was computed from
    predictions/<task>/<key>/labels.npy        the dev labels scored
    predictions/<task>/<key>/seed-<s>.npy      dev predictions of fine-tuning seed s (or seed-<s>.diverged)
    predictions/<task>/<key>/lr_selection.json the learning rate chosen, with finetune.lr_grid

`summary.json` holds, per task, the result of one key (`downstream.<task>.key`): the one evaluated
last. A changed protocol gets a new key, so it is fine-tuned anew, while the predictions of every
earlier key stay on disk and are scored again, not fine-tuned again, if the protocol comes back.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from harness.records import atomic_write_json, read_json

PREDICTIONS = "predictions"
FLAT_FILES = ("labels.npy", "lr_selection.json")  # besides seed-<s>.npy / seed-<s>.diverged


def _without_none(value: Any) -> Any:
    """Unset (None) fields dropped at every depth: a field added later with None meaning "as before"
    leaves every key as it was."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def pair_segment(config: dict[str, Any]) -> int:
    """The segment id of a pair's second text when fine-tuning a model pretrained under `config` (a
    config dump): 1 where pretraining packed two segments (SEGMENT-PAIR, SENTENCE-PAIR: BERT), else 0.
    A model pretrained on one segment (FULL-SENTENCES, DOC-SENTENCES: RoBERTa) never trained segment
    1's embedding, so its pairs are told apart by the separator alone, as RoBERTa fine-tunes them."""
    from harness.config import PAIR_FORMATS

    data = config.get("data") or {}
    return 1 if data.get("format") in PAIR_FORMATS else 0


def task_identity(config: dict[str, Any], task: str) -> dict[str, Any]:
    """What decides `task`'s results for a pretrained model, from a config dump (`RunConfig.model_dump(
    mode="json")`, as config.json holds it): the task's definition (declared in eval.task_defs, else
    built in), the shared fine-tuning protocol with the task's overrides, its seeds aside, the longest
    input, the dev split chosen, eval.task_files, and how pairs are written where that is not the
    segment-1 rule of keys made before `pair_segment` (so those keys stay as they were)."""
    from harness.squad import SPAN_TASKS
    from harness.tasks import TASKS

    evaluation = config.get("eval") or {}
    declared = (evaluation.get("task_defs") or {}).get(task)
    if declared is None and task not in TASKS and task not in SPAN_TASKS:
        raise ValueError(f"unknown task {task!r}: neither built in nor declared in eval.task_defs")
    if task in SPAN_TASKS:  # span extraction: defined in code (harness/squad.py), by its version and metrics
        span = SPAN_TASKS[task]
        definition = {"span_extraction": span.version, "metrics": list(span.metrics)}
    else:
        definition = declared if declared is not None else TASKS[task].definition.model_dump(mode="json")
    override = (evaluation.get("task_overrides") or {}).get(task) or {}
    protocol = {**(evaluation.get("finetune") or {}), **{k: v for k, v in override.items() if v is not None}}
    protocol.pop("seeds", None)
    protocol["max_len"] = protocol.get("max_len") or config["data"]["max_seq_len"]
    return _without_none(
        {
            "task": task,
            "definition": definition,
            "protocol": protocol,
            "dev_split": (evaluation.get("dev_splits") or {}).get(task),
            "files": (evaluation.get("task_files") or {}).get(task),
            "pair_segment": 0
            if _is_pair(task, declared) and pair_segment(config) == 0 and segments(config) > 1
            else None,
        }
    )


def _is_pair(task: str, declared: dict[str, Any] | None) -> bool:
    """Whether the task reads two texts (span extraction: a question and a context)."""
    from harness.squad import SPAN_TASKS
    from harness.taskdef import TaskDef
    from harness.tasks import TASKS

    if task in SPAN_TASKS:
        return True
    if declared is not None:
        return TaskDef.model_validate(declared).is_pair
    return TASKS[task].is_pair


def segments(config: dict[str, Any]) -> int:
    """model.token_types of a config dump (its default when unset)."""
    from harness.config import ModelConfig

    return int((config.get("model") or {}).get("token_types") or ModelConfig.model_fields["token_types"].default)


def task_key(identity: dict[str, Any]) -> str:
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def key_of(config: dict[str, Any], task: str) -> str:
    return task_key(task_identity(config, task))


def task_folder(run_dir: Path, task: str, key: str) -> Path:
    return Path(run_dir) / PREDICTIONS / task / key


def recorded_folder(run_dir: Path, task: str, summary: dict[str, Any] | None = None) -> Path:
    """The predictions behind the task's result in summary.json: its key's folder (a record from
    before keys existed, not migrated: the task's folder itself)."""
    summary = summary if summary is not None else read_json(Path(run_dir) / "summary.json") or {}
    key = (summary.get("downstream", {}).get(task) or {}).get("key")
    return task_folder(run_dir, task, key) if key else Path(run_dir) / PREDICTIONS / task


def recorded_seeds(entry: dict[str, Any]) -> set[str]:
    """The fine-tuning seeds of a task's summary entry, scored or diverged."""
    seeds = set(entry.get("diverged_seeds", {}))
    for metric in entry.get("metrics", {}).values():
        seeds |= set(metric.get("seeds", {}))
    return seeds


def tasks_to_evaluate(config: dict[str, Any], summary: dict[str, Any] | None) -> list[str]:
    """The tasks of a config dump's eval.tasks that a finished run's summary lacks: not there, there
    under another key (another definition or protocol), or with other fine-tuning seeds."""
    downstream = (summary or {}).get("downstream", {})
    evaluation = config.get("eval") or {}
    seeds = {str(s) for s in (evaluation.get("finetune") or {}).get("seeds", [0])}
    missing = []
    for task in evaluation.get("tasks", []):
        entry = downstream.get(task)
        if entry is None or entry.get("key") != key_of(config, task) or recorded_seeds(entry) != seeds:
            missing.append(task)
    return missing


def _flat_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and (p.name in FLAT_FILES or p.name.startswith("seed-")))


def flat_prediction_tasks(run_dir: Path) -> list[str]:
    """The tasks whose predictions lie as they were kept before keys existed: predictions/<task>/seed-<s>.npy."""
    root = Path(run_dir) / PREDICTIONS
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return [folder.name for folder in folders if _flat_files(folder)]


def file_flat_predictions(run_dir: Path, config: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """Move the predictions of a record from before keys existed (predictions/<task>/seed-<s>.npy ...)
    into their key's folder, computed from the record's own config (what they were made with), and
    give the summary's entries their key. Returns the tasks moved."""
    moved = []
    for task in flat_prediction_tasks(run_dir):
        folder = Path(run_dir) / PREDICTIONS / task
        flat = _flat_files(folder)
        identity = task_identity(config, task)
        target = task_folder(run_dir, task, task_key(identity))
        clashes = [p.name for p in flat if (target / p.name).exists()]
        if clashes:
            raise ValueError(f"{folder}: {', '.join(clashes)} also in {target}: move one of them away first")
        target.mkdir(parents=True, exist_ok=True)
        write_identity(target, identity)
        for path in flat:
            path.rename(target / path.name)
        moved.append(task)
    for task, entry in summary.get("downstream", {}).items():
        if "key" not in entry:
            entry["key"] = key_of(config, task)
    return moved


def write_identity(folder: Path, identity: dict[str, Any]) -> None:
    """task.json: the key and what it hashes, written once (a folder's key never changes)."""
    if not (folder / "task.json").is_file():
        atomic_write_json(folder / "task.json", {"key": task_key(identity), **identity})
