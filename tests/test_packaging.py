"""The wheel ships every Python package of the source tree (a missing one breaks only non-editable installs)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_under_sooner_is_listed_in_pyproject():
    # given the packages pyproject.toml ships
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    # when the source tree is walked for folders with an __init__.py
    found = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "sooner").rglob("__init__.py")
             if "__pycache__" not in init.parts}
    # then each one is shipped
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
