"""Content checks for everything the harness reuses: each file's size and a fast hash, written with it,
verified before it is used again.

    _cache/<stage>/<key>/contents.json        every file of a cached data stage (tokenizers included)
    <run>/checkpoint/contents.json            the finished model and its tokenizer
    <run>/predictions/<task>/<key>/contents.json   labels, per-seed predictions, the lr chosen
    <run>/status.json: summary_check          summary.json, checked whenever the run counts as done

A check is `{"bytes": N, "<hash>": hex}`; the hash is xxh3-128 when the `xxhash` package is there (a
dependency of `datasets`, ~4x faster than BLAKE2b here) and BLAKE2b otherwise, named in the check so
either verifies. A file written before checks existed has none: it gets a structural check instead
(a .npy or .safetensors header against the file's size, a JSON file parsed, a JSONL file ending in a
newline), which finds what a killed write or a cut copy leaves. Digests are remembered per process by
(path, size, mtime), so a stage shared by many runs is hashed once per process.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from harness.records import atomic_write_json, atomic_write_text, kind_of, plain_mode, read_record

CONTENTS = "contents.json"
CHUNK = 1 << 22

try:  # a dependency of `datasets`, so normally present
    import xxhash

    HASHES: dict[str, Any] = {"xxh3_128": xxhash.xxh3_128, "blake2b": hashlib.blake2b}
except ImportError:  # pragma: no cover - depends on the environment
    HASHES = {"blake2b": hashlib.blake2b}
WRITE_HASH = next(iter(HASHES))

_digests: dict[tuple[str, str, int, int, int], str] = {}


def _digest(path: Path, algorithm: str) -> str:
    info = path.stat()
    memo = (str(path.resolve()), algorithm, info.st_size, info.st_mtime_ns, info.st_ino)
    if memo not in _digests:
        hasher = HASHES[algorithm]()
        with path.open("rb") as f:
            while block := f.read(CHUNK):
                hasher.update(block)
        _digests[memo] = hasher.hexdigest()
    return _digests[memo]


def file_check(path: Path) -> dict[str, Any]:
    """What a file is, to be recorded beside it: its size and hash."""
    return {"bytes": Path(path).stat().st_size, WRITE_HASH: _digest(Path(path), WRITE_HASH)}


def check_problem(path: Path, check: Any, name: str) -> str | None:
    """None when `path` is what `check` recorded; otherwise what differs, the file called `name`."""
    path = Path(path)
    if not isinstance(check, dict) or not isinstance(check.get("bytes"), int):
        return f"{name}: its recorded check is unreadable"
    if not path.is_file():
        return f"{name}: missing"
    size = path.stat().st_size
    if size != check["bytes"]:
        return f"{name}: {size} bytes, {check['bytes']} were written"
    known = [a for a in HASHES if isinstance(check.get(a), str)]
    if known and _digest(path, known[0]) != check[known[0]]:
        return f"{name}: its content differs from what was written ({known[0]} mismatch)"
    return None


# ----------------------------------------------------------------- files written before checks existed


NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _npy_problem(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            header = NPY_HEADERS.get(version)
            if header is None:
                return None  # a later format version: nothing to compare here
            shape, _, dtype = header(f)
            offset = f.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as err:
        return f"not a readable .npy file ({err})"
    if dtype.hasobject:
        return None  # pickled objects: no fixed size to compare
    expected = offset + math.prod(shape) * dtype.itemsize
    size = path.stat().st_size
    return None if size == expected else f"{size} bytes, its header says {expected}"


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > size - 8:
                return f"{size} bytes, its header alone says {8 + length}"
            header = json.loads(f.read(length))
        expected = 8 + length + max((e["data_offsets"][1] for n, e in header.items() if n != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
        return f"not a readable safetensors file ({type(err).__name__})"
    return None if size == expected else f"{size} bytes, its header says {expected}"


def _json_problem(path: Path) -> str | None:
    return read_record(path, expect=None)[1]


def _jsonl_problem(path: Path) -> str | None:
    size = path.stat().st_size
    if size == 0:
        return None
    with path.open("rb") as f:
        f.seek(size - 1)
        last = f.read(1)
    return None if last == b"\n" else "its last line is cut short"


def _diverged_problem(path: Path) -> str | None:
    """seed-<s>.diverged holds the step at which the fine-tuning's loss went NaN."""
    try:
        int(path.read_bytes().decode("ascii").strip())
    except (ValueError, UnicodeDecodeError):
        return "not a step number"
    return None


