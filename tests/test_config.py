"""Configuration: config.json, SOONER_* overrides, site discovery and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sooner.config import Settings, config_keys, find_config, load_settings
from sooner.errors import ConfigError
from sooner.store import open_store

from conftest import ROOT, run_sooner


def write_config(tmp_path: Path, data: object | str) -> Path:
    path = tmp_path / "config.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_defaults_apply_when_config_is_empty(tmp_path):
    settings = load_settings(write_config(tmp_path, {}), environ={})
    assert settings.branch == "main"
    assert settings.mongo_url is None
    assert settings.site_dir == tmp_path


def test_environment_overrides_config_file(tmp_path):
    path = write_config(tmp_path, {"web_port": 9000, "heartbeat_s": 1})
    settings = load_settings(path, environ={"SOONER_WEB_PORT": "9100", "SOONER_MONGO_URL": "mongomock://x"})
    assert settings.web_port == 9100
    assert settings.heartbeat_s == 1.0
    assert settings.mongo_url == "mongomock://x"


def test_overrides_beat_environment(tmp_path):
    path = write_config(tmp_path, {})
    settings = load_settings(path, environ={"SOONER_WEB_PORT": "9100"}, overrides={"web_port": 9200})
    assert settings.web_port == 9200


@pytest.mark.parametrize("content, expected", [
    ("{not json", "invalid JSON at line 1 column 2"),
    ("[]", "must hold a JSON object"),
    ({"web_prot": 1}, "unknown setting (did you mean 'web_port'?)"),
    ({"web_port": "8080"}, "key 'web_port': must be a whole number, got \"8080\""),
    ({"web_port": True}, "key 'web_port': must be a whole number"),
    ({"web_port": 70000}, "key 'web_port': must be a port number"),
    ({"heartbeat_s": -1}, "key 'heartbeat_s': must be a finite number of seconds from 0.1 to 3600, got -1"),
    ({"lease_s": 1, "heartbeat_s": 2}, "key 'lease_s': must be longer than heartbeat_s"),
    ({"mongo_url": "postgres://x"}, "key 'mongo_url': must start with mongodb://"),
    ({"log_level": "loud"}, "key 'log_level': must be one of"),
    ({"database": "a.b"}, "key 'database': must be a valid MongoDB database name"),
])
def test_bad_config_names_file_key_and_problem(tmp_path, content, expected):
    path = write_config(tmp_path, content)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_bad_environment_value_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match="SOONER_WEB_PORT: must be a whole number, got 'eighty'"):
        load_settings(write_config(tmp_path, {}), environ={"SOONER_WEB_PORT": "eighty"})


def test_comment_keys_are_allowed(tmp_path):
    settings = load_settings(write_config(tmp_path, {"_comment": "hello", "branch": "prod"}), environ={})
    assert settings.branch == "prod"


def test_site_is_found_from_a_subdirectory(site):
    nested = site / "scripts-working-copy"
    assert find_config(nested, environ={}) == site / "config.json"


def test_unrelated_config_json_is_not_taken_for_a_site(tmp_path):
    write_config(tmp_path, {"something": "else"})
    assert find_config(tmp_path, environ={}) is None


def test_sooner_config_variable_wins(tmp_path, site):
    assert find_config(tmp_path, environ={"SOONER_CONFIG": str(site / "config.json")}) == site / "config.json"


def test_example_config_documents_every_key():
    example = json.loads((ROOT / "config.example.json").read_text())
    keys = {k for k in example if not k.startswith("_")}
    assert keys == {f.name for f in config_keys()}
    readme = (ROOT / "README.md").read_text()
    for f in config_keys():
        assert f"`{f.name}`" in readme, f"README does not document {f.name}"


def test_cli_reports_bad_config_in_one_line_without_traceback(tmp_path):
    (tmp_path / ".sooner").mkdir()
    write_config(tmp_path, '{"web_port": 80,}')
    result = run_sooner("jobs", cwd=tmp_path, env={"SOONER_CONFIG": ""})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "config.json" in lines[0] and "invalid JSON" in lines[0]


def test_cli_reports_unreachable_database_clearly(tmp_path):
    (tmp_path / ".sooner").mkdir()
    write_config(tmp_path, {"mongo_url": "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300"})
    result = run_sooner("jobs", cwd=tmp_path, env={"SOONER_CONFIG": ""})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "cannot reach the database at mongodb://127.0.0.1:1" in result.stderr


def test_cli_without_site_says_how_to_make_one(tmp_path):
    result = run_sooner("jobs", cwd=tmp_path, env={"SOONER_CONFIG": "", "SOONER_MONGO_URL": ""})
    assert result.returncode == 1
    assert "sooner init" in result.stderr


def test_settings_without_site_refuse_site_paths():
    with pytest.raises(ConfigError, match="needs a Sooner site"):
        Settings().repo_path


# -- numbers: finite and in range, and the error names where the value came from ------------------
FLOAT_KEYS = ("heartbeat_s", "lease_s", "cancel_grace_s", "shutdown_grace_s")
HOSTILE_NUMBERS = {"nan": "NaN", "inf": "Infinity", "-1": "-1", "1e309": "1e309"}  # env text: JSON text


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("text", list(HOSTILE_NUMBERS))
def test_a_non_finite_or_negative_seconds_setting_in_config_json_is_refused(tmp_path, key, text):
    # given config.json with NaN, Infinity, -1 or 1e309 (which JSON reads as infinity)
    path = write_config(tmp_path, f'{{"{key}": {HOSTILE_NUMBERS[text]}}}')
    # when it is loaded, then the error names the file, the key and the rule
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    message = str(info.value)
    assert message.startswith(f"{path}, key '{key}': must be a finite number"), message


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("text", list(HOSTILE_NUMBERS))
def test_a_non_finite_or_negative_seconds_setting_in_the_environment_names_the_variable(tmp_path, key, text):
    # given a valid config.json and a hostile SOONER_* variable
    path = write_config(tmp_path, {})
    variable = f"SOONER_{key.upper()}"
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={variable: text})
    message = str(info.value)
    # then the variable is blamed, not config.json
    assert message.startswith(f"{variable}={text}: {key} must be a finite number"), message
    assert "config.json" not in message


@pytest.mark.parametrize("content, expected", [
    ({"heartbeat_s": 0.01}, "key 'heartbeat_s': must be a finite number of seconds from 0.1 to 3600, got 0.01"),
    ({"heartbeat_s": 7200, "lease_s": 9000}, "key 'heartbeat_s': must be a finite number of seconds from 0.1 to 3600"),
    ({"lease_s": 1e6}, "key 'lease_s': must be a finite number of seconds more than 0 and at most 86400, got 1e+06"),
    ({"heartbeat_s": 10 ** 400}, "key 'heartbeat_s': must be a finite number of seconds from 0.1 to 3600, got 1000"),
    ({"shutdown_grace_s": 1e9}, "key 'shutdown_grace_s': must be a finite number of seconds from 0 to 86400"),
    ({"worker_capacity": 0}, "key 'worker_capacity': must be a whole number from 1 to 1000, got 0"),
    ({"worker_capacity": 10 ** 30}, "key 'worker_capacity': must be a whole number from 1 to 1000, got 1000000000"),
    ({"output_flush_ms": 0}, "key 'output_flush_ms': must be a whole number from 1 to 60000"),
    ({"chain_depth_limit": 10 ** 6}, "key 'chain_depth_limit': must be a whole number from 1 to 1000"),
    ({"max_file_bytes": 2 ** 40}, "key 'max_file_bytes': must be a whole number from 1 to 15728640"),
    ({"web_trusted_proxies": -1}, "key 'web_trusted_proxies': must be a whole number from 0 to 10"),
])
def test_numbers_out_of_range_in_config_json_name_the_key_and_the_range(tmp_path, content, expected):
    path = write_config(tmp_path, content)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert f"{path}, {expected}" in str(info.value)


@pytest.mark.parametrize("variable, text, expected", [
    ("SOONER_WORKER_CAPACITY", "0", "SOONER_WORKER_CAPACITY=0: worker_capacity must be a whole number from 1 to 1000"),
    ("SOONER_WORKER_CAPACITY", "9" * 31,
     "SOONER_WORKER_CAPACITY=999999999999…: worker_capacity must be a whole number from 1 to 1000"),
    ("SOONER_WEB_PORT", "0", "SOONER_WEB_PORT=0: web_port must be a port number 1-65535"),
    ("SOONER_WEB_PORT", "1" * 5000, "SOONER_WEB_PORT=111111111111…: web_port must be a port number 1-65535"),
    ("SOONER_OUTPUT_FLUSH_MS", "-5", "SOONER_OUTPUT_FLUSH_MS=-5: output_flush_ms must be a whole number from 1"),
    ("SOONER_HEARTBEAT_S", "", "SOONER_HEARTBEAT_S: must be a number, got ''"),
])
def test_numbers_out_of_range_in_the_environment_name_the_variable(tmp_path, variable, text, expected):
    with pytest.raises(ConfigError) as info:
        load_settings(write_config(tmp_path, {}), environ={variable: text})
    assert str(info.value).startswith(expected), str(info.value)
    assert "config.json" not in str(info.value)


def test_lease_shorter_than_heartbeat_names_both_sources(tmp_path):
    # given heartbeat_s from config.json and lease_s from the environment
    path = write_config(tmp_path, {"heartbeat_s": 5})
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={"SOONER_LEASE_S": "3"})
    # then the variable is blamed and the heartbeat's origin is named
    assert str(info.value) == f"SOONER_LEASE_S=3: lease_s must be longer than heartbeat_s (5 from {path})"


def test_lease_shorter_than_a_default_heartbeat_says_so(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(write_config(tmp_path, {"lease_s": 1}), environ={})
    assert str(info.value).endswith("key 'lease_s': must be longer than heartbeat_s (2 by default)")


def test_a_bad_override_names_its_flag(tmp_path):
    path = write_config(tmp_path, {})
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={}, overrides={"lease_s": float("nan")}, flags={"lease_s": "--lease"})
    assert str(info.value) == "--lease=nan: lease_s must be a finite number of seconds more than 0 and at most 86400"
    with pytest.raises(ConfigError, match=r"^--worker-capacity=0: worker_capacity must be"):
        load_settings(path, environ={}, overrides={"worker_capacity": 0})


def test_an_environment_value_is_blamed_even_without_a_config_file():
    with pytest.raises(ConfigError, match=r"^SOONER_HEARTBEAT_S=inf: heartbeat_s must be a finite number"):
        load_settings(None, environ={"SOONER_HEARTBEAT_S": "inf"})


@pytest.mark.parametrize("content, expected", [
    ("[" * 5000 + "]" * 5000, "nested too deeply"),
    ('{"web_port": ' + "9" * 5000 + "}", "integer 999999999999… has too many digits"),
])
def test_hostile_json_in_config_json_is_a_config_error(tmp_path, content, expected):
    path = write_config(tmp_path, content)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert str(path) in str(info.value) and expected in str(info.value)


def test_valid_settings_at_the_edges_of_their_ranges_load(tmp_path):
    path = write_config(tmp_path, {"heartbeat_s": 0.1, "lease_s": 86400, "cancel_grace_s": 0, "shutdown_grace_s": 0,
                                   "worker_capacity": 1000, "web_trusted_proxies": 10, "max_file_bytes": 15 * 2 ** 20})
    settings = load_settings(path, environ={"SOONER_OUTPUT_FLUSH_MS": "60000", "SOONER_CHAIN_DEPTH_LIMIT": "1000"})
    assert (settings.heartbeat_s, settings.lease_s, settings.output_flush_ms) == (0.1, 86400.0, 60000)


@pytest.mark.parametrize("env, blamed", [
    ({"SOONER_HEARTBEAT_S": "nan"}, "SOONER_HEARTBEAT_S=nan: heartbeat_s must be a finite number"),
    ({"SOONER_HEARTBEAT_S": "inf"}, "SOONER_HEARTBEAT_S=inf: heartbeat_s must be a finite number"),
    ({"SOONER_LEASE_S": "1e309"}, "SOONER_LEASE_S=1e309: lease_s must be a finite number"),
    ({"SOONER_SHUTDOWN_GRACE_S": "-1"}, "SOONER_SHUTDOWN_GRACE_S=-1: shutdown_grace_s must be a finite number"),
])
def test_a_worker_never_starts_with_hostile_timing_settings(site, env, blamed):
    # given a site and a hostile SOONER_* variable
    result = run_sooner("worker", "-n", "w1", cwd=site, env=env, timeout=30)
    # then the worker refuses to start, in one line, and never registers
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sooner: error: {blamed}"), result.stderr
    assert "ready" not in result.stdout
    store = open_store(load_settings(site / "config.json", environ={}))
    try:
        assert store.workers.list() == []
    finally:
        store.close()


def test_a_worker_never_starts_with_nan_in_config_json(site):
    config = json.loads((site / "config.json").read_text())
    (site / "config.json").write_text(json.dumps({**config, "heartbeat_s": float("nan")}))  # json writes NaN
    result = run_sooner("worker", "-n", "w1", cwd=site, timeout=30)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"sooner: error: {site / 'config.json'}, key 'heartbeat_s': must be a finite number of seconds "
        f"from 0.1 to 3600, got nan"]


def test_a_bad_mongo_url_in_the_environment_never_shows_its_password(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(write_config(tmp_path, {}), environ={"SOONER_MONGO_URL": "pg://u:pw@h"})
    assert str(info.value).startswith("SOONER_MONGO_URL=pg://***@h: mongo_url must start with mongodb://")
    assert "pw" not in str(info.value)
