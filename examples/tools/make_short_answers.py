"""Generate examples/short-answers/data.jsonl: one detail extracted from a short message, as free text.

A second task for measuring forgetting, unlike the support tickets in kind: the answer is a
short span copied from the prompt (a city, a person, a restaurant, a date, a time, ...), with
hundreds of distinct answers instead of a few labels. Each row is a notification or note from
one of six everyday scenarios (flight, meeting, restaurant booking, concert, doctor's
appointment, flat viewing) and a question about one of its details. Entities, templates,
question wording, prompt layout and surrounding noise are drawn independently, so no two rows
are near-duplicates (the trainer's MinHash dedup at Jaccard 0.9 keeps them all).

Deterministic (seeded), standard library only. Chat format (OpenAI ``messages``).
Run: python examples/tools/make_short_answers.py [OUTPUT]   (default: examples/short-answers/data.jsonl)
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

SEED = 20260311
ROWS = 400
DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "short-answers" / "data.jsonl"

SYSTEM = "Answer the question with the exact words from the message, nothing else."

CITIES = [
    "Lyon", "Porto", "Krakow", "Seville", "Bergen", "Tallinn", "Bologna", "Ghent", "Dublin", "Valencia",
    "Salzburg", "Gdansk", "Nantes", "Leipzig", "Turin", "Malaga", "Bilbao", "Aarhus", "Graz", "Split",
    "Riga", "Vilnius", "Utrecht", "Basel", "Geneva", "Zagreb", "Ljubljana", "Bratislava", "Brno", "Toulouse",
    "Marseille", "Hamburg", "Munich", "Rotterdam", "Antwerp", "Edinburgh", "Glasgow", "Cork", "Galway", "Nice",
    "Bordeaux", "Florence", "Naples", "Palermo", "Helsinki", "Oslo", "Gothenburg", "Malmo", "Tampere", "Innsbruck",
]  # fmt: skip
FIRST_NAMES = [
    "Amara", "Jonas", "Priya", "Mateo", "Ingrid", "Kwame", "Sofia", "Tomasz", "Leila", "Hugo",
    "Yuki", "Niamh", "Rafael", "Elif", "Dmitri", "Chloe", "Arjun", "Freya", "Tariq", "Marta",
    "Olu", "Greta", "Santiago", "Hana", "Luca", "Ada", "Bram", "Zainab", "Felix", "Ines",
]  # fmt: skip
LAST_NAMES = [
    "Okafor", "Lindqvist", "Raman", "Alvarez", "Novak", "Mensah", "Rossi", "Kowalski", "Haddad", "Moreau",
    "Tanaka", "Byrne", "Costa", "Yilmaz", "Petrov", "Dubois", "Mehta", "Hansen", "Aziz", "Nowak",
    "Adeyemi", "Vogel", "Herrera", "Sato", "Bianchi", "Fischer", "Jansen", "Bello", "Keller", "Ferreira",
]  # fmt: skip
MONTHS = ["Jan", "Feb", "March", "April", "May", "June", "July", "Aug", "Sept", "Oct", "Nov", "Dec"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
AIRLINE_CODES = ["KL", "LH", "AF", "IB", "SK", "AY", "LX", "OS", "TP", "EI", "BA", "FR", "U2", "W6", "VY"]
ROOMS = [
    "Birch room", "Harbour room", "Atrium", "Library", "Studio 3", "Orchard room", "Lab 2", "Boardroom",
    "Glasshouse", "Loft", "Cedar room", "Room 4B", "Attic room", "Lighthouse room",
]  # fmt: skip
TOPICS = ["budget", "hiring", "roadmap", "launch", "onboarding", "audit", "pricing", "offsite", "migration", "design"]
RESTAURANT_FIRST = [
    "Golden", "Copper", "Blue", "Little", "Wild", "Salt", "Olive", "Velvet", "Rusty", "Green",
    "Silver", "Crooked", "Lucky", "Saffron", "Amber",
]  # fmt: skip
RESTAURANT_SECOND = [
    "Fig", "Kettle", "Lantern", "Spoon", "Anchor", "Pantry", "Vine", "Oven", "Table", "Harbour",
    "Basil", "Barrel", "Garden", "Bistro", "Radish",
]  # fmt: skip
BAND_ADJECTIVES = [
    "Paper", "Electric", "Midnight", "Velvet", "Hollow", "Neon", "Quiet", "Northern", "Broken", "Silver",
    "Wandering", "Glass", "Static", "Lunar", "Restless",
]  # fmt: skip
BAND_NOUNS = [
    "Moons", "Foxes", "Pilots", "Rivers", "Sparrows", "Engines", "Tides", "Ghosts", "Giants", "Lanterns",
    "Wolves", "Satellites", "Harbours", "Owls", "Kites",
]  # fmt: skip
VENUE_FIRST = ["Riverside", "Union", "Crown", "Old Mill", "Lantern", "Harbour", "Empire", "Parkside", "Granary"]
VENUE_KINDS = ["Hall", "Arena", "Theatre", "Club", "Pavilion", "Ballroom"]
CLINICS = [
    "Northgate", "Elmwood", "Southbank", "Westfield", "Meadowview", "Kingsbridge", "Lakeside", "Hillcrest",
    "Fairview", "Oakridge", "Stonebridge", "Brookside",
]  # fmt: skip
STREET_NAMES = [
    "Elm", "Canal", "Mill", "Chestnut", "Station", "Orchard", "Quarry", "Linden", "Harbour", "Maple",
    "Foundry", "Willow", "Market", "Rosemary", "Juniper", "Abbey",
]  # fmt: skip
STREET_KINDS = ["Street", "Road", "Lane", "Avenue", "Close", "Terrace"]

OPENINGS = ["", "", "", "Hi,", "Hello!", "FYI:", "Fwd:", "Note to self:", "Update -", "Good news:", "Reminder:"]
CLOSINGS = [
    "", "", "", "Thanks!", "See you then.", "Sent from my phone.", "Reply STOP to unsubscribe.",
    "Let me know if that works.", "Cheers", "Any questions, just ask.", "Have a nice day.",
]  # fmt: skip
LAYOUTS = [
    "Message: {message}\nQuestion: {question}",
    "{question}\n\n{message}",
    '{question}\nMessage: "{message}"',
    "{message}\n\nQ: {question}",
    "Read this:\n{message}\n\n{question}",
    "Text received: {message}\n{question}",
]


@dataclass(frozen=True)
class Scenario:
    """Messages of one kind and, for each detail they can mention, ways to ask for it."""

    templates: tuple[str, ...]
    questions: dict[str, tuple[str, ...]]


SCENARIOS = [
    Scenario(
        templates=(
            "Your flight {flight} departs {origin} on {date} at {time}, gate {gate}, and lands in {dest} at {time2}.",
            "Flight {flight} from {origin} to {dest} leaves at {time} on {date}. Boarding closes at {time2}.",
            "Check-in is open for {flight} ({origin} to {dest}, {date}). Departure {time}, gate {gate}.",
            "{first}, your trip is confirmed: {origin} -> {dest} on {date}, flight {flight}, departing {time}.",
            "Gate change for {flight} to {dest}: now gate {gate}. It still leaves {origin} at {time}.",
        ),
        questions={
            "origin": ("Which city does the flight leave from?", "Where does the flight depart from?"),
            "dest": ("Where does the flight land?", "Which city is the flight going to?", "What is the destination?"),
            "time": ("What time does the flight depart?", "At what time does the plane leave?"),
            "flight": ("What is the flight number?", "Which flight is it?"),
            "date": ("On what date is the flight?", "Which day does the flight leave?"),
            "gate": ("Which gate?", "What gate does the flight leave from?"),
        },
    ),
    Scenario(
        templates=(
            "Can we move the {topic} review with {person} to {weekday} at {time}? The {room} is free then.",
            "{person} would like to meet on {weekday} at {time} in the {room} to go over the {topic} plan.",
            "Heads-up: the {topic} sync with {person} is on {weekday}, starting {time} in the {room}.",
            "I booked the {room} for {weekday} {time}. {person} will present the {topic} numbers.",
        ),
        questions={
            "person": ("Who is the meeting with?", "Which colleague is involved in the meeting?"),
            "weekday": ("On which day is the meeting?", "What day is the meeting?"),
            "time": ("What time does the meeting start?", "When does it begin?"),
            "room": ("Which room is the meeting in?", "Where is the meeting held?"),
            "topic": ("What is the meeting about?", "Which topic will be discussed?"),
        },
    ),
    Scenario(
        templates=(
            "Table for {guests} confirmed at {restaurant} on {date} at {time}, under the name {person}.",
            "Hi {first}! {restaurant} has your booking for {guests} people at {time} on {date}. Call us if you "
            "are running late.",
            "Your reservation: {restaurant}, {date}, {time}, {guests} guests. Booked by {person}.",
            "{person} reserved a table at {restaurant} for {guests} of us, {weekday} evening at {time}.",
        ),
        questions={
            "restaurant": ("Which restaurant is the booking at?", "What is the name of the restaurant?"),
            "guests": ("How many people is the table for?", "For how many guests is the booking?"),
            "person": ("Under whose name is the table booked?", "Who made the reservation?"),
            "time": ("What time is the reservation?", "At what time should they arrive?"),
            "date": ("On what date is the dinner?", "Which date is the table booked for?"),
            "weekday": ("Which day is the dinner?",),
        },
    ),
    Scenario(
        templates=(
            "{band} play {venue} in {city} on {date}; doors open at {time}.",
            "Tickets for {band} at {venue} ({city}, {date}) go on sale this Friday.",
            "Don't miss {band} live on {date} at {venue}, {city}. The show starts at {time}.",
            "{first} got us two tickets: {band}, {venue}, {date}. Meet at the entrance at {time}?",
        ),
        questions={
            "band": ("Which band is playing?", "Who is performing?"),
            "venue": ("Which venue is the concert at?", "What is the name of the venue?"),
            "city": ("In which city is the concert?", "Which city is the gig in?"),
            "date": ("On what date is the concert?", "When is the show (date)?"),
            "time": ("What time should they be there?", "At what time does it start?"),
        },
    ),
    Scenario(
        templates=(
            "{doctor} can see you on {date} at {time} at the {clinic} practice. Bring your insurance card.",
            "Appointment reminder: {date}, {time}, with {doctor} ({clinic} practice, second floor).",
            "The {clinic} surgery moved your check-up with {doctor} to {weekday} at {time}.",
            "Booked: blood test on {date} at {time}, {clinic} clinic. {doctor} will go through the results.",
        ),
        questions={
            "doctor": ("Which doctor is the appointment with?", "Who will the patient see?"),
            "date": ("On what date is the appointment?", "Which date is it booked for?"),
            "time": ("What time is the appointment?", "At what time should the patient arrive?"),
            "clinic": ("Which practice is it at?", "What is the clinic called?"),
            "weekday": ("On which day is the check-up?",),
        },
    ),
    Scenario(
        templates=(
            "The viewing of the two-bedroom flat on {street} is on {weekday} at {time}; {agent} will meet you outside.",
            "{agent} confirmed a viewing at {number} {street} on {weekday}, {time}. Rent is {rent} a month.",
            "New listing on {street}: {rent} per month, available from {date}. Contact {agent} to visit.",
            "Can you view the studio on {street} {weekday} at {time}? Ask for {agent}. The rent is {rent}.",
        ),
        questions={
            "street": ("Which street is the flat on?", "What street is the property in?"),
            "agent": ("Who will show the flat?", "What is the agent's name?"),
            "weekday": ("On which day is the viewing?",),
            "time": ("What time is the viewing?",),
            "rent": ("How much is the rent?", "What does the flat cost per month?"),
            "date": ("From what date is it available?",),
        },
    ),
]

_SLOT = re.compile(r"\{(\w+)\}")


def draw_slots(rng: random.Random) -> dict[str, str]:
    """One value for every slot any template may use; distinct where two slots could be confused."""
    origin, dest, city = rng.sample(CITIES, 3)
    first, other_first = rng.sample(FIRST_NAMES, 2)
    hour, minute = rng.randint(6, 22), rng.choice(range(0, 60, 5))
    later = (hour * 60 + minute + rng.choice([45, 70, 95, 130, 165])) % (24 * 60)
    return {
        "origin": origin,
        "dest": dest,
        "city": city,
        "first": first,
        "person": f"{other_first} {rng.choice(LAST_NAMES)}",
        "agent": f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}",
        "doctor": f"Dr. {rng.choice(LAST_NAMES)}",
        "date": f"{rng.randint(1, 28)} {rng.choice(MONTHS)}",
        "weekday": rng.choice(WEEKDAYS),
        "time": f"{hour:02d}:{minute:02d}",
        "time2": f"{later // 60:02d}:{later % 60:02d}",
        "flight": f"{rng.choice(AIRLINE_CODES)}{rng.randint(100, 9899)}",
        "gate": f"{rng.choice('ABCDEF')}{rng.randint(1, 48)}",
        "room": rng.choice(ROOMS),
        "topic": rng.choice(TOPICS),
        "restaurant": f"{rng.choice(RESTAURANT_FIRST)} {rng.choice(RESTAURANT_SECOND)}",
        "guests": str(rng.randint(2, 12)),
        "band": f"The {rng.choice(BAND_ADJECTIVES)} {rng.choice(BAND_NOUNS)}",
        "venue": f"{rng.choice(VENUE_FIRST)} {rng.choice(VENUE_KINDS)}",
        "clinic": rng.choice(CLINICS),
        "street": f"{rng.choice(STREET_NAMES)} {rng.choice(STREET_KINDS)}",
        "number": str(rng.randint(2, 180)),
        "rent": f"€{rng.randint(18, 64) * 25}",
    }


def make_row(scenario: Scenario, rng: random.Random) -> tuple[str, str]:
    """A prompt (message + question) and its answer, a span of the message."""
    template = rng.choice(scenario.templates)
    slots = draw_slots(rng)
    message = " ".join(p for p in (rng.choice(OPENINGS), template.format(**slots), rng.choice(CLOSINGS)) if p)
    # Only details this template mentions can be asked about, so the answer is always in the prompt.
    askable = [name for name in scenario.questions if name in _SLOT.findall(template)]
    field = rng.choice(askable)
    prompt = rng.choice(LAYOUTS).format(message=message, question=rng.choice(scenario.questions[field]))
    return prompt, slots[field]


def build_rows(seed: int = SEED, count: int = ROWS) -> list[dict[str, list[dict[str, str]]]]:
    rng = random.Random(seed)
    rows: list[dict[str, list[dict[str, str]]]] = []
    seen: set[str] = set()
    while len(rows) < count:
        prompt, answer = make_row(SCENARIOS[len(rows) % len(SCENARIOS)], rng)
        if prompt in seen:
            continue
        seen.add(prompt)
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
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
