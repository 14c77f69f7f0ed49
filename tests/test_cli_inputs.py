"""Hostile command-line input: every case ends in one clear ``sooner: error:`` line, never a traceback.

The table runs the CLI in-process on mongomock (fast; an unexpected exception
fails the test with its traceback). The cases that used to crash the embedded
server's driver path run once more as real ``sooner`` processes on a site.
"""

from __future__ import annotations

import itertools
import json
import os

import pytest
from click.testing import CliRunner

from conftest import run_sooner
from sooner.cli import main
from sooner.config import load_settings
from sooner.model.data import (MAX_DEPTH, MAX_QUEUE_DATA_BYTES, MAX_RUN_DATA_BYTES, InvalidData, check_data,
                               check_run_data, load_json)
from sooner.store import Store, open_store

_counter = itertools.count()
DEEP_5000 = "[" * 5000 + "]" * 5000
TOO_DEEP = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
DEEPEST = "[" * MAX_DEPTH + "]" * MAX_DEPTH
INT_31 = "1234567890123456789012345678901"
AN_ID = "0123456789abcdef01234567"


@pytest.fixture
def cli(monkeypatch, tmp_path):
    """``cli(*args)`` runs `sooner` in-process on a fresh mongomock database holding job ``x``."""
    monkeypatch.chdir(tmp_path)
    url = f"mongomock://inputs-{os.getpid()}-{next(_counter)}"
    env = {"SOONER_MONGO_URL": url, "SOONER_CONFIG": "", "USER": "alice"}
    runner = CliRunner()

    def invoke(*args: str, **extra_env: str):
        return runner.invoke(main, list(args), env={**env, **extra_env}, catch_exceptions=False)
    invoke.store = Store(url)
    invoke.store.jobs.record_deployed("x", commit="c1", blob="b1")
    return invoke