STRUCTURE = {".npy": _npy_problem, ".safetensors": _safetensors_problem, ".json": _json_problem,
             ".jsonl": _jsonl_problem, ".diverged": _diverged_problem}  # fmt: skip


def structure_problem(path: Path, name: str) -> str | None:
    """What is visibly wrong with a file that has no recorded check (None: nothing found)."""
    path = Path(path)
    if not path.is_file():
        return f"{name}: missing"
    reader = STRUCTURE.get(path.suffix)
    problem = reader(path) if reader is not None else None
    return None if problem is None else f"{name}: {problem}"


# ------------------------------------------------------------------------ a directory's contents.json


def _files(directory: Path, skip: Iterable[str]) -> list[str]:
    skipped = {CONTENTS, *skip}
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name not in skipped)


def write_contents(directory: Path, names: Iterable[str] | None = None, skip: Iterable[str] = ()) -> None:
    """contents.json: the check of each named file (default: every file under `directory` but `skip`)."""
    directory = Path(directory)
    names = list(names) if names is not None else _files(directory, skip)
    atomic_write_json(directory / CONTENTS, {"files": {name: file_check(directory / name) for name in names}})


def record_file(directory: Path, name: str) -> None:
    """Add (or renew) one file's check in its directory's contents.json, the others kept."""
    directory = Path(directory)
    listed, _ = recorded_checks(directory)
    atomic_write_json(directory / CONTENTS, {"files": {**listed, name: file_check(directory / name)}})


def recorded_checks(directory: Path) -> tuple[dict[str, Any], str | None]:
    """The checks contents.json records, and what is wrong with it: ({}, None) without one."""
    document, problem = read_record(Path(directory) / CONTENTS)
    if problem:
        return {}, f"{CONTENTS}: {problem}"
    files = (document or {"files": {}}).get("files")
    if not isinstance(files, dict):
        return {}, f"{CONTENTS}: `files` is {kind_of(files)}, expected an object"
    return files, None


def file_problem(directory: Path, name: str, label: str | None = None) -> str | None:
    """One file of a checked directory: against its recorded check, or by its structure if it has none
    (a damaged contents.json vouches for nothing: every file of it is then suspect)."""
    label = label or name
    checks, problem = recorded_checks(directory)
    if problem:
        return f"{label}: its folder's {problem}"
    if name in checks:
        return check_problem(Path(directory) / name, checks[name], label)
    return structure_problem(Path(directory) / name, label)


def contents_problem(
    directory: Path, prefix: str = "", skip: Iterable[str] = (), missing_ok: bool = False
) -> str | None:
    """The first file of `directory` that is not as written (named after `prefix`), or None: each file
    its contents.json lists (one not there only with `missing_ok`: weights removed on purpose), and
    each file it does not list (all, without one) by its structure."""
    directory = Path(directory)
    checks, problem = recorded_checks(directory)
    if problem:
        return prefix + problem
    for name, check in sorted(checks.items()):
        if missing_ok and not (directory / name).exists():
            continue
        problem = check_problem(directory / name, check, f"{prefix}{name}")
        if problem:
            return problem
    for name in _files(directory, skip):
        if name not in checks:
            problem = structure_problem(directory / name, f"{prefix}{name}")
            if problem:
                return problem
    return None


# ----------------------------------------------------------------------------------- run records

