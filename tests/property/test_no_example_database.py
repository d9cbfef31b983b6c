"""Every property test runs without Hypothesis's example database (tests/property/__init__.py):
a run is its seed's alone, so ``--hypothesis-seed=7`` reproduces it, whatever .hypothesis/ holds."""

from __future__ import annotations

import importlib
import pkgutil

import tests.property as package


def hypothesis_tests():
    for found in pkgutil.iter_modules(package.__path__):
        if found.name.startswith("test_"):
            module = importlib.import_module(f"{package.__name__}.{found.name}")
            for name, test in vars(module).items():
                if name.startswith("test_") and hasattr(test, "hypothesis"):
                    yield f"{found.name}::{name}", test


def test_no_property_test_uses_the_example_database():
    tests = dict(hypothesis_tests())

    assert len(tests) > 10
    using = {
        name: settings.database
        for name, test in tests.items()
        if (settings := test._hypothesis_internal_use_settings).database is not None
    }
    assert using == {}
