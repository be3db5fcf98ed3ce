"""`harness migrate`: run records filed under an earlier run-id rule, brought to the current one.

Run ids once hashed the whole config, downstream settings included; they now hash what decides the
pretrained model (harness/config.py: `run_id_of`). Each record's id is computed again from its own
config.json; its directory is renamed to it, and `run_id` is updated in config.json, summary.json and
status.json. Predictions kept before downstream keys existed move into their key's folder, and the
summary's task entries get their key (harness/downstream.py), so a later `harness run` or `harness
eval` finds them. Nothing at all is changed when two records would get one id (runs that differed in
eval settings alone), a directory of the new name exists, or a run is held by a live process: each
such problem is named. Migrating twice changes nothing the second time.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import run_id_of
from harness.downstream import file_flat_predictions, flat_prediction_tasks, key_of
from harness.integrity import file_check
from harness.records import SCHEMA_VERSION, RunLock, atomic_write_json, find_records, read_json

ID_FILES = ("config.json", "summary.json", "status.json")  # record files that may hold the run id


@dataclass
class Move:
    """One record: where it is, the id it gets, and the tasks whose predictions are filed under keys."""

    run_dir: Path
    config: dict[str, Any]
    new_id: str
    flat_tasks: list[str]

    @property
    def target(self) -> Path:
        return self.run_dir.parent / self.new_id

    @property
    def renamed(self) -> bool:
        return self.run_dir.name != self.new_id


@dataclass
class Plan:
    moves: list[Move] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # any: nothing is changed
    notes: list[str] = field(default_factory=list)  # records left alone, and why


def plan(directories: list[Path]) -> Plan:
    """Every record under the directories (suite results directories or a results root), checked."""
    result = Plan()
    seen: set[Path] = set()
    for directory in directories:
        for record in find_records(directory):
            if record.dir.resolve() not in seen:
                seen.add(record.dir.resolve())
                _plan_record(record.dir, result)
    by_target: dict[Path, list[Move]] = {}
    for move in result.moves:
        by_target.setdefault(move.target, []).append(move)
    for target, moves in by_target.items():
        if len(moves) > 1:
            names = ", ".join(str(m.run_dir) for m in moves)
            result.problems.append(
                f"{names} all become {target}: they differ in eval settings alone (one pretrained model); keep one "
                "of them (move the others out of the results directory) and migrate again"
            )
        elif moves[0].renamed and target.exists():
            result.problems.append(f"{moves[0].run_dir} becomes {target}, which exists: move one of them away first")
    return result


def _plan_record(run_dir: Path, result: Plan) -> None:
    header = read_json(run_dir / "config.json")
    if header is None or not isinstance(header.get("config"), dict):
        result.notes.append(f"{run_dir}: config.json unreadable or without a config: left alone")
        return
    if header.get("schema_version") != SCHEMA_VERSION:
        result.problems.append(f"{run_dir}: record schema {header.get('schema_version')}, this is {SCHEMA_VERSION}")
        return
    if "imported_from" in header:
        result.notes.append(f"{run_dir}: imported (`harness import-hf`): its id is its directory's name, left alone")
        return
    if RunLock(run_dir).held_elsewhere():
        result.problems.append(f"{run_dir}: held by a live process ({RunLock(run_dir).holder()}): let it finish")
        return
    config = header["config"]
    summary = read_json(run_dir / "summary.json") or {}
    flat = flat_prediction_tasks(run_dir)
    try:  # every key computable before anything moves
        for task in [*flat, *summary.get("downstream", {})]:
            key_of(config, task)
    except (ValueError, KeyError) as err:
        result.problems.append(f"{run_dir}: {err}")
        return
    result.moves.append(Move(run_dir, config, run_id_of(config), flat))


def apply(move: Move) -> None:
    """One record brought up to date: predictions filed under keys, ids rewritten, then the rename.
    A file already up to date is not written."""
    if not (move.run_dir / "summary.json").is_file():  # an unfinished run's predictions are filed too
        file_flat_predictions(move.run_dir, move.config, {})
    for name in ID_FILES:
        path = move.run_dir / name
        document = read_json(path)
        if document is None:
            continue
        before = copy.deepcopy(document)
        if name == "summary.json":
            file_flat_predictions(move.run_dir, move.config, document)
        if "run_id" in document:
            document["run_id"] = move.new_id
        if name == "status.json" and "summary_check" in document:  # summary.json was rewritten just before
            document["summary_check"] = file_check(move.run_dir / "summary.json")
        if document != before:
            atomic_write_json(path, document)
    if move.renamed:
        move.run_dir.rename(move.target)


def migrate(directories: list[Path], dry_run: bool = False, log: Callable[[str], None] = print) -> Plan:
    """Plan, and unless there is a problem (or `dry_run`), apply; what was (or would be) done is logged."""
    result = plan(directories)
    for note in result.notes:
        log(f"note: {note}")
    if result.problems:
        return result
    verb = "would become" if dry_run else "->"
    for move in result.moves:
        filed = f"; predictions of {', '.join(move.flat_tasks)} filed under their key" if move.flat_tasks else ""
        if move.renamed or move.flat_tasks or _stale_summary(move):
            log(f"{move.run_dir} {verb} {move.target.name}{filed}" if move.renamed else f"{move.run_dir}{filed}")
        if not dry_run:
            apply(move)
    renamed = sum(m.renamed for m in result.moves)
    current = sum(not m.renamed for m in result.moves)
    suites = sorted({str(m.run_dir.parent) for m in result.moves if m.run_dir.parent.name.endswith(".search")})
    for suite in suites:
        log(f"note: {suite}: the search study's storage still names the trials' old run ids")
    did = "would be renamed" if dry_run else "renamed"
    log(f"{len(result.moves)} record(s): {renamed} {did}, {current} already under their id")
    return result


def _stale_summary(move: Move) -> bool:
    summary = read_json(move.run_dir / "summary.json") or {}
    return any("key" not in entry for entry in summary.get("downstream", {}).values())
