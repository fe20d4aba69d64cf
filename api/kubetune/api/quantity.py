"""Kubernetes resource quantities (16Gi, 500m, 80G) as exact numbers, for the limits the API sets.

Only the notation the API's quantity patterns admit: a decimal number and one SI suffix.
"""

from __future__ import annotations

import re
from decimal import Decimal

SUFFIXES = {
    "m": Decimal("0.001"),
    "": Decimal(1),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
}
_QUANTITY = re.compile(r"([0-9]*(?:\.[0-9]*)?)(" + "|".join(sorted(SUFFIXES, key=len, reverse=True)) + ")")


def parse_quantity(text: str) -> Decimal:
    """The value of a quantity such as ``24Gi`` (bytes) or ``500m`` (cores); ValueError if it is not one."""
    match = _QUANTITY.fullmatch(text.strip())
    if not match or match.group(1) in ("", "."):
        raise ValueError(f"not a quantity: {text!r}")
    return Decimal(match.group(1)) * SUFFIXES[match.group(2)]
