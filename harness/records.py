"""Run records on disk: results/<suite>/<run-id>/{config.json, status.json, metrics.jsonl, summary.json}.

Every JSON file is written atomically (temp file + rename), so a crash leaves the previous
version, never half a file. Reports are built from these records only.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
# pruned: stopped early by a search; interrupted: stopped by SIGINT/SIGTERM, resumed by the next `harness run`
STATES = ("pending", "running", "done", "failed", "diverged", "pruned", "interrupted")


@functools.cache
def _umask() -> int:
    """The process's umask, read once. Linux shows it in /proc without changing it; elsewhere it can
    only be read by setting it, so it is set back at once."""
    try:
        for line in Path("/proc/self/status").read_text().split("\n"):
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_mode(path: str | Path) -> None:
    """Give a file or directory the mode a plain open() or mkdir() would (0o666 / 0o777 less the umask),
    where a temp-file writer left 0o600 / 0o700 (tempfile.mkstemp, mkdtemp, safetensors' save_file):
    a team sharing a results directory can then read every record and checkpoint in it."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_umask())


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def atomic_write_text(path: Path, text: str) -> None:
    """Temp file, fsync, rename: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        plain_mode(tmp)  # before the rename: readers never see the file as 0o600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def kind_of(value: Any) -> str:
    """A JSON value's kind, for messages: "a list", "a string", ..."""
    if value is None:
        return "null"
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


def is_json_number(value: Any) -> bool:
    """A JSON number as json.loads gives it (NaN included: a diverged run logs one); not a boolean."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_record(path: Path, expect: type | None = dict) -> tuple[Any, str | None]:
    """A JSON file and what is wrong with it, whatever it holds: (document, None); (None, what is wrong:
    binary bytes, invalid or cut-short JSON, a list where an object is expected...); or (None, None)
    when there is no such file. Never raises."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as err:
        return None, f"unreadable ({err.strerror or err})"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, f"not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}): binary or damaged"
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        return None, f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno}): damaged or cut short"
    except (ValueError, RecursionError) as err:
        return None, f"not valid JSON ({type(err).__name__}): damaged"
    if expect is not None and not isinstance(document, expect):
        return None, f"{kind_of(document)} where a JSON object is expected"
    return document, None


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object, or None when the file is missing or holds anything else (read_record says what)."""
    return read_record(path)[0]


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """The non-blank lines of JSONL text with their 1-based line numbers, split on "\\n" only (a trailing
    "\\r" dropped): str.splitlines would also split at U+0085, U+2028 and the like, which JSON strings may
    hold unescaped."""
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if line.strip():
            yield number, line


def read_jsonl(path: Path, on_bad_line: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """The JSON-object lines of a file (none when it does not exist). A line that does not parse (a
    crash cut it short) is skipped and, with `on_bad_line`, reported by its 1-based number."""
    if not path.is_file():
        return []
    rows = []
    for number, line in jsonl_lines(path.read_text(encoding="utf-8", errors="replace")):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if on_bad_line is not None:
                on_bad_line(number)
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


class RunRecord:
    def __init__(self, directory: Path):
        self.dir = Path(directory)

    @property
    def status(self) -> dict[str, Any] | None:
        return read_json(self.dir / "status.json")

    @property
    def summary(self) -> dict[str, Any] | None:
        return read_json(self.dir / "summary.json")

    @property
    def config(self) -> dict[str, Any] | None:
        return read_json(self.dir / "config.json")

    def is_done(self) -> bool:
        """Recorded as done, and what a finished run is made of is as it was written: its status, config,
        summary and finished model pass their checks (harness/integrity.py). A damaged run is not done."""
        from harness.integrity import finished_run_problems

        status = self.status
        if not (status and status.get("state") == "done" and (self.dir / "summary.json").is_file()):
            return False
        return not finished_run_problems(self.dir)

    def register(self, header: dict[str, Any], config: dict[str, Any]) -> None:
        """Mark a run of a suite as pending, unless it already has a status (failed runs keep their error)."""
        if self.status is None:
            self._write_config(header, config)
            self.set_status("pending")

    def _write_config(self, header: dict[str, Any], config: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.dir / "config.json", {"schema_version": SCHEMA_VERSION, **header, "config": config})

    def set_eval(self, evaluation: dict[str, Any]) -> None:
        """config.json with another eval section: a finished run evaluated as its suite now asks. Only
        the held-out fields of eval are part of a run id, and the run keeps them."""
        header = self.config or {}
        atomic_write_json(self.dir / "config.json", {**header, "config": {**header["config"], "eval": evaluation}})

    def start(self, header: dict[str, Any], config: dict[str, Any]) -> None:
        """A fresh attempt: config written, old metrics cleared, status running. Predictions an earlier
        attempt kept go too: they came from a model this attempt does not continue."""
        self._write_config(header, config)
        (self.dir / "metrics.jsonl").write_text("")
        (self.dir / "summary.json").unlink(missing_ok=True)
        shutil.rmtree(self.dir / "predictions", ignore_errors=True)
        self.set_status("running", pid=os.getpid())

    def resume(self, step: int) -> None:
        """Continue after a crash from a checkpoint at `step`: metric rows logged after it (and the
        final evaluation of an attempt that got that far) go, the rest stays."""
        kept = [row for row in self.metrics() if _step_of(row) <= step and not row.get("final")]
        atomic_write_text(self.dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in kept))
        (self.dir / "summary.json").unlink(missing_ok=True)
        self.set_status("running", pid=os.getpid(), resumed_from_step=step)

    def set_status(self, state: str, **extra: Any) -> None:
        assert state in STATES, state
        atomic_write_json(
            self.dir / "status.json",
            {"schema_version": SCHEMA_VERSION, "state": state, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra},
        )

    def update_status(self, **extra: Any) -> None:
        """Add fields to the current status (same state), e.g. the planned steps once they are known."""
        status = self.status or {}
        state = status.pop("state", "running")
        status.pop("schema_version", None)
        status.pop("time", None)
        self.set_status(state, **{**status, **extra})

    def append_metrics(self, row: dict[str, Any]) -> None:
        with (self.dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        """Every row; a line a crash cut short is skipped."""
        return read_jsonl(self.dir / "metrics.jsonl")

    def finish(self, summary: dict[str, Any]) -> None:
        """summary.json, then the status `done` with the summary's size and hash: a summary that is
        not as written later makes the run not done (harness/integrity.py)."""
        self.set_status("done", summary_check=self._write_summary(summary))

    def rewrite_summary(self, summary: dict[str, Any]) -> None:
        """A finished run's summary changed (held-out floors added), its check in status.json renewed."""
        self.update_status(summary_check=self._write_summary(summary))

    def _write_summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        from harness.integrity import file_check

        atomic_write_json(self.dir / "summary.json", {"schema_version": SCHEMA_VERSION, **summary})
        return file_check(self.dir / "summary.json")


