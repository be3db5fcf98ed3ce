"""The set-up commands of the README: what `make install` would run (`make -n`, nothing installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA_INDEX = "https://download.pytorch.org/whl/cu124"


def torch_install(*variables: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # not the outer `make test`'s flags or the caller's TORCH_* settings: the Makefile's own defaults
    unset = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "TORCH_SPEC", "TORCH_INDEX_URL")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    done = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), "install", *variables],
                          capture_output=True, text=True, check=True, env=env)  # fmt: skip
    (line,) = [line for line in done.stdout.split("\n") if "pip install" in line and "torch==" in line]
    return line.strip()


def test_torch_comes_from_the_default_index_unless_an_index_url_is_given():
    assert torch_install() == '.venv/bin/python -m pip install -q "torch==2.13.0"'
    cuda = torch_install("TORCH_SPEC=torch==2.6.0", f"TORCH_INDEX_URL={CUDA_INDEX}")
    assert cuda == f'.venv/bin/python -m pip install -q --index-url "{CUDA_INDEX}" "torch==2.6.0"'
