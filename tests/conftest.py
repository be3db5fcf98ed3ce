from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def tiny_suite(**changes: Any) -> dict[str, Any]:
    """A suite small enough to train in seconds on a CPU."""
    suite: dict[str, Any] = {
        "name": "t",
        "base": {
            "model": {"preset": "tiny", "layers": 1, "hidden": 64, "heads": 2, "ffn": 128, "max_len": 64},
            "data": {
                "corpus": {"source": "synthetic", "documents": 120, "seed": 0},
                "tokenizer": {"kind": "byte_bpe", "vocab_size": 1024},
                "max_seq_len": 64,
            },
            "train": {"tokens_per_step": 1024, "micro_batch_size": 8, "steps": 12, "lr": 2e-3, "log_every": 2},
            "eval": {"heldout_sequences": 16},
        },
        "arms": {"dynamic": {}, "static": {"masking": {"kind": "static", "dupe_factor": 2}}},
        "seeds": [0],
    }
    suite.update(changes)
    return suite


@pytest.fixture
def write_suite(tmp_path: Path):
    def write(suite: dict[str, Any], name: str = "suite.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(suite))
        return path

    return write
