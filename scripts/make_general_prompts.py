"""Writes kubetune's built-in general prompts, trainer_image/kubetune_trainer/resources/general/prompts.jsonl.

    python scripts/make_general_prompts.py           # write it
    python scripts/make_general_prompts.py --check   # exit 1 if the committed file differs (tests run this)

Short prompts a tiny instruct model (SmolLM2-135M-Instruct) can answer, in two pools:
- regression (measurement only): the tuned model is compared with the base model on them;
- replay (training only): the base model's answers to them are mixed into training.
Training on what is measured would hide forgetting, so every template, every entity list (source)
and every entity belongs to one pool only; the generator refuses to write a set where they cross.
Some entities count their answer as part of what they are about (a translation pair, a capital),
so the pools cannot share a fact from either side.

Known answers are keywords, any one of which suffices (matched by
kubetune_trainer.general_prompts.matches_known_answer), and only for questions with one answer.
Deterministic: fixed lists, and numbers drawn from seeded generators (one per source, so editing
one list does not reshuffle another); no network, no model. The model's answers are not here:
kubetune_trainer.general_answers generates and caches them.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

OUT = (
    Path(__file__).resolve().parents[1]
    / "trainer_image"
    / "kubetune_trainer"
    / "resources"
    / "general"
    / "prompts.jsonl"
)
SEED = "kubetune-general-v1"
POOLS = ("regression", "replay")


@dataclass(frozen=True)
class Entity:
    slug: str  # the prompt id's last part: stable while the entity stays in its list
    fields: dict[str, str]  # what the template's {placeholders} become
    keywords: tuple[str, ...] | None  # None: no known answer
    terms: tuple[str, ...]  # what the prompt is about; no term may be in both pools


@dataclass(frozen=True)
class Source:
    name: str
    entities: tuple[Entity, ...]


@dataclass(frozen=True)
class Template:
    id: str
    category: str
    pool: str
    text: str  # a str.format pattern over the entity's fields
    source: Source


def slugify(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text.casefold()).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text).strip("-")


def ask(x: str, *keywords: str, answer_is_topic: bool = True) -> Entity:
    """A prompt about ``x``; with keywords, its known answer. A named answer (a capital, a translation)
    is part of the topic, so the other pool cannot ask for it from the other side; numbers are not."""
    terms = (x, *keywords) if answer_is_topic else (x,)
    return Entity(slugify(x), {"x": x}, tuple(keywords) or None, terms)


def source(name: str, *entities: Entity) -> Source:
    return Source(name, entities)


_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> tuple[str, ...]:
    """English spellings of 0 <= n < 1000 ("fifty-six"; "one hundred forty-four" with and without "and")."""
    if n < 20:
        return (_ONES[n],)
    if n < 100:
        return (_TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else ""),)
    hundreds = f"{_ONES[n // 100]} hundred"
    if n % 100 == 0:
        return (hundreds,)
    rest = number_words(n % 100)[0]
    return (f"{hundreds} {rest}", f"{hundreds} and {rest}")


def number(n: int) -> tuple[str, ...]:
    """A numeric answer: the digits or the words."""
    return (str(n), *number_words(n))


def calculation(slug: str, term: str, answer: tuple[str, ...], **fields: int) -> Entity:
    """A numeric prompt; ``term`` names the fact (e.g. "6x7", shared by 6 times 7 and 42 / 6) so that
    the pools cannot share a fact in two wordings."""
    return Entity(slug, {name: str(value) for name, value in fields.items()}, answer, (term,))


def drawn(name: str, count: int, draw: Callable[[random.Random, int], Entity | None]) -> Source:
    """``count`` distinct entities from ``draw`` (None: rejected, draw again), seeded by the source's name."""
    rng = random.Random(f"{SEED}/{name}")
    entities: dict[str, Entity] = {}
    for _ in range(1000):
        if len(entities) == count:
            return Source(name, tuple(entities.values()))
        entity = draw(rng, len(entities))
        if entity is not None:
            entities.setdefault(entity.slug, entity)
    raise ValueError(f"source {name}: could not draw {count} distinct entities")


def product(a: int, b: int) -> str:
    return f"{min(a, b)}x{max(a, b)}"


def total(a: int, b: int) -> str:
    return f"{min(a, b)}+{max(a, b)}"


