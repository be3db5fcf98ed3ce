"""SQuAD as a span-extraction task: its data, the windows a model reads, answers from logits, and the
official EM / F1.

- Data: SQuAD JSON files (`eval.task_files.<task>`), or the hub (`rajpurkar/squad`,
  `rajpurkar/squad_v2`). When train and dev name the same file, it is split by article (the local
  protocol, `article_split`): only dev files exist offline, so the model fine-tunes on some of
  their articles and is scored on the others, never on a paragraph of an article it trained on.
- Windows: `[cls] question <pair separator> context-window [sep]`. A context longer than what is left
  of max_len is read in overlapping windows `doc_stride` tokens apart; a window that does not hold the
  whole answer (or a question without one) points start and end at position 0, the no-answer position.
- Answers: per window the best span with start <= end, at most `MAX_ANSWER_TOKENS` tokens, inside the
  context; the best over the question's windows wins. SQuAD 2.0: the no-answer score (start + end
  logits at position 0, the lowest over the windows) against the best span's: empty when it is higher
  (threshold 0, fixed: nothing is tuned on dev).
- Metrics: exact match and token F1 after the official normalisation (lower case, no punctuation, no
  articles a/an/the, single spaces), the maximum over the gold answers; an unanswerable question has
  the empty answer as its only gold answer, so only an empty prediction scores on it. Written from
  the definition and reported as fractions (the paper's tables print 100 times them).
"""

from __future__ import annotations

import json
import os
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data.tokenizer import SpecialTokens
from harness.tasks import TaskDataError


@dataclass(frozen=True)
class SpanTaskSpec:
    name: str
    version: str  # "1.1" or "2.0"
    metrics: tuple[str, ...]  # the first is the task's headline
    hub: str  # dataset name on the hub (splits train / validation)

    @property
    def unanswerable(self) -> bool:
        """Whether questions may have no answer in their paragraph (SQuAD 2.0)."""
        return self.version == "2.0"


SPAN_TASKS: dict[str, SpanTaskSpec] = {
    "squad": SpanTaskSpec("squad", "1.1", ("f1", "exact"), "rajpurkar/squad"),
    "squad2": SpanTaskSpec("squad2", "2.0", ("f1", "exact", "has_ans_f1", "no_ans_f1"), "rajpurkar/squad_v2"),
}

HELD_OUT_EVERY = 4  # local protocol: articles 4, 8, 12, ... of the file (in file order) are scored
MAX_QUERY_TOKENS = 64  # a longer question is cut (the standard recipe's max_query_length)
MAX_ANSWER_TOKENS = 30  # the longest span predicted (max_answer_length)
NO_ANSWER_THRESHOLD = 0.0  # SQuAD 2.0: empty when no-answer score - best span score > this


# ------------------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class Question:
    id: str
    title: str  # the article's
    context: str
    question: str
    answers: tuple[str, ...]  # gold answer texts; empty: unanswerable
    starts: tuple[int, ...]  # their character offsets in the context

    @property
    def answerable(self) -> bool:
        return bool(self.answers)


@dataclass(frozen=True)
class SquadData:
    train: list[Question]
    dev: list[Question]
    split: str  # where each side came from, in words


