"""Documents -> sentences, with a sentence splitter built for the job (blingfire's model)."""

from __future__ import annotations

from blingfire import text_to_sentences


def split_document(document: str) -> list[str]:
    """A document's sentences; paragraphs (lines) never share a sentence."""
    sentences: list[str] = []
    for paragraph in document.split("\n"):
        if paragraph.strip():
            sentences.extend(s for s in text_to_sentences(paragraph.strip()).split("\n") if s.strip())
    return sentences
