"""Configuration: config.json, SOONER_* overrides, site discovery and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sooner.config import Settings, config_keys, find_config, load_settings
from sooner.errors import ConfigError

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
    ({"heartbeat_s": -1}, "key 'heartbeat_s': must be greater than 0"),
    ({"lease_s": 1, "heartbeat_s": 2}, "key 'lease_s': must be longer than heartbeat_s"),
    ({"mongo_url": "postgres://x"}, "key 'mongo_url': must start with mongodb://"),
    ({"log_level": "loud"}, "key 'log_level': must be one of"),
    ({"database": "a.b"}, "key 'database': not a valid MongoDB database name"),
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
