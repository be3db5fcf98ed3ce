"""Content-addressed stage outputs: <root>/<stage>/<key>/, with the inputs that made them beside them.

A stage's key hashes its own config and its upstream stage's key, so changing a field invalidates
exactly the stages downstream of it, and arms that share a corpus and tokenizer share the work.
"""

from __future__ import annotations

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
    """Builds a stage's directory once; later calls (any arm, any process) load it."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.hits: list[str] = []
        self.misses: list[str] = []

    def get_or_build(self, stage: str, inputs: dict[str, Any], build: Callable[[Path], None]) -> tuple[str, Path]:
        key = stage_key(stage, inputs)
        final = self.root / stage / key
        if (final / "inputs.json").is_file():
            self.hits.append(stage)
            return key, final
        final.parent.mkdir(parents=True, exist_ok=True)
        # Build in a temp dir beside the target, then rename: a crash never leaves a half stage.
        work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
        plain_mode(work)  # mkdtemp's 0o700 would hide the stage from others sharing the cache
        try:
            reset_peak_rss()
            started = time.perf_counter()
            build(work)
            cost = {"build_s": round(time.perf_counter() - started, 2), "peak_rss_mb": peak_rss_mb()}
            (work / "build.json").write_text(json.dumps(cost))
            print(f"  data: built {stage} in {cost['build_s']:.1f}s", file=sys.stderr, flush=True)
            (work / "inputs.json").write_text(json.dumps({"stage": stage, **inputs}, indent=2, default=str))
            try:
                os.rename(work, final)
            except OSError:
                if not (final / "inputs.json").is_file():  # not a concurrent builder's win: a real error
                    raise
                shutil.rmtree(work, ignore_errors=True)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        self.misses.append(stage)
        return key, final
