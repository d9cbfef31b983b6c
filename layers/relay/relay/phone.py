"""Phone numbers: E.164 checks and the masked form that is safe to log."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import ModuleType


def _libphonenumber() -> ModuleType:
    """``phonenumbers.phonenumberutil`` (parse and validity) without the package's ``__init__``.

    That ``__init__`` also imports the as-you-type formatter, the number matcher and the
    short-number rules, which the relay never uses: a third of the package's import, about 33 M
    instructions of every cold start (docs/performance.md). An unexecuted stand-in for the
    package lets the one module load; it is taken out again, so a later ``import phonenumbers``
    anywhere runs the real ``__init__``, which finds the submodules loaded and shares them.
    """
    if "phonenumbers" in sys.modules:  # the real package is loaded already: nothing to save
        return importlib.import_module("phonenumbers.phonenumberutil")
    spec = importlib.util.find_spec("phonenumbers")
    if spec is None:
        raise ModuleNotFoundError("phonenumbers (phonenumberslite) is not installed")
    sys.modules["phonenumbers"] = importlib.util.module_from_spec(spec)
    try:
        return importlib.import_module("phonenumbers.phonenumberutil")
    finally:
        del sys.modules["phonenumbers"]


_phonenumbers = _libphonenumber()
_E164 = re.compile(r"\+[1-9][0-9]{7,14}")


def is_e164(value: str) -> bool:
    """``+`` then 8-15 digits, the first not zero. Says nothing about whether the number exists."""
    return _E164.fullmatch(value) is not None


def is_valid_number(value: str) -> bool:
    """An E.164 number that libphonenumber judges valid for its region."""
    if not is_e164(value):
        return False
    try:
        return bool(_phonenumbers.is_valid_number(_phonenumbers.parse(value, None)))
    except _phonenumbers.NumberParseException:
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