# Regression: numbers drawn so that no fact is also in the replay pool (products of two factors
# >= 6 here, < 6 there; sums below 13 here, of two numbers >= 10 there) and so that the answer
# never appears in the prompt itself (else an echo would pass the keyword check).


def _times(rng: random.Random, _: int) -> Entity:
    a, b = rng.randint(6, 12), rng.randint(6, 12)
    return calculation(f"{min(a, b)}-times-{max(a, b)}", product(a, b), number(a * b), a=a, b=b)


def _minus(rng: random.Random, _: int) -> Entity | None:
    a = rng.randint(20, 99)
    b = rng.randint(5, a - 5)
    if a - b == b:
        return None
    return calculation(f"{a}-minus-{b}", f"{a}-{b}", number(a - b), a=a, b=b)


def _apples(rng: random.Random, _: int) -> Entity | None:
    a = rng.randint(5, 15)
    b = rng.randint(1, a - 2)  # at least two left: "one" is too common a word to be a telling keyword
    if a - b == b:
        return None
    return calculation(f"{a}-minus-{b}", f"{a}-{b}", number(a - b), a=a, b=b)


def _in_words(rng: random.Random, _: int) -> Entity:
    n = rng.randint(21, 99)
    return calculation(str(n), f"{n} in words", number_words(n), n=n)


def _sequence(rng: random.Random, _: int) -> Entity:
    start, step = rng.randint(1, 10), rng.randint(2, 9)
    shown = [start + i * step for i in range(4)]
    slug = "-".join(map(str, shown))
    return calculation(
        slug, f"sequence {slug}", number(start + 4 * step), s1=shown[0], s2=shown[1], s3=shown[2], s4=shown[3]
    )


def _bus(rng: random.Random, _: int) -> Entity | None:
    hour, duration = rng.randint(1, 8), rng.randint(2, 4)
    if hour + duration > 12:
        return None
    return calculation(
        f"{hour}-plus-{duration}", total(hour, duration), number(hour + duration), hour=hour, duration=duration
    )


# Replay


def _plus(rng: random.Random, _: int) -> Entity:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return calculation(f"{min(a, b)}-plus-{max(a, b)}", total(a, b), number(a + b), a=a, b=b)


def _divide(rng: random.Random, _: int) -> Entity | None:
    divisor, quotient = rng.randint(2, 5), rng.randint(3, 12)
    if quotient == divisor:
        return None
    dividend = divisor * quotient
    return calculation(f"{dividend}-by-{divisor}", product(divisor, quotient), number(quotient), a=dividend, b=divisor)


def _boxes(rng: random.Random, _: int) -> Entity | None:
    per_box, boxes = rng.randint(3, 9), rng.randint(2, 5)
    if per_box == boxes:
        return None
    return calculation(f"{per_box}-times-{boxes}", product(per_box, boxes), number(per_box * boxes), a=per_box, b=boxes)


def _parity(rng: random.Random, index: int) -> Entity:
    n = 2 * rng.randint(50, 199) + index % 2  # alternately even and odd, so "yes" is right half the time
    return calculation(str(n), f"{n} divisible by 2", ("no",) if n % 2 else ("yes",), n=n)


def _age(rng: random.Random, _: int) -> Entity:
    age, years = rng.randint(11, 40), rng.randint(2, 10)
    return calculation(f"{age}-plus-{years}", total(age, years), number(age + years), age=age, years=years)


