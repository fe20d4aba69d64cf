"""The personal-data detector (kubetune_trainer.data.pii) on a planted set: at least 500 identifiers of
every kind in support-ticket text, among near-misses that must stay (tests/trainer/pii_corpus.py)."""

from __future__ import annotations

from collections import Counter

import pytest

from kubetune_trainer.data.pii import PiiKind, find_pii, iban_valid, luhn_valid, redact, verhoeff_valid
from tests.trainer.pii_corpus import planted_set

MIN_RECALL, MAX_FALSE_SHARE = 0.95, 0.01


@pytest.mark.parametrize("seed", [11, 12])
def test_every_kind_is_found_with_few_false_positives_and_the_near_misses_stay(seed: int) -> None:
    texts = planted_set(count=600, seed=seed)
    planted, found, findings, false = Counter[PiiKind](), Counter[PiiKind](), Counter[PiiKind](), Counter[PiiKind]()
    decoys, decoys_flagged = Counter[str](), Counter[str]()
    for text in texts:
        detected = find_pii(text.text)
        for start, end, kind in text.spans:
            planted[kind] += 1
            found[kind] += any(f.kind is kind and f.start < end and f.end > start for f in detected)
        for finding in detected:
            findings[finding.kind] += 1
            false[finding.kind] += not any(
                kind is finding.kind and start < finding.end and end > finding.start for start, end, kind in text.spans
            )
        for start, end, what in text.decoys:
            decoys[what] += 1
            decoys_flagged[what] += any(f.start < end and f.end > start for f in detected)
    assert sum(planted.values()) >= 500 and set(planted) == set(PiiKind)
    for kind in PiiKind:
        assert found[kind] / planted[kind] >= MIN_RECALL, (kind, found[kind], planted[kind])
        assert false[kind] / findings[kind] <= MAX_FALSE_SHARE, (kind, false[kind], findings[kind])
    assert sum(decoys.values()) >= 500 and {"luhn-invalid card", "version", "date"} <= set(decoys)
    assert sum(decoys_flagged.values()) / sum(decoys.values()) <= MAX_FALSE_SHARE, decoys_flagged


def test_redaction_puts_the_kind_in_place_of_each_identifier_and_counts_them() -> None:
    text = (
        "Mail anna.smith@example.com or call (415) 555-2671; card 4111 1111 1111 1111, "
        "IBAN DE89 3704 0044 0532 0130 00, from 203.0.113.7, SSN 078-05-1120. Order #4692483, v2.14.3."
    )
    redacted, counts = redact(text)
    assert redacted == (
        "Mail [EMAIL] or call [PHONE]; card [CARD], IBAN [IBAN], from [IP], SSN [NATIONAL_ID]. Order #4692483, v2.14.3."
    )
    assert counts == dict.fromkeys(PiiKind, 1)
    assert redact("no identifiers here, 42 of them") == ("no identifiers here, 42 of them", Counter())


def test_the_checks_tell_real_numbers_from_look_alikes() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and not iban_valid("GB83 WEST 1234 5698 7654 32")
    assert not iban_valid("GB82 WEST 1234 5698 7654 3")  # the country's length
    assert iban_valid("RU5729141777631706690743915000806")  # one of the countries the registry added since 2020
    assert verhoeff_valid("2363") and not verhoeff_valid("2364")
    # Shaped like an identifier, but none: a wrong check, a version, a date, an ISBN, a ZIP+4 code.
    for text in ("4111-1111-1111-1112", "version 10.0.19041.1", "2024-03-15", "ISBN 0-306-40615-2", "94103-1234"):
        assert find_pii(text) == [], text


def test_cards_of_every_length_networks_issue_and_twelve_digits_that_pass_both_checks_are_an_aadhaar() -> None:
    text = "Maestro 6759 0197 3403, JCB 213126078843709; Aadhaar 6662 9944 7464 (its Luhn check passes too)"
    assert found_in(text) == [
        (PiiKind.CARD, "6759 0197 3403"),
        (PiiKind.CARD, "213126078843709"),
        (PiiKind.NATIONAL_ID, "6662 9944 7464"),
    ]
    assert luhn_valid("666299447464") and verhoeff_valid("666299447464")


def test_addresses_in_any_script_and_lower_case_ibans_are_found_and_unix_times_are_no_phone_numbers() -> None:
    text = (
        "Mail jürgen@müller.de or иван@пример.рф, iban de89 3704 0044 0532 0130 00; "
        "logged at 1701234567 and 1699999999, call 415-555-2671 or 1-800-555-0199 (from abroad "
        "001-569-891-4860x939), NIE X-1234567-L"
    )
    assert found_in(text) == [
        (PiiKind.EMAIL, "jürgen@müller.de"),
        (PiiKind.EMAIL, "иван@пример.рф"),
        (PiiKind.IBAN, "de89 3704 0044 0532 0130 00"),
        (PiiKind.PHONE, "415-555-2671"),
        (PiiKind.PHONE, "1-800-555-0199"),
        (PiiKind.PHONE, "001-569-891-4860x939"),
        (PiiKind.NATIONAL_ID, "X-1234567-L"),
    ]


def test_national_ids_as_documentation_and_test_data_write_them_are_found() -> None:
    """HMRC's own example NINO and Faker's reserved ones, and the Canadian government's example SIN (its
    first digit 0, issued to no one): shapes only these numbers have, so the reserved letters and digits
    are found as the issued ones are."""
    text = "NI QQ 12 34 56 C, test ZZ123456T and ZZ 123456 T; SIN 046 454 286. Codes AB123456X, XY123456Z stay."
    assert found_in(text) == [
        (PiiKind.NATIONAL_ID, "QQ 12 34 56 C"),
        (PiiKind.NATIONAL_ID, "ZZ123456T"),
        (PiiKind.NATIONAL_ID, "ZZ 123456 T"),
        (PiiKind.NATIONAL_ID, "046 454 286"),
    ]


def test_phone_numbers_grouped_or_international_are_found_whatever_their_digits() -> None:
    """Grouped as phone numbers are, any digits (test data's exchanges start with 0 or 1 too); an
    international number's twelve digits are no Aadhaar number; bare digits only as the plan has them."""
    text = "Call +912942705888 or 415-155-2671, not 1701234567"
    assert found_in(text) == [(PiiKind.PHONE, "+912942705888"), (PiiKind.PHONE, "415-155-2671")]


def found_in(text: str) -> list[tuple[PiiKind, str]]:
    """(kind, identifier) of each finding in ``text``, in text order."""
    return [(finding.kind, text[finding.start : finding.end]) for finding in find_pii(text)]
