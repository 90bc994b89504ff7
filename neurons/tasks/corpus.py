"""The lm task's corpus: English-like prose generated from a fixed seed, cut into pages.

Generated rather than shipped: no licence to check, nothing to download, and every machine
makes the same bytes. A small grammar (a few hundred words, agreement between subject and
verb, clauses, dialogue) gives a byte-level model structure to learn at several scales:
letter frequencies, spelling, word order. Pages live in the dataset bucket under
`page_key(i)`; the localnet uploads them there at start (`upload_corpus`).
"""

from __future__ import annotations

import random

from ports import ObjectStore

CORPUS_SEED = 20240611
PAGE_BYTES = 2048
PAGES = 192
PREFIX = "lm-corpus/v1/"


def _words(text: str, sep: str | None = None) -> tuple[str, ...]:
    return tuple(text.split(sep))


_NAMES = _words(
    "Ada Alan Bertha Clara Edgar Emma Frank Grace Hugo Iris Jonas Karl Lena Mara Nils Olga "
    "Peter Rosa Simon Tilda Ulf Vera Walter"
)
_NOUNS = _words(
    "river mountain village garden window letter captain farmer teacher horse kettle "
    "lantern forest bridge market sailor bakery orchard meadow station island harbour "
    "carriage winter summer morning evening candle doctor soldier shepherd lamp road field "
    "stone cottage clock sister brother mother father child friend stranger king queen "
    "tower"
)
_ADJECTIVES = _words(
    "old young quiet bright dark cold warm small great narrow wide green grey silent gentle "
    "heavy tired happy strange distant golden broken careful patient proud"
)
_VERBS = _words(
    "see find carry watch follow remember answer open close mend paint visit call need keep "
    "build leave reach"
)
_INTRANSITIVE = _words("sleep wait laugh listen travel rest wander sing work")
_ADVERBS = _words("slowly quietly often never always again soon gladly carefully suddenly")
_PLACES = _words(
    "near the river|by the old bridge|in the garden|at the station|under the trees|"
    "across the field|behind the bakery|on the island|beside the harbour|in the market",
    "|",
)
_CONNECTIVES = _words("and but because while so although when")
_SAYING = _words("said asked replied whispered called")


def _third_person(verb: str) -> str:
    if verb.endswith(("ch", "sh", "s", "x")):
        return verb + "es"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def _past(verb: str) -> str:
    irregular = {
        "see": "saw", "find": "found", "keep": "kept", "build": "built", "leave": "left",
        "sleep": "slept", "sing": "sang", "carry": "carried", "mend": "mended",
        "wait": "waited", "rest": "rested", "paint": "painted", "visit": "visited",
    }  # fmt: skip
    if verb in irregular:
        return irregular[verb]
    return verb + ("d" if verb.endswith("e") else "ed")


class _Writer:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, words: tuple[str, ...]) -> str:
        return self.rng.choice(words)

    def noun_phrase(self) -> tuple[str, bool]:
        """A subject and whether it is plural."""
        r = self.rng.random()
        if r < 0.3:
            return self.pick(_NAMES), False
        plural = r > 0.8
        noun = self.pick(_NOUNS) + ("s" if plural else "")
        if self.rng.random() < 0.5:
            noun = f"{self.pick(_ADJECTIVES)} {noun}"
        return f"the {noun}", plural

    def clause(self) -> str:
        subject, plural = self.noun_phrase()
        past = self.rng.random() < 0.6
        if self.rng.random() < 0.35:
            verb = self.pick(_INTRANSITIVE)
            verb = _past(verb) if past else (verb if plural else _third_person(verb))
            tail = self.pick(_PLACES)
        else:
            verb = self.pick(_VERBS)
            verb = _past(verb) if past else (verb if plural else _third_person(verb))
            tail = self.noun_phrase()[0]
            if self.rng.random() < 0.4:
                tail += " " + self.pick(_PLACES)
        if self.rng.random() < 0.3:
            verb = f"{self.pick(_ADVERBS)} {verb}"
        return f"{subject} {verb} {tail}"

    def sentence(self) -> str:
        text = self.clause()
        if self.rng.random() < 0.4:
            text += f" {self.pick(_CONNECTIVES)} {self.clause()}"
        text = text[0].upper() + text[1:]
        if self.rng.random() < 0.15:
            speaker = self.pick(_NAMES)
            return f'"{text}," {self.pick(_SAYING)} {speaker}.'
        return text + ("?" if self.rng.random() < 0.05 else ".")

    def paragraph(self) -> str:
        return " ".join(self.sentence() for _ in range(self.rng.randint(3, 7)))


def corpus(seed: int = CORPUS_SEED, size: int = PAGES * PAGE_BYTES) -> bytes:
    """`size` bytes of generated prose (ASCII), the same for the same seed."""
    writer = _Writer(random.Random(seed))
    parts: list[str] = []
    total = 0
    while total < size:
        paragraph = writer.paragraph() + "\n\n"
        parts.append(paragraph)
        total += len(paragraph)
    return "".join(parts).encode("ascii")[:size]


def pages(seed: int = CORPUS_SEED, count: int = PAGES, page_bytes: int = PAGE_BYTES) -> list[bytes]:
    text = corpus(seed, count * page_bytes)
    return [text[i * page_bytes : (i + 1) * page_bytes] for i in range(count)]


def page_key(index: int) -> str:
    return f"{PREFIX}page-{index:05d}.txt"


async def upload_corpus(store: ObjectStore, count: int = PAGES) -> int:
    """Put every page the lm task reads into `store` (the dataset bucket); bytes written."""
    written = 0
    for index, page in enumerate(pages(count=count)):
        await store.put(page_key(index), page)
        written += len(page)
    return written