REGRESSION = (
    # facts
    Template(
        "capital-which-city",
        "facts",
        "regression",
        "Which city is the capital of {x}?",
        source(
            "countries-a",
            ask("Sweden", "Stockholm"),
            ask("Finland", "Helsinki"),
            ask("Denmark", "Copenhagen"),
            ask("Austria", "Vienna"),
            ask("Hungary", "Budapest"),
            ask("Thailand", "Bangkok"),
            ask("Russia", "Moscow"),
            ask("Cuba", "Havana"),
            ask("Iceland", "Reykjavik"),
            ask("South Korea", "Seoul"),
            ask("the Czech Republic", "Prague"),
            ask("Colombia", "Bogota"),
            ask("China", "Beijing", "Peking"),
        ),
    ),
    Template(
        "element-symbol",
        "facts",
        "regression",
        "What is the chemical symbol for {x}?",
        source(
            "elements-a",
            ask("gold", "Au"),
            ask("silver", "Ag"),
            ask("iron", "Fe"),
            ask("copper", "Cu"),
            ask("lead", "Pb"),
            ask("tin", "Sn"),
            ask("mercury", "Hg"),
            ask("zinc", "Zn"),
            ask("sodium", "Na"),
        ),
    ),
    Template(
        "planet-described",
        "facts",
        "regression",
        "Which planet is {x}?",
        source(
            "planets-a",
            ask("closest to the Sun", "Mercury"),
            ask("the largest in our solar system", "Jupiter"),
            ask("known as the Red Planet", "Mars"),
            ask("famous for its wide, bright rings", "Saturn"),
            ask("the third from the Sun", "Earth"),
        ),
    ),
    Template(
        "continent-of-country",
        "facts",
        "regression",
        "On which continent is {x} located?",
        source(
            "continent-countries-a",
            ask("Nigeria", "Africa"),
            ask("Ghana", "Africa"),
            ask("Zambia", "Africa"),
            ask("Mongolia", "Asia"),
            ask("Cambodia", "Asia"),
            ask("Bolivia", "South America"),
            ask("Paraguay", "South America"),
            ask("Uruguay", "South America"),
            ask("Estonia", "Europe"),
            ask("Latvia", "Europe"),
        ),
    ),
    Template(
        "novel-author",
        "facts",
        "regression",
        "Who wrote the novel {x}?",
        source(
            "novels-a",
            ask("Moby-Dick", "Melville"),
            ask("Don Quixote", "Cervantes"),
            ask("War and Peace", "Tolstoy"),
            ask("Pride and Prejudice", "Austen"),
            ask("Frankenstein", "Shelley"),
            ask("Oliver Twist", "Dickens"),
        ),
    ),
    # arithmetic
    Template(
        "product-multiplied-by",
        "arithmetic",
        "regression",
        "Calculate {a} multiplied by {b}.",
        drawn("products-a", 10, _times),
    ),
    Template(
        "difference-subtract-from",
        "arithmetic",
        "regression",
        "Subtract {b} from {a}.",
        drawn("differences-a", 10, _minus),
    ),
    Template(
        "apples-left",
        "arithmetic",
        "regression",
        "Tom has {a} apples and eats {b} of them. How many apples does he have left?",
        drawn("apple-counts-a", 6, _apples),
    ),
    # language (some prompts written in French, Spanish and German)
    Template(
        "word-in-french",
        "language",
        "regression",
        "Give the French word for '{x}'.",
        source(
            "french-words-a",
            ask("cat", "chat"),
            ask("dog", "chien"),
            ask("house", "maison"),
            ask("water", "eau"),
            ask("bread", "pain"),
            ask("book", "livre"),
            ask("apple", "pomme"),
            ask("red", "rouge"),
        ),
    ),
    Template(
        "word-in-german",
        "language",
        "regression",
        "How do you say '{x}' in German?",
        source(
            "german-words-a",
            ask("milk", "Milch"),
            ask("tree", "Baum"),
            ask("chair", "Stuhl"),
            ask("door", "Tür"),
            ask("car", "Auto", "Wagen"),
            ask("flower", "Blume"),
        ),
    ),
    Template(
        "antonym-of-word",
        "language",
        "regression",
        "Name the antonym of the word '{x}'.",
        source(
            "antonyms-a",
            ask("hot", "cold"),
            ask("up", "down"),
            ask("early", "late"),
            ask("full", "empty"),
            ask("heavy", "light"),
            ask("wet", "dry"),
            ask("rich", "poor"),
            ask("thick", "thin"),
            ask("sharp", "dull", "blunt"),
            ask("above", "below"),
        ),
    ),
    Template(
        "capitale-quelle-est",
        "language",
        "regression",
        "Quelle est la capitale {x} ?",
        source(
            "pays-a",
            ask("de la Belgique", "Bruxelles", "Brussels"),
            ask("du Maroc", "Rabat"),
            ask("du Sénégal", "Dakar"),
            ask("de la Tunisie", "Tunis"),
            ask("de l'Algérie", "Alger", "Algiers"),
            ask("du Mali", "Bamako"),
        ),
    ),
    Template(
        "como-se-dice-en-ingles",
        "language",
        "regression",
        "¿Cómo se dice «{x}» en inglés?",
        source(
            "palabras-a",
            ask("mesa", "table"),
            ask("zapato", "shoe"),
            ask("camisa", "shirt"),
            ask("cuchara", "spoon"),
            ask("llave", "key"),
            ask("ciudad", "city"),
        ),
    ),
    Template(
        "beine-wie-viele",
        "language",
        "regression",
        "Wie viele Beine hat {x}?",
        source(
            "tiere-a",
            ask("ein Hund", "4", "vier", "four", answer_is_topic=False),
            ask("eine Spinne", "8", "acht", "eight", answer_is_topic=False),
            ask("ein Vogel", "2", "zwei", "two", answer_is_topic=False),
            ask("eine Ameise", "6", "sechs", "six", answer_is_topic=False),
            ask("eine Kuh", "4", "vier", "four", answer_is_topic=False),
            ask("ein Huhn", "2", "zwei", "two", answer_is_topic=False),
        ),
    ),
    # instructions
    Template(
        "list-three",
        "instructions",
        "regression",
        "List three {x}.",
        source(
            "list-kinds-a",
            ask("fruits"),
            ask("colours"),
            ask("farm animals"),
            ask("musical instruments"),
            ask("kinds of weather"),
            ask("school subjects"),
            ask("sports played with a ball"),
            ask("things found in a kitchen"),
        ),
    ),
    Template(
        "single-sentence-about",
        "instructions",
        "regression",
        "Compose a single sentence about {x}.",
        source(
            "sentence-topics-a",
            ask("a red kite"),
            ask("a sleepy village"),
            ask("the smell of fresh bread"),
            ask("a crowded bus"),
            ask("a winter morning"),
            ask("a paper boat"),
            ask("a clever fox"),
            ask("an empty playground"),
        ),
    ),
    Template(
        "bulleted-list",
        "instructions",
        "regression",
        "Format these items as a bulleted list: {x}.",
        source(
            "item-lists-a",
            ask("milk, eggs, flour"),
            ask("pens, paper, glue"),
            ask("tent, torch, map"),
            ask("socks, scarf, gloves"),
            ask("salt, pepper, basil"),
            ask("hammer, nails, saw"),
        ),
    ),
    Template(
        "number-in-words",
        "instructions",
        "regression",
        "Write the number {n} using words.",
        drawn("numbers-a", 6, _in_words),
    ),
    # reasoning
    Template(
        "sequence-next",
        "reasoning",
        "regression",
        "What number comes next in the pattern {s1}, {s2}, {s3}, {s4}?",
        drawn("sequences-a", 8, _sequence),
    ),
    Template(
        "day-after-today",
        "reasoning",
        "regression",
        "If today is {x}, what day is tomorrow?",
        source(
            "weekdays-a",
            ask("Monday", "Tuesday"),
            ask("Tuesday", "Wednesday"),
            ask("Wednesday", "Thursday"),
            ask("Thursday", "Friday"),
            ask("Friday", "Saturday"),
            ask("Saturday", "Sunday"),
        ),
    ),
    Template(
        "bus-arrival",
        "reasoning",
        "regression",
        "A bus leaves at {hour} o'clock and the ride takes {duration} hours. At what time does it arrive?",
        drawn("bus-rides-a", 5, _bus),
    ),
    # open-ended
    Template(
        "describe-scene",
        "open-ended",
        "regression",
        "Describe {x} in a few sentences.",
        source(
            "scenes-a",
            ask("a busy market"),
            ask("a snowy mountain cabin"),
            ask("a sunset over a lake"),
            ask("a rainy street"),
            ask("a campfire in the woods"),
            ask("a bakery early in the morning"),
            ask("a fishing harbour"),
            ask("a school playground at noon"),
        ),
    ),
    Template(
        "explain-to-child",
        "open-ended",
        "regression",
        "Explain to a child why {x}.",
        source(
            "why-questions-a",
            ask("the sky is blue"),
            ask("ice floats on water"),
            ask("we need to sleep"),
            ask("bread rises in the oven"),
            ask("the sea tastes salty"),
            ask("leaves fall from trees"),
            ask("we see lightning before we hear thunder"),
            ask("plants need sunlight"),
        ),
    ),
    # definitions
    Template(
        "define-word",
        "definitions",
        "regression",
        "Define the word '{x}' in one sentence.",
        source(
            "define-words-a",
            ask("river"),
            ask("island"),
            ask("library"),
            ask("desert"),
            ask("harbour"),
            ask("orchard"),
            ask("glacier"),
            ask("bridge"),
        ),
    ),
    Template(
        "baby-animal",
        "definitions",
        "regression",
        "What do we call a baby {x}?",
        source(
            "baby-animals-a",
            ask("cat", "kitten"),
            ask("dog", "puppy"),
            ask("cow", "calf"),
            ask("sheep", "lamb"),
            ask("duck", "duckling"),
            ask("kangaroo", "joey"),
        ),
    ),
)

