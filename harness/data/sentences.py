"""Documents -> sentences, with a sentence splitter built for the job (blingfire's model)."""

from __future__ import annotations

from blingfire import text_to_sentences


def split_sentences(documents: list[str]) -> list[list[str]]:
    """Each document becomes its list of sentences; paragraphs (lines) never share a sentence."""
    split: list[list[str]] = []
    for document in documents:
        sentences: list[str] = []
        for paragraph in document.split("\n"):
            if paragraph.strip():
                sentences.extend(s for s in text_to_sentences(paragraph.strip()).split("\n") if s.strip())
        split.append(sentences)
    return split
