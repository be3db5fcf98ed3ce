"""What a user hands the harness, read strictly: text files decoded with the byte offset of the
first bad byte, YAML with a one-line error, numbers on the command line finite and in range, and
output directories that can be written, all checked before anything is written."""

from __future__ import annotations

import argparse
import codecs
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.schema import ConfigError

CHUNK_BYTES = 1 << 20


def decoding_problem(path: str | Path, encoding: str, bad: BadByte) -> str:
    """`<file>: byte 0xe9 at offset 2602 (line 41) is not valid utf-8 (invalid continuation byte)`:
    the place a hex editor or `head -c` finds it."""
    where = f"byte 0x{bad.byte:02x} at offset {bad.offset} (line {bad.line})"
    return f"{path}: {where} is not valid {encoding} ({bad.reason})"


@dataclass(frozen=True)
class BadByte:
    offset: int
    byte: int
    line: int  # 1-based: newline bytes before it + 1
    reason: str


def bad_byte(data: bytes, err: UnicodeError, base: int = 0, lines: int = 0) -> BadByte:
    """Where `err`, raised decoding `data` (which starts `base` bytes and `lines` newlines into its
    file), happened. A codec's other complaints (UTF-16 without a byte-order mark) point at its start."""
    start = err.start if isinstance(err, UnicodeDecodeError) else 0
    reason = err.reason if isinstance(err, UnicodeDecodeError) else str(err)
    byte = data[start] if start < len(data) else 0
    return BadByte(base + start, byte, lines + data.count(b"\n", 0, start) + 1, reason)


def first_bad_byte(path: str | Path, encoding: str) -> BadByte | None:
    """The first byte of the file that does not decode, read in chunks with an incremental decoder
    (any codec, multi-byte ones included); None when the whole file decodes."""
    decoder = codecs.getincrementaldecoder(encoding)()
    consumed = lines = 0  # bytes before the current chunk, and the newlines in them
    with open(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK_BYTES)
            pending = decoder.getstate()[0]  # the start of a character split across chunks
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeError as err:
                return bad_byte(pending + chunk, err, consumed - len(pending), lines - pending.count(b"\n"))
            if not chunk:
                return None
            consumed += len(chunk)
            lines += chunk.count(b"\n")


def read_text(path: str | Path, what: str, encoding: str = "utf-8") -> str:
    """A whole text file, for config-sized files; a file that is missing, unreadable or not in
    `encoding` is a ConfigError naming it (`what` says what the file is, e.g. "suite")."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), "", f"{what} file not found") from None
    except OSError as err:
        raise ConfigError(str(path), "", f"cannot read the {what} file: {err.strerror}") from None
    try:
        return data.decode(encoding)
    except UnicodeError as err:
        problem = decoding_problem(path, encoding, bad_byte(data, err)).removeprefix(f"{path}: ")
        raise ConfigError(str(path), "", f"{problem}: save the {what} file as {encoding}") from None


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line, with the place PyYAML found it (its own text spans several lines)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if mark is None:
        return problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def load_yaml(path: str | Path, what: str) -> Any:
    """A YAML file (safe_load), every problem a one-line ConfigError naming the file."""
    text = read_text(path, what)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(str(path), "", f"not valid YAML at {yaml_problem(err)}") from None


# ------------------------------------------------------------------------------- output paths


def check_output_dir(path: str | Path, flag: str) -> None:
    """A directory the command will create or write into: refused when it, or the first part of it
    that exists, is not a directory or cannot be written by this process."""
    target = Path(path)
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        inside = "" if existing == target else f", so {target} cannot be made in it"
        raise ConfigError(flag, str(existing), f"not a directory{inside} (expected a directory)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(flag, str(existing), f"cannot write in it (permission denied): choose another {flag}")


def check_output_file(path: str | Path, flag: str) -> None:
    """A file the command will write: not a directory, and its directory can be made and written."""
    if Path(path).is_dir():
        raise ConfigError(flag, str(path), "is a directory (expected a file name)")
    check_output_dir(Path(path).parent, flag)


# ---------------------------------------------------------------------- command-line numbers


def int_at_least(minimum: int):
    """An argparse type: a whole number >= minimum."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def finite_float(minimum: float | None = None, above: float | None = None, or_zero: bool = False):
    """An argparse type: a finite number, >= minimum / > above when given (`or_zero`: 0 also, the
    value that turns the option off)."""
    bounds = [f">= {minimum:g}" if minimum is not None else "", f"> {above:g}" if above is not None else ""]
    expected = " ".join(["a finite number", *filter(None, bounds)]) + (", or 0 (off)" if or_zero else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if or_zero and value == 0:
            return value
        if (
            not math.isfinite(value)
            or (minimum is not None and value < minimum)
            or (above is not None and value <= above)
        ):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse
