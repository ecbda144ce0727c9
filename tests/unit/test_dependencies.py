"""Every third-party package that notifyd (or its tests) imports is declared in pyproject.toml.

An undeclared import works on a developer's machine, where something else pulled the
package in, and breaks a clean install; this keeps the declaration honest.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterable
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"notifyd", "tests"}


def _normalise(name: str) -> str:
    """PEP 503 name normalisation ("PyJWT" == "pyjwt", "argon2_cffi" == "argon2-cffi")."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(requirements: Iterable[str]) -> set[str]:
    names = set()
    for req in requirements:
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        assert m, f"unparsable requirement {req!r}"
        names.add(_normalise(m.group(1)))
    return names


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {k: _requirement_names(v) for k, v in project["optional-dependencies"].items()}
    return _requirement_names(project["dependencies"]), extras


def _imports(*dirs: str) -> dict[str, set[str]]:
    """Top-level third-party module -> files importing it (any depth, lazy imports too)."""
    found: dict[str, set[str]] = {}
    for d in dirs:
        for path in sorted((ROOT / d).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _undeclared(imports: dict[str, set[str]], allowed: set[str]) -> list[str]:
    """Modules no declared distribution provides.

    Provided means: an installed distribution that ships the module is declared, or a
    declared one has the module's own name (which covers a declared distribution that
    this environment happens to have replaced by a fork shipping the same module).
    """
    dists = packages_distributions()
    problems = []
    for module, files in sorted(imports.items()):
        provided_by = {_normalise(d) for d in dists.get(module, [])}
        if _normalise(module) in allowed:
            continue
        if not provided_by:
            problems.append(f"{module}: not installed (imported by {sorted(files)})")
        elif not provided_by & allowed:
            problems.append(
                f"{module}: from {sorted(provided_by)}, not declared (imported by {sorted(files)})"
            )
    return problems


def test_package_imports_are_declared() -> None:
    deps, extras = _declared()
    imports = _imports("notifyd")
    assert {"faust", "aiohttp", "click", "pydantic", "yarl"} <= set(imports)  # the scan works
    # The runtime package may use its optional extras (bench), never the test tools.
    allowed = deps.union(*(names for extra, names in extras.items() if extra != "test"))
    assert _undeclared(imports, allowed) == []


def test_test_imports_are_declared() -> None:
    deps, extras = _declared()
    imports = _imports("tests")
    assert {"pytest", "hypothesis"} <= set(imports)
    assert _undeclared(imports, deps.union(*extras.values())) == []


def test_normalise() -> None:
    assert _requirement_names(["PyJWT[crypto]>=2.8", "argon2_cffi", "uvloop>=0.19; x"]) == {
        "pyjwt", "argon2-cffi", "uvloop"
    }
