"""Corpus sources -> a stream of documents (one string each, paragraphs separated by newlines).

Every reader yields documents one at a time, so a corpus far larger than memory passes through.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from harness.config import FilesCorpus, HubCorpus, SyntheticCorpus
from harness.data.synthetic import generate_corpus
from harness.inputs import decoding_problem, first_bad_byte


class DataSourceError(Exception):
    """A corpus that cannot be read: names the source and the cause."""


def datasets_module():
    """`datasets`, imported when first needed (slow to import) with its own progress bars off: the
    harness reports its progress itself, and their bars would interleave with it."""
    import datasets

    datasets.disable_progress_bars()
    return datasets


def iter_documents(corpus: SyntheticCorpus | FilesCorpus | HubCorpus) -> Iterator[str]:
    """Non-empty documents of the corpus, in order, at most `max_documents` of them."""
    if isinstance(corpus, SyntheticCorpus):
        stream: Iterator[str] = (doc.text for doc in generate_corpus(corpus.documents, corpus.seed))
    elif isinstance(corpus, FilesCorpus):
        stream = (doc for path in corpus.files() for doc in _read_file(path, corpus))
    else:
        stream = _read_hub(corpus)
    limit = getattr(corpus, "max_documents", None)
    count = 0
    for document in stream:
        if document.strip():
            yield document
            count += 1
            if limit is not None and count >= limit:
                return


def describe(corpus: SyntheticCorpus | FilesCorpus | HubCorpus) -> str:
    if isinstance(corpus, FilesCorpus):
        return ", ".join(corpus.paths)
    if isinstance(corpus, HubCorpus):
        return f"hub:{corpus.name}"
    return "synthetic"


def _suffix_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    return "text"


WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")
WIKITEXT_HEADING = re.compile(r"^ (= ){2,}.*( =){2,} $")  # ' = = Section = = ', ' = = = Sub = = = '


def _wikitext_documents(lines: Iterator[str]) -> Iterator[str]:
    """WikiText raw: a line ' = Title = ' between two blank lines (' ' in the files, '' on the hub)
    starts an article; section headings (' = = Section = = ') and blank lines are dropped; every
    other line is a paragraph. The neighbour check matters: two equation lines in WikiText-2 test
    match the pattern alone."""
    previous, current = None, None
    paragraphs: list[str] = []
    for following in _with_sentinel(lines):
        if current is not None:
            is_title = (
                bool(WIKITEXT_TITLE.match(current))
                and previous is not None
                and not previous.strip()
                and (following is None or not following.strip())
            )
            if is_title:
                if paragraphs:
                    yield "\n".join(paragraphs)
                paragraphs = []
            elif current.strip() and not WIKITEXT_HEADING.match(current):
                paragraphs.append(current.strip())
        previous, current = current, following
    if paragraphs:
        yield "\n".join(paragraphs)


def _with_sentinel(lines: Iterator[str]) -> Iterator[str | None]:
    yield from lines
    yield None


def _doc_tag_documents(lines: Iterator[str]) -> Iterator[str]:
    """WikiExtractor output: <doc ...>, a title line, then paragraphs, then </doc>; the title is dropped."""
    paragraphs: list[str] | None = None
    seen_title = False
    for line in lines:
        if line.startswith("<doc "):
            paragraphs, seen_title = [], False
        elif line.startswith("</doc>"):
            if paragraphs:
                yield "\n".join(paragraphs)
            paragraphs = None
        elif paragraphs is not None and line.strip():
            if seen_title:
                paragraphs.append(line.strip())
            seen_title = True


def _blank_line_documents(lines: Iterator[str]) -> Iterator[str]:
    current: list[str] = []
    for line in lines:
        if line.strip():
            current.append(line.strip())
        elif current:
            yield "\n".join(current)
            current = []
    if current:
        yield "\n".join(current)


TEXT_LAYOUTS = {
    "document_per_line": lambda lines: (line for line in lines if line.strip()),
    "blank_line_separated": _blank_line_documents,
    "wikitext": _wikitext_documents,
    "doc_tags": _doc_tag_documents,
}


def _read_file(path: Path, corpus: FilesCorpus) -> Iterator[str]:
    file_format = corpus.format or _suffix_format(path)
    if file_format == "text":
        yield from TEXT_LAYOUTS[corpus.text_layout](_text_lines(path, corpus.encoding or "utf-8"))
    elif file_format == "jsonl":
        yield from _json_documents(path, corpus)
    else:
        yield from _parquet_documents(path, corpus)


def _text_lines(path: Path, encoding: str, newline: str | None = None) -> Iterator[str]:
    """The file's lines without their line break, streamed; a byte that does not decode is an error
    naming the file and its offset."""
    try:
        with path.open(encoding=encoding, newline=newline) as f:
            for line in f:
                yield line.rstrip("\n")
    except UnicodeError:
        bad = first_bad_byte(path, encoding)
        if bad is None:  # decodes in full when read again: the file changed while it was read
            raise
        raise DataSourceError(
            f"{decoding_problem(path, encoding, bad)}: set data.corpus.encoding to the file's, e.g. latin-1"
        ) from None


def _json_documents(path: Path, corpus: FilesCorpus) -> Iterator[str]:
    """The text field of every row of a JSONL file (a file whose first character is `[` holds one
    JSON list of rows instead). A row without the field is an empty document; a file where no row
    has it is an error, as is a line that is not a JSON object, named by its line number."""
    field = corpus.text_field
    found, first_keys = False, None
    for place, row in _json_rows(path, corpus.encoding or "utf-8"):
        if not isinstance(row, dict):
            raise DataSourceError(f"{path}: {place} is a JSON {type(row).__name__}, not an object")
        first_keys = list(row) if first_keys is None else first_keys
        found = found or field in row
        yield str(row.get(field) or "")
    if first_keys is not None and not found:
        raise DataSourceError(
            f"{path}: no field {field!r} in any row (line 1 has: {', '.join(first_keys) or 'no field'}); "
            "set data.corpus.text_field"
        )


def _json_rows(path: Path, encoding: str) -> Iterator[tuple[str, object]]:
    """(where, value) of every row: "line N" of JSON lines, "item [i]" of a JSON list."""
    lines = _text_lines(path, encoding, newline="\n")  # split at "\n" alone: JSON strings may hold U+2028
    numbered = ((number, line.removesuffix("\r")) for number, line in enumerate(lines, 1))
    first = next(((n, line) for n, line in numbered if line.strip()), None)
    if first is None:
        return
    if first[1].lstrip().startswith("["):
        rest = "\n".join(line for _, line in numbered)
        yield from ((f"item [{i}]", row) for i, row in enumerate(_parse_json(path, f"{first[1]}\n{rest}", first[0])))
        return
    for number, line in itertools.chain([first], numbered):
        if line.strip():
            yield f"line {number}", _parse_json(path, line, number)


def _parse_json(path: Path, text: str, first_line: int) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        line = first_line + err.lineno - 1
        raise DataSourceError(f"{path}: line {line} is not valid JSON ({err.msg}, column {err.colno})") from None


def _parquet_documents(path: Path, corpus: FilesCorpus) -> Iterator[str]:
    """The text column of a Parquet file, streamed in record batches."""
    import pyarrow
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.ParquetFile(path)
        names = table.schema_arrow.names
        if corpus.text_field not in names:
            raise DataSourceError(
                f"{path}: no field {corpus.text_field!r} (have: {', '.join(names)}); set data.corpus.text_field"
            )
        for batch in table.iter_batches(columns=[corpus.text_field]):
            yield from (str(value or "") for value in batch.column(0).to_pylist())
    except (pyarrow.ArrowException, OSError) as err:
        raise DataSourceError(f"{path}: not a readable Parquet file ({err})") from None


def _read_hub(corpus: HubCorpus) -> Iterator[str]:
    datasets = datasets_module()

    try:
        table = datasets.load_dataset(corpus.name, corpus.config, split=corpus.split)
    except Exception as err:  # datasets raises many types (ConnectionError, OfflineModeIsEnabled, ...)
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
        hint = " (offline mode is set)" if offline else ""
        raise DataSourceError(
            f"could not load hub dataset {corpus.name!r}"
            f"{f' config {corpus.config!r}' if corpus.config else ''} split {corpus.split!r}{hint}: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
            "Without network, point data.corpus at local files: source=files, paths=[...]"
        ) from None
    if corpus.text_field not in table.column_names:
        raise DataSourceError(f"hub:{corpus.name}: no column {corpus.text_field!r} (have: {table.column_names})")
    rows = (str(row[corpus.text_field] or "") for row in table.select_columns([corpus.text_field]))
    if corpus.text_layout == "wikitext":
        yield from _wikitext_documents(row.rstrip("\n") for row in rows)
    else:
        yield from rows


OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


@functools.cache
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached now: false at once in offline mode, else a TCP
    connect, made once per process; a suite uses it to fall back to local data before any download
    is tried, a hub task to fail at once rather than after datasets' retries."""
    if any(os.environ.get(name) for name in OFFLINE_VARIABLES):
        return False
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return True  # the hub is reached through the proxy: a direct connect tells nothing; datasets will try
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True
