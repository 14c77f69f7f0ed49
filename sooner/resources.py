"""Locate the data folders that ship with Sooner.

In a source checkout they are top-level folders (``git-hooks/``, ``web/`` …);
in an installed wheel they live inside the package as ``sooner/_git_hooks``
and friends (see ``[tool.setuptools.package-dir]`` in pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent

# resource name -> (folder inside the wheel, folder in a source checkout)
_LOCATIONS = {
    "git-hooks": ("_git_hooks", "git-hooks"),
    "template": ("_template", "scripts.git.template"),
    "web": ("_web", "web"),
    "examples": ("_examples", "examples"),
}


def resource_dir(name: str) -> Path:
    """Return the folder holding the named resource (``git-hooks``, ``template``, ``web``, ``examples``)."""
    installed, source = _LOCATIONS[name]
    for candidate in (_PACKAGE_DIR / installed, _PACKAGE_DIR.parent / source):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"Sooner resource folder {name!r} is missing from the installation")
