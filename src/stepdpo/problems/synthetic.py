"""Seeded multi-step arithmetic word problems with exact intermediate values.

``synthetic:SPLIT[?n=..&min_steps=..&max_steps=..&seed=..&difficulty=..]`` gives
``n`` problems of 2 to 6 steps (configurable). Each problem's solution is in
the step format, one operation per step, each step stating its numbers and
result; ``metadata["step_values"]`` holds the exact value of every step, so a
localizer can be checked against ground truth (the first step whose value is
wrong is the first wrong step).

Problem ``i`` of a split is drawn from ``Random("split:seed:i:attempt")`` only,
so it does not depend on ``n``. Train and test are disjoint by construction:
a problem belongs to test exactly when a hash of its computation (the numbers
in the question and the value of every step, not names, objects or wording)
falls in a fixed quarter of the hash space; each split redraws until its own condition holds. So no train
problem asks a test problem's computation, let alone its text.

Two story kinds:

- *chain*: a quantity owned by someone changes step by step (gets more, gives
  away, grows k-fold, is shared out, is sold for a price and becomes money),
  or passes to another person by comparison ("3 times as many as", "5 fewer
  than"); the question may ask for the last quantity, a difference ("how many
  more"), or a total of two people;
- *shopping*: items bought at a price each, a total, and the change from a bill.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import parse_qs

from stepdpo.errors import ConfigError
from stepdpo.records import Problem

SPLITS = ("train", "test")
TEST_SHARE = 4
"""One computation in TEST_SHARE belongs to the test split."""
MAX_ATTEMPTS = 500


@dataclass(frozen=True)
class SyntheticSpec:
    """Options of a ``synthetic:`` spec."""

    split: str = "train"
    n: int = 1000
    min_steps: int = 2
    max_steps: int = 6
    seed: int = 0
    difficulty: int = 1
    """0: numbers below 20, results below 100 (small models); 1: numbers mostly below 100, results below 1,000; 2: below 1,000 / 10,000; 3: below 10,000 / 100,000."""


_INT_OPTIONS = ("n", "min_steps", "max_steps", "seed", "difficulty")


def parse_synthetic_spec(spec: str) -> SyntheticSpec:
    """``synthetic:test?n=200&max_steps=4`` -> SyntheticSpec; unknown options and bad values are ConfigErrors."""
    head, _, query = spec.partition("?")
    prefix, _, split = head.partition(":")
    if prefix != "synthetic" or split not in SPLITS:
        raise ConfigError(f"{spec}: expected synthetic:train or synthetic:test (with ?n=..&min_steps=..&max_steps=..&seed=..&difficulty=..)")
    parsed = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(parsed) - set(_INT_OPTIONS))
    if unknown:
        raise ConfigError(f"{spec}: unknown option(s) {', '.join(unknown)} (valid: {', '.join(_INT_OPTIONS)})")
    values: dict[str, int] = {}
    for key, given in parsed.items():
        if len(given) > 1:
            raise ConfigError(f"{spec}: option {key} given twice")
        try:
            values[key] = int(given[0])
        except ValueError:
            raise ConfigError(f"{spec}: option {key} must be an integer, got {given[0]!r}") from None
    options = SyntheticSpec(split=split, **values)
    if options.n < 0:
        raise ConfigError(f"{spec}: n must be >= 0")
    if not 2 <= options.min_steps <= options.max_steps <= 6:
        raise ConfigError(f"{spec}: need 2 <= min_steps <= max_steps <= 6, got {options.min_steps}..{options.max_steps}")
    if options.difficulty not in _RANGES:
        raise ConfigError(f"{spec}: difficulty must be one of {', '.join(map(str, _RANGES))}")
    return options


def synthetic_problems(spec: str) -> list[Problem]:
    """The problems of a ``synthetic:`` spec."""
    options = parse_synthetic_spec(spec)
    return generate(options, source=spec.partition("?")[0])


def generate(options: SyntheticSpec, source: str | None = None) -> list[Problem]:
    """``options.n`` problems; problem i depends only on (split, seed, i, difficulty, step range)."""
    source = source or f"synthetic:{options.split}"
    return [_problem(options, index, source) for index in range(options.n)]


# --- numbers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ranges:
    start: tuple[int, int]
    """first quantity"""
    delta: tuple[int, int]
    """amounts added or removed"""
    factor: tuple[int, int]
    """multipliers and divisors"""
    price: tuple[int, int]
    cap: int
    """no result may exceed this"""
    multiplicand: int
    """largest quantity that may be multiplied (keeps products within reach of a small model)"""


_RANGES = {
    0: _Ranges(start=(3, 20), delta=(1, 10), factor=(2, 3), price=(2, 5), cap=99, multiplicand=20),
    1: _Ranges(start=(6, 60), delta=(2, 30), factor=(2, 5), price=(2, 9), cap=999, multiplicand=60),
    2: _Ranges(start=(20, 400), delta=(5, 200), factor=(2, 9), price=(3, 60), cap=9999, multiplicand=600),
    3: _Ranges(start=(100, 3000), delta=(20, 1500), factor=(2, 12), price=(5, 250), cap=99999, multiplicand=6000),
}


class _Reject(Exception):
    """The draw cannot be completed within the constraints; draw again."""


# --- vocabulary -------------------------------------------------------------------------------

_NAMES = [
    ("Mia", "she"), ("Leo", "he"), ("Ava", "she"), ("Noah", "he"), ("Zoe", "she"), ("Omar", "he"), ("Lily", "she"),
    ("Ethan", "he"), ("Sofia", "she"), ("Lucas", "he"), ("Emma", "she"), ("Liam", "he"), ("Chloe", "she"), ("Ben", "he"),
    ("Grace", "she"), ("Sam", "he"), ("Nora", "she"), ("Jack", "he"), ("Ella", "she"), ("Ravi", "he"), ("Hana", "she"),
    ("Diego", "he"), ("Maya", "she"), ("Owen", "he"), ("Aisha", "she"), ("Finn", "he"), ("Ruby", "she"), ("Kai", "he"),
    ("Lucy", "she"), ("Mateo", "he"), ("Ivy", "she"), ("Hugo", "he"), ("Priya", "she"), ("Tom", "he"), ("Julia", "she"),
    ("Felix", "he"), ("Rosa", "she"), ("Yuki", "she"), ("Adam", "he"), ("Nina", "she"), ("Max", "he"), ("Sara", "she"),
    ("Eli", "he"), ("Layla", "she"), ("Theo", "he"), ("Anna", "she"), ("Ivan", "he"), ("Clara", "she"), ("Jonah", "he"),
    ("Fatima", "she"), ("Oscar", "he"), ("Elena", "she"), ("Marco", "he"), ("Tara", "she"), ("Caleb", "he"), ("Iris", "she"),
]
_POSSESSIVE = {"she": "her", "he": "his"}
_OBJECT = {"she": "her", "he": "him"}

# (plural, singular, container plural, container singular)
_THINGS = [
    ("apples", "apple", "baskets", "basket"), ("marbles", "marble", "bags", "bag"), ("stickers", "sticker", "sheets", "sheet"),
    ("cookies", "cookie", "trays", "tray"), ("pencils", "pencil", "boxes", "box"), ("books", "book", "shelves", "shelf"),
    ("cards", "card", "packs", "pack"), ("seashells", "seashell", "buckets", "bucket"), ("stamps", "stamp", "albums", "album"),
    ("beads", "bead", "jars", "jar"), ("toy cars", "toy car", "boxes", "box"), ("candies", "candy", "bags", "bag"),
    ("balloons", "balloon", "packs", "pack"), ("eggs", "egg", "cartons", "carton"), ("flowers", "flower", "vases", "vase"),
    ("crayons", "crayon", "boxes", "box"), ("cupcakes", "cupcake", "trays", "tray"), ("oranges", "orange", "crates", "crate"),
    ("blocks", "block", "bins", "bin"), ("coins", "coin", "jars", "jar"), ("muffins", "muffin", "boxes", "box"),
    ("buttons", "button", "tins", "tin"), ("rocks", "rock", "bags", "bag"), ("ribbons", "ribbon", "rolls", "roll"),
    ("postcards", "postcard", "stacks", "stack"), ("carrots", "carrot", "bunches", "bunch"), ("peaches", "peach", "baskets", "basket"),
    ("puzzles", "puzzle", "shelves", "shelf"), ("shells", "shell", "pails", "pail"), ("toy soldiers", "toy soldier", "boxes", "box"),
]
_GOODS = [
    ("notebooks", "notebook"), ("pens", "pen"), ("sandwiches", "sandwich"), ("movie tickets", "movie ticket"), ("plants", "plant"),
    ("bottles of juice", "bottle of juice"), ("comic books", "comic book"), ("ice creams", "ice cream"), ("toy robots", "toy robot"),
    ("bags of chips", "bag of chips"), ("hats", "hat"), ("board games", "board game"), ("T-shirts", "T-shirt"), ("mugs", "mug"),
    ("pizzas", "pizza"), ("scarves", "scarf"), ("candles", "candle"), ("kites", "kite"), ("puzzle books", "puzzle book"),
    ("water bottles", "water bottle"), ("pies", "pie"), ("socks", "sock"), ("lamps", "lamp"), ("cakes", "cake"),
]
_WHEN = ["On Monday", "Later", "The next day", "After lunch", "In the afternoon", "That evening", "On the weekend", "Then", "After that", "The next week"]
_MONEY_SOURCES = ["doing chores", "selling lemonade", "walking dogs", "washing cars", "babysitting", "mowing lawns", "a birthday card"]
_MONEY_USES = ["a book", "lunch", "a movie ticket", "a gift", "art supplies", "a toy", "snacks", "a game"]


@dataclass
class _Person:
    name: str
    subject: str

    @property
    def possessive(self) -> str:
        return _POSSESSIVE[self.subject]

    @property
    def object(self) -> str:
        return _OBJECT[self.subject]


@dataclass
class _Draft:
    """A problem being built: question sentences and steps."""

    kind: str
    sentences: list[str] = field(default_factory=list)
    question: str = ""
    steps: list[tuple[str, int]] = field(default_factory=list)
    """(step text without 'Step i: ', exact value)"""
    templates: list[str] = field(default_factory=list)

    def step(self, text: str, value: int, template: str) -> None:
        self.steps.append((text, value))
        self.templates.append(template)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


class _Story:
    """Draws people, a thing and numbers for one problem without repeating a name."""

    def __init__(self, rng: random.Random, ranges: _Ranges):
        self.rng = rng
        self.ranges = ranges
        self._names = rng.sample(_NAMES, 8)

    def person(self) -> _Person:
        if not self._names:
            raise _Reject("out of names")
        name, subject = self._names.pop()
        return _Person(name, subject)

    def draw(self, bounds: tuple[int, int]) -> int:
        return self.rng.randint(*bounds)

    def multiplicand(self, value: int) -> int:
        if value > self.ranges.multiplicand:
            raise _Reject(f"{value} too large to multiply")
        return value

    def check(self, value: int) -> int:
        if not 0 < value <= self.ranges.cap:
            raise _Reject(f"value {value} out of range")
        return value


# --- chain story ----------------------------------------------------------------------------


@dataclass
class _Holding:
    """Who holds the current quantity, how much, and in what unit ('items' or 'money')."""

    person: _Person
    value: int
    unit: str
    changed: bool = False
    """the holder's amount changed since it was stated (questions say 'now')"""


