"""Checks on the source itself: ruff, mypy, and two rules about who owns what (docs/architecture.md).

- ruff runs with the configuration in pyproject.toml. That includes the
  banned-api rule that keeps pymongo and mongomock inside sooner/store.
- mypy runs with the configuration in pyproject.toml.
- Only sooner/store touches ``Store.db``. Everything else calls a store
  method or a read model.
- Run status and job policy values are spelled only in sooner/model. Other
  code uses ``RunStatus``, ``Overlap`` and ``Missed``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sooner.model.missed import MissReason
from sooner.model.status import Missed, Overlap, RunStatus

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sooner"

# The literals the model owns: every run status and every overlap/missed policy value.
MODEL_WORDS = frozenset(s.value for enum in (RunStatus, Overlap, Missed, MissReason) for s in enum)

# A literal that is one of those words but means something else, each with the
# reason: (file relative to the root, literal, text on the literal's line) -> why.
# Field names (dict keys, subscripts, the first argument of .get) are not
# flagged at all: the workers document has a `running` field, a page context
# has a `queue` key. Keep this list short: an entry is for a homonym, never
# for a status or a policy the code compares against.
LITERAL_ALLOWED: dict[tuple[str, str, str], str] = {
    ("sooner/cli/runtime.py", "queue", '@main.group("queue")'): "the name of the `sooner queue` command group",
    ("sooner/cli/runtime.py", "running", '"capacity", "running"'): "a column header of `sooner workers`",
}


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def report(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit code {result.returncode}\n{result.stdout}{result.stderr}"


def python_files(outside: str) -> Iterator[tuple[str, list[str], ast.Module]]:
    """(path relative to the root, lines, parsed module) of every sooner/**/*.py not under sooner/<outside>/."""
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(ROOT)
        if relative.parts[1] == outside:
            continue
        source = path.read_text(encoding="utf-8")
        yield relative.as_posix(), source.splitlines(), ast.parse(source, filename=str(path))


def names_a_store(node: ast.expr) -> bool:
    """``store``, ``self.store``, ``app._store``, ``open_store(…)``: an expression that reads as a Store."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Name):
        name = node.id
    elif isinstance(node, ast.Attribute):
        name = node.attr
    else:
        return False
    return name.lower().endswith("store")


def test_ruff_finds_nothing_in_sooner_tests_and_bench() -> None:
    # given the configuration in pyproject.toml
    # when ruff checks the code we own
    result = run_tool("ruff", "check", "--no-cache", "--output-format", "concise", "sooner", "tests", "bench")
    # then it reports nothing
    assert result.returncode == 0, report(result)


@pytest.mark.slow
def test_mypy_finds_nothing_in_sooner() -> None:
    # given [tool.mypy] in pyproject.toml (files = sooner)
    # when mypy checks the package
    result = run_tool("mypy")
    # then it reports nothing
    assert result.returncode == 0, report(result)


def test_only_the_store_package_touches_store_db() -> None:
    # given every module outside sooner/store
    # when we look for `<something>store.db` (or `._db`)
    leaks = sorted(
        (path, node.lineno, ast.unparse(node))
        for path, _, tree in python_files(outside="store")
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in ("db", "_db") and names_a_store(node.value)
    )
    # then there is none: those modules call a store method or a read model (store.reads) instead
    assert not leaks, f"{len(leaks)} uses of Store.db outside sooner/store:\n" + "\n".join(
        f"{path}:{line}: {code}" for path, line, code in leaks
    )


def field_names(tree: ast.Module) -> set[int]:
    """ids of the string constants used as field names: dict keys, subscripts, the first argument of .get()."""
    names: list[ast.expr | None] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            names += node.keys
        elif isinstance(node, ast.Subscript):
            names.append(node.slice)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            names += node.args[:1]
    return {id(node) for node in names if isinstance(node, ast.Constant)}


def test_status_and_policy_values_are_spelled_only_in_the_model() -> None:
    # given every module outside sooner/model
    found: list[tuple[str, int, str]] = []
    allowed_seen: set[tuple[str, str, str]] = set()
    for path, lines, tree in python_files(outside="model"):
        skip = field_names(tree)
        # when we look for string constants that are exactly a status or policy value
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in MODEL_WORDS):
                continue
            if id(node) in skip:
                continue
            allowed = [
                key for key in LITERAL_ALLOWED if key[:2] == (path, node.value) and key[2] in lines[node.lineno - 1]
            ]
            if allowed:
                allowed_seen.update(allowed)
            else:
                found.append((path, node.lineno, node.value))
    # then there is none: the code uses RunStatus / Overlap / Missed
    assert not found, (
        f"{len(found)} status/policy literals outside sooner/model (use RunStatus, Overlap, Missed):\n"
        + "\n".join(f"{path}:{line}: {value!r}" for path, line, value in sorted(found))
    )
    # and every allow-list entry still matches something (a stale one would hide the next real literal)
    stale = [f"{key}: {reason}" for key, reason in LITERAL_ALLOWED.items() if key not in allowed_seen]
    assert not stale, "allow-list entries that match nothing:\n" + "\n".join(stale)
