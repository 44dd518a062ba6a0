"""The one-way street (DESIGN.md, Architecture): the instrumentation never imports the exporter or the facade.

Import order is structure, not luck: each package is imported alone in a fresh interpreter, and what importing the
instrumentation loads is checked, as is every import statement in its files (so an import inside a function, which
only runs on some calls, is caught too).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

INSTRUMENTATION = "spendwatch.instrumentation"
INSTRUMENTATION_DIR = Path(importlib.util.find_spec(INSTRUMENTATION).submodule_search_locations[0])

# The packages a user or a tool imports first.
ENTRY_PACKAGES = [
    "spendwatch",
    INSTRUMENTATION,
    f"{INSTRUMENTATION}.openai_sdk",
    f"{INSTRUMENTATION}.lightrag_hku",
    "spendwatch.exporter",
    "spendwatch.cli",
]
INSTRUMENTATION_FILES = sorted(INSTRUMENTATION_DIR.rglob("*.py"))


def instrumentation_modules() -> list[str]:
    """Every module under instrumentation/, by its installed dotted name."""
    names = []
    for path in INSTRUMENTATION_FILES:
        parts = path.relative_to(INSTRUMENTATION_DIR).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join((INSTRUMENTATION, *parts)))
    return names


def loaded_after_importing(*modules: str) -> list[str]:
    """The spendwatch modules a fresh interpreter holds after importing ``modules`` (and nothing else)."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'spendwatch' or m.startswith('spendwatch.'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def is_instrumentation(module: str) -> bool:
    return module == INSTRUMENTATION or module.startswith(INSTRUMENTATION + ".")


def outside_the_instrumentation(loaded: list[str]) -> list[str]:
    """The facade and exporter modules among ``loaded``; the bare ``spendwatch`` package is loaded as the parent of
    spendwatch.instrumentation, so it is allowed here (its __init__ must then import nothing that imports us back)."""
    return [m for m in loaded if m != "spendwatch" and not is_instrumentation(m)]


@pytest.mark.parametrize("package", ENTRY_PACKAGES)
def test_each_package_imports_alone_in_a_fresh_interpreter(package):
    assert package in loaded_after_importing(package)


@pytest.mark.parametrize(
    "package", [INSTRUMENTATION, f"{INSTRUMENTATION}.openai_sdk", f"{INSTRUMENTATION}.lightrag_hku"]
)
def test_importing_an_instrumentation_package_loads_no_facade_or_exporter_module(package):
    assert outside_the_instrumentation(loaded_after_importing(package)) == []


def test_importing_every_instrumentation_module_loads_no_facade_or_exporter_module():
    assert outside_the_instrumentation(loaded_after_importing(*instrumentation_modules())) == []


def imported_names(path: Path) -> list[str]:
    """The absolute dotted name of every module an import statement in ``path`` names, wherever the statement is."""
    package = ".".join((INSTRUMENTATION, *path.relative_to(INSTRUMENTATION_DIR).parent.parts))
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            # `from spendwatch import x` names the module spendwatch.x when x is one.
            names.extend(f"{base}.{alias.name}" if base == "spendwatch" else base for alias in node.names)
    return names


@pytest.mark.parametrize("path", INSTRUMENTATION_FILES, ids=lambda p: str(p.relative_to(INSTRUMENTATION_DIR)))
def test_no_instrumentation_file_imports_the_exporter_or_the_facade(path):
    # Here even a bare `import spendwatch` counts: it would be the instrumentation reaching for the facade.
    names = imported_names(path)
    assert [n for n in names if n.split(".")[0] == "spendwatch" and not is_instrumentation(n)] == []


def test_importing_the_exporter_loads_no_facade_module():
    # The exporter sits between the instrumentation and the facade: the facade wires it in, never the other way.
    loaded = loaded_after_importing("spendwatch.exporter")
    assert [m for m in loaded if m != "spendwatch" and m.split(".")[1] not in ("exporter", "instrumentation")] == []