def one_error_line(stderr: str) -> str:
    """The only line of ``stderr``, which must be a ``sooner: error:`` line."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sooner: error: "), stderr
    return lines[0].removeprefix("sooner: error: ")


def assert_nothing_stored(store: Store) -> None:
    assert store.runs.list() == []
    assert store.queues("q").find() == []


@pytest.mark.parametrize("args, message", [
    # --data of `run`: JSON that Python reads but a run cannot store or pass on
    (["run", "x", "--data", "NaN"], "--data: NaN is not allowed: numbers must be finite"),
    (["run", "x", "--data", '{"a": [Infinity]}'], "--data: Infinity is not allowed: numbers must be finite"),
    (["run", "x", "--data", "-Infinity"], "--data: -Infinity is not allowed"),
    (["run", "x", "--data", "[1e309]"], "--data: number 1e309 does not fit in a 64-bit float"),
    (["run", "x", "--data", DEEP_5000], f"--data: nested deeper than {MAX_DEPTH} levels"),
    (["run", "x", "--data", TOO_DEEP], f"--data: nested deeper than {MAX_DEPTH} levels"),
    (["run", "x", "--data", INT_31], f"--data: integer {INT_31} does not fit in 64 bits"),
    (["run", "x", "--data", '{"n": 9223372036854775808}'], "--data: integer 9223372036854775808 does not fit"),
    (["run", "x", "--data", "9" * 5000], "--data: integer 999999999999… (5000 digits) does not fit in 64 bits"),
    (["run", "x", "--data", '{"$set": 1}'], '--data: key "$set" at ["$set"] must not start with "$"'),
    (["run", "x", "--data", '{"a": {"b.c": 1}}'], '--data: key "b.c" at ["a"]["b.c"] must not contain "."'),
    (["run", "x", "--data", '{"a\\u0000": 1}'], "must not contain NUL"),
    (["run", "x", "--data", '["\\ud800"]'], "--data: string at [0] is not valid Unicode (a lone surrogate)"),
    (["run", "x", "--data", json.dumps("x" * 70_000)], "--data: string is 70000 bytes, at most 65536"),
    (["run", "x", "--data", json.dumps(["x" * 60_000, "y" * 60_000])],
     f"--data: is 120008 bytes as JSON, at most {MAX_RUN_DATA_BYTES}"),
    (["run", "x", "--data", "{n: 1}"], "--data is not valid JSON (Expecting property name"),
    # run --worker: a target no worker can have would wait forever
    (["run", "x", "--worker", ""], "--worker: a worker needs a name, got ''"),
    (["run", "x", "--worker", "a b"], "--worker: invalid worker name or tag 'a b'"),
    # emit: the event name and its data
    (["emit", ""], "EVENT: invalid event name ''"),
    (["emit", "bad name"], "EVENT: invalid event name 'bad name'"),
    (["emit", "ev", "--data", "NaN"], "--data: NaN is not allowed"),
    (["emit", "ev", "--data", DEEP_5000], "--data: nested deeper than"),
    # queues: DATA_JSON and --data
    (["queue", "put", "q", "1e999"], "DATA_JSON: number 1e999 does not fit in a 64-bit float"),
    (["queue", "put", "q", "NaN"], "DATA_JSON: NaN is not allowed"),
    (["queue", "put", "q", "99999999999999999999"], "DATA_JSON: integer 99999999999999999999 does not fit"),
    (["queue", "put", "q", '{"$where": "1"}'], 'DATA_JSON: key "$where" at ["$where"] must not start with "$"'),
    (["queue", "put", "q", DEEP_5000], "DATA_JSON: nested deeper than"),
    (["queue", "update", "q", AN_ID, "--data", "Infinity"], "--data: Infinity is not allowed"),
    # job set --timeout: finite, not negative, at most 30 days
    (["job", "set", "x", "--timeout", "nan"], "timeout: must be a finite number of seconds from 0 to 2592000 "
                                             "(30 days), got nan"),
    (["job", "set", "x", "--timeout", "inf"], "timeout: must be a finite number of seconds from 0 to 2592000"),
    (["job", "set", "x", "--timeout", "1e309"], "timeout: must be a finite number of seconds"),
    (["job", "set", "x", "--timeout", "-5"], "timeout: must be a finite number of seconds from 0 to 2592000 "
                                            "(30 days), got -5"),
    (["job", "set", "x", "--timeout", "1e12"], "got 1e+12"),
    # other hostile values found in the sweep
    (["job", "set", "x", "--schedule", "* * * * * * * *"], "schedule: invalid cron expression"),
    (["job", "set", "x", "--hook", ""], "hook: invalid event name ''"),
    (["logs", ""], "no run with id ''"),
    (["cancel", "zz"], "no run with id 'zz'"),
])
def test_hostile_input_is_one_error_line_exit_1_and_stores_nothing(cli, args, message):
    result = cli(*args)
    assert result.exit_code == 1, result.output
    assert message in one_error_line(result.stderr)
    assert_nothing_stored(cli.store)


def test_a_refused_timeout_leaves_the_job_unchanged(cli):
    assert cli("job", "set", "x", "--timeout", "60").exit_code == 0
    assert cli("job", "set", "x", "--timeout", "nan").exit_code == 1
    assert cli.store.jobs.get("x").timeout_s == 60


@pytest.mark.parametrize("data", [DEEPEST, "9223372036854775807", "-9223372036854775808", '{"a$": "\\u0000"}',
                                  '{"": 1.5e308}', json.dumps("x" * 65_536), "null"])
def test_data_at_the_edges_of_the_rules_is_accepted(cli, data):
    result = cli("run", "x", "--data", data)
    assert result.exit_code == 0, result.output
    assert cli.store.runs.get(result.stdout.strip()).data == json.loads(data)


def test_queue_entries_may_be_larger_than_run_data(cli):
    text = json.dumps(["x" * 60_000, "y" * 60_000])
    put = cli("queue", "put", "q", text)
    assert put.exit_code == 0, put.output
    assert cli.store.queues("q").find()[0]["data"] == json.loads(text)


# -- the same through real processes on the embedded server ---------------------------------------------
@pytest.fixture
def site_with_job(site):
    store = open_store(load_settings(site / "config.json", environ={}))
    store.jobs.record_deployed("x", commit="c1", blob="b1")
    yield site, store
    store.close()


@pytest.mark.parametrize("args, message", [
    (["run", "x", "--data", "NaN"], "--data: NaN is not allowed"),
    (["run", "x", "--data", DEEP_5000], "--data: nested deeper than 32 levels"),
    (["run", "x", "--data", INT_31], f"--data: integer {INT_31} does not fit in 64 bits"),
    (["run", "x", "--data", '{"a\\u0000": 1}'], "must not contain NUL"),
    (["queue", "put", "q", "1e999"], "DATA_JSON: number 1e999 does not fit in a 64-bit float"),
    (["job", "set", "x", "--timeout", "nan"], "timeout: must be a finite number of seconds"),
])
def test_hostile_input_to_the_real_cli_is_one_line_without_traceback(site_with_job, args, message):
    site, store = site_with_job
    result = run_sooner(*args, cwd=site)
    assert result.returncode == 1
    assert message in one_error_line(result.stderr)
    assert store.runs.list() == [] and store.jobs.get("x").timeout_s is None


# -- worker names -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, env, message", [
    (["-n", ""], {}, "-n/--name: a worker needs a name, got ''"),
    (["-n", "   "], {}, "-n/--name: a worker needs a name, got '   '"),
    (["-n", "a b"], {}, "-n/--name: invalid worker name 'a b'"),
    (["-n", "x" * 101], {}, "-n/--name: invalid worker name 'xxxxxxxx"),
    ([], {"SOONER_WORKER_NAME": ""}, "SOONER_WORKER_NAME: a worker needs a name, got ''"),
    ([], {"SOONER_WORKER_NAME": "a/b"}, "SOONER_WORKER_NAME: invalid worker name 'a/b'"),
    (["-n", "w1", "--tags", "gpu,big box"], {}, "--tags: invalid tag 'big box'"),
])
def test_a_worker_refuses_an_empty_or_invalid_name(site, args, env, message):
    # given a bad name; without the check the worker would start under the host name and run until killed
    result = run_sooner("worker", *args, cwd=site, env=env, timeout=30)
    assert result.returncode == 1, result.stdout
    assert message in one_error_line(result.stderr)
    store = open_store(load_settings(site / "config.json", environ={}))
    try:
        assert store.workers.list() == []
    finally:
        store.close()


# -- the rule itself, for callers other than the CLI (the web, the API) --------------------------------
def test_check_run_data_names_the_part_that_is_wrong():
    with pytest.raises(InvalidData, match=r'^data: number nan at \["a"\]\[1\] is not finite$'):
        check_run_data({"a": [1, float("nan")]}, "data")
    with pytest.raises(InvalidData, match=r"^body: integer 1267650600228229401496703205376 at \[0\] does not fit"):
        check_run_data([2 ** 100], "body")
    with pytest.raises(InvalidData, match=r"^data: set value at \[\"s\"\] cannot be stored: only JSON values"):
        check_run_data({"s": {1}}, "data")
    with pytest.raises(InvalidData, match=r"^data: key 1 at \[\] must be a string"):
        check_run_data({1: "a"}, "data")


def test_check_run_data_returns_json_values_and_tuples_become_lists():
    assert check_run_data({"t": (1, "a", None, True, 2.5)}, "data") == {"t": [1, "a", None, True, 2.5]}
    assert check_run_data(None, "data") is None


def test_deep_nesting_built_in_python_is_refused_without_recursing_far():
    deep: list = []
    for _ in range(10_000):
        deep = [deep]
    with pytest.raises(InvalidData, match=f"nested deeper than {MAX_DEPTH} levels at "):
        check_run_data(deep, "data")


def test_run_data_must_fit_in_sooner_data_and_queue_data_may_be_bigger():
    big = "é" * 20_000  # 40,000 bytes of UTF-8, 120,000 bytes as SOONER_DATA carries it (\\u00e9)
    with pytest.raises(InvalidData, match=f"is 120002 bytes as JSON, at most {MAX_RUN_DATA_BYTES}"):
        check_run_data(big, "data")
    assert check_data(big, "data", max_bytes=MAX_QUEUE_DATA_BYTES) == big
    assert load_json(json.dumps(big), "data") == big
