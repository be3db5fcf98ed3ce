"""Content-addressed stage outputs: <root>/<stage>/<key>/, with the inputs that made them beside them.

A stage's key hashes its own config and its upstream stage's key, so changing a field invalidates
exactly the stages downstream of it, and arms that share a corpus and tokenizer share the work.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def stage_key(stage: str, inputs: dict[str, Any]) -> str:
    canonical = json.dumps({"stage": stage, **inputs}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


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
        try:
            build(work)
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
