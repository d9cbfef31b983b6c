"""Delete the Powertools subpackages the relay never imports from a built layer.

    python prune.py SITE ROOT...          # prune SITE (the layer's python/ directory)
    python prune.py --check SITE ROOT...  # only verify SITE holds everything ROOT imports

Run by layers/relay/Makefile after pip install and the relay copy, before compiling, so
removed modules are never compiled; LAYER_PRUNE=0 there skips it. It is not in the layer (the
Makefile copies only relay/). What stays is computed, not listed: from each ROOT (the layer's
relay package, functions/*/app.py) the transitive closure of static imports within
aws_lambda_powertools (`import`, `from ... import`, relative, inside functions too; not under
`if TYPE_CHECKING:`), each package `__init__` on the way, and what the reviewed dynamic imports
below load. A directory under aws_lambda_powertools that holds no module of the closure is
deleted whole; a directory holding one stays whole. Other distributions are never touched.
Standard library only; runs on python3.9+ (whatever python3 builds the layer).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import io
import os
import shutil
import sys
import tokenize
from pathlib import Path

PACKAGE = "aws_lambda_powertools"
DYNAMIC_NAMES = frozenset({"importlib", "__import__", "LazyLoader", "import_module"})

# Every line of a kept module that names one of DYNAMIC_NAMES (outside comments and strings),
# reviewed by hand, with the Powertools modules it loads. An unreviewed one fails the build
# (a Powertools upgrade, a newly kept module): read it, then add it here.
DYNAMIC_IMPORTS: dict[tuple[str, str], tuple[str, ...]] = {
    # LazyLoader itself: it imports whatever name its callers give it (below).
    ("aws_lambda_powertools.shared.lazy_import", "import importlib"): (),
    ("aws_lambda_powertools.shared.lazy_import", "class LazyLoader(types.ModuleType):"): (),
    (
        "aws_lambda_powertools.shared.lazy_import",
        "module = importlib.import_module(self.__name__)",
    ): (),
    (
        "aws_lambda_powertools.tracing.tracer",
        "from aws_lambda_powertools.shared.lazy_import import LazyLoader",
    ): (),
    # constants.XRAY_SDK_MODULE is "aws_xray_sdk": another distribution, shipped whole.
    (
        "aws_lambda_powertools.tracing.tracer",
        "aws_xray_sdk = LazyLoader("
        "constants.XRAY_SDK_MODULE, globals(), constants.XRAY_SDK_MODULE)",
    ): (),
}


# Modules the closure does not follow: each imports, at its top level and unguarded, a
# distribution the layer does not ship, so importing it fails in the layer pruned or not. Both
# conditions are checked at each build. Pruning changes only the ImportError's module name.
UNLOADABLE: dict[str, str] = {
    # Imported only by shared.functions.pydantic_to_dict, for a pydantic model.
    "aws_lambda_powertools.event_handler.openapi.compat": "pydantic",
}


class PruneError(Exception):
    pass


def modules(site: Path) -> dict[str, Path]:
    """Each module of the package in ``site``, by dotted name."""
    found = {}
    for path in (site / PACKAGE).rglob("*.py"):
        parts = path.relative_to(site).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node but the bodies of `if TYPE_CHECKING:` (their `else:` runs)."""
    nodes, stack = [], [tree]
    while stack:
        node = stack.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and _type_checking(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))
    return nodes


def imports(path: Path, name: str, is_package: bool) -> tuple[set[str], set[str]]:
    """Dotted names a module may import at run time: the modules it imports, and for each
    `from x import y` the name x.y, a submodule or an attribute of x (the caller checks)."""
    required: set[str] = set()
    maybe: set[str] = set()
    tree = ast.parse(path.read_bytes(), str(path))
    package = name if is_package else name.rpartition(".")[0]
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            required.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = importlib.util.resolve_name("." * node.level + base, package)
            required.add(base)
            maybe.update(f"{base}.{alias.name}" for alias in node.names)  # "x.*": see closure
    return required, maybe


