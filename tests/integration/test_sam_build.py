"""`sam build` without a container yields an arm64 / python3.13 layer and the function code.

Downloads the layer's wheels from PyPI (pip --platform), so it needs network access (and, with
no native CPython 3.13 here, Pyodide from the npm registry to compile the layer's bytecode).
"""

from __future__ import annotations

import _imp
import ast
import importlib.util
import json
import os
import struct
import subprocess
import sys
from email.parser import Parser
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
EM_AARCH64 = 183
# importlib.util.MAGIC_NUMBER of CPython 3.13 (every 3.13.x): what the runtime accepts.
MAGIC_313 = (3571).to_bytes(2, "little") + b"\r\n"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The build directory and what `sam build` printed."""
    sam = Path(sys.executable).parent / "sam"
    if not sam.exists():
        pytest.skip(f"sam not found next to {sys.executable} (run `make setup`)")
    tmp = tmp_path_factory.mktemp("sam")
    build = tmp / "build"
    # As make build and make deploy run it: a layer without its bytecode fails the build.
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "LAYER_BYTECODE": "required"}
    # Let the layer Makefile find pip even if python3 on PATH is not this interpreter.
    env.setdefault("PYTHON", sys.executable)
    result = subprocess.run(
        [
            str(sam),
            "build",
            "--template",
            str(REPO_ROOT / "template.yaml"),
            "--build-dir",
            str(build),
            "--cache-dir",
            str(tmp / "cache"),
            "--no-cached",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return build, result.stdout + result.stderr


@pytest.fixture(scope="module")
def build_dir(build: tuple[Path, str]) -> Path:
    return build[0]


@pytest.fixture(scope="module")
def site(build_dir: Path) -> Path:
    python = build_dir / "RelayLayer" / "python"
    assert python.is_dir()
    return python


def test_layer_contents(site: Path) -> None:
    assert (site / "relay" / "__init__.py").is_file()
    for package in ("aws_lambda_powertools", "phonenumbers", "urllib3", "wrapt"):
        assert (site / package).is_dir(), package


def test_layer_bytecode(site: Path, build: tuple[Path, str]) -> None:
    """Each module's bytecode for python3.13, hash-checked against its source but never
    re-validated at run time (unchecked-hash), none stale or extra."""
    pycs = sorted(site.rglob("*.py[co]"))
    assert "layer: bytecode by" in build[1]  # the build says which 3.13 compiled it
    sources = sorted(site.rglob("*.py"))
    assert len(sources) > 500
    expected = {s.parent / "__pycache__" / f"{s.stem}.cpython-313.pyc" for s in sources}
    assert set(pycs) == expected
    for source in sources:
        header = (source.parent / "__pycache__" / f"{source.stem}.cpython-313.pyc").read_bytes()
        assert header[:4] == MAGIC_313, source
        assert int.from_bytes(header[4:8], "little") == 0b01, source  # hash-based, unchecked
        # _imp.source_hash is keyed by the magic number: 3.13's hash, computed here.
        key = int.from_bytes(MAGIC_313, "little")
        assert header[8:16] == _imp.source_hash(key, source.read_bytes()), source


def test_layer_has_no_boto(site: Path) -> None:
    names = {p.name.lower() for p in site.iterdir()}
    assert not any(n.startswith(("boto3", "botocore", "s3transfer")) for n in names), names


def _elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not ELF"
    assert header[4] == 2, f"{path} is not 64-bit"  # EI_CLASS == ELFCLASS64
    byteorder = "<" if header[5] == 1 else ">"  # EI_DATA
    (machine,) = struct.unpack(byteorder + "H", header[18:20])
    return int(machine)


def test_compiled_extensions_are_aarch64_cp313(site: Path) -> None:
    shared = list(site.rglob("*.so"))
    assert any(p.parent.name == "wrapt" for p in shared), "wrapt's extension is missing"
    for so in shared:
        assert "cpython-313" in so.name, so.name
        assert "aarch64" in so.name, so.name
        assert _elf_machine(so) == EM_AARCH64, so


def _wheel_tag_ok(tag: str) -> bool:
    python, abi, platform = tag.split("-")
    if platform == "any":
        return abi == "none" and "py3" in python.split(".")
    return (
        python == "cp313"
        and abi in {"cp313", "abi3"}
        and "aarch64" in platform
        and platform.startswith("manylinux")
    )


def test_wheel_tags(site: Path) -> None:
    wheels = list(site.glob("*.dist-info/WHEEL"))
    assert len(wheels) >= 7
    for wheel in wheels:
        tags = Parser().parsestr(wheel.read_text()).get_all("Tag") or []
        assert tags, wheel
        # A universal wheel also carries py2-none-any: require one fitting tag, and no tag
        # for another platform.
        assert any(_wheel_tag_ok(t) for t in tags), (wheel, tags)
        platforms = {t.split("-")[2] for t in tags}
        assert all(p == "any" or "aarch64" in p for p in platforms), (wheel, tags)


@pytest.mark.parametrize("name", ["WebhookFunction", "DeliveryFunction"])
def test_function_contents(build_dir: Path, name: str) -> None:
    function = build_dir / name
    assert (function / "app.py").is_file()
    assert not (function / "Makefile").exists()


def test_built_template_points_at_artifacts(build_dir: Path) -> None:
    text = (build_dir / "template.yaml").read_text()
    assert "ContentUri: RelayLayer" in text
    assert "CodeUri: WebhookFunction" in text
    assert "CodeUri: DeliveryFunction" in text


# Powertools subpackages the handlers never import (docs/dependencies.md), and those they do.
PRUNED = ("event_handler", "utilities/data_classes", "utilities/parser", "utilities/parameters")
USED = ("logging", "metrics", "tracing", "shared", "utilities/idempotency")


def test_powertools_is_pruned(site: Path, build: tuple[Path, str]) -> None:
    assert "layer: pruned" in build[1]
    powertools = site / "aws_lambda_powertools"
    assert not [name for name in PRUNED if (powertools / name).exists()]
    assert all((powertools / name / "__init__.py").is_file() for name in USED)
    assert list(site.glob("aws_lambda_powertools-*.dist-info/RECORD"))  # kept, though stale
    assert not (site / "prune.py").exists()  # the pruning script stays out of the layer


CHECKING = ("TYPE_CHECKING", "typing.TYPE_CHECKING")


# A walk of its own, not prune.closure's: the check of what the build kept must not share the
# pruning's blind spots.
def _runtime_imports(path: Path, package: str) -> set[tuple[str, bool]]:
    """(name, must be a module) for each import that runs: `from x import y` gives x (a module)
    and x.y (a submodule or an attribute). Bodies of `if TYPE_CHECKING:` never run."""
    found: set[tuple[str, bool]] = set()
    stack: list[ast.AST] = [ast.parse(path.read_bytes())]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and ast.unparse(node.test) in CHECKING:
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            found.update((alias.name, True) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            found.add((base, True))
            found.update((f"{base}.{alias.name}", False) for alias in node.names)
    return found


def test_every_import_the_handlers_can_reach_resolves_in_the_layer(
    site: Path, build_dir: Path
) -> None:
    """Statically, over the built output: from both handlers and the relay, each import a
    reachable Powertools module makes, in a function too (error paths import lazily), names a
    module the layer holds; and each other package it imports is in the layer, the standard
    library or the runtime."""

    def module(name: str) -> Path | None:
        base = site.joinpath(*name.split("."))
        return next(
            (p for p in (base / "__init__.py", base.with_suffix(".py")) if p.is_file()), None
        )

    functions = ("WebhookFunction", "DeliveryFunction")
    queue = [(build_dir / name / "app.py", "") for name in functions]
    queue += [(p, "relay") for p in (site / "relay").glob("*.py")]
    seen: set[Path] = set()
    missing: dict[str, Path] = {}
    outside: dict[str, Path] = {}
    top_levels = {p.name.removesuffix(".py") for p in site.iterdir()}
    while queue:
        path, package = queue.pop()
        for name, must_be_module in _runtime_imports(path, package):
            top = name.partition(".")[0]
            if top != "aws_lambda_powertools":
                if top not in top_levels | sys.stdlib_module_names | {"boto3", "botocore"}:
                    outside[name] = path
                continue
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # a/__init__ runs before a.b
                found = module(".".join(parts[:depth]))
                if found is None:
                    if must_be_module:  # else x.y may be an attribute of x
                        missing[name] = path
                    break
                if found not in seen:
                    seen.add(found)
                    is_package = found.name == "__init__.py"
                    queue.append(
                        (found, ".".join(parts[:depth] if is_package else parts[: depth - 1]))
                    )
    assert len(seen) > 40  # the walk went through Powertools
    # The one expected: only for a pydantic model, and pydantic is in neither layer nor runtime.
    compat = "aws_lambda_powertools.event_handler.openapi.compat"
    assert {name: p.name for name, p in missing.items()} == {compat: "functions.py"}
    assert not (site / "pydantic").exists()
    assert outside == {}


# Load functions/<name>/app.py as the Lambda bootstrap does; say where each module came from.
_LOAD = """
import importlib.util, json, sys
for path in sys.argv[1:]:
    spec = importlib.util.spec_from_file_location("app", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
print(json.dumps({n: getattr(m, "__file__", None) for n, m in sys.modules.items()}))
"""


def test_the_handlers_load_from_the_pruned_layer(site: Path, build_dir: Path) -> None:
    """Both handlers initialise, tracing on, with the built layer first on the path and only
    boto3 and botocore from the dev venv (as from the runtime). On this interpreter wrapt's
    aarch64/cp313 extension does not match the extension suffix and wrapt falls back to its pure
    Python; -B: nothing written into the build (test_layer_bytecode)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "AWS_XRAY_CONTEXT_MISSING": "IGNORE_ERROR",
        "PROVIDER_TOKENS_SECRET": "webhook-relay/provider-tokens",
        "RELAY_AUTH_SECRET": "webhook-relay/auth",
        "LANCEPILOT_API_URL": "https://lancepilot.invalid/api/v3",
        "FLUENTS_API_URL": "https://fluents.invalid",
        "IDEMPOTENCY_TABLE": "idempotency",
        "DELIVERY_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/delivery",
        "DEAD_LETTER_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/dead",
        "MAX_RECEIVE_COUNT": "5",
    }
    env.pop("POWERTOOLS_TRACE_DISABLED", None)
    apps = [str(build_dir / name / "app.py") for name in ("WebhookFunction", "DeliveryFunction")]
    done = subprocess.run(
        [sys.executable, "-B", "-c", _LOAD, *apps],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded: dict[str, str | None] = json.loads(done.stdout.splitlines()[-1])
    assert "aws_xray_sdk.core" in loaded  # tracing is on, as deployed
    layer = {p.name.removesuffix(".py") for p in site.iterdir() if not p.name.endswith("-info")}
    elsewhere = {
        name: file
        for name, file in loaded.items()
        if name.partition(".")[0] in layer and not (file or "").startswith(str(site))
    }
    assert elsewhere == {}


def test_a_stale_layer_fails_the_prune_check(site: Path, tmp_path: Path) -> None:
    """A handler that imports more of Powertools than the layer was pruned for (a cached build,
    say) is what `prune.py --check` reports."""
    handler = tmp_path / "app.py"
    handler.write_text("from aws_lambda_powertools.utilities.parameters import get_secret\n")
    prune = REPO_ROOT / "layers" / "relay" / "prune.py"
    check = [sys.executable, str(prune), "--check", str(site), str(site / "relay")]
    assert subprocess.run(check, capture_output=True, timeout=60, check=False).returncode == 0
    stale = subprocess.run(
        [*check, str(handler)], capture_output=True, text=True, timeout=60, check=False
    )
    assert stale.returncode == 1
    assert "aws_lambda_powertools.utilities.parameters" in stale.stderr


def build_layer(
    *variables: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The layer's Makefile target alone, as sam runs it, with ``NAME=value`` overrides."""
    return subprocess.run(
        ["make", "-s", "-C", str(REPO_ROOT / "layers" / "relay"), "build-RelayLayer", *variables],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_layer_prune_0_ships_powertools_whole(tmp_path: Path) -> None:
    result = build_layer(
        f"ARTIFACTS_DIR={tmp_path}", f"PYTHON={sys.executable}", "LAYER_PRUNE=0", "LAYER_BYTECODE=0"
    )
    assert result.returncode == 0, result.stderr
    assert "LAYER_PRUNE=0: Powertools ships whole" in result.stdout
    powertools = tmp_path / "python" / "aws_lambda_powertools"
    assert all((powertools / name / "__init__.py").is_file() for name in PRUNED)


def test_a_layer_build_that_requires_bytecode_fails_without_a_compiler(tmp_path: Path) -> None:
    """No CPython 3.13 and no reachable npm registry for Pyodide: with LAYER_BYTECODE=required
    the layer's Makefile fails and says why, rather than ship a layer that compiles itself at
    every cold start."""
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "npm_config_registry": "http://127.0.0.1:9",  # nothing listens: npm ci fails at once
        "npm_config_fetch_retries": "0",
        "npm_config_cache": str(tmp_path / "npm-cache"),  # not a cached Pyodide either
    }
    result = build_layer(
        f"ARTIFACTS_DIR={tmp_path / 'artifacts'}",
        "PYTHON313_CANDIDATES=",
        f"PYODIDE_DIR={tmp_path / 'pyodide'}",
        "LAYER_BYTECODE=required",
        env=env,
    )
    assert result.returncode != 0
    assert "ERROR: LAYER_BYTECODE=required" in result.stderr
    assert not list((tmp_path / "artifacts").rglob("*.pyc"))
    assert not (tmp_path / "pyodide").exists()  # no half-installed cache left behind
