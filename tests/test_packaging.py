"""The package as pip users get it: license, metadata, package data, and the py.typed promise."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from importlib import metadata, resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(str(resources.files("nameplate")))


def test_license_is_mit_as_an_spdx_expression_with_its_file() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in license_text


def test_installed_metadata_carries_classifiers_and_license() -> None:
    info = metadata.metadata("nameplate")
    assert info["License-Expression"] == "MIT"
    classifiers = info.get_all("Classifier") or []
    assert "Programming Language :: Python :: 3.11" in classifiers and "Topic :: Database" in classifiers


def test_the_export_schema_ships_inside_the_package() -> None:
    schema = json.loads(resources.files("nameplate").joinpath("export.schema.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_py_typed_ships_only_while_mypy_strict_is_clean() -> None:
    """py.typed tells users' type checkers to trust our annotations: only honest while they hold.
    mypy comes with the test extra, so this runs wherever the suite does."""
    # An installed package is checked as a module (-p): given its path inside site-packages, mypy would
    # take site-packages for a source root and trip over other packages' modules. An editable install
    # (an import hook mypy cannot follow) is checked by its source path.
    target = ["-p", "nameplate"] if "site-packages" in PACKAGE.parts else [str(PACKAGE)]
    checked = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", *target],
                             capture_output=True, text=True, timeout=300)
    clean = checked.returncode == 0
    shipped = (PACKAGE / "py.typed").exists()
    assert shipped == clean, ("mypy --strict is clean: ship py.typed again" if clean else
                              f"py.typed is shipped but mypy --strict reports:\n{checked.stdout[-3000:]}")
