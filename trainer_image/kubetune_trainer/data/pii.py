"""Personal data in training text: e-mail addresses, phone numbers, payment card numbers, IBANs, IP
addresses and national identity numbers (US SSN, UK National Insurance, Canadian SIN, Spanish DNI/NIE,
Indian Aadhaar), found by pattern and checksum with no NLP model (spaCy's models are not on the package
registries this runs from).

Each kind is a pattern that finds candidates and a validator that keeps only real ones, so numbers
that merely look alike stay: a card number must pass the Luhn check and start like a card, an IBAN its
mod-97 check at its country's length, an IPv4 address has four octets of at most 255 and is no version
string, a national ID its format's own checksum or reserved-range rules. Phone numbers come from
``phonenumbers`` (Google's libphonenumber metadata): any number in international form (``+44 …``,
``0044 …``), North American numbers by their shape and grouping (the fictional 555 numbers too), and
national numbers of a few countries only when their numbering plan makes them valid, since shape alone
would take dates, versions, ISBNs and order numbers for phones.

Where two findings overlap, the more specific kind wins (an IBAN's digits are no phone number): the
order of ``KINDS``. Measured on a planted set (tests/trainer/test_pii.py): recall and false positives
per kind, and the near-misses left alone."""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from enum import StrEnum

from phonenumbers import Leniency, PhoneNumberMatcher

from kubetune.api.v1alpha1 import PersonalDataPolicy
from kubetune_trainer.data.curation import Dropped
from kubetune_trainer.data.types import Example, Message


class PiiKind(StrEnum):
    EMAIL = "email"
    IBAN = "iban"
    CARD = "card"
    NATIONAL_ID = "nationalId"
    IP = "ip"
    PHONE = "phone"


KINDS = tuple(PiiKind)  # the precedence on overlaps: most specific first


@dataclass(frozen=True, order=True)
class Finding:
    start: int
    end: int
    kind: PiiKind


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


# --------------------------------------------------------------------------- e-mail

# Letters of any script, as internationalised addresses (RFC 6531) have them: jürgen@müller.de.
_EMAIL = re.compile(
    r"(?<![\w.%+-])[^\W_](?:[\w.%+-]{0,62}[\w%+-])?"
    r"@(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,24}(?![\w-])"
)

# --------------------------------------------------------------------------- IBAN

# ISO 13616 lengths by country (the SWIFT IBAN registry).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
    # joined the registry since 2020
    "BI": 27, "DJ": 27, "FK": 18, "HN": 28, "LY": 25, "MN": 20, "NI": 28, "OM": 23, "RU": 33, "SD": 18,
    "SO": 23, "YE": 30,
}  # fmt: skip
# Candidates in either case (people type "my iban is de89 3704 ..."): the mod-97 check keeps only real ones.
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]){11,30}(?![A-Za-z0-9])")
# What looks like an IBAN, for holding back the other kinds where its check fails: upper-case as IBANs are
# printed, however spaced; in other case only compact, or in groups of four with digits after the first
# (the bank code), since ``_IBAN`` in lower case also matches plain words after a token like "ab12" (and
# would hide the phone number in "ab12 then call 415-555-2671").
_IBAN_GROUP = r" (?=[A-Za-z0-9]{0,3}\d)[A-Za-z0-9]{4}"
_IBAN_SHAPE = re.compile(
    r"(?<![A-Za-z0-9])(?:[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}"
    rf"|[A-Za-z]{{2}}\d{{2}}(?:[A-Za-z0-9]{{11,30}}| [A-Za-z0-9]{{4}}(?:{_IBAN_GROUP}){{1,6}}(?: [A-Za-z0-9]{{1,3}})?))"
    r"(?![A-Za-z0-9])"
)


def iban_valid(candidate: str) -> bool:
    compact = candidate.replace(" ", "").upper()
    if IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _ibans(text: str) -> Iterator[tuple[int, int]]:
    for match in _IBAN.finditer(text):
        # The pattern may run on into the next word's letters; try the longest valid prefix of words.
        words = match.group().split(" ")
        for count in range(len(words), 0, -1):
            candidate = " ".join(words[:count])
            if iban_valid(candidate):
                yield match.start(), match.start() + len(candidate)
                break


# --------------------------------------------------------------------------- payment cards

# As card numbers are written: bare, in fours (the last group shorter), or Amex's 4-6-5.
_CARD_FORMS = r"\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,4}(?:\1\d{1,3})?|\d{4}([ -])\d{6}\2\d{4,5}"
_TWELVE = r"\d{12}|\d{4}([ -])\d{4}\3\d{4}"  # Maestro's shortest, bare or in fours
_CARD = re.compile(rf"(?<![\w+-])(?:{_CARD_FORMS}|{_TWELVE})(?![\w-])")
# What holds back the other kinds where the Luhn check fails: 13 digits or more. Twelve would also hide
# Aadhaar numbers and phone numbers written in fours.
_CARD_SHAPE = re.compile(rf"(?<![\w+-])(?:{_CARD_FORMS})(?![\w-])")
# What card numbers start with: Visa 4, Mastercard 51-55 and 2221-2720, Maestro 50, 56-69 and 0604, Amex
# 34 and 37, JCB 35 and (15 digits) 1800 and 2131, Diners 30, 36, 38-39, Discover and UnionPay 6.
_CARD_PREFIX = re.compile(r"[456]|3[045-9]|2(?:2[2-9]|[3-6]|7[01]|720)|1800|2131|0604")
_MAESTRO_PREFIX = re.compile(r"50|5[6-9]|6|0604")  # the only cards of 12 digits


def card_valid(candidate: str) -> bool:
    digits = _digits(candidate)
    if not (12 <= len(digits) <= 19 and _CARD_PREFIX.match(digits) and luhn_valid(digits)):
        return False
    # Twelve digits that also pass Aadhaar's Verhoeff check are read as the Aadhaar number (both checks pass
    # by chance for one Maestro number in ten).
    return len(digits) > 12 or (_MAESTRO_PREFIX.match(digits) is not None and not verhoeff_valid(digits))


# --------------------------------------------------------------------------- national IDs

# US Social Security numbers, written with dashes or spaces (a bare 9-digit run is any number): no
# area 000, 666 or 900-999, no group 00, no serial 0000.
_SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\w-])")
# UK National Insurance numbers: two letters, six digits, a suffix letter. As HMRC issues them: not D,
# F, I, Q, U, V, the second letter not O, not the prefixes never issued, the suffix A-D. Also the shapes
# only these numbers have, with any letters, since examples and test data use the reserved ones
# (HMRC's own example QQ 12 34 56 C; Faker's en_GB numbers ZZ 12 34 56 T): spaced in pairs, or the
# suffix set apart, and compact with the reserved prefixes QQ and ZZ.
_NINO = re.compile(
    r"(?<![A-Za-z0-9])(?:(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]"
    r"|(?:QQ|ZZ)\d{6}[A-Z]|[A-Z]{2} \d{2} \d{2} \d{2} [A-Z]|[A-Z]{2} ?\d{6} [A-Z])(?![A-Za-z0-9])"
)
# Canadian Social Insurance numbers, three groups of three, Luhn-valid, whatever the first digit (0 and 8
# are issued to no person, but test data, Faker's en_CA numbers among them, have them).
_SIN = re.compile(r"(?<![\w-])\d{3}([- ])\d{3}\1\d{3}(?![\w-])")
# Spanish DNI (8 digits) and NIE (X, Y or Z and 7 digits) with their check letter.
_DNI = re.compile(r"(?<![A-Za-z0-9])([XYZ]-?\d{7}|\d{8})-?([A-Z])(?![A-Za-z0-9])")  # NIE: X-1234567-L too
_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"
# Indian Aadhaar numbers: twelve digits in groups of four, not starting with 0 or 1, Verhoeff-valid.
_AADHAAR = re.compile(r"(?<![\w+-])[2-9]\d{3}([ -]?)\d{4}\1\d{4}(?![\w-])")
_VERHOEFF_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 4, 0, 6, 7, 8, 9, 5), (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7), (4, 0, 1, 2, 3, 9, 5, 6, 7, 8), (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2), (7, 6, 5, 9, 8, 2, 1, 0, 4, 3), (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)  # fmt: skip
_VERHOEFF_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 5, 7, 6, 2, 8, 3, 0, 9, 4), (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7), (9, 4, 5, 3, 1, 2, 6, 8, 7, 0), (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5), (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)  # fmt: skip


def verhoeff_valid(digits: str) -> bool:
    check = 0
    for position, char in enumerate(reversed(digits)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[position % 8][int(char)]]
    return check == 0


def _national_ids(text: str) -> Iterator[tuple[int, int]]:
    for pattern, valid in (
        (_SSN, lambda m: True),
        (_NINO, lambda m: True),
        (_SIN, lambda m: luhn_valid(_digits(m.group()))),
        (_DNI, _dni_valid),
        (_AADHAAR, lambda m: verhoeff_valid(_digits(m.group()))),
    ):
        for match in pattern.finditer(text):
            if valid(match):
                yield match.span()


def _dni_valid(match: re.Match[str]) -> bool:
    number = match.group(1).replace("-", "")
    number = str("XYZ".index(number[0])) + number[1:] if number[0] in "XYZ" else number
    return _DNI_LETTERS[int(number) % 23] == match.group(2)


# --------------------------------------------------------------------------- IP addresses

