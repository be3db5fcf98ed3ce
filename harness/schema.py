"""The base of every config schema and the error every config problem becomes (harness/config.py
re-exports both; task definitions, harness/taskdef.py, use them too)."""

from __future__ import annotations

import codecs

from pydantic import BaseModel, ConfigDict


class ConfigError(Exception):
    """A config problem found before any work starts: names the file, the key path and what was expected."""

    def __init__(self, source: str, key_path: str, message: str):
        self.source = source
        self.key_path = key_path
        self.message = message
        super().__init__(f"{source}: {key_path}: {message}" if key_path else f"{source}: {message}")


class Schema(BaseModel):
    # allow_inf_nan: a YAML `.inf` or `nan` in any float field is refused at load, not met as a
    # diverged run (an infinite lr) or a silent no-op hours later
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def known_encoding(value: str | None) -> str | None:
    """A text encoding field's value, refused unless Python knows the codec (None: utf-8)."""
    if value is not None:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r} (e.g. utf-8, utf-8-sig, latin-1, cp1252)") from None
    return value
