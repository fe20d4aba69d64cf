"""Generate examples/intents/data.jsonl: the intent of a spoken smart-home command, one of nine labels.

A third task for measuring forgetting, unlike the support tickets in format and label count:
Alpaca rows (instruction, input, output) where the output is exactly one of nine intent labels.
Commands are composed from independent parts (a wake phrase, a core request from one of the
intent's templates with rooms, devices, temperatures, artists, durations, groceries, cities or
contacts filled in, maybe an unrelated context clause, a closing remark), and a candidate too
similar to an accepted row is drawn again, so no two rows are near-duplicates (the trainer's
MinHash dedup at Jaccard 0.9 keeps them all). Labels are used in turn, so they are balanced.

Deterministic (seeded), standard library only.
Run: python examples/tools/make_intents.py [OUTPUT]   (default: examples/intents/data.jsonl)
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

SEED = 20260312
ROWS = 405  # 45 per label
# Largest word-3-gram Jaccard similarity allowed between two prompts; the trainer's MinHash
# estimate drops pairs at >= 0.9, and its estimation error is a few hundredths.
MAX_JACCARD = 0.75
DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "intents" / "data.jsonl"

INTENTS: dict[str, tuple[str, ...]] = {
    "turn_on_lights": (
        "turn on the {room} lights",
        "switch the lights on in the {room}",
        "lights on in the {room}",
        "can you light up the {room}",
        "it's way too dark in the {room}",
        "put the {room} ceiling light on",
        "bring the {room} lamps up to {percent} percent",
        "I can't see a thing in the {room}, give me some light",
        "wake up the {lamp} in the {room}",
    ),
    "turn_off_lights": (
        "turn off the {room} lights",
        "kill the lights in the {room}",
        "lights off in the {room}",
        "switch off the {lamp} in the {room}",
        "nobody is in the {room}, shut the lights",
        "make the {room} dark",
        "we're done in the {room}, lights out",
        "the {lamp} in the {room} is still on, turn it off",
    ),
    "set_thermostat": (
        "set the heating to {temp} degrees",
        "make it {temp} degrees in the {room}",
        "warm the house up to {temp}",
        "it's freezing, bump the thermostat to {temp}",
        "cool the {room} down to {temp} degrees",
        "lower the temperature by {delta} degrees",
        "turn the heat up {delta} degrees in the {room}",
        "keep the {room} at {temp} overnight",
    ),
    "play_music": (
        "play something by {artist}",
        "put on some {genre}",
        "play my {playlist} playlist",
        "start the {genre} radio in the {room}",
        "shuffle songs by {artist}",
        "I'm in the mood for {genre} in the {room}",
        "play the latest album from {artist}",
        "queue up {playlist} on the {room} speaker",
    ),
    "set_timer": (
        "set a timer for {duration}",
        "start a {duration} countdown",
        "time {duration} for the {food}",
        "the {food} needs {duration}, start a timer",
        "countdown of {duration} for {activity}",
        "give me a {duration} timer for {activity}",
        "beep when {duration} are up",
        "{activity} for {duration}, time it",
    ),
    "lock_door": (
        "lock the {door}",
        "is the {door} locked? lock it",
        "secure the {door} for the night",
        "bolt the {door}",
        "make sure the {door} is locked",
        "I left the {door} open, lock it please",
        "lock up the {door} and the windows",
        "engage the lock on the {door}",
    ),
    "add_to_shopping_list": (
        "add {item} to the shopping list",
        "we're out of {item}",
        "put {item} and {item2} on the list",
        "remember to buy {item}",
        "note down {item} for the groceries",
        "shopping list: {item}, {item2}",
        "we need more {item} next time I'm at the store",
        "the {item} is almost gone, add it to my list",
    ),
    "get_weather": (
        "what's the weather in {city} {when}",
        "will it rain {when}",
        "do I need an umbrella {when}",
        "how hot will it be in {city} {when}",
        "forecast for {city} {when}",
        "is it going to snow in {city} {when}",
        "how windy is it going to be {when}",
        "should I wear a coat {when} in {city}",
    ),
    "call_contact": (
        "call {contact}",
        "phone {contact} on speaker",
        "ring {contact}'s mobile",
        "get {contact} on the line",
        "dial {contact} at work",
        "video call {contact}",
        "I need to talk to {contact}, call them",
        "start a call with {contact} in the {room}",
    ),
}

# The labels are learnt from the data, not listed here: listing them would make the instruction
# most of every row's tokens, and a CPU run's time grows with the tokens it trains on.
INSTRUCTION = "Classify the intent of this smart-home voice command. Answer with the intent label only."

ROOMS = [
    "kitchen", "living room", "bedroom", "hallway", "bathroom", "garage", "office", "porch", "kids' room",
    "basement", "dining room", "patio", "attic", "nursery", "laundry room", "guest room", "study", "den",
]  # fmt: skip
LAMPS = ["desk lamp", "floor lamp", "reading light", "fairy lights", "spotlights", "night light", "pendant light"]
ARTISTS = [
    "Nina Simone", "Daft Punk", "Fleetwood Mac", "Miles Davis", "Adele", "Radiohead", "Stevie Wonder",
    "Taylor Swift", "Bob Marley", "Queen", "Billie Eilish", "The Beatles", "Norah Jones", "Coldplay",
    "Ella Fitzgerald", "Kendrick Lamar", "ABBA", "Bach",
]  # fmt: skip
GENRES = [
    "jazz",
    "lo-fi beats",
    "classical",
    "reggae",
    "eighties pop",
    "blues",
    "techno",
    "folk",
    "bossa nova",
    "metal",
]
PLAYLISTS = ["Sunday morning", "workout", "focus", "dinner party", "road trip", "rainy day", "chill", "throwbacks"]
FOODS = ["pasta", "eggs", "rice", "pizza", "bread", "roast chicken", "cookies", "tea", "lasagne", "potatoes"]
ACTIVITIES = ["the laundry", "my nap", "homework", "stretching", "meditation", "the kids' screen time", "a workout"]
DOORS = ["front door", "back door", "garage door", "side gate", "patio door", "shed", "basement door"]
ITEMS = [
    "milk", "eggs", "coffee beans", "oat milk", "toilet paper", "bananas", "olive oil", "dish soap", "bread",
    "butter", "rice", "tomatoes", "cat food", "batteries", "yoghurt", "lemons", "cheddar", "dog treats",
    "paper towels", "cereal", "spinach", "garlic",
]  # fmt: skip
CITIES = [
    "Denver", "Austin", "Seattle", "Boston", "Chicago", "Phoenix", "Atlanta", "Portland", "Miami", "Toronto",
    "Vancouver", "Melbourne", "Auckland", "Cape Town", "Nairobi", "Mumbai", "Osaka", "Santiago",
]  # fmt: skip
WHEN = ["today", "tonight", "tomorrow", "this weekend", "on Saturday", "this afternoon", "tomorrow morning", "later"]
CONTACTS = [
    "mom", "dad", "grandma", "Aunt Rosa", "Uncle Pete", "Jamal", "Mei", "Carlos", "the babysitter", "Dr. Patel",
    "my sister", "my brother", "Olivia", "Ben", "the plumber", "Sven", "Fatima", "Coach Miller",
]  # fmt: skip

# Said before or after the request; independent of the intent, so the model has to find the request.
CONTEXTS = [
    "I'm heading to bed", "guests are coming over at seven", "I'm making dinner", "the baby just fell asleep",
    "I just got back from work", "we're about to watch a film", "I'm about to leave", "my hands are full",
    "it's my day off", "I'm on the sofa", "the kids are doing homework", "I'm in the middle of a call",
    "we're having friends over", "I'm working from home today", "I'm getting ready for a run",
]  # fmt: skip
WAKE_PHRASES = ["", "", "", "Hey home,", "Okay house,", "Home assistant,", "Hi,", "Um,", "Quick one:", "Alright,"]
CLOSINGS = ["", "", "", "please", "thanks", "right now", "when you get a chance", "thank you", "asap", "cheers"]
ENDINGS = ["", ".", "!", "?"]
_WORD = re.compile(r"\w+")


def draw_slots(rng: random.Random) -> dict[str, str]:
    """One value for every slot any template may use."""
    item, item2 = rng.sample(ITEMS, 2)
    minutes = rng.choice([1, 2, 3, 5, 7, 8, 10, 12, 15, 20, 25, 30, 40, 45, 90])
    return {
        "room": rng.choice(ROOMS),
        "lamp": rng.choice(LAMPS),
        "percent": str(rng.choice(range(10, 101, 10))),
        "temp": str(rng.randint(16, 25)),
        "delta": rng.choice(["two", "three", "a couple of", "1", "2"]),
        "artist": rng.choice(ARTISTS),
        "genre": rng.choice(GENRES),
        "playlist": rng.choice(PLAYLISTS),
        "duration": f"{minutes} minutes" if rng.random() < 0.8 else f"{minutes * 60} seconds",
        "food": rng.choice(FOODS),
        "activity": rng.choice(ACTIVITIES),
        "door": rng.choice(DOORS),
        "item": item,
        "item2": item2,
        "city": rng.choice(CITIES),
        "when": rng.choice(WHEN),
        "contact": rng.choice(CONTACTS),
    }


def command(label: str, rng: random.Random) -> str:
    """A spoken-style command for ``label``: wake phrase, request, maybe a context, closing, casual casing."""
    request = rng.choice(INTENTS[label]).format(**draw_slots(rng))
    context = rng.choice(CONTEXTS) if rng.random() < 0.5 else ""
    if context and rng.random() < 0.5:
        request = f"{context}, {request}"
    elif context:
        request = f"{request}, {context}"
    wake, closing = rng.choice(WAKE_PHRASES), rng.choice(CLOSINGS)
    if not wake or rng.random() < 0.5:
        request = request[0].upper() + request[1:]
    text = " ".join(p for p in (wake, request) if p)
    if closing:
        text += f", {closing}"
    return text + rng.choice(ENDINGS)


def shingles(text: str) -> set[str]:
    """Word 3-grams of the case-folded text: what the trainer's MinHash near-dedup compares."""
    words = _WORD.findall(text.casefold())
    return {" ".join(words[i : i + 3]) for i in range(len(words) - 2)}


def too_similar(candidate: set[str], accepted: list[set[str]]) -> bool:
    return any(len(candidate & other) >= MAX_JACCARD * len(candidate | other) for other in accepted)


def build_rows(seed: int = SEED, count: int = ROWS) -> list[dict[str, str]]:
    rng = random.Random(seed)
    labels = list(INTENTS)
    rows: list[dict[str, str]] = []
    accepted: list[set[str]] = []
    while len(rows) < count:
        label = labels[len(rows) % len(labels)]
        text = command(label, rng)
        # Commands are short, so two differing in one word could come close to the trainer's 0.9
        # near-duplicate threshold (the shared instruction counts too); keep a margin instead.
        candidate = shingles(f"{INSTRUCTION}\n\n{text}")
        if too_similar(candidate, accepted):
            continue
        accepted.append(candidate)
        rows.append({"instruction": INSTRUCTION, "input": text, "output": label})
    rng.shuffle(rows)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("output", nargs="?", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    rows = build_rows()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} rows to {args.output}")


if __name__ == "__main__":
    main()