class _Chain:
    """A quantity that changes step by step; every operation appends one step."""

    def __init__(self, story: _Story, draft: _Draft):
        self.story = story
        self.rng = story.rng
        self.draft = draft
        self.plural, self.singular, self.containers, self.container = self.rng.choice(_THINGS)
        self.history: list[_Holding] = []

    # phrasing helpers
    def amount(self, value: int, unit: str) -> str:
        return f"${value}" if unit == "money" else f"{value} {self.plural if value != 1 else self.singular}"

    def now(self, holding: _Holding) -> str:
        return " now" if holding.changed else ""

    @property
    def current(self) -> _Holding:
        return self.history[-1]

    def start(self, with_step: bool) -> None:
        person = self.story.person()
        if with_step:
            groups = self.story.draw(self.story.ranges.factor)
            each = self.story.draw((max(2, self.story.ranges.delta[0]), self.story.ranges.delta[1]))
            total = self.story.check(groups * each)
            phrasing = self.rng.choice(
                [
                    f"{person.name} has {groups} {self.containers} of {self.plural} with {each} {self.plural} in each {self.container}.",
                    f"{person.name} fills {groups} {self.containers} with {each} {self.plural} each.",
                    f"{person.name} owns {groups} {self.containers}, and each {self.container} holds {each} {self.plural}.",
                ]
            )
            self.draft.sentences.append(phrasing)
            text = self.rng.choice(
                [
                    f"{person.name} has {groups} * {each} = {total} {self.plural}.",
                    f"{groups} {self.containers} with {each} {self.plural} each hold {groups} * {each} = {total} {self.plural}.",
                    f"There are {groups} * {each} = {total} {self.plural} in the {self.containers}.",
                ]
            )
            self.draft.step(text, total, "groups")
        else:
            total = self.story.draw(self.story.ranges.start)
            self.draft.sentences.append(
                self.rng.choice(
                    [
                        f"{person.name} has {total} {self.plural}.",
                        f"{person.name} starts with {total} {self.plural}.",
                        f"{person.name} collects {total} {self.plural}.",
                        f"At first, {person.name} owns {total} {self.plural}.",
                    ]
                )
            )
        self.history.append(_Holding(person, total, "items"))

    def operations(self, last: bool) -> list[Callable[[], None]]:
        """The operations that fit the current quantity; the caller picks one at random."""
        ops: list[Callable[[], None]] = [self.gain, self.lose, self.more_than, self.fewer_than]
        ops.append(self.times)
        ops.append(self.times_as_many)
        if self._divisors():
            ops += [self.share, self.fraction_as_many]
        if self.current.unit == "items":
            ops.append(self.sell)
        if last and len(self.history) >= 2:
            ops += [self.difference, self.together]
        return ops

    def _divisors(self) -> list[int]:
        low, high = self.story.ranges.factor
        return [k for k in range(low, high + 1) if self.current.value % k == 0 and self.current.value // k >= 1]

    def _moved(self, value: int) -> None:
        holding = self.current
        self.history[-1] = _Holding(holding.person, value, holding.unit, changed=True)

    def gain(self) -> None:
        holding, rng = self.current, self.rng
        b = self.story.draw(self.story.ranges.delta)
        q, p = holding.value, holding.person
        r = self.story.check(q + b)
        if holding.unit == "money":
            source = rng.choice(_MONEY_SOURCES)
            sentence = f"{rng.choice(_WHEN)}, {p.name} earns ${b} more from {source}."
            text = rng.choice(
                [
                    f"{p.name} earns ${b} more, so {p.subject} has ${q} + ${b} = ${r}.",
                    f"After earning ${b}, {p.name} has {q} + {b} = ${r}.",
                ]
            )
            self.draft.step(text, r, "gain.money")
        else:
            friend = self.story.person()
            variants = [
                (f"{p.name} buys {b} more {self.plural}.", f"{p.name} buys {b} more, so {p.subject} has {q} + {b} = {r} {self.plural}."),
                (f"{friend.name} gives {p.name} {b} more {self.plural}.", f"{friend.name} gives {p.object} {b}, so {p.name} has {q} + {b} = {r} {self.plural}."),
                (f"{rng.choice(_WHEN)}, {p.name} finds {b} more {self.plural}.", f"After finding {b} more, {p.name} has {q} + {b} = {r} {self.plural}."),
                (f"{p.name} gets {b} {self.plural} as a present.", f"With the {b} new {self.plural}, {p.name} has {q} + {b} = {r} {self.plural}."),
                (f"{rng.choice(_WHEN)}, {p.name} adds another {b} {self.plural} to {p.possessive} collection.", f"{p.name} now has {q} + {b} = {r} {self.plural}."),
            ]
            sentence, text = rng.choice(variants)
            self.draft.step(text, r, "gain.items")
        self.draft.sentences.append(sentence)
        self._moved(r)

    def lose(self) -> None:
        holding, rng = self.current, self.rng
        q, p = holding.value, holding.person
        if q < 3:
            raise _Reject("too few to lose some")
        low, high = self.story.ranges.delta
        b = rng.randint(min(low, q - 1), min(high, q - 1))
        r = q - b
        if holding.unit == "money":
            use = rng.choice(_MONEY_USES)
            sentence = f"{p.name} spends ${b} on {use}."
            text = rng.choice([f"{p.name} spends ${b} of {p.possessive} ${q}, so {p.subject} has ${q} - ${b} = ${r} left.", f"After buying {use}, {p.name} has {q} - {b} = ${r} left."])
            self.draft.step(text, r, "lose.money")
        else:
            friend = self.story.person()
            variants = [
                (f"{p.name} gives {b} {self.plural} to {friend.name}.", f"{p.name} gives away {b} of {p.possessive} {q} {self.plural}, so {p.subject} has {q} - {b} = {r} {self.plural} left."),
                (f"{rng.choice(_WHEN)}, {p.name} loses {b} {self.plural}.", f"After losing {b}, {p.name} has {q} - {b} = {r} {self.plural}."),
                (f"{p.name} sells {b} of the {self.plural}.", f"Selling {b} leaves {p.name} with {q} - {b} = {r} {self.plural}."),
                (f"{friend.name} borrows {b} {self.plural} from {p.name}.", f"{friend.name} takes {b}, so {p.name} has {q} - {b} = {r} {self.plural} left."),
                (f"{p.name} uses {b} {self.plural} for a school project.", f"{p.name} uses {b} of the {q} {self.plural}, leaving {q} - {b} = {r} {self.plural}."),
            ]
            sentence, text = rng.choice(variants)
            self.draft.step(text, r, "lose.items")
        self.draft.sentences.append(sentence)
        self._moved(r)

    def times(self) -> None:
        holding, rng = self.current, self.rng
        q, p = holding.value, holding.person
        k = self.story.draw(self.story.ranges.factor)
        r = self.story.check(self.story.multiplicand(q) * k)
        word = {2: "doubles", 3: "triples"}.get(k)
        thing = "money" if holding.unit == "money" else f"number of {self.plural}"
        variants = [(f"By the end of the month, {p.name}'s {thing} is {k} times as large.", f"{k} times as many as {q} is {q} * {k} = {self.amount(r, holding.unit)}.")]
        if word:
            variants.append((f"{rng.choice(_WHEN)}, the {thing} {p.name} has {word}.", f"The {thing} {word}: {q} * {k} = {r}."))
        if holding.unit == "items":
            variants.append(
                (f"{p.name} puts the {self.plural} into {self.containers} and ends up with {k} full {self.containers}, each holding as many {self.plural} as {p.subject} had before.",
                 f"{k} {self.containers} of {q} {self.plural} make {k} * {q} = {r} {self.plural}.")
            )
        sentence, text = rng.choice(variants)
        self.draft.step(text, r, "times")
        self.draft.sentences.append(sentence)
        self._moved(r)

    def share(self) -> None:
        holding, rng = self.current, self.rng
        q, p = holding.value, holding.person
        k = rng.choice(self._divisors())
        r = q // k
        if holding.unit == "money":
            sentence = f"{p.name} splits {p.possessive} money equally into {k} envelopes and keeps one envelope."
            text = f"Each envelope gets ${q} / {k} = ${r}, so {p.name} keeps ${r}."
        else:
            sentence, text = rng.choice(
                [
                    (f"{p.name} shares the {self.plural} equally between {p.object}self and {k - 1} friends.",
                     f"Each of the {k} people gets {q} / {k} = {r} {self.plural}, so {p.name} has {r} {self.plural}."),
                    (f"{p.name} splits the {self.plural} into {k} equal piles and keeps one pile.", f"One pile holds {q} / {k} = {r} {self.plural}, which {p.name} keeps."),
                    (f"{p.name} puts the {self.plural} equally into {k} {self.containers} and keeps only one {self.container}.", f"Each {self.container} gets {q} / {k} = {r} {self.plural}, so {p.name} keeps {r}."),
                ]
            )
        self.draft.step(text, r, "share")
        self.draft.sentences.append(sentence)
        self._moved(r)

    def sell(self) -> None:
        holding, rng = self.current, self.rng
        q, p = holding.value, holding.person
        price = self.story.draw(self.story.ranges.price)
        r = self.story.check(self.story.multiplicand(q) * price)
        sentence = rng.choice(
            [
                f"{p.name} sells all {p.possessive} {self.plural} for ${price} each.",
                f"Each {self.singular} sells for ${price}, and {p.name} sells all of them.",
            ]
        )
        text = rng.choice([f"{p.name} earns {q} * ${price} = ${r}.", f"Selling {q} {self.plural} at ${price} each brings in {q} * {price} = ${r}."])
        self.draft.step(text, r, "sell")
        self.draft.sentences.append(sentence)
        self.history[-1] = _Holding(p, r, "money", changed=True)

    def _relate(self, template: str, r: int, sentence: str, text: str) -> None:
        self.story.check(r)
        self.draft.step(text, r, template)
        self.draft.sentences.append(sentence)

    def more_than(self) -> None:
        holding = self.current
        other = self.story.person()
        b = self.story.draw(self.story.ranges.delta)
        q, unit = holding.value, holding.unit
        r = q + b
        more = f"${b} more" if unit == "money" else f"{b} more {self.plural}"
        self._relate(
            "more_than",
            r,
            f"{other.name} has {more} than {holding.person.name} has{self.now(holding)}.",
            self.rng.choice([f"{other.name} has {q} + {b} = {self.amount(r, unit)}.", f"{other.name} has {b} more than {q}, which is {q} + {b} = {r}."]),
        )
        self.history.append(_Holding(other, r, unit))

    def fewer_than(self) -> None:
        holding = self.current
        q, unit = holding.value, holding.unit
        if q < 3:
            raise _Reject("too few for fewer")
        other = self.story.person()
        low, high = self.story.ranges.delta
        b = self.rng.randint(min(low, q - 1), min(high, q - 1))
        r = q - b
        less = f"${b} less" if unit == "money" else f"{b} fewer {self.plural}"
        self._relate(
            "fewer_than",
            r,
            f"{other.name} has {less} than {holding.person.name} has{self.now(holding)}.",
            self.rng.choice([f"{other.name} has {q} - {b} = {self.amount(r, unit)}.", f"{other.name} has {b} less than {q}, which is {q} - {b} = {r}."]),
        )
        self.history.append(_Holding(other, r, unit))

    def times_as_many(self) -> None:
        holding = self.current
        other = self.story.person()
        k = self.story.draw(self.story.ranges.factor)
        q, unit = holding.value, holding.unit
        r = self.story.multiplicand(q) * k
        noun = "money" if unit == "money" else self.plural
        word = {2: "twice"}.get(k, f"{k} times")
        self._relate(
            "times_as_many",
            r,
            f"{other.name} has {word} as much {noun} as {holding.person.name} has{self.now(holding)}." if unit == "money"
            else f"{other.name} has {word} as many {noun} as {holding.person.name} has{self.now(holding)}.",
            self.rng.choice([f"{other.name} has {q} * {k} = {self.amount(r, unit)}.", f"{k} times {q} is {q} * {k} = {r}, so {other.name} has {self.amount(r, unit)}."]),
        )
        self.history.append(_Holding(other, r, unit))

    def fraction_as_many(self) -> None:
        holding = self.current
        other = self.story.person()
        k = self.rng.choice(self._divisors())
        q, unit = holding.value, holding.unit
        r = q // k
        fraction = {2: "half", 3: "a third", 4: "a quarter", 5: "a fifth", 6: "a sixth", 7: "a seventh", 8: "an eighth", 9: "a ninth", 10: "a tenth", 11: "an eleventh", 12: "a twelfth"}[k]
        noun = "money" if unit == "money" else self.plural
        many = "much" if unit == "money" else "many"
        self._relate(
            "fraction_as_many",
            r,
            f"{other.name} has {fraction} as {many} {noun} as {holding.person.name} has{self.now(holding)}.",
            self.rng.choice([f"{other.name} has {q} / {k} = {self.amount(r, unit)}.", f"{_cap(fraction)} of {q} is {q} / {k} = {r}, so {other.name} has {self.amount(r, unit)}."]),
        )
        self.history.append(_Holding(other, r, unit))

    def difference(self) -> None:
        """Final: how much more the larger of the last two holders has than the other."""
        a, b = self.history[-2], self.history[-1]
        if a.unit != b.unit or a.value == b.value:
            raise _Reject("nothing to compare")
        big, small = (a, b) if a.value > b.value else (b, a)
        r = big.value - small.value
        noun = "money" if a.unit == "money" else self.plural
        if self.rng.random() < 0.5:
            more = "more money" if a.unit == "money" else f"more {noun}"
            self.draft.question = f"How many {more} does {big.person.name} have than {small.person.name}?" if a.unit != "money" else f"How much more money does {big.person.name} have than {small.person.name}?"
            text = f"{big.person.name} has {big.value} - {small.value} = {self.amount(r, a.unit)} more than {small.person.name}."
        else:
            self.draft.question = (
                f"How much more money does {small.person.name} need to have as much as {big.person.name}?" if a.unit == "money"
                else f"How many more {noun} does {small.person.name} need to have as many as {big.person.name}?"
            )
            text = f"{small.person.name} needs {big.value} - {small.value} = {self.amount(r, a.unit)} more."
        self.draft.step(text, r, "difference")

    def together(self) -> None:
        """Final: the total of the last two holders."""
        a, b = self.history[-2], self.history[-1]
        if a.unit != b.unit:
            raise _Reject("different units")
        r = self.story.check(a.value + b.value)
        self.draft.question = (
            f"How much money do {a.person.name} and {b.person.name} have together?" if a.unit == "money"
            else f"How many {self.plural} do {a.person.name} and {b.person.name} have altogether?"
        )
        text = self.rng.choice(
            [f"Together they have {a.value} + {b.value} = {self.amount(r, a.unit)}.", f"{a.person.name} and {b.person.name} have {a.value} + {b.value} = {r} in total."]
        )
        self.draft.step(text, r, "together")

    def ask(self) -> None:
        """The question about the last quantity, unless a final comparison already set one."""
        if self.draft.question:
            return
        holding = self.current
        now = " now" if holding.changed else ""
        if holding.unit == "money":
            self.draft.question = self.rng.choice([f"How much money does {holding.person.name} have{now}?", f"How many dollars does {holding.person.name} have{now}?"])
        else:
            self.draft.question = self.rng.choice(
                [f"How many {self.plural} does {holding.person.name} have{now}?", f"How many {self.plural} does {holding.person.name} end up with?" if holding.changed else f"How many {self.plural} does {holding.person.name} have?"]
            )


def _chain(story: _Story, steps: int) -> _Draft:
    draft = _Draft(kind="chain")
    chain = _Chain(story, draft)
    grouped = story.rng.random() < 0.3
    chain.start(with_step=grouped)
    while len(draft.steps) < steps:
        last = len(draft.steps) == steps - 1
        story.rng.choice(chain.operations(last))()
    chain.ask()
    return draft


# --- shopping story -------------------------------------------------------------------------


def _shopping_plan(rng: random.Random, steps: int) -> tuple[int, int, bool]:
    """(items bought several at a price each, single items, whether change is asked) giving ``steps`` steps.

    Steps = one product per multi-item purchase + one total when there are two or
    more purchases + one for the change.
    """
    plans = []
    for multi in range(1, 6):
        for single in range(0, 2):
            for change in (False, True):
                total_step = multi + single >= 2
                if multi + total_step + change == steps and multi + single <= 5:
                    plans.append((multi, single, change))
    return rng.choice(plans)


def _shopping(story: _Story, steps: int) -> _Draft:
    rng = story.rng
    draft = _Draft(kind="shopping")
    person = story.person()
    multi, single, change = _shopping_plan(rng, steps)
    goods = rng.sample(_GOODS, multi + single)
    bought: list[str] = []
    costs: list[int] = []
    count_bounds = (2, max(3, story.ranges.factor[1] + 3))
    for plural, _ in goods[:multi]:
        count, price = story.draw(count_bounds), story.draw(story.ranges.price)
        cost = story.check(count * price)
        bought.append(f"{count} {plural} for ${price} each")
        text = rng.choice([f"The {plural} cost {count} * ${price} = ${cost}.", f"{count} {plural} at ${price} each cost {count} * {price} = ${cost}."])
        draft.step(text, cost, "buy")
        costs.append(cost)
    for _, singular in goods[multi:]:
        price = story.draw((story.ranges.price[0], story.ranges.price[1] * 2))
        bought.append(f"{'an' if singular[0] in 'aeiou' else 'a'} {singular} for ${price}")
        costs.append(price)
    listed = bought[0] if len(bought) == 1 else ", ".join(bought[:-1]) + " and " + bought[-1]
    place = rng.choice(["at the store", "at the market", "at the fair", "online", "at the mall", "for a party"])
    draft.sentences.append(f"{person.name} buys {listed} {place}.")
    total = sum(costs)
    if len(costs) >= 2:
        story.check(total)
        text = rng.choice([f"In total {person.name} spends {' + '.join(f'${c}' for c in costs)} = ${total}.", f"The total is {' + '.join(map(str, costs))} = ${total}."])
        draft.step(text, total, "total")
    if change:
        bills = [b for b in (5, 10, 20, 50, 100, 200, 500, 1000, 5000, 10000, 50000, 100000) if b > total]
        if not bills:
            raise _Reject("no bill large enough")
        bill = bills[0] if rng.random() < 0.6 or len(bills) == 1 else bills[1]
        draft.sentences.append(rng.choice([f"{_cap(person.subject)} pays with a ${bill} bill.", f"{person.name} hands the cashier ${bill}."]))
        r = bill - total
        draft.step(rng.choice([f"{person.name} gets back ${bill} - ${total} = ${r}.", f"The change is {bill} - {total} = ${r}."]), r, "change")
        draft.question = rng.choice([f"How much change does {person.name} get?", f"How much money does {person.name} get back?"])
    else:
        draft.question = rng.choice([f"How much does {person.name} spend in all?", f"How much money does {person.name} pay altogether?", f"What is the total cost of {person.possessive} shopping?"])
    return draft


# --- assembly ---------------------------------------------------------------------------------


def computation_key(question: str, step_values: list[int] | list[str]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """What a problem computes, without its wording: (sorted numbers in the question, step values)."""
    return tuple(sorted(int(n) for n in re.findall(r"\d+", question))), tuple(int(v) for v in step_values)


def _computation_hash(draft: _Draft) -> int:
    question = " ".join(draft.sentences + [draft.question])
    blob = repr(computation_key(question, [value for _, value in draft.steps])).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big")


def _draw(rng: random.Random, steps: int, ranges: _Ranges) -> _Draft:
    story = _Story(rng, ranges)
    draft = _shopping(story, steps) if rng.random() < 0.2 else _chain(story, steps)
    if len(draft.steps) != steps:
        raise _Reject("wrong step count")
    return draft


def _problem(options: SyntheticSpec, index: int, source: str) -> Problem:
    want_test = options.split == "test"
    stream = f"{options.split}:{options.seed}:{index}:{options.difficulty}:{options.min_steps}:{options.max_steps}"
    # The step count is drawn once, outside the retry loop, so that longer (more often rejected) draws keep their share.
    steps = random.Random(stream).randint(options.min_steps, options.max_steps)
    for attempt in range(MAX_ATTEMPTS):
        rng = random.Random(f"{stream}:{attempt}")
        try:
            draft = _draw(rng, steps, _RANGES[options.difficulty])
        except _Reject:
            continue
        if (_computation_hash(draft) % TEST_SHARE == 0) != want_test:
            continue
        return _finish(draft, options, index, source)
    raise RuntimeError(f"synthetic problem {index} of {source}: no draw satisfied the constraints in {MAX_ATTEMPTS} attempts")


def _finish(draft: _Draft, options: SyntheticSpec, index: int, source: str) -> Problem:
    values = [value for _, value in draft.steps]
    lines = [f"Step {number}: {text}" for number, (text, _) in enumerate(draft.steps, start=1)]
    answer = str(values[-1])
    solution = "\n".join(lines) + f"\nThe answer is: \\boxed{{{answer}}}"
    return Problem(
        id=f"synthetic:{options.split}:{options.seed}:{options.difficulty}:{options.min_steps}-{options.max_steps}:{index}",
        question=" ".join(draft.sentences + [draft.question]),
        answer=answer,
        source=source,
        solution=solution,
        metadata={
            "step_values": [str(value) for value in values],
            "num_steps": len(values),
            "difficulty": options.difficulty,
            "templates": list(draft.templates),
            "story": draft.kind,
        },
    )