CHECKPOINT = "checkpoint"
CHECKPOINT_FILES = ("model.safetensors", "tokenizer.json")


def checkpoint_problem(run_dir: Path) -> str | None:
    """What is wrong with a run's finished model. None too when it has none, or lacks a file: records kept
    without their weights (the committed ones, or weights deleted for room) are not damaged, and
    `harness eval` says it has no checkpoint."""
    folder = Path(run_dir) / CHECKPOINT
    if not folder.is_dir():
        return None
    return contents_problem(folder, f"{CHECKPOINT}/", missing_ok=True)


def summary_problem(run_dir: Path, status: dict[str, Any]) -> str | None:
    """A finished run's summary.json against the check its status recorded (a status from before
    checks: parsed and its shape checked)."""
    path = Path(run_dir) / "summary.json"
    if "summary_check" in status:
        problem = check_problem(path, status["summary_check"], "summary.json")
        if problem:
            return problem
    summary, problem = read_record(path)
    if summary is None:
        return f"summary.json: {problem or 'missing'}"
    return summary_shape_problem(summary)


def summary_shape_problem(summary: dict[str, Any]) -> str | None:
    """The parts of a summary every reader walks must be what they walk: objects (metric values may be
    anything: a reader names a value that is not a number and leaves it out)."""
    for field in ("metrics", "budget", "references", "downstream", "environment", "stage_keys"):
        if field in summary and not isinstance(summary[field], dict):
            return f"summary.json: `{field}` is {kind_of(summary[field])}, expected an object"
    for task, entry in summary.get("downstream", {}).items():
        if not isinstance(entry, dict):
            return f"summary.json: `downstream.{task}` is {kind_of(entry)}, expected an object"
        for field in ("metrics", "diverged_seeds", "majority_baseline"):
            if field in entry and not isinstance(entry[field], dict):
                return f"summary.json: `downstream.{task}.{field}` is {kind_of(entry[field])}, expected an object"
        if "key" in entry and not isinstance(entry["key"], str):  # names the folder of its predictions
            return f"summary.json: `downstream.{task}.key` is {kind_of(entry['key'])}, expected a string"
        for metric, detail in entry.get("metrics", {}).items():
            if not isinstance(detail, dict) or not isinstance(detail.get("seeds", {}), dict):
                return f"summary.json: `downstream.{task}.metrics.{metric}` is not an object with `seeds`"
    return None


def header_problem(header: dict[str, Any]) -> str | None:
    """config.json must say what run it is: suite and arm names, an integer seed, a config object."""
    if "config" not in header:
        return "config.json: no `config` (the run's resolved config)"
    if not isinstance(header["config"], dict):
        return f"config.json: `config` is {kind_of(header['config'])}, expected an object"
    if "seed" in header and (isinstance(header["seed"], bool) or not isinstance(header["seed"], int)):
        return f"config.json: `seed` is {kind_of(header['seed'])}, expected an integer"
    for field in ("suite", "arm", "run_id"):
        if field in header and not isinstance(header[field], str):
            return f"config.json: `{field}` is {kind_of(header[field])}, expected a string"
    return None


def status_problem(status: dict[str, Any]) -> str | None:
    """A status must name its state (any name: states may be added; a reader shows what it does not know)."""
    if not isinstance(status.get("state"), str):
        return f"status.json: `state` is {kind_of(status.get('state'))}, expected a string"
    return None


def recorded_prediction_files(entry: dict[str, Any]) -> list[str]:
    """The files behind a task's summary entry: labels, the lr chosen, each seed's predictions."""
    from harness.downstream import recorded_seeds

    seeds = sorted(recorded_seeds(entry))
    names = ["labels.npy", "lr_selection.json"]
    for seed in seeds:
        names += [f"seed-{seed}.npy", f"seed-{seed}.json", f"seed-{seed}.diverged"]
    return names


