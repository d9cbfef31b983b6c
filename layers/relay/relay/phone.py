"""Phone numbers: E.164 checks and the masked form that is safe to log."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec
    from types import ModuleType


def _libphonenumber() -> ModuleType:
    """``phonenumbers.phonenumberutil`` (parse and validity) without the package's ``__init__``.

    That ``__init__`` also imports the as-you-type formatter, the number matcher and the
    short-number rules, which the relay never uses: a third of the package's import, about 30 M
    instructions of every cold start (docs/performance.md, section 1). The package is put in
    ``sys.modules`` unexecuted, so the one module loads alone; the first attribute anything
    else asks of it runs the real ``__init__`` (PEP 562), so ``import phonenumbers`` elsewhere
    still gets the whole package, sharing the submodules already loaded. The alternate formats
    are put off too (``_AlternateFormatsDeferred``).
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
    deferred = _AlternateFormatsDeferred()
    sys.meta_path.insert(0, deferred)
    try:
        utilities = importlib.import_module("phonenumbers.phonenumberutil")
    except BaseException:
        del sys.modules["phonenumbers"]
        raise
    finally:
        sys.meta_path.remove(deferred)
        deferred.stand_aside()
    return utilities


class _AlternateFormatsDeferred:
    """Empty stand-ins for ``phonenumbers.data.alt_format_*`` while ``phonenumbers.data`` runs.

    That package's ``__init__`` imports all 46 of libphonenumber's alternate formats (number
    layouts only the number matcher reads) alongside the country-code table that parsing needs:
    46 modules and about half the time of the part of libphonenumber the relay loads
    (docs/performance.md, section 1). After the load the stand-ins are dropped and
    ``phonenumbers.data`` answers ``_ALT_NUMBER_FORMATS`` and ``PHONE_ALT_FORMAT_<code>`` from
    the real modules, imported on the first request for either (PEP 562).
    """

    PREFIX = "phonenumbers.data.alt_format_"

    def __init__(self) -> None:
        self.codes: list[str] = []

    # The import system's finder and loader protocols, duck-typed: importlib.abc costs imports.
    def find_spec(self, name: str, path: object, target: object = None) -> ModuleSpec | None:
        if not name.startswith(self.PREFIX):
            return None
        return importlib.util.spec_from_loader(name, self)  # type: ignore[arg-type]  # exec_module, not the legacy load_module typeshed asks for

    def create_module(self, spec: ModuleSpec) -> None:
        return None  # the default module

    def exec_module(self, module: ModuleType) -> None:
        code = module.__name__.removeprefix(self.PREFIX)
        self.codes.append(code)
        setattr(module, f"PHONE_ALT_FORMAT_{code}", None)

    def stand_aside(self) -> None:
        """Drop the stand-ins; the real formats load when first asked for."""
        data = sys.modules.get("phonenumbers.data")
        if data is None or not self.codes:
            return
        namespace = vars(data)
        for code in self.codes:
            sys.modules.pop(self.PREFIX + code, None)
            namespace.pop(f"alt_format_{code}", None)
            namespace.pop(f"PHONE_ALT_FORMAT_{code}", None)
        namespace.pop("_ALT_NUMBER_FORMATS", None)
        codes = tuple(self.codes)

        def load(name: str) -> object:
            if name != "_ALT_NUMBER_FORMATS" and not name.startswith("PHONE_ALT_FORMAT_"):
                raise AttributeError(f"module 'phonenumbers.data' has no attribute {name!r}")
            # All imported before anything is published: a failed import leaves this in place,
            # and a thread asking meanwhile loads them too (the import system serialises each).
            loaded = {
                code: getattr(
                    importlib.import_module(self.PREFIX + code), f"PHONE_ALT_FORMAT_{code}"
                )
                for code in codes
            }
            for code, formats in loaded.items():
                namespace[f"PHONE_ALT_FORMAT_{code}"] = formats
            namespace["_ALT_NUMBER_FORMATS"] = {int(code): f for code, f in loaded.items()}
            namespace.pop("__getattr__", None)  # from here on, the real data
            return namespace[name]

        namespace["__getattr__"] = load


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