REPLAY = (
    # facts
    Template(
        "capital-name-city",
        "facts",
        "replay",
        "Name the capital city of {x}.",
        source(
            "countries-b",
            ask("the United Kingdom", "London"),
            ask("Ukraine", "Kyiv", "Kiev"),
            ask("Venezuela", "Caracas"),
            ask("Romania", "Bucharest"),
            ask("Bulgaria", "Sofia"),
            ask("Afghanistan", "Kabul"),
            ask("Iran", "Tehran", "Teheran"),
            ask("Iraq", "Baghdad"),
            ask("Ethiopia", "Addis Ababa"),
            ask("Nepal", "Kathmandu", "Katmandu"),
            ask("Serbia", "Belgrade"),
            ask("Croatia", "Zagreb"),
            ask("Lebanon", "Beirut"),
        ),
    ),
    Template(
        "element-of-symbol",
        "facts",
        "replay",
        "Which element has the symbol {x}?",
        source(
            "symbols-b",
            ask("Ca", "calcium"),
            ask("Mg", "magnesium"),
            ask("Cl", "chlorine"),
            ask("Ni", "nickel"),
            ask("Pt", "platinum"),
            ask("Al", "aluminium", "aluminum"),
            ask("Si", "silicon"),
            ask("U", "uranium"),
            ask("Li", "lithium"),
            ask("Ne", "neon"),
        ),
    ),
    Template(
        "how-many-count",
        "facts",
        "replay",
        "How many {x}?",
        source(
            "counts-b",
            ask("days are in a week", *number(7), answer_is_topic=False),
            ask("months are in a year", *number(12), answer_is_topic=False),
            ask("hours are in a day", *number(24), answer_is_topic=False),
            ask("sides does a triangle have", *number(3), answer_is_topic=False),
            ask("minutes are in an hour", *number(60), answer_is_topic=False),
            ask("days are in a leap year", *number(366), answer_is_topic=False),
            ask("wheels does a tricycle have", *number(3), answer_is_topic=False),
            ask("sides does a hexagon have", *number(6), answer_is_topic=False),
            ask("seconds are in a minute", *number(60), answer_is_topic=False),
            ask("strings does a violin have", *number(4), answer_is_topic=False),
        ),
    ),
    Template(
        "painting-painter",
        "facts",
        "replay",
        "Who painted {x}?",
        source(
            "paintings-b",
            ask("the Mona Lisa", "Leonardo", "da Vinci"),
            ask("The Starry Night", "Van Gogh"),
            ask("Guernica", "Picasso"),
            ask("The Persistence of Memory", "Dalí"),
            ask("The Scream", "Munch"),
            ask("Girl with a Pearl Earring", "Vermeer"),
        ),
    ),
    Template(
        "landmark-country",
        "facts",
        "replay",
        "In which country is {x}?",
        source(
            "landmarks-b",
            ask("the Eiffel Tower", "France"),
            ask("the Colosseum", "Italy"),
            ask("the Taj Mahal", "India"),
            ask("the Statue of Liberty", "United States", "USA", "U.S.", "America"),
            ask("Machu Picchu", "Peru"),
            ask("the Acropolis", "Greece"),
            ask("the Sydney Opera House", "Australia"),
            ask("the Great Pyramid of Giza", "Egypt"),
            ask("Big Ben", "England", "United Kingdom", "UK", "Britain"),
            ask("the Christ the Redeemer statue", "Brazil"),
        ),
    ),
    # arithmetic
    Template("sum-add-and", "arithmetic", "replay", "Add {a} and {b}. What is the total?", drawn("sums-b", 10, _plus)),
    Template("quotient-divide-by", "arithmetic", "replay", "Divide {a} by {b}.", drawn("quotients-b", 10, _divide)),
    Template(
        "pencil-boxes",
        "arithmetic",
        "replay",
        "A box holds {a} pencils. How many pencils are in {b} boxes?",
        drawn("box-counts-b", 6, _boxes),
    ),
    # language (some prompts written in French, Spanish and German)
    Template(
        "word-into-spanish",
        "language",
        "replay",
        "Translate the word '{x}' into Spanish.",
        source(
            "spanish-words-b",
            ask("sun", "sol"),
            ask("moon", "luna"),
            ask("friend", "amigo", "amiga"),
            ask("school", "escuela"),
            ask("window", "ventana"),
            ask("cheese", "queso"),
            ask("beach", "playa"),
            ask("horse", "caballo"),
        ),
    ),
    Template(
        "dit-on-en-anglais",
        "language",
        "replay",
        "Comment dit-on « {x} » en anglais ?",
        source(
            "mots-b",
            ask("oiseau", "bird"),
            ask("neige", "snow"),
            ask("montagne", "mountain"),
            ask("bateau", "boat", "ship"),
            ask("étoile", "star"),
            ask("poisson", "fish"),
            ask("fourchette", "fork"),
        ),
    ),
    Template(
        "opposite-word-means",
        "language",
        "replay",
        "Give a word that means the opposite of '{x}'.",
        source(
            "opposites-b",
            ask("win", "lose"),
            ask("true", "false"),
            ask("day", "night"),
            ask("inside", "outside"),
            ask("buy", "sell"),
            ask("push", "pull"),
            ask("first", "last"),
            ask("asleep", "awake"),
            ask("north", "south"),
            ask("forget", "remember"),
        ),
    ),
    Template(
        "gegenteil-von",
        "language",
        "replay",
        "Was ist das Gegenteil von „{x}“?",
        source(
            "gegensaetze-b",
            ask("groß", "klein", "small", "little"),
            ask("lang", "kurz", "short"),
            ask("stark", "schwach", "weak"),
            ask("billig", "teuer", "expensive"),
            ask("links", "rechts", "right"),
            ask("Anfang", "Ende", "end"),
        ),
    ),
    Template(
        "capital-cual-es",
        "language",
        "replay",
        "¿Cuál es la capital de {x}?",
        source(
            "paises-b",
            ask("Ecuador", "Quito"),
            ask("Honduras", "Tegucigalpa"),
            ask("Nicaragua", "Managua"),
            ask("Costa Rica", "San José"),
            ask("la República Dominicana", "Santo Domingo"),
            ask("Jamaica", "Kingston"),
        ),
    ),
    # instructions
    Template(
        "name-three-things-in",
        "instructions",
        "replay",
        "Name three things you might find {x}.",
        source(
            "places-b",
            ask("in a classroom"),
            ask("in a forest"),
            ask("in a bathroom"),
            ask("in a toolbox"),
            ask("in a garage"),
            ask("in a hospital"),
            ask("at a birthday party"),
            ask("in a pencil case"),
        ),
    ),
    Template(
        "two-line-rhyme",
        "instructions",
        "replay",
        "Write a two-line rhyme about {x}.",
        source(
            "rhyme-subjects-b",
            ask("a yellow balloon"),
            ask("a lazy turtle"),
            ask("a snowy hill"),
            ask("a tiny mouse"),
            ask("a rainy afternoon"),
            ask("a dancing robot"),
        ),
    ),
    Template(
        "past-tense-rewrite",
        "instructions",
        "replay",
        'Rewrite this sentence in the past tense: "{x}"',
        source(
            "present-sentences-b",
            ask("I walk to the park.", "walked"),
            ask("She eats a sandwich.", "ate"),
            ask("We go to the market.", "went"),
            ask("They see the mountains.", "saw"),
            ask("He writes a letter.", "wrote"),
            ask("The child runs home.", "ran"),
        ),
    ),
    # reasoning
    Template(
        "month-after",
        "reasoning",
        "replay",
        "Which month comes after {x}?",
        source(
            "months-b",
            ask("January", "February"),
            ask("March", "April"),
            ask("May", "June"),
            ask("July", "August"),
            ask("September", "October"),
            ask("November", "December"),
        ),
    ),
    Template("divisible-by-two", "reasoning", "replay", "Is {n} divisible by 2?", drawn("parities-b", 8, _parity)),
    Template(
        "age-in-years",
        "reasoning",
        "replay",
        "Anna is {age} years old. How old will she be in {years} years?",
        drawn("ages-b", 5, _age),
    ),
    # open-ended
    Template(
        "short-story",
        "open-ended",
        "replay",
        "Tell a very short story about {x}.",
        source(
            "story-characters-b",
            ask("a lost glove"),
            ask("a brave little boat"),
            ask("a robot who learns to paint"),
            ask("a dragon afraid of the dark"),
            ask("a snail in a race"),
            ask("a tree that could talk"),
        ),
    ),
    Template(
        "two-reasons-why",
        "open-ended",
        "replay",
        "Give two reasons why people {x}.",
        source(
            "habits-b",
            ask("keep pets"),
            ask("celebrate birthdays"),
            ask("plant trees"),
            ask("travel abroad"),
            ask("read books"),
            ask("learn to swim"),
        ),
    ),
    Template(
        "what-makes-useful",
        "open-ended",
        "replay",
        "What makes {x} useful?",
        source(
            "tools-b",
            ask("a map"),
            ask("a ladder"),
            ask("a pencil"),
            ask("a spoon"),
            ask("a backpack"),
            ask("a flashlight"),
        ),
    ),
    # definitions
    Template(
        "short-definition",
        "definitions",
        "replay",
        "Give a short definition of {x}.",
        source(
            "terms-b",
            ask("a noun"),
            ask("a verb"),
            ask("a vowel"),
            ask("a mammal"),
            ask("an adjective"),
            ask("a herbivore"),
            ask("a fraction"),
            ask("a peninsula"),
        ),
    ),
    Template(
        "person-who",
        "definitions",
        "replay",
        "What is the word for a person who {x}?",
        source(
            "jobs-b",
            ask("bakes bread", "baker"),
            ask("flies airplanes", "pilot"),
            ask("teaches students", "teacher"),
            ask("grows crops", "farmer"),
            ask("repairs pipes", "plumber"),
            ask("puts out fires", "firefighter", "fireman"),
            ask("cuts hair", "barber", "hairdresser"),
        ),
    ),
)