def _step_of(row: dict[str, Any]) -> float:
    """A metrics row's step; a row whose step is not a number sorts after every step (dropped on resume)."""
    step = row.get("step", 0)
    return step if isinstance(step, (int, float)) and not isinstance(step, bool) else float("inf")


class RunLock:
    """An exclusive lock on a run directory for as long as a process trains it. The kernel drops the
    lock when its process dies, however it dies, so there are no stale locks to clean up; the file
    only says who holds it, for messages."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / ".lock"
        self._file = None

    def acquire(self, wait: bool = False) -> bool:
        """Take the lock; without `wait`, give up at once (False) when another process holds it."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
        handle.flush()
        self._file = handle
        return True

    def fileno(self) -> int:
        """The locked file's descriptor: a child process that inherits it holds the lock too, until
        both have closed it (`harness run --jobs` trains each run in such a child)."""
        assert self._file is not None, "the lock is not held"
        return self._file.fileno()

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "another process"
        except OSError:
            return "another process"

    def held_elsewhere(self) -> bool:
        """Whether some live process holds the lock now (a `running` status without one is stale)."""
        if self._file is not None:
            return False
        if not self.path.exists():
            return False
        if self.acquire():
            self.release()
            return False
        return True

    def release(self) -> None:
        if self._file is not None:
            import fcntl

            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def find_records(root: Path) -> list[RunRecord]:
    """Every run directory under root (a results dir or one suite's dir), sorted by path."""
    return [RunRecord(p.parent) for p in sorted(Path(root).glob("**/config.json")) if "_cache" not in p.parts]
