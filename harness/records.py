"""Run records on disk: results/<suite>/<run-id>/{config.json, status.json, metrics.jsonl, summary.json}.

Every JSON file is written atomically (temp file + rename), so a crash leaves the previous
version, never half a file. Reports are built from these records only.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
STATES = ("pending", "running", "done", "failed", "pruned")  # pruned: stopped early by a search


def atomic_write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


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
        status = self.status
        return bool(status and status.get("state") == "done" and (self.dir / "summary.json").is_file())

    def register(self, header: dict[str, Any], config: dict[str, Any]) -> None:
        """Mark a run of a suite as pending, unless it already has a status (failed runs keep their error)."""
        if self.status is None:
            self._write_config(header, config)
            self.set_status("pending")

    def _write_config(self, header: dict[str, Any], config: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.dir / "config.json", {"schema_version": SCHEMA_VERSION, **header, "config": config})

    def start(self, header: dict[str, Any], config: dict[str, Any]) -> None:
        """A fresh attempt: config written, old metrics cleared, status running."""
        self._write_config(header, config)
        (self.dir / "metrics.jsonl").write_text("")
        (self.dir / "summary.json").unlink(missing_ok=True)
        self.set_status("running", pid=os.getpid())

    def set_status(self, state: str, **extra: Any) -> None:
        assert state in STATES, state
        atomic_write_json(
            self.dir / "status.json",
            {"schema_version": SCHEMA_VERSION, "state": state, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra},
        )

    def append_metrics(self, row: dict[str, Any]) -> None:
        with (self.dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        path = self.dir / "metrics.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def finish(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.dir / "summary.json", {"schema_version": SCHEMA_VERSION, **summary})
        self.set_status("done")


def find_records(root: Path) -> list[RunRecord]:
    """Every run directory under root (a results dir or one suite's dir), sorted by path."""
    return [RunRecord(p.parent) for p in sorted(Path(root).glob("**/config.json")) if "_cache" not in p.parts]
