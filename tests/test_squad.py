"""SQuAD as a span-extraction task: the official EM / F1 on hand-computed cases, windows over long
contexts, answers from logits, the split by article, files that do not fit."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED_DATA, synthetic_squad
from tokenizers import Tokenizer, models, pre_tokenizers

from harness.config import TokenizerConfig
from harness.data.tokenizer import ROBERTA_SPECIALS, build_tokenizer, special_tokens
from harness.squad import (
    SPAN_TASKS,
    Question,
    answers_from_logits,
    article_split,
    baseline_predictions,
    best_spans,
    load_squad,
    normalize_answer,
    question_scores,
    read_squad_json,
    squad_metrics,
    windows,
)
from harness.tasks import TaskDataError

SQUAD_DIR = SHARED_DATA / "squad"

# ----------------------------------------------------------------------------------------- metrics


def test_normalisation_lowers_and_drops_punctuation_articles_and_extra_spaces():
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("another theory, thereby") == "another theory thereby"  # articles as words only
    assert normalize_answer("U.S. (1776)") == "us 1776"
    assert normalize_answer("  the  ") == ""


@pytest.mark.parametrize(
    ("prediction", "answers", "exact", "f1"),
    [
        ("Denver Broncos", ["Denver Broncos"], 1.0, 1.0),
        ("the Denver Broncos.", ["Denver Broncos"], 1.0, 1.0),  # normalised before comparing
        ("the cat sat", ["a cat sat on the mat"], 0.0, 2 * 1.0 * 0.5 / 1.5),  # P 2/2, R 2/4
        ("x x y", ["x y y"], 0.0, 2 / 3),  # bags of words: x once and y once in common
        ("Broncos team", ["Denver Broncos", "Broncos"], 0.0, 2 * 0.5 * 1.0 / 1.5),  # the best gold: P 1/2, R 1/1
        ("Broncos", ["Denver Broncos", "broncos", "the Broncos"], 1.0, 1.0),  # max over gold answers
        ("Paris", ["Lyon"], 0.0, 0.0),
        ("", ["Lyon"], 0.0, 0.0),  # an empty answer to an answerable question
        ("", [], 1.0, 1.0),  # SQuAD 2.0: unanswerable, nothing predicted
        ("the", [], 1.0, 1.0),  # ... what normalises to nothing is nothing
        ("Lyon", [], 0.0, 0.0),  # ... any answer scores 0
    ],
)
def test_exact_and_f1_of_one_question(prediction, answers, exact, f1):
    got_exact, got_f1 = question_scores(prediction, answers)
    assert got_exact == exact and got_f1 == pytest.approx(f1)


def test_scores_are_means_over_questions_with_has_and_no_answer_parts():
    gold = {"q1": ["Paris"], "q2": [], "q3": ["blue", "dark blue"], "q4": []}
    predicted = {"q1": "paris.", "q2": "", "q3": "light blue", "q4": "Lyon"}
    # q1 (1, 1); q2 (1, 1); q3 exact 0, F1 max(2*.5*1/1.5, 2*.5*.5/1) = 2/3; q4 (0, 0)
    scores = squad_metrics(gold, predicted)
    assert scores["exact"] == pytest.approx(2 / 4)
    assert scores["f1"] == pytest.approx((1 + 1 + 2 / 3 + 0) / 4)
    assert scores["has_ans_f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert scores["no_ans_f1"] == pytest.approx(1 / 2)
    assert set(squad_metrics({"q1": ["Paris"]}, {"q1": "Paris"})) == {"exact", "f1"}  # v1.1: no split
    with pytest.raises(ValueError, match="without a prediction"):
        squad_metrics(gold, {"q1": "Paris"})


def test_baselines_read_no_question():
    questions = [
        Question("a", "T", "Paris is big. It is old.", "?", ("Paris",), (0,)),
        Question("b", "T", "Paris is big. It is old.", "?", (), ()),
    ]
    assert baseline_predictions(SPAN_TASKS["squad"], questions[:1]) == {"a": "Paris is big."}
    v2 = squad_metrics({"a": ["Paris"], "b": []}, baseline_predictions(SPAN_TASKS["squad2"], questions))
    assert v2["exact"] == v2["f1"] == 0.5  # the share of unanswerable questions


# ----------------------------------------------------------------------------------------- windows

WORDS = [f"w{i}" for i in range(10)]
CONTEXT = " ".join(WORDS)  # w0 at characters 0-1, w1 at 3-4, ..., w5 at 15-16, w6 at 18-19


@pytest.fixture(scope="module")
def word_tokenizer():
    """One token per space-separated word, RoBERTa's special tokens: exact positions are checkable."""
    vocab = {token: i for i, token in enumerate([*ROBERTA_SPECIALS, "where", *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer, special_tokens(tokenizer, "byte_bpe")


def tokens_of(tokenizer, window) -> list[str]:
    return [tokenizer.id_to_token(int(i)) for i in window.input_ids]


def test_windows_slide_over_the_context_and_point_at_the_answer(word_tokenizer):
    tokenizer, specials = word_tokenizer
    question = Question("q", "T", CONTEXT, "where", ("w5 w6",), (15,))
    # max_len 9 = <s> where </s></s> + 4 context tokens + </s>: stride 2 gives windows from w0, w2, w4, w6
    found = windows([question], tokenizer, specials, max_len=9, token_types=2)
    assert [tokens_of(tokenizer, w) for w in found] == [
        ["<s>", "where", "</s>", "</s>", "w0", "w1", "w2", "w3", "</s>"],
        ["<s>", "where", "</s>", "</s>", "w2", "w3", "w4", "w5", "</s>"],
        ["<s>", "where", "</s>", "</s>", "w4", "w5", "w6", "w7", "</s>"],
        ["<s>", "where", "</s>", "</s>", "w6", "w7", "w8", "w9", "</s>"],
    ]
    # only the third window holds the whole answer; the others point at the first token
    assert [(w.start, w.end) for w in found] == [(0, 0), (0, 0), (5, 6), (0, 0)]
    third = found[2]
    assert tokens_of(tokenizer, third)[5:7] == ["w5", "w6"]
    assert third.offsets.tolist() == [[-1, -1]] * 4 + [[12, 14], [15, 17], [18, 20], [21, 23], [-1, -1]]
    assert third.token_types.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    # one token type: everything is segment 0; an unanswerable question points at the first token everywhere
    unanswerable = Question("u", "T", CONTEXT, "where", (), ())
    plain = windows([unanswerable], tokenizer, specials, max_len=9, token_types=1)
    assert all(w.token_types.max() == 0 and (w.start, w.end) == (0, 0) for w in plain)
    # a context that fits is one window
    assert len(windows([question], tokenizer, specials, max_len=64, token_types=2)) == 1


SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Paris is the capital of France, and Lyon is a city in the south east.",
    "In 1776 the declaration was signed by fifty-six delegates in Philadelphia.",
] * 20


@pytest.mark.parametrize("kind", ["byte_bpe", "wordpiece", "char_bpe"])
def test_answer_characters_map_to_the_tokens_that_spell_them(kind):
    """Byte-level BPE offsets carry a word's leading space; WordPiece lower-cases: the mapped tokens
    still spell exactly the answer, in every window that holds it."""
    tokenizer, trainer = build_tokenizer(TokenizerConfig(kind=kind, vocab_size=400, lowercase=kind == "wordpiece"))
    tokenizer.train_from_iterator(SENTENCES, trainer)
    specials = special_tokens(tokenizer, kind)
    context = " ".join(SENTENCES[:3])
    for answer in ("quick brown fox", "Paris", "Lyon", "fifty-six delegates", "Philadelphia"):
        start = context.index(answer)
        question = Question("q", "T", context, "What is it?", (answer,), (start,))
        found = windows([question], tokenizer, specials, max_len=24, token_types=2)
        holding = [w for w in found if w.start > 0]
        assert holding, answer
        for w in holding:
            assert context[w.offsets[w.start, 0] : w.offsets[w.end, 1]].strip() == answer


def test_answers_come_from_the_best_valid_span_across_windows(word_tokenizer):
    tokenizer, specials = word_tokenizer
    question = Question("q", "T", CONTEXT, "where", ("w5 w6",), (15,))
    found = windows([question], tokenizer, specials, max_len=9, token_types=2)
    starts = [np.zeros(9, dtype=np.float32) for _ in found]
    ends = [np.zeros(9, dtype=np.float32) for _ in found]
    starts[0][1] = ends[0][1] = 50.0  # the question token: never an answer
    starts[1][:], ends[1][:] = -20.0, -20.0
    starts[1][7], ends[1][4] = 20.0, 20.0  # w5 .. w2: end before start, invalid (valid spans here score <= 0)
    starts[2][5], ends[2][6] = 3.0, 2.0  # w5 w6, score 5
    starts[3][4], ends[3][4] = 4.0, 0.5  # w6, score 4.5
    assert answers_from_logits([question], found, starts, ends, unanswerable=False) == {"q": "w5 w6"}
    # SQuAD 2.0: the no-answer score is the lowest start[0] + end[0] over the windows
    for s, e in zip(starts, ends):
        s[0], e[0] = 3.0, 3.0  # 6 > 5 everywhere: no answer
    assert answers_from_logits([question], found, starts, ends, unanswerable=True) == {"q": ""}
    starts[1][0] = 1.0  # one window scores no-answer at 4 < 5: the span stands
    assert answers_from_logits([question], found, starts, ends, unanswerable=True) == {"q": "w5 w6"}
    # spans longer than the cap are not candidates
    one = windows([question], tokenizer, specials, max_len=64, token_types=2)[0]
    start, end = np.zeros((1, len(one.input_ids)), np.float32), np.zeros((1, len(one.input_ids)), np.float32)
    start[0, 4], end[0, 13] = 10.0, 10.0  # w0 .. w9: 10 tokens
    assert answers_from_logits([question], [one], list(start), list(end), unanswerable=False) == {"q": CONTEXT}
    score, first, last = best_spans(start, end, one.offsets[None, :, 0] >= 0, max_tokens=5)
    assert score[0] == 10.0 and last[0] - first[0] < 5 and (first[0] == 4 or last[0] == 13)


# ----------------------------------------------------------------------------------------- data


def test_the_article_split_never_mixes_articles(tmp_path):
    questions = read_squad_json(synthetic_squad(tmp_path / "s.json"), SPAN_TASKS["squad"])
    train, dev = article_split(questions)
    assert {q.title for q in dev} == {"Article 3", "Article 7"}  # the 4th and 8th of 10
    assert not {q.title for q in train} & {q.title for q in dev}
    assert len(train) + len(dev) == len(questions) == 40
    data = load_squad("squad", (str(tmp_path / "s.json"), str(tmp_path / "s.json")), 10, None)
    assert len(data.train) == 10 and len(data.dev) == 8 and "every 4th article scored" in data.split
    assert not {q.title for q in data.train} & {q.title for q in data.dev}


@pytest.mark.skipif(not SQUAD_DIR.is_dir(), reason="../shared/data/squad is not present")
@pytest.mark.parametrize(("name", "file", "articles"), [("squad", "dev-v1.1.json", 48),
                                                         ("squad2", "dev-v2.0-cs224n-half.json", 16)])  # fmt: skip
def test_the_local_dev_files_split_by_article(name, file, articles):
    path = str(SQUAD_DIR / file)
    data = load_squad(name, (path, path), None, None)
    train_titles, dev_titles = {q.title for q in data.train}, {q.title for q in data.dev}
    assert len(train_titles) + len(dev_titles) == articles and len(dev_titles) == articles // 4
    assert not train_titles & dev_titles
    assert not {q.context for q in data.train} & {q.context for q in data.dev}  # no paragraph on both sides
    if name == "squad2":
        assert any(not q.answerable for q in data.dev) and any(q.answerable for q in data.dev)


def test_files_that_do_not_fit_the_task_fail_clearly(tmp_path, monkeypatch):
    v2 = synthetic_squad(tmp_path / "v2.json", unanswerable=True)
    with pytest.raises(TaskDataError, match="use task squad2"):
        load_squad("squad", (str(v2), str(v2)), None, None)
    (tmp_path / "bad.json").write_text(
        '{"data": [{"title": "x", "paragraphs": [{"qas": [{"id": "1", "question": "?", "answers": []}]}]}]}'
    )
    with pytest.raises(TaskDataError, match="lacks the field 'context'"):
        load_squad("squad", (str(tmp_path / "bad.json"),) * 2, None, None)
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(TaskDataError, match=r"could not load 'rajpurkar/squad_v2'.*eval.task_files.squad2"):
        load_squad("squad2", None, None, None)
