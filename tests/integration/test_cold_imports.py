"""What each handler loads at init: the modules taken out of the cold start stay out.

docs/performance.md measured each of these at 10 to 40 ms of every cold start. A dependency
upgrade or a convenient import can bring one back without failing anything else, so each
handler is loaded here as Lambda loads it: a fresh interpreter, tracing on as deployed.
Init only: the first invocation is part of the cold start too, and the benchmark's timings
and `-X importtime` (benchmarks/cold_start.py) are what watch it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

KEPT_OUT = {
    "asyncio": "wrapt 2.x (under the X-Ray SDK) or an async batch imports it",
    "aws_lambda_powertools.event_handler": "the webhook routes its one route by hand",
    "aws_lambda_powertools.utilities.batch": "BatchRun builds the partial batch response",
    "aws_lambda_powertools.utilities.parameters": "relay.secrets reads Secrets Manager itself",
    "phonenumbers.asyoutypeformatter": "relay.phone loads phonenumberutil without the package",
    "phonenumbers.phonenumbermatcher": "relay.phone loads phonenumberutil without the package",
    "phonenumbers.shortnumberinfo": "relay.phone loads phonenumberutil without the package",
    "phonenumbers.data.alt_format_49": "relay.phone defers libphonenumber's alternate formats",
}

# Load functions/<name>/app.py as the Lambda bootstrap does, then list what is loaded.
_LOAD = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("app", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["app"] = module
spec.loader.exec_module(module)
print(json.dumps(sorted(sys.modules)))
"""


def run_script(script: str, env: dict[str, str], *args: str) -> str:
    """``script`` in a fresh interpreter with ``env``; the last line it printed."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.splitlines()[-1]


@pytest.mark.parametrize("function", ["webhook", "delivery"])
def test_a_handler_loads_without_what_was_taken_out_of_its_cold_start(relay_env, function):
    env = {**os.environ, "PYTHONPATH": str(REPO / "layers" / "relay")}
    env.pop("POWERTOOLS_TRACE_DISABLED")
    env["AWS_XRAY_CONTEXT_MISSING"] = "IGNORE_ERROR"
    loaded = set(json.loads(run_script(_LOAD, env, str(REPO / "functions" / function / "app.py"))))

    assert "aws_xray_sdk.core" in loaded  # tracing is on, as deployed
    assert {name: why for name, why in KEPT_OUT.items() if name in loaded} == {}


# relay.phone loads phonenumberutil before the package's __init__ runs; whatever imports
# phonenumbers afterwards must still get the whole package, sharing the loaded modules.
_LATER_IMPORT = """
import sys
from relay.phone import is_valid_number, _phonenumbers
assert is_valid_number("+4915112345678") and not is_valid_number("+4900000000")
assert "phonenumbers.asyoutypeformatter" not in sys.modules
assert not [name for name in sys.modules if ".alt_format_" in name]
import phonenumbers.phonenumberutil
assert phonenumbers.phonenumberutil.parse is _phonenumbers.parse
import phonenumbers
assert phonenumbers.parse is _phonenumbers.parse
assert phonenumbers.AsYouTypeFormatter("DE").input_digit("0") == "0"
# The whole package's number matcher has read the alternate formats: loaded only now.
text = "Ruf 030 12345678 oder +49 151 12345678 an"
exact = phonenumbers.Leniency.EXACT_GROUPING
assert len(list(phonenumbers.PhoneNumberMatcher(text, "DE", leniency=exact))) == 2
from phonenumbers.data import PHONE_ALT_FORMAT_49, _ALT_NUMBER_FORMATS
from phonenumbers.data.alt_format_49 import PHONE_ALT_FORMAT_49 as real
assert _ALT_NUMBER_FORMATS[49] is PHONE_ALT_FORMAT_49 is real
assert len(_ALT_NUMBER_FORMATS) == len([n for n in sys.modules if ".alt_format_" in n]) > 40
print("ok")
"""


def test_phonenumbers_imported_after_the_relay_is_the_whole_package():
    env = {**os.environ, "PYTHONPATH": str(REPO / "layers" / "relay")}
    done = subprocess.run(
        [sys.executable, "-c", _LATER_IMPORT],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# As Lambda loads a handler, noting whether the cyclic GC runs during its imports (the first
# relay import has happened when the prelude's last line runs) and after its init.
_GC = """
import gc, importlib.util, json, sys
import relay.observability
during = gc.isenabled()
spec = importlib.util.spec_from_file_location("app", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["app"] = module
spec.loader.exec_module(module)
frozen = gc.get_freeze_count()
gc.unfreeze()  # what a full collection would have found among them: garbage kept by freezing
garbage = gc.collect()
print(json.dumps({"during": during, "after": gc.isenabled(), "frozen": frozen, "garbage": garbage}))
"""

# Every function the template deploys: each must end its init with init_done().
FUNCTIONS = re.findall(r"CodeUri: functions/(\w+)", (REPO / "template.yaml").read_text())


def test_every_function_of_the_template_is_checked():
    assert sorted(FUNCTIONS) == ["delivery", "webhook"]


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("in_lambda", [True, False], ids=["in Lambda", "elsewhere"])
def test_the_gc_is_paused_for_a_lambda_init_only(relay_env, function, in_lambda):
    env = {**os.environ, "PYTHONPATH": str(REPO / "layers" / "relay")}
    env.pop("AWS_LAMBDA_INITIALIZATION_TYPE", None)
    env["LAMBDA_TASK_ROOT"] = str(REPO / "functions" / function)  # as Lambda sets it
    if in_lambda:
        env["AWS_LAMBDA_INITIALIZATION_TYPE"] = "on-demand"  # Lambda sets it for every function
    seen = json.loads(run_script(_GC, env, str(REPO / "functions" / function / "app.py")))

    assert seen["during"] is not in_lambda  # paused by the layer's first import, in Lambda only
    assert seen["after"] is True  # running again once the module body is done
    # In Lambda what init built is frozen out of later collections; elsewhere nothing is.
    assert (seen["frozen"] > 100_000) is in_lambda
    # Freezing keeps for good whatever cyclic garbage init left: a Lambda init leaves little
    # (about 600 objects here, 0.1 MB), so nothing worth a full collection's time is kept.
    assert seen["garbage"] < 2_000
