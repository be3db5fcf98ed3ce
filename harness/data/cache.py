"""Content-addressed stage outputs: <root>/<stage>/<key>/, with the inputs that made them beside them.

A stage's key hashes its own config and its upstream stage's key, so changing a field invalidates
exactly the stages downstream of it, and arms that share a corpus and tokenizer share the work.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.integrity import CONTENTS, contents_problem, write_contents
from harness.records import plain_mode


def stage_key(stage: str, inputs: dict[str, Any]) -> str:
    canonical = json.dumps({"stage": stage, **inputs}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def reset_peak_rss() -> None:
    """Restart the kernel's peak-RSS count for this process (Linux), so each stage reports its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # elsewhere the peak is the process's peak so far


def peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    except ImportError:
        return None


class StageCache:
    """Builds a stage's directory once; later calls (any arm, any process) load it, once its files pass
    the content check written with them (harness/integrity.py). A damaged stage is named in one line
    and built again; temp folders that killed builds left behind are removed."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.hits: list[str] = []
        self.misses: list[str] = []
        self._swept: set[Path] = set()

    def get_or_build(self, stage: str, inputs: dict[str, Any], build: Callable[[Path], None]) -> tuple[str, Path]:
        key = stage_key(stage, inputs)
        final = self.root / stage / key
        self._sweep(final.parent)
        if (final / "inputs.json").is_file():
            problem = stage_problem(final)
            if problem is None:
                self.hits.append(stage)
                return key, final
            print(f"  data: cached stage {stage}/{key} damaged ({problem}); rebuilding", file=sys.stderr, flush=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        # Build in a temp dir beside the target, then rename: a crash never leaves a half stage. The temp
        # dir is locked while it is built, so a sweep by another process never takes a live build's.
        work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
        held = _lock(work)
        plain_mode(work)  # mkdtemp's 0o700 would hide the stage from others sharing the cache
        try:
            reset_peak_rss()
            started = time.perf_counter()
            build(work)
            cost = {"build_s": round(time.perf_counter() - started, 2), "peak_rss_mb": peak_rss_mb()}
            (work / "build.json").write_text(json.dumps(cost))
            print(f"  data: built {stage} in {cost['build_s']:.1f}s", file=sys.stderr, flush=True)
            write_contents(work, skip=[MARKER])
            (work / MARKER).write_text(json.dumps({"stage": stage, **inputs}, indent=2, default=str))
            _install(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        finally:
            os.close(held)
        self.misses.append(stage)
        return key, final

    def _sweep(self, directory: Path) -> None:
        """Remove the temp folders (`.<key>-*`) of builds that were killed: older than this process and
        locked by no live builder. Once per stage directory and process."""
        if directory in self._swept or not directory.is_dir():
            return
        self._swept.add(directory)
        started = process_start_time()
        for path in directory.glob(".*-*"):
            try:
                stale = path.is_dir() and path.stat().st_mtime < started and not _locked(path)
            except OSError:
                continue  # gone meanwhile: another process swept it or installed it
            if stale:
                shutil.rmtree(path, ignore_errors=True)
                print(f"  data: removed {path}, left by a build that did not finish", file=sys.stderr, flush=True)


MARKER = "inputs.json"  # written last: a stage directory with it is complete


def stage_problem(directory: Path) -> str | None:
    """What is wrong with a cached stage, or None. A stage built before content checks existed is checked
    by its files' structure, then gets its contents.json (when the cache is writable)."""
    problem = contents_problem(directory, skip=[MARKER])
    if problem is None and not (directory / CONTENTS).exists():
        try:
            write_contents(directory, skip=[MARKER])
        except OSError:
            pass  # a read-only shared cache: checked by structure each time
    return problem


def _install(work: Path, final: Path) -> None:
    """Rename the built stage into place. Where a stage is there already, a concurrent builder's whole
    one wins; a damaged one is moved aside and replaced (under a lock on the stage directory, so two
    processes never swap each other's)."""
    try:
        os.rename(work, final)
        return
    except OSError:
        if not final.exists():
            raise  # not a stage in the way: a real error
    held = _lock(final.parent)
    try:
        if (final / MARKER).is_file() and stage_problem(final) is None:
            shutil.rmtree(work, ignore_errors=True)  # another process built it meanwhile
            return
        aside = final.parent / f".{final.name}-damaged-{os.getpid()}"
        os.rename(final, aside)
        os.rename(work, final)
        shutil.rmtree(aside, ignore_errors=True)
    finally:
        os.close(held)


def _lock(directory: Path) -> int:
    """`directory` locked (flock) for as long as the returned descriptor is open: the kernel drops the
    lock when its process dies, however it dies."""
    fd = os.open(directory, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _locked(directory: Path) -> bool:
    """Whether a live process holds `directory`'s lock (a build in progress)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock just taken
    return False


_IMPORTED_AT = time.time()


def process_start_time() -> float:
    """When this process started (seconds since the epoch), from /proc; elsewhere when this module was imported."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))  # fmt: skip
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT
