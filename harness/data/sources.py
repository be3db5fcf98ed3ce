"""Corpus sources -> a stream of documents (one string each, paragraphs separated by newlines).

Every reader yields documents one at a time, so a corpus far larger than memory passes through.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator
from pathlib import Path

from harness.config import FilesCorpus, HubCorpus, SyntheticCorpus
from harness.data.synthetic import generate_corpus


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
        with path.open(encoding="utf-8") as f:
            yield from TEXT_LAYOUTS[corpus.text_layout](line.rstrip("\n") for line in f)
        return
    datasets = datasets_module()  # only file/hub corpora need it

    builder = "json" if file_format == "jsonl" else "parquet"
    table = datasets.load_dataset(builder, data_files=str(path), split="train")
    if corpus.text_field not in table.column_names:
        raise DataSourceError(
            f"{path}: no field {corpus.text_field!r} (have: {', '.join(table.column_names)}); "
            "set data.corpus.text_field"
        )
    for row in table.select_columns([corpus.text_field]):  # Arrow-backed: rows stream from disk
        yield str(row[corpus.text_field] or "")


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
