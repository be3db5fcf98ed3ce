"""The built-in corpus: generated, deterministic, and built so that context pays off early.

A small model learns English word statistics for a long time before it uses context (see
PERF-NOTES.md), so a smoke-scale ablation on real text shows no format or NSP effect. This corpus
is built so that it does:

- a *world* (from `seed`) has pseudo-words: shared function words, per-topic nouns, verbs and
  adjectives, and a pool of capitalised entity names;
- a *document* has one topic and a small cast of entities; each entity owns one object noun and
  one adjective for the whole document, chosen at random per document;
- sentences mention the cast and their objects again and again, so a masked name or object is
  predictable from other sentences of the same document (cross-sentence context), the topic
  words are predictable from the rest of the document (document structure), and a segment from
  another document shares no cast (so NSP is learnable).

The labelled downstream task `synthetic-topic` draws short passages from fresh documents of the
same world and asks for their topic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
FUNCTION_WORDS = ["the", "a", "of", "and", "with", "near", "to", "from", "was", "is", "that", "then", "again"]
TOPIC_NAMES = ["river", "forge", "market", "orchard", "harbour", "library"]
# World sizes: small enough that a tiny model gets past unigram statistics within a CPU-minute
# budget, large enough that a name or object cannot be guessed without the document's context.
NOUNS_PER_TOPIC, VERBS_PER_TOPIC, ADJECTIVES_PER_TOPIC = 16, 8, 8
ENTITY_NAMES, PLACE_NAMES = 48, 12


@dataclass(frozen=True)
class Topic:
    name: str
    nouns: tuple[str, ...]
    verbs: tuple[str, ...]
    adjectives: tuple[str, ...]


@dataclass(frozen=True)
class World:
    topics: tuple[Topic, ...]
    names: tuple[str, ...]
    places: tuple[str, ...]


@dataclass(frozen=True)
class Document:
    topic: int
    sentences: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


def _pseudo_words(rng: random.Random, count: int, taken: set[str], syllables: tuple[int, int]) -> list[str]:
    words: list[str] = []
    while len(words) < count:
        word = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.randint(*syllables)))
        if word not in taken and word not in FUNCTION_WORDS:
            taken.add(word)
            words.append(word)
    return words


def _overlapping_windows(pool: list[str], per_topic: int) -> list[tuple[str, ...]]:
    """Topic t gets pool[t*step : t*step + per_topic] (cyclic) with step = per_topic // 2, so every
    word belongs to two neighbouring topics: one word never settles the topic, several usually do."""
    step = per_topic // 2
    return [tuple(pool[(t * step + i) % len(pool)] for i in range(per_topic)) for t in range(len(TOPIC_NAMES))]


def make_world(seed: int = 0) -> World:
    rng = random.Random(f"world-{seed}")
    taken: set[str] = set()
    topic_count = len(TOPIC_NAMES)
    nouns = _overlapping_windows(_pseudo_words(rng, topic_count * NOUNS_PER_TOPIC // 2, taken, (2, 3)), NOUNS_PER_TOPIC)
    verbs = _overlapping_windows(
        [w + "s" for w in _pseudo_words(rng, topic_count * VERBS_PER_TOPIC // 2, taken, (2, 2))], VERBS_PER_TOPIC
    )
    adjectives = _overlapping_windows(
        _pseudo_words(rng, topic_count * ADJECTIVES_PER_TOPIC // 2, taken, (2, 3)), ADJECTIVES_PER_TOPIC
    )
    topics = tuple(
        Topic(name=name, nouns=nouns[t], verbs=verbs[t], adjectives=adjectives[t]) for t, name in enumerate(TOPIC_NAMES)
    )
    names = tuple(w.capitalize() for w in _pseudo_words(rng, ENTITY_NAMES, taken, (2, 3)))
    places = tuple(w.capitalize() + "ton" for w in _pseudo_words(rng, PLACE_NAMES, taken, (2, 2)))
    return World(topics=topics, names=names, places=places)


def _zipf_choice(rng: random.Random, items: tuple[str, ...]) -> str:
    # Zipf-like frequencies so the corpus has a realistic head and tail.
    weights = [1.0 / (rank + 1) for rank in range(len(items))]
    return rng.choices(items, weights=weights, k=1)[0]


def _sentence(rng: random.Random, topic: Topic, cast: list[tuple[str, str, str]], place: str) -> str:
    name, obj, adj = rng.choice(cast)
    other, other_obj, _ = rng.choice(cast)
    verb = _zipf_choice(rng, topic.verbs)
    noun = _zipf_choice(rng, topic.nouns)
    template = rng.randrange(7)
    if template == 0:
        words = [name, verb, "the", adj, obj]
    elif template == 1:
        words = ["the", obj, "of", name, "was", adj]
    elif template == 2:
        words = [name, "and", other, verb, "a", noun, "near", place]
    elif template == 3:
        words = ["in", place, name, verb, "the", obj, "with", "the", _zipf_choice(rng, topic.adjectives), noun]
    elif template == 4:
        words = [name, verb, other_obj, "from", other, "then", verb, "it", "again"]
    elif template == 5:
        words = ["a", _zipf_choice(rng, topic.adjectives), noun, "is", "near", "the", obj, "of", name]
    else:
        words = [other, "said", "that", name, verb, "the", adj, obj]
    words[0] = words[0][0].upper() + words[0][1:]
    return " ".join(words) + "."


def generate_document(world: World, rng: random.Random, topic_index: int | None = None) -> Document:
    topic_index = rng.randrange(len(world.topics)) if topic_index is None else topic_index
    topic = world.topics[topic_index]
    cast = [
        (name, rng.choice(topic.nouns), rng.choice(topic.adjectives))
        for name in rng.sample(world.names, rng.randint(2, 4))
    ]
    place = rng.choice(world.places)
    sentences = tuple(_sentence(rng, topic, cast, place) for _ in range(rng.randint(8, 30)))
    return Document(topic=topic_index, sentences=sentences)


def generate_corpus(documents: int, seed: int = 0) -> list[Document]:
    """`documents` documents of the world `seed`; the same arguments always give the same text."""
    world = make_world(seed)
    rng = random.Random(f"corpus-{seed}")
    return [generate_document(world, rng) for _ in range(documents)]


@dataclass(frozen=True)
class LabelledExample:
    text: str
    label: int


def generate_topic_task(
    seed: int = 0, train_examples: int = 2000, dev_examples: int = 500
) -> tuple[list[LabelledExample], list[LabelledExample]]:
    """Topic classification of one-sentence passages from fresh documents of the corpus's world.

    A sentence holds two or three topic words, each shared by two topics, so the label needs words
    combined, and which words go together is what pretraining on the same world teaches; the
    documents are new, so nothing is memorised from pretraining.
    """
    world = make_world(seed)

    def draw(split: str, count: int) -> list[LabelledExample]:
        rng = random.Random(f"topic-task-{seed}-{split}")
        examples = []
        for _ in range(count):
            doc = generate_document(world, rng)
            examples.append(LabelledExample(rng.choice(doc.sentences), doc.topic))
        return examples

    return draw("train", train_examples), draw("dev", dev_examples)