def prediction_problems(run_dir: Path, summary: dict[str, Any]) -> dict[str, str]:
    """Task -> what is damaged among the kept files behind its result (files not kept are not damage:
    runs from before predictions were kept have none)."""
    from harness.downstream import recorded_folder

    problems: dict[str, str] = {}
    for task, entry in summary.get("downstream", {}).items():
        if not isinstance(entry, dict):
            continue
        folder = recorded_folder(Path(run_dir), task, summary)
        prefix = str(folder.relative_to(run_dir)) + "/"
        for name in recorded_prediction_files(entry):
            if (folder / name).is_file():
                problem = file_problem(folder, name, prefix + name)
                if problem:
                    problems[task] = problem
                    break
    return problems


def record_problem(run_dir: Path, name: str, shape: Callable[[dict[str, Any]], str | None] | None = None) -> str | None:
    """One JSON record of a run, named with what is wrong with it (a missing file is not a problem)."""
    document, problem = read_record(Path(run_dir) / name)
    if problem:
        return f"{name}: {problem}"
    return shape(document) if document is not None and shape is not None else None


def finished_run_problems(run_dir: Path) -> list[str]:
    """What keeps a run recorded as done from being done: an unreadable status, config or summary, a
    summary that is not as written, a damaged finished model. Empty for a whole run, and for a run not
    recorded as done beyond its status (its parts are not reused)."""
    run_dir = Path(run_dir)
    problem = record_problem(run_dir, "status.json", status_problem)
    if problem:
        return [problem]
    status, _ = read_record(run_dir / "status.json")
    if status is None or status["state"] != "done":
        return []
    found = [record_problem(run_dir, "config.json", header_problem)]
    if not (run_dir / "config.json").is_file():
        found.append("config.json: missing")
    found += [summary_problem(run_dir, status), checkpoint_problem(run_dir)]
    return [p for p in found if p]


def run_problems(run_dir: Path) -> list[str]:
    """Everything damaged in a run's record: status.json and config.json whatever the state, and for a
    finished run its summary, finished model and kept predictions (`harness ls`)."""
    run_dir = Path(run_dir)
    found = finished_run_problems(run_dir)
    status, _ = read_record(run_dir / "status.json")
    if status is None or status.get("state") != "done":
        problem = record_problem(run_dir, "config.json", header_problem)
        return found + ([problem] if problem else [])
    if not found:
        summary, _ = read_record(run_dir / "summary.json")
        found.extend(prediction_problems(run_dir, summary or {}).values())
    return found


# ------------------------------------------------------------------- kept predictions, written and reused


def save_array(path: Path, array: np.ndarray) -> None:
    """A .npy file written atomically (temp file, rename), its check added to the folder's contents.json."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        plain_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    record_file(path.parent, path.name)


def write_kept_text(path: Path, text: str) -> None:
    """A small text file (a diverged seed's step) written atomically, its check recorded."""
    atomic_write_text(Path(path), text)
    record_file(Path(path).parent, Path(path).name)


def write_kept_json(path: Path, payload: Any) -> None:
    """A JSON file kept for reuse (the lr chosen, a seed's answers) written atomically, its check recorded."""
    atomic_write_json(Path(path), payload)
    record_file(Path(path).parent, Path(path).name)


def drop_damaged(folder: Path, name: str, label: str) -> str | None:
    """A kept file that fails its check (or, without one, its structure) is removed so that it is made
    again; returns what was wrong with it (None: whole, or not there)."""
    path = Path(folder) / name
    if not path.is_file():
        return None
    problem = file_problem(folder, name, label)
    if problem:
        path.unlink()
    return problem


def reuse_kept(folder: Path, name: str, log: Callable[[str], None], remedy: str) -> None:
    """A kept file (predictions, labels, the lr chosen) is reused only when it passes its content check;
    a damaged one is named, removed and made again (`remedy` says how)."""
    problem = drop_damaged(folder, name, str(Path(*Path(folder).parts[-3:], name)))
    if problem:
        log(f"  damaged: {problem}; {remedy}")
