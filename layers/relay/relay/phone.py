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
    short-number rules, which the relay never uses: a third of the package's import, about 30 M
    instructions of every cold start (docs/performance.md, section 1). The package is put in
    ``sys.modules`` unexecuted, so the one module loads alone; the first attribute anything
    else asks of it runs the real ``__init__`` (PEP 562), so ``import phonenumbers`` elsewhere
    still gets the whole package, sharing the submodules already loaded.
    """
    if "phonenumbers" in sys.modules:  # loaded already (or by another copy of this trick)
        return importlib.import_module("phonenumbers.phonenumberutil")
    spec = importlib.util.find_spec("phonenumbers")
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError("phonenumbers (phonenumberslite) is not installed")
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def complete(name: str) -> object:
        del vars(package)["__getattr__"]  # once: from here on, the real package
        loader.exec_module(package)
        return getattr(package, name)

    vars(package)["__getattr__"] = complete  # PEP 562: asked only for what is missing
    sys.modules["phonenumbers"] = package
    try:
        return importlib.import_module("phonenumbers.phonenumberutil")
    except BaseException:
        del sys.modules["phonenumbers"]
        raise


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
