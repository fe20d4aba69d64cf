"""A planted set for the personal-data detector (kubetune_trainer.data.pii): support-ticket text with
identifiers of every kind at known places, written the ways people write them, and near-misses that
must stay (Luhn-invalid card numbers, IBANs with a wrong check, version strings, dates, times, order
and tracking numbers, prices). Generated from a seed, so the set is the same on every machine."""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from kubetune_trainer.data.pii import IBAN_LENGTHS, PiiKind, luhn_valid, verhoeff_valid


@dataclass(frozen=True)
class Planted:
    text: str
    spans: tuple[tuple[int, int, PiiKind], ...]  # (start, end, kind) of each identifier
    decoys: tuple[tuple[int, int, str], ...]  # (start, end, what) of each near-miss


FIRST = ["anna", "li", "omar", "sofia", "jean-luc", "priya", "mateo", "yuki", "olga", "kwame", "emma", "noah"]
LAST = ["smith", "garcia", "nguyen", "müller", "okafor", "rossi", "kowalski", "tanaka", "silva", "dubois"]
DOMAINS = ["example.com", "mail.example.org", "corp.example.co.uk", "uni-example.edu", "example.io", "example.de"]


def _email(rng: random.Random) -> str:
    first, last = rng.choice(FIRST), rng.choice(LAST)  # müller@... as internationalised addresses are written
    local = rng.choice([f"{first}.{last}", f"{first}{rng.randint(1, 99)}", f"{first[0]}{last}", f"{first}+orders"])
    address = f"{local}@{rng.choice(DOMAINS)}"
    return address.upper() if rng.random() < 0.1 else address


def _phone(rng: random.Random) -> str:
    area, exchange, line = rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)
    return rng.choice(
        [
            f"({area}) {exchange}-{line:04d}",
            f"{area}-{exchange}-{line:04d}",
            f"{area}.{exchange}.{line:04d}",
            f"+1 {area} {exchange} {line:04d}",
            f"+1-{area}-{exchange}-{line:04d}",
            f"001-{area}-{exchange}-{line:04d}",  # dialled from abroad, as Faker's en_US numbers are written too
            f"({area}){exchange}-{line:04d}x{rng.randint(100, 99999)}",
            f"({area}) 555-01{rng.randint(0, 99):02d}",
            f"+44 20 7946 0{rng.randint(0, 999):03d}",
            f"+44 7700 900{rng.randint(0, 999):03d}",
            f"020 7946 0{rng.randint(0, 999):03d}",
            f"+49 30 {rng.randint(1000000, 9999999)}",
            f"+33 1 {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)}",
            f"+91 98{rng.randint(100, 999)} {rng.randint(10000, 99999)}",
            f"+61 2 {rng.randint(8000, 9999)} {rng.randint(1000, 9999)}",
        ]
    )


def _luhn_complete(prefix: str, length: int, rng: random.Random, *, valid: bool = True) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    check = next(d for d in string.digits if luhn_valid(body + d))
    if not valid:
        check = str((int(check) + rng.randint(1, 9)) % 10)
    return body + check


def _card(rng: random.Random, *, valid: bool = True) -> str:
    prefix, length = rng.choice(
        [
            *[("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16)],
            *[("6759", 12), ("5018", 12), ("2131", 15), ("1800", 15)],  # Maestro's 12 digits, JCB's 15 (as Faker's)
        ]
    )
    digits = _luhn_complete(prefix, length, rng, valid=valid)
    while length == 12 and verhoeff_valid(digits):  # also a valid Aadhaar number, which the detector reads it as
        digits = _luhn_complete(prefix, length, rng, valid=valid)
    amex = [digits[:4], digits[4:10], digits[10:]]  # 4-6-5
    groups = amex if length == 15 else [digits[i : i + 4] for i in range(0, length, 4)]
    return rng.choice([" ", "-", ""]).join(groups)


def _iban(rng: random.Random, *, valid: bool = True) -> str:
    country = rng.choice(["DE", "GB", "FR", "ES", "NL", "IT", "BE", "CH"])
    length = IBAN_LENGTHS[country]
    if country in ("GB", "NL"):
        bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(4))
        bban += "".join(rng.choice(string.digits) for _ in range(length - 8))
    else:
        bban = "".join(rng.choice(string.digits) for _ in range(length - 4))
    numeric = int("".join(str(int(ch, 36)) for ch in bban + country + "00"))
    check = 98 - numeric % 97
    if not valid:
        check = (check + rng.randint(1, 40)) % 97 + 2
    compact = f"{country}{check:02d}{bban}"
    if check % 5 == 0:  # a fifth typed in lower case ("my iban is de89 ..."), decided without a draw
        compact = compact.lower()
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4)) if rng.random() < 0.7 else compact


def _ip(rng: random.Random) -> str:
    if rng.random() < 0.75:
        return ".".join(str(rng.randint(1 if i == 0 else 0, 254)) for i in range(4))
    groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)]
    return rng.choice([":".join(groups), f"2001:db8::{groups[0]}:{groups[1]}", f"fe80::{groups[2]}"])