_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# A version string looks like an address ("version 10.0.1.2"): the word before it says which.
_VERSION_CONTEXT = re.compile(r"\b(?:v|version|ver|release|build|firmware)\.?\s*$", re.IGNORECASE)


def _ips(text: str) -> Iterator[tuple[int, int]]:
    for match in _IPV4.finditer(text):
        octets = match.group().split(".")
        valid = all(int(o) <= 255 and (o == "0" or not o.startswith("0")) for o in octets)
        if valid and not _VERSION_CONTEXT.search(text[max(0, match.start() - 12) : match.start()]):
            yield match.span()
    for match in _IPV6.finditer(text):
        candidate = match.group()
        if candidate.count(":") >= 2 and any(ch.isalnum() for ch in candidate):
            try:
                ipaddress.IPv6Address(candidate)
            except ValueError:
                continue
            yield match.span()


# --------------------------------------------------------------------------- phone numbers

# Where a phone number may be: digits with the separators numbers are written with, or a leading + or (.
_EXTENSION = r"(?:\s*(?:ext\.?|x|#)\s*\d{1,5})?"
_PHONE_CANDIDATE = re.compile(rf"(?:\+|\(\+?)?\d[\d ().\-/]{{5,22}}\d{_EXTENSION}")
# National numbers (with their trunk prefix 0) of these countries count when their numbering plan says
# they are valid; North American ones by their shape alone (555 numbers are fictional, and so are most
# numbers in examples). Any country's numbers count in international form (+ or 00).
_VALID_IN = ("GB", "DE", "FR", "IT", "NL", "AU", "BR")
_MIN_PHONE_DIGITS = 7
# A North American number dialled from abroad, 00 being the international prefix there (001-415-555-2671):
# no region's matcher reads it as +1, and its national part is taken by its shape as North American ones are.
_NANP_FROM_ABROAD = re.compile(rf"001[-. ]?(\(?\d{{3}}\)?[-. ]?\d{{3}}[-. ]?\d{{4}}){_EXTENSION}")


def _phones(text: str) -> Iterator[tuple[int, int]]:
    for candidate in _PHONE_CANDIDATE.finditer(text):
        if len(_digits(candidate.group())) < _MIN_PHONE_DIGITS:
            continue
        abroad = _NANP_FROM_ABROAD.fullmatch(candidate.group())
        if abroad and _bounded(text, *candidate.span()) and _plausible_phone(abroad.group(1), by_shape=True):
            yield candidate.span()
            continue
        # A little context on both sides: the matcher checks what surrounds a number.
        left = max(0, candidate.start() - 2)
        window = text[left : candidate.end() + 2]
        for region, leniency in (("US", Leniency.POSSIBLE), *((r, Leniency.VALID) for r in _VALID_IN)):
            found = [
                (left + m.start, left + m.end, m.raw_string)
                for m in PhoneNumberMatcher(window, region, leniency=leniency)
            ]
            kept = [
                (start, end)
                for start, end, raw in found
                if _bounded(text, start, end) and _plausible_phone(raw, by_shape=leniency is Leniency.POSSIBLE)
            ]
            if kept:
                yield from kept
                break


def _bounded(text: str, start: int, end: int) -> bool:
    """Not a piece of a longer token: a tracking code, an order number (ORD-2024-123456), a version string."""
    before = text[max(0, start - 2) : start].rjust(2)
    after = text[end : end + 2].ljust(2)
    joined = "-/."  # a separator between two pieces of one token
    return not (
        before[1].isalnum()
        or before[1] == "_"
        or before[1] == "#"  # a ticket or order number
        or (before[1] in joined and before[0].isalnum())
        or after[0].isalnum()
        or (after[0] in joined and after[1].isalnum())
    )


# How North American numbers are written: 555-123-4567, (555) 123-4567, 1-555-123-4567, 5551234567.
_NANP_GROUPS = ((3, 3, 4), (1, 3, 3, 4), (10,), (11,))
# Numbers written with dots: 555.123.4567, or 01.23.45.67.89 in France; not dates, versions, addresses.
_DOTTED_GROUPS = ((3, 3, 4), (2, 2, 2, 2, 2))
_NANP_LEADING = "23456789"  # what an area code and an exchange start with


