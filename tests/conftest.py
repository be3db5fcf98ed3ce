from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def default_sigint() -> None:
    """A test runner in the background of a non-interactive shell passes SIGINT down as ignored, and
    `harness run` leaves an inherited ignored SIGINT alone: undo that in the child."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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


PEOPLE = ["Ada", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal", "Ivy", "Jo"]
CITIES = ["Paris", "Lyon", "Rome", "Oslo", "Lima", "Kyiv", "Baku", "Doha", "Riga", "Bern"]
COLOURS = ["red", "blue", "green", "black", "white"]


def synthetic_squad(path: Path, articles: int = 10, paragraphs: int = 2, unanswerable: bool = False) -> Path:
    """A SQuAD-format file: each paragraph says where someone lives and what colour their car is; with
    `unanswerable`, every third question asks about something the paragraph does not say."""
    data = []
    for a in range(articles):
        paras = []
        for p in range(paragraphs):
            person, city = PEOPLE[(a + p) % 10], CITIES[(3 * a + p) % 10]
            colour = COLOURS[(a + 2 * p) % 5]
            context = f"{person} lives in {city}. {person} owns a {colour} car. The weather in {city} is mild."
            qas = [
                {"id": f"{a}-{p}-city", "question": f"Where does {person} live?",
                 "answers": [{"text": city, "answer_start": context.index(city)}]},
                {"id": f"{a}-{p}-car", "question": f"What colour is the car of {person}?",
                 "answers": [{"text": colour, "answer_start": context.index(colour)},
                             {"text": f"{colour} car", "answer_start": context.index(colour)}]},
            ]  # fmt: skip
            if unanswerable:
                for qa in qas:
                    qa["is_impossible"] = False
                qas.append({"id": f"{a}-{p}-boat", "question": f"What colour is the boat of {person}?",
                            "answers": [], "is_impossible": True})  # fmt: skip
            paras.append({"context": context, "qas": qas})
        data.append({"title": f"Article {a}", "paragraphs": paras})
    path.write_text(json.dumps({"version": "v2.0" if unanswerable else "1.1", "data": data}))
    return path