def read_squad_json(path: Path, spec: SpanTaskSpec) -> list[Question]:
    """Every question of a SQuAD JSON file, in file order."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        articles = raw["data"]
    except (OSError, ValueError) as err:
        raise TaskDataError(f"{spec.name}: cannot read {path}: {err}") from None
    except (KeyError, TypeError):
        raise TaskDataError(f"{spec.name}: {path} is not SQuAD JSON (no top-level 'data' list)") from None
    questions = []
    try:
        for article in articles:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    impossible = bool(qa.get("is_impossible", False))
                    answers = [] if impossible else qa["answers"]
                    questions.append(
                        Question(
                            str(qa["id"]),
                            article["title"],
                            paragraph["context"],
                            qa["question"],
                            tuple(a["text"] for a in answers),
                            tuple(int(a["answer_start"]) for a in answers),
                        )  # fmt: skip
                    )
    except (KeyError, TypeError) as err:
        raise TaskDataError(f"{spec.name}: {path}: an article, paragraph or question lacks the field {err}") from None
    check_questions(questions, spec, str(path))
    return questions


def check_questions(questions: list[Question], spec: SpanTaskSpec, where: str) -> None:
    if not questions:
        raise TaskDataError(f"{spec.name}: {where} holds no questions")
    if not spec.unanswerable:
        unanswerable = sum(not q.answerable for q in questions)
        if unanswerable:
            raise TaskDataError(
                f"{spec.name}: {where} has {unanswerable} unanswerable question(s): that is SQuAD 2.0, use task squad2"
            )
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        raise TaskDataError(f"{spec.name}: {where}: question ids repeat")


def article_split(questions: list[Question], every: int = HELD_OUT_EVERY) -> tuple[list[Question], list[Question]]:
    """(train, dev) by article: the articles in order of first appearance, every `every`-th of them
    (the 4th, 8th, ...) scored, the rest trained on. A whole article is on one side."""
    titles = list(dict.fromkeys(q.title for q in questions))
    if len(titles) < 2:
        raise TaskDataError(f"a split by article needs at least 2 articles, the file has {len(titles)}")
    scored = {t for i, t in enumerate(titles) if i % every == every - 1} or {titles[-1]}
    return [q for q in questions if q.title not in scored], [q for q in questions if q.title in scored]


def cap_questions(questions: list[Question], limit: int | None, seed: int = 0) -> list[Question]:
    """A seeded subset of at most `limit` questions, in file order (the same for every run and arm)."""
    if limit is None or limit >= len(questions):
        return questions
    picked = np.sort(np.random.default_rng(seed).choice(len(questions), size=limit, replace=False))
    return [questions[i] for i in picked]


def load_squad(name: str, files: tuple[str, str] | None, train_cap: int | None, dev_cap: int | None) -> SquadData:
    """From files (train, dev); the same file twice is split by article. Without files: the hub."""
    spec = SPAN_TASKS[name]
    if files is None:
        train, dev = _load_hub(spec)
        split = f"hub {spec.hub}: train / validation"
    elif Path(files[0]).resolve() == Path(files[1]).resolve():
        train, dev = article_split(read_squad_json(Path(files[0]), spec))
        articles = len({q.title for q in train}), len({q.title for q in dev})
        split = (
            f"local article split of {Path(files[0]).name}: every {HELD_OUT_EVERY}th article scored "
            f"({articles[0]} articles trained on, {articles[1]} scored)"
        )
    else:
        train, dev = read_squad_json(Path(files[0]), spec), read_squad_json(Path(files[1]), spec)
        split = f"{Path(files[0]).name} / {Path(files[1]).name}"
    return SquadData(cap_questions(train, train_cap), cap_questions(dev, dev_cap), split)


def _load_hub(spec: SpanTaskSpec) -> tuple[list[Question], list[Question]]:
    from harness.data.sources import datasets_module

    datasets = datasets_module()

    try:
        splits = [datasets.load_dataset(spec.hub, split=split) for split in ("train", "validation")]
    except Exception as err:  # datasets raises many types when offline
        offline = " (offline mode is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise TaskDataError(
            f"{spec.name}: could not load {spec.hub!r} from the hub{offline}: {type(err).__name__}. Without network, "
            f"set eval.task_files.{spec.name} to SQuAD JSON files (train and dev; the same dev file twice: "
            "fine-tune on some of its articles, score the rest)"
        ) from None
    out = []
    for table in splits:
        questions = [
            Question(str(row["id"]), row["title"], row["context"], row["question"],
                     tuple(row["answers"]["text"]), tuple(int(s) for s in row["answers"]["answer_start"]))
            for row in table
        ]  # fmt: skip
        check_questions(questions, spec, spec.hub)
        out.append(questions)
    return out[0], out[1]


# --------------------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Window:
    """One model input: a question with a window of its context."""

    question: int  # index into the question list
    input_ids: np.ndarray  # [L]
    token_types: np.ndarray  # [L]
    offsets: np.ndarray  # [L, 2] characters of the context each token covers; -1 outside the context
    start: int  # target positions; 0 (the first token): no answer in this window
    end: int


def _answer_tokens(offsets: list[tuple[int, int]], start_char: int, end_char: int) -> tuple[int, int] | None:
    """First and last context token overlapping characters [start_char, end_char), or None. Offsets may
    include a token's leading space (byte-level BPE): the first token is the first ending after start_char."""
    first = next((i for i, (_, e) in enumerate(offsets) if e > start_char), None)
    last = next((i for i in reversed(range(len(offsets))) if offsets[i][0] < end_char), None)
    if first is None or last is None or last < first:
        return None
    return first, last


