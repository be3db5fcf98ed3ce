"""Corpus sources -> documents (one string per document, paragraphs separated by newlines)."""

from __future__ import annotations

import os
from pathlib import Path

from harness.config import FilesCorpus, HubCorpus, SyntheticCorpus
from harness.data.synthetic import generate_corpus


class DataSourceError(Exception):
    """A corpus that cannot be read: names the source and the cause."""


def load_documents(corpus: SyntheticCorpus | FilesCorpus | HubCorpus) -> list[str]:
    if isinstance(corpus, SyntheticCorpus):
        documents = [doc.text for doc in generate_corpus(corpus.documents, corpus.seed)]
    elif isinstance(corpus, FilesCorpus):
        documents = []
        for path in corpus.paths:
            documents.extend(_read_file(Path(path), corpus))
            if corpus.max_documents and len(documents) >= corpus.max_documents:
                break
        documents = documents[: corpus.max_documents]
    else:
        documents = _read_hub(corpus)
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise DataSourceError(f"corpus {_describe(corpus)} has no non-empty document")
    return documents


def _describe(corpus: SyntheticCorpus | FilesCorpus | HubCorpus) -> str:
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


def _read_file(path: Path, corpus: FilesCorpus) -> list[str]:
    file_format = corpus.format or _suffix_format(path)
    if file_format == "text":
        text = path.read_text(encoding="utf-8")
        if corpus.text_layout == "document_per_line":
            return [line for line in text.splitlines() if line.strip()]
        blocks, current = [], []
        for line in text.splitlines():
            if line.strip():
                current.append(line.strip())
            elif current:
                blocks.append("\n".join(current))
                current = []
        if current:
            blocks.append("\n".join(current))
        return blocks
    import datasets  # imported here: slow to import, and only file/hub corpora need it

    builder = "json" if file_format == "jsonl" else "parquet"
    table = datasets.load_dataset(builder, data_files=str(path), split="train")
    if corpus.text_field not in table.column_names:
        raise DataSourceError(
            f"{path}: no field {corpus.text_field!r} (have: {', '.join(table.column_names)}); "
            "set data.corpus.text_field"
        )
    return [str(t) for t in table[corpus.text_field]]


def _read_hub(corpus: HubCorpus) -> list[str]:
    import datasets

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
    texts = table[corpus.text_field]
    return [str(t) for t in texts[: corpus.max_documents] if t]
