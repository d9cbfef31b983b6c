"""Phone numbers: E.164 checks and the masked form that is safe to log."""

from __future__ import annotations

import re

import phonenumbers

_E164 = re.compile(r"\+[1-9][0-9]{7,14}")


def is_e164(value: str) -> bool:
    """``+`` then 8-15 digits, the first not zero. Says nothing about whether the number exists."""
    return _E164.fullmatch(value) is not None


def is_valid_number(value: str) -> bool:
    """An E.164 number that libphonenumber judges valid for its region."""
    if not is_e164(value):
        return False
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(value, None))
    except phonenumbers.NumberParseException:
        return False


def digits(value: str) -> str:
    """The number without ``+``: country code and national number, as Lancepilot's path wants."""
    return value.removeprefix("+")


def mask(value: object) -> str:
    """Keep the country-code end and the last two digits: ``+4915******89``.

    Enough to tell numbers apart in logs, too little to identify a person.
    """
    text = str(value)
    if len(text) <= 6:
        return "*" * len(text)
    return text[:4] + "*" * (len(text) - 6) + text[-2:]