def dynamic_lines(path: Path) -> set[str]:
    """Lines that name importlib, __import__, LazyLoader or import_module as code."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {
        lines[token.start[0] - 1].strip()
        for token in tokens
        if token.type == tokenize.NAME and token.string in DYNAMIC_NAMES
    }


def check_unloadable(site: Path, index: dict[str, Path]) -> None:
    for name, distribution in UNLOADABLE.items():
        path = index.get(name)
        if path is None:  # pruned already (--check on a built layer): it cannot load either
            continue
        tops: set[str] = set()
        for node in ast.parse(path.read_bytes(), str(path)).body:
            if isinstance(node, ast.Import):
                tops.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                tops.add(node.module.partition(".")[0])
        shipped = (site / distribution).exists() or (site / f"{distribution}.py").exists()
        if distribution not in tops or shipped:
            raise PruneError(
                f"UNLOADABLE (layers/relay/prune.py) no longer holds: {name} should import"
                f" {distribution} at its top level, and {distribution} be absent from the layer"
            )


def _unloadable(name: str) -> bool:
    return any(name == module or name.startswith(module + ".") for module in UNLOADABLE)


def closure(site: Path, roots: list[Path]) -> tuple[set[str], set[str]]:
    """The Powertools modules the roots can import, and the modules they import that are not
    in ``site``."""
    index = modules(site)
    check_unloadable(site, index)
    kept: set[str] = set()
    missing: set[str] = set()
    unreviewed: list[str] = []
    queue: list[tuple[Path, str, bool]] = []
    for root in roots:  # a directory is a package (relay/), a file a top-level module (app.py)
        for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            parts = path.relative_to(root.parent).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            queue.append((path, ".".join(parts[:-1] if is_package else parts), is_package))

    def keep(name: str) -> bool:
        if name not in index:
            return False
        # Importing a.b.c runs a/__init__ and a/b/__init__: each is part of the closure.
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            module = ".".join(parts[:depth])
            if module in index and module not in kept:
                kept.add(module)
                path = index[module]
                queue.append((path, module, path.name == "__init__.py"))
        return True

    while queue:
        path, name, is_package = queue.pop()
        required, maybe = imports(path, name, is_package)
        for imported in sorted(required | maybe):
            if not imported.startswith(PACKAGE + ".") and imported != PACKAGE:
                continue
            if _unloadable(imported):
                continue
            base, _, last = imported.rpartition(".")
            if last == "*":  # a star import can load any submodule its __all__ names
                for module in index:
                    if module.rpartition(".")[0] == base:
                        keep(module)
            elif not keep(imported) and imported in required:
                missing.add(imported)
        if name in kept:
            for line in sorted(dynamic_lines(path)):
                if (name, line) not in DYNAMIC_IMPORTS:
                    unreviewed.append(f"{path}: {line}")
                for module in DYNAMIC_IMPORTS.get((name, line), ()):
                    if not keep(module):
                        missing.add(module)
    if unreviewed:
        raise PruneError(
            "unreviewed dynamic imports in kept Powertools modules; read each, then list it and"
            " the modules it loads in DYNAMIC_IMPORTS (layers/relay/prune.py):\n  "
            + "\n  ".join(unreviewed)
        )
    return kept, missing


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def prune(site: Path, kept: set[str]) -> list[tuple[str, int]]:
    """Delete each topmost directory of the package that holds Python code but no kept module.
    Directories of data alone, and __pycache__, stay: a kept module may read them."""
    index = modules(site)
    needed = {site / PACKAGE}
    for name in kept:
        needed.update(index[name].parents)
    removed = []
    for directory, subdirectories, _ in os.walk(site / PACKAGE):
        for subdirectory in sorted(subdirectories):
            path = Path(directory) / subdirectory
            if path not in needed and any(path.rglob("*.py")):
                removed.append((".".join(path.relative_to(site).parts), size(path)))
                shutil.rmtree(path)
        subdirectories[:] = [d for d in subdirectories if Path(directory) / d in needed]
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="verify only; delete nothing")
    parser.add_argument("site", type=Path, help="the layer's python/ directory")
    parser.add_argument("roots", type=Path, nargs="+", help="the relay's code: files or dirs")
    args = parser.parse_args(argv)
    for path in [args.site / PACKAGE, *args.roots]:
        if not path.exists():
            parser.error(f"{path} does not exist")
    try:
        kept, missing = closure(args.site, args.roots)
    except PruneError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    if missing:
        # Powertools itself imports a module it lacks (an upgrade?): fail rather than guess.
        print(
            f"ERROR: imported but not in {args.site / PACKAGE}: {', '.join(sorted(missing))}",
            file=sys.stderr,
        )
        return 1
    if args.check:
        print(f"layer: the {len(kept)} Powertools modules the relay can import are all present")
        return 0
    before = size(args.site / PACKAGE)
    removed = prune(args.site, kept)
    saved = sum(bytes_ for _, bytes_ in removed)
    print(
        f"layer: pruned {len(removed)} Powertools subpackages the relay never imports "
        f"({len(kept)} modules kept): {saved / 1024:,.0f} of {before / 1024:,.0f} KB saved"
        " before bytecode (LAYER_PRUNE=0 ships it whole)"
    )
    for name, bytes_ in sorted(removed, key=lambda item: -item[1]):
        print(f"layer:   - {name} ({bytes_ / 1024:,.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
