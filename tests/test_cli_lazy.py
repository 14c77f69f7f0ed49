"""One-shot commands import only what they use: no web server, notifier or metrics libraries (issue #12).

Each command runs in a fresh interpreter, which then lists its modules. A
bare ``sooner jobs`` is mostly PyMongo's import time (bench/footprint.py
measures both); Flask, gunicorn, Socket.IO, apprise and prometheus_client
would add as much again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

HEAVY = ("flask", "gunicorn", "engineio", "socketio", "flask_socketio", "apprise", "prometheus_client", "werkzeug")

DRIVER = """
import json, sys
out = sys.argv[1]
sys.argv = ["sooner", *sys.argv[2:]]
from sooner.cli import main
try:
    main()
except SystemExit:
    pass
with open(out, "w") as handle:
    json.dump(sorted(sys.modules), handle)
"""


def modules_after(args: list[str], tmp_path: Path, cwd: Path) -> set[str]:
    out = tmp_path / "modules.json"
    env = {**os.environ, "SOONER_MONGO_URL": "mongomock://", "SOONER_CONFIG": ""}
    result = subprocess.run([sys.executable, "-c", DRIVER, str(out), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=60)
    assert out.exists(), result.stderr
    return {name.split(".")[0] for name in json.loads(out.read_text())}


@pytest.mark.parametrize("args", [["--help"], ["jobs", "--help"], ["jobs"], ["runs"], ["workers"]],
                         ids=" ".join)
def test_one_shot_commands_do_not_import_the_web_stack(args: list[str], tmp_path: Path):
    # when a one-shot command runs (on an in-memory database, so it really lists)
    loaded = modules_after(args, tmp_path, tmp_path)
    # then none of the web server's, notifier's or metrics' libraries were imported
    assert "sooner" in loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_the_check_sees_a_heavy_import(tmp_path: Path):
    # given a command that does need the web stack (its own help is lazy; building the app is not)
    loaded = modules_after(["web", "--help"], tmp_path, ROOT)
    assert "flask" not in loaded  # even `web --help` stays light
    # then the same check does see it when the app is imported
    out = tmp_path / "heavy.json"
    subprocess.run([sys.executable, "-c", "import json, sys; import sooner.webapp; "
                    f"json.dump(sorted(sys.modules), open({str(out)!r}, 'w'))"], check=True, timeout=60)
    assert "flask" in {name.split(".")[0] for name in json.loads(out.read_text())}


def test_every_command_is_in_the_table_of_the_module_that_defines_it():
    # given every command module imported
    from sooner.cli import COMMAND_MODULES, load_commands, main

    load_commands()
    # then the table names each command's module (else that command imports every module first)
    defined = {name: command.callback.__module__ for name, command in main.commands.items()
               if command.callback is not None}
    assert defined == {name: COMMAND_MODULES.get(name) for name in defined}


def test_a_command_loads_only_its_own_module(tmp_path: Path):
    loaded = modules_after(["jobs", "--help"], tmp_path, tmp_path)
    assert "sooner" in loaded
    out = tmp_path / "modules.json"
    names = set(json.loads(out.read_text()))
    assert "sooner.cli.jobs" in names
    assert not names & {"sooner.cli.web", "sooner.cli.hooks", "sooner.cli.worker"}, sorted(names)