TEMPLATES = REGRESSION + REPLAY


def check_pools_apart(templates: tuple[Template, ...]) -> None:
    """Raise unless every template id, source and entity term belongs to one pool only."""
    owners: dict[tuple[str, str], tuple[str, str]] = {}  # (kind, name) -> (pool, template id)
    for template in templates:
        if template.pool not in POOLS:
            raise ValueError(f"template {template.id}: unknown pool {template.pool!r}")
        names = [("template", template.id), ("source", template.source.name)]
        names += [("term", term.casefold()) for entity in template.source.entities for term in entity.terms]
        for kind, name in names:
            pool, first = owners.setdefault((kind, name), (template.pool, template.id))
            if pool != template.pool:
                raise ValueError(f"{kind} {name!r} is in both pools: template {first} ({pool}), {template.id}")


def rows(templates: tuple[Template, ...]) -> Iterator[dict[str, object]]:
    for template in templates:
        for entity in template.source.entities:
            yield {
                "id": f"{template.id}/{entity.slug}",
                "category": template.category,
                "pool": template.pool,
                "template": template.id,
                "source": template.source.name,
                "messages": [{"role": "user", "content": template.text.format(**entity.fields)}],
                "answer": None if entity.keywords is None else {"keywords": list(entity.keywords)},
            }


def render() -> str:
    check_pools_apart(TEMPLATES)
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows(TEMPLATES))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file differs")
    parser.add_argument("--output", type=Path, default=OUT, help=f"the file to write or check (default: {OUT})")
    args = parser.parse_args()
    text = render()
    out: Path = args.output
    if args.check:
        if not out.exists() or out.read_text(encoding="utf-8") != text:
            print(f"{out} is out of date: run python scripts/make_general_prompts.py", file=sys.stderr)
            return 1
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {sum(1 for _ in text.splitlines())} prompts to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
