"""The package's shape, read from its imports and string constants (AST), so that it stays so.

- ``registry.py``, ``cli.py`` and ``compat/`` never import a concrete backend: they reach storage
  through ``nameplate.backends.open_backend`` and the features, so a new backend is a module under
  ``backends/`` and a row in its scheme table.
- No feature module imports ``registry``: features get their collaborators from ``Registry.__init__``.
- SQL text lives in feature modules and backends only, never in the Registry, the CLI or compat/.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "nameplate"

#: Modules above the features: they hold a Registry rather than being part of one.
FRONTS = {"registry.py", "cli.py", "__init__.py", "__main__.py", "_lock_command.py"}
#: The backend modules that hold one database's code (what the fronts must not import).
CONCRETE_BACKENDS = {"nameplate.backends.sqlite", "nameplate.backends._held_files", "nameplate.backends.postgresql"}
#: SQL as this code base writes it (upper-case keywords), not English prose that says "select from".
SQL = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX))\b",
                 re.DOTALL)


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = _name(path) if path.name == "__init__.py" else _name(path).rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _is_front(path: Path) -> bool:
    return path.parent == PACKAGE and path.name in FRONTS or "compat" in path.relative_to(PACKAGE).parts


def test_the_rules_can_fail() -> None:
    assert SQL.search("SELECT id FROM entry WHERE name = ?") and SQL.search("DELETE FROM lease")
    assert not SQL.search("Select a provider from those that match")


def test_the_walk_sees_the_modules_it_rules_on() -> None:
    names = {_name(p) for p in _modules()}
    assert {"nameplate.registry", "nameplate.cli", "nameplate.compat.cursus", "nameplate._leasing",
            "nameplate.backends", "nameplate.backends.sqlite"} <= names
    assert "nameplate.backends.sqlite" in _imports(PACKAGE / "backends" / "__init__.py")
    assert "nameplate.backends.postgresql" in _imports(PACKAGE / "backends" / "__init__.py")


@pytest.mark.parametrize("path", [p for p in _modules() if _is_front(p)], ids=_name)
def test_fronts_reach_storage_only_through_open_backend(path: Path) -> None:
    assert not _imports(path) & CONCRETE_BACKENDS, f"{_name(path)} imports a concrete backend"


@pytest.mark.parametrize("path", [p for p in _modules() if not _is_front(p)], ids=_name)
def test_no_feature_imports_the_registry(path: Path) -> None:
    assert "nameplate.registry" not in _imports(path), f"{_name(path)} imports nameplate.registry"


@pytest.mark.parametrize("path", [p for p in _modules() if _is_front(p)], ids=_name)
def test_no_sql_text_in_the_registry_the_cli_or_compat(path: Path) -> None:
    strings = [node.value for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    offending = [text for text in strings if SQL.search(text)]
    assert not offending, f"SQL in {_name(path)}: {offending[:3]}"