def windows(
    questions: list[Question],
    tokenizer,
    specials: SpecialTokens,
    max_len: int,
    token_types: int,
    doc_stride: int | None = None,
) -> list[Window]:
    """Every question's windows, in order. Targets come from its first gold answer; a window without
    the whole answer, or a question without one, targets position 0. `doc_stride` (tokens between
    window starts) defaults to half of the context's room, at most 128 (the standard recipe's)."""
    contexts = list(dict.fromkeys(q.context for q in questions))
    encoded = dict(zip(contexts, tokenizer.encode_batch(contexts, add_special_tokens=False)))
    asked = tokenizer.encode_batch([q.question for q in questions], add_special_tokens=False)
    second = specials.pair_segment if token_types > 1 else 0
    out = []
    for index, (q, question) in enumerate(zip(questions, asked)):
        q_ids = question.ids[:MAX_QUERY_TOKENS]
        context = encoded[q.context]
        ctx_ids, ctx_offsets = context.ids, context.offsets
        first = 1 + len(q_ids) + len(specials.pair_separator)  # position of the first context token
        room = max_len - first - 1
        if room < 1:
            raise ValueError(f"max_len {max_len} leaves no room for the context after a {len(q_ids)}-token question")
        stride = doc_stride or max(1, min(128, room // 2))
        answer = None
        if q.answerable:
            answer = _answer_tokens(ctx_offsets, q.starts[0], q.starts[0] + len(q.answers[0]))
        head = [specials.cls, *q_ids, *specials.pair_separator]
        begin = 0
        while True:
            length = min(room, len(ctx_ids) - begin)
            ids = np.asarray([*head, *ctx_ids[begin : begin + length], specials.sep], dtype=np.int64)
            types = np.asarray([0] * first + [second] * (length + 1), dtype=np.int64)
            offsets = np.full((len(ids), 2), -1, dtype=np.int64)
            if length:
                offsets[first : first + length] = ctx_offsets[begin : begin + length]
            start = end = 0
            if answer is not None and begin <= answer[0] and answer[1] < begin + length:
                start, end = first + answer[0] - begin, first + answer[1] - begin
            out.append(Window(index, ids, types, offsets, start, end))
            if begin + length >= len(ctx_ids):
                break
            begin += min(length, stride)
    return out


# --------------------------------------------------------------------------------------- answers


def best_spans(
    start_logits: np.ndarray, end_logits: np.ndarray, in_context: np.ndarray, max_tokens: int = MAX_ANSWER_TOKENS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per window [W, L]: the score (start + end logit), start and end of the best span with
    start <= end < start + max_tokens, both inside the context; score -inf where there is none."""
    width = start_logits.shape[1]
    i = np.arange(width)
    shape_ok = (i[None, :] >= i[:, None]) & (i[None, :] - i[:, None] < max_tokens)  # [L, L]: (start, end)
    valid = shape_ok[None] & in_context[:, :, None] & in_context[:, None, :]
    scores = np.where(valid, start_logits[:, :, None] + end_logits[:, None, :], -np.inf).reshape(len(valid), -1)
    flat = scores.argmax(1)
    return scores[np.arange(len(flat)), flat], flat // width, flat % width


def answers_from_logits(
    questions: list[Question],
    windows_: list[Window],
    start_logits: list[np.ndarray],
    end_logits: list[np.ndarray],
    unanswerable: bool,
    threshold: float = NO_ANSWER_THRESHOLD,
) -> dict[str, str]:
    """Question id -> predicted text: the best span over the question's windows; with `unanswerable`,
    empty when the no-answer score (the lowest start[0] + end[0] over its windows) beats it by more
    than `threshold`."""
    best: dict[int, tuple[float, str]] = {}
    null: dict[int, float] = {}
    width = max(len(w.input_ids) for w in windows_)

    def padded(rows: list[np.ndarray]) -> np.ndarray:
        out = np.full((len(rows), width), -np.inf, dtype=np.float32)
        for r, row in enumerate(rows):
            out[r, : len(row)] = row
        return out

    starts, ends = padded(start_logits), padded(end_logits)
    in_context = np.zeros((len(windows_), width), dtype=bool)
    for r, w in enumerate(windows_):
        in_context[r, : len(w.offsets)] = w.offsets[:, 0] >= 0
    for lo in range(0, len(windows_), 256):  # the [W, L, L] score tensor a block at a time
        block = slice(lo, lo + 256)
        scores, span_starts, span_ends = best_spans(starts[block], ends[block], in_context[block])
        for r, (score, s, e) in enumerate(zip(scores, span_starts, span_ends), lo):
            w = windows_[r]
            null[w.question] = min(null.get(w.question, np.inf), float(starts[r, 0] + ends[r, 0]))
            if np.isfinite(score) and score > best.get(w.question, (-np.inf, ""))[0]:
                context = questions[w.question].context
                best[w.question] = (float(score), context[w.offsets[s, 0] : w.offsets[e, 1]].strip())
    predictions = {}
    for index, q in enumerate(questions):
        score, text = best.get(index, (-np.inf, ""))
        if unanswerable and null.get(index, np.inf) - score > threshold:
            text = ""
        predictions[q.id] = text
    return predictions


# --------------------------------------------------------------------------------------- metrics

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower case, punctuation removed, the articles a/an/the removed, whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """F1 of the bags of normalised words; two empty answers agree (1), one empty answer scores 0."""
    predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not wanted:
        return float(predicted == wanted)
    shared = sum((Counter(predicted) & Counter(wanted)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(wanted)
    return 2 * precision * recall / (precision + recall)


def question_scores(prediction: str, answers: list[str] | tuple[str, ...]) -> tuple[float, float]:
    """(exact, f1) of one prediction: the best over the gold answers; none means the empty answer."""
    golds = list(answers) or [""]
    return max(exact_match(prediction, g) for g in golds), max(token_f1(prediction, g) for g in golds)


def squad_metrics(gold: dict[str, list[str]], predictions: dict[str, str]) -> dict[str, float]:
    """Means over every gold question: `exact`, `f1`, and over answerable / unanswerable questions
    `has_ans_f1` / `no_ans_f1` (where there are such questions and some of the other kind). A
    question without a prediction is an error, not a zero."""
    missing = [qid for qid in gold if qid not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} question(s) without a prediction, e.g. {missing[0]!r}")
    scores = {qid: question_scores(predictions[qid], answers) for qid, answers in gold.items()}
    mean = lambda values: float(np.mean(values)) if values else float("nan")  # noqa: E731
    out = {"exact": mean([s[0] for s in scores.values()]), "f1": mean([s[1] for s in scores.values()])}
    has = [scores[q][1] for q, a in gold.items() if a]
    none = [scores[q][1] for q, a in gold.items() if not a]
    if has and none:
        out.update(has_ans_f1=mean(has), no_ans_f1=mean(none))
    return out


def first_sentence(context: str) -> str:
    """The context up to its first '. ', '? ' or '! ' (the whole context when there is none)."""
    found = re.search(r"[.?!]\s", context)
    return context[: found.start() + 1] if found else context


def baseline_predictions(spec: SpanTaskSpec, questions: list[Question]) -> dict[str, str]:
    """A predictor that reads neither question nor answer: SQuAD 2.0 always answers nothing (its score is
    the share of unanswerable questions); SQuAD 1.1 answers the paragraph's first sentence."""
    if spec.unanswerable:
        return {q.id: "" for q in questions}
    return {q.id: first_sentence(q.context) for q in questions}


def gold_answers(questions: list[Question]) -> dict[str, list[str]]:
    return {q.id: list(q.answers) for q in questions}