def _national_id(rng: random.Random) -> str:
    kind = rng.randrange(5)
    if kind == 4:  # Indian Aadhaar: twelve digits, Verhoeff-valid, in fours or bare
        body = str(rng.randint(2, 9)) + "".join(rng.choice(string.digits) for _ in range(10))
        digits = body + next(d for d in string.digits if verhoeff_valid(body + d))
        return rng.choice([" ", "-", ""]).join([digits[:4], digits[4:8], digits[8:]])
    if kind == 0:  # US SSN
        area = rng.choice([n for n in range(1, 900) if n != 666][:: rng.randint(1, 7)])
        return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
    if kind == 1:  # UK NINO
        first, second = (
            rng.choice("ABCEHJKLMNPRSTWXY"),
            rng.choice("ABCEHJLMPRSWXY"),
        )  # never BG, GB, NK, KN, NT, TN, ZZ
        number = f"{rng.randint(0, 999999):06d}"
        spaced = rng.random() < 0.5
        body = f"{first}{second} {number[:2]} {number[2:4]} {number[4:]} " if spaced else f"{first}{second}{number}"
        return body + rng.choice("ABCD")
    if kind == 2:  # Canadian SIN
        digits = _luhn_complete(rng.choice("1234567"), 9, rng)
        return (
            f"{digits[:3]} {digits[3:6]} {digits[6:]}"
            if rng.random() < 0.5
            else f"{digits[:3]}-{digits[3:6]}-{digits[6:]}"
        )
    number = rng.randint(10000000, 99999999)  # Spanish DNI
    return f"{number}{'TRWAGMYFPDXBNJZSQVHLCKE'[number % 23]}"


MAKERS = {
    PiiKind.EMAIL: _email,
    PiiKind.PHONE: _phone,
    PiiKind.CARD: _card,
    PiiKind.IBAN: _iban,
    PiiKind.IP: _ip,
    PiiKind.NATIONAL_ID: _national_id,
}

TEMPLATES = {
    PiiKind.EMAIL: ["Please reply to {x} about my refund.", "My login {x} stopped working.", "cc {x}, thanks"],
    PiiKind.PHONE: [
        "Call me back on {x} after 5pm.",
        "My number changed to {x}.",
        "Reach the warehouse at {x}, ext 12",
    ],
    PiiKind.CARD: ["I was charged twice on card {x}.", "Card number: {x}, expiry 09/27.", "Refund to {x} please"],
    PiiKind.IBAN: ["Send the refund to IBAN {x}.", "My bank account is {x}", "Wire it to {x} by Friday."],
    PiiKind.IP: ["Login attempts came from {x} last night.", "Our server {x} cannot reach the API.", "whitelist {x}"],
    PiiKind.NATIONAL_ID: ["For verification my ID is {x}.", "Tax form lists {x} as my number.", "ID: {x}"],
}


def _decoy(rng: random.Random) -> tuple[str, str]:
    """(what, text) of a near-miss: shaped like an identifier, but none."""
    year, month, day = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
    major, minor, patch = rng.randint(0, 30), rng.randint(0, 30), rng.randint(0, 300)
    choices = [
        ("luhn-invalid card", _card(rng, valid=False)),
        ("iban with a wrong check", _iban(rng, valid=False)),
        ("version", f"v{major}.{minor}.{patch}"),
        ("version", f"version {major}.{minor}.{patch}.{rng.randint(0, 9999)}"),
        ("date", f"{year}-{month:02d}-{day:02d}"),
        ("date", f"{day:02d}/{month:02d}/{year}"),
        ("date", f"{month:02d}.{day:02d}.{year}"),
        ("time", f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"),
        ("order number", f"#{rng.randint(100000, 99999999)}"),
        ("order number", f"ORD-{year}-{rng.randint(0, 999999):06d}"),
        ("tracking number", f"1Z{rng.randint(100, 999)}AA1{rng.randint(10**13, 10**14 - 1)}"),
        ("price", f"${rng.randint(1, 99)},{rng.randint(100, 999)}.{rng.randint(0, 99):02d}"),
        ("invalid ssn", f"000-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}"),
        ("isbn", f"978-{rng.randint(0, 9)}-{rng.randint(10, 99)}-{rng.randint(100000, 999999)}-{rng.randint(0, 9)}"),
        (
            "not an address",
            f"{rng.randint(256, 999)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}",
        ),
        ("handle", f"@{rng.choice(FIRST).replace('-', '')}{rng.randint(1, 99)}"),
        ("local address", f"{rng.choice(FIRST).replace('-', '')}@localhost"),
        ("quantity", f"{rng.randint(1, 999)} units of SKU {rng.randint(10000, 99999)}"),
        ("unix time", str(rng.randint(1_000_000_000, 1_999_999_999))),
    ]
    return rng.choice(choices)


DECOY_TEMPLATES = ["Order {d} arrived late.", "Since {d} nothing works.", "The app ({d}) crashes.", "Ref {d}."]


def planted_set(count: int = 600, seed: int = 11) -> list[Planted]:
    """``count`` texts, each with one identifier (the kinds in turn) and one or two near-misses."""
    rng = random.Random(seed)
    texts: list[Planted] = []
    kinds = list(MAKERS)
    for index in range(count):
        kind = kinds[index % len(kinds)]
        value = MAKERS[kind](rng)
        parts: list[tuple[str, PiiKind | str | None]] = [
            (rng.choice(DECOY_TEMPLATES).format(d="\0"), "decoy"),
            (" " + rng.choice(TEMPLATES[kind]).format(x="\1") + " ", kind),
        ]
        if rng.random() < 0.5:
            parts.append((rng.choice(DECOY_TEMPLATES).format(d="\0"), "decoy"))
        rng.shuffle(parts)
        text, spans, decoys = "", [], []
        for fragment, _ in parts:
            text += " " if text and not text.endswith(" ") else ""
            for char in fragment:
                if char == "\1":
                    spans.append((len(text), len(text) + len(value), kind))
                    text += value
                elif char == "\0":
                    what, decoy = _decoy(rng)
                    decoys.append((len(text), len(text) + len(decoy), what))
                    text += decoy
                else:
                    text += char
        texts.append(Planted(text, tuple(spans), tuple(decoys)))
    return texts