def _plausible_phone(raw: str, *, by_shape: bool) -> bool:
    """libphonenumber's POSSIBLE takes any ten digits for a North American number (an ISBN, a ZIP+4
    code, a date): a number taken by its shape alone must be grouped the way phone numbers are. Some
    national plans make dates, versions and ISBNs valid numbers: a national number other than a North
    American one starts with its trunk prefix 0, and dotted ones are grouped as phone numbers are."""
    if raw.startswith(("+", "00")):
        return True
    number = re.split(r"\s*(?:ext\.?|x|#)\s*\d+$", raw)[0]
    groups = tuple(len(group) for group in re.findall(r"\d+", number))
    if "." in number and groups not in _DOTTED_GROUPS:
        return False
    if by_shape:
        if groups not in _NANP_GROUPS:
            return False
        digits = _digits(number)
        if groups[0] in (1, 11):  # the country code 1 written before the number
            if not digits.startswith("1"):
                return False
            digits = digits[1:]
        # Bare digits are also counters and Unix times (1701234567): taken only as the North American plan
        # has them, NXX-NXX-XXXX, neither the area code nor the exchange starting with 0 or 1. Grouped as
        # phone numbers are, they are taken whatever the digits (test data has any: Faker's en_CA numbers).
        return len(groups) > 1 or (digits[0] in _NANP_LEADING and digits[3] in _NANP_LEADING)
    return number.lstrip("(").startswith("0") and groups[-1] > 1  # not an ISBN's check digit


# --------------------------------------------------------------------------- together

FINDERS: dict[PiiKind, Callable[[str], Iterator[tuple[int, int]]]] = {
    PiiKind.EMAIL: lambda text: (m.span() for m in _EMAIL.finditer(text)),
    PiiKind.IBAN: _ibans,
    PiiKind.CARD: lambda text: (m.span() for m in _CARD.finditer(text) if card_valid(m.group())),
    PiiKind.NATIONAL_ID: _national_ids,
    PiiKind.IP: _ips,
    PiiKind.PHONE: _phones,
}


# The kinds whose numbers have a check: a number shaped like one that fails the check is a typo or a
# made-up number, not a phone number or a shorter card hiding inside it.
CHECKED_SHAPES = {PiiKind.IBAN: _IBAN_SHAPE, PiiKind.CARD: _CARD_SHAPE}


def find_pii(text: str) -> list[Finding]:
    """Every identifier in ``text``, without overlaps (the more specific kind kept), in text order."""
    if not any(ch.isdigit() or ch == "@" for ch in text):
        return []  # every kind has a digit or an @
    kept: list[Finding] = []
    blocked: list[tuple[int, int]] = []

    def free(start: int, end: int) -> bool:
        return all(end <= s or start >= e for s, e in [*((f.start, f.end) for f in kept), *blocked])

    for kind in KINDS:
        for start, end in FINDERS[kind](text):
            if free(start, end):
                kept.append(Finding(start, end, kind))
        if kind in CHECKED_SHAPES:
            blocked += [m.span() for m in CHECKED_SHAPES[kind].finditer(text) if free(*m.span())]
    return sorted(kept)


def placeholder(kind: PiiKind) -> str:
    return f"[{kind.value.upper()}]" if kind is not PiiKind.NATIONAL_ID else "[NATIONAL_ID]"


def redact(text: str) -> tuple[str, Counter[PiiKind]]:
    """``text`` with each identifier replaced by its kind's placeholder, and the counts per kind."""
    findings = find_pii(text)
    counts: Counter[PiiKind] = Counter(f.kind for f in findings)
    for finding in reversed(findings):
        text = text[: finding.start] + placeholder(finding.kind) + text[finding.end :]
    return text, counts


# --------------------------------------------------------------------------- a source's rows

PERSONAL_DATA = "personal_data"  # the curation rule that leaves out rows holding personal data


@dataclass
class Screened:
    examples: list[Example]
    dropped: list[Dropped]
    found: Counter[str]  # identifiers per kind (PiiKind values), whatever the policy did with them


def screen(examples: list[Example], policy: PersonalDataPolicy) -> Screened:
    """A source's examples under its personal-data policy: redacted, without the rows holding any, or as
    they are; with the identifiers counted per kind."""
    if policy is PersonalDataPolicy.OFF:
        return Screened(examples, [], Counter())
    found: Counter[str] = Counter()
    kept: list[Example] = []
    dropped: list[Dropped] = []
    for example in examples:
        cleaned, counts = _redacted(example)
        found.update({kind.value: count for kind, count in counts.items()})
        if policy is PersonalDataPolicy.DROP and counts:
            dropped.append(Dropped(cleaned, PERSONAL_DATA, ", ".join(sorted(kind.value for kind in counts))))
        else:
            kept.append(cleaned if policy is PersonalDataPolicy.REDACT else example)
    return Screened(kept, dropped, found)


def _redacted(example: Example) -> tuple[Example, Counter[PiiKind]]:
    counts: Counter[PiiKind] = Counter()

    def clean(text: str) -> str:
        redacted, found = redact(text)
        counts.update(found)
        return redacted

    cleaned = replace(
        example,
        messages=tuple(Message(m.role, clean(m.content)) for m in example.messages),
        text=None if example.text is None else clean(example.text),
        rejected=None if example.rejected is None else clean(example.rejected),
    )
    return (cleaned if counts else example), counts
