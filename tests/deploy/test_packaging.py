"""Packaging: the license pyproject declares is the license file shipped."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_license_is_an_spdx_expression_with_its_text_shipped() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    # PEP 639: the table form ({text = ...}) is deprecated and goes in setuptools 2027.
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    # SPDX strings and license-files need setuptools >= 77.
    (requirement,) = [r for r in pyproject["build-system"]["requires"] if "setuptools" in r]
    found = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", requirement)
    assert found
    assert int(found.group(1)) >= 77
