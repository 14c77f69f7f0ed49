"""``sooner user …`` and ``sooner token …`` (in-process, on mongomock), plus the RunStats cache."""

from __future__ import annotations

import itertools
import os

import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner

from sooner.cli import main
from sooner.model import ManualTrigger, RunStatus
from sooner.runs.service import RunService
from sooner.store import Store
from sooner.webapp.stats import RunStats

_counter = itertools.count()


@pytest.fixture
def cli(monkeypatch, tmp_path):
    monkeypatch.setattr("sooner.store.users._passwords", PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))
    monkeypatch.chdir(tmp_path)  # no site here: settings come from the environment only
    url = f"mongomock://cli-{os.getpid()}-{next(_counter)}"
    env = {"SOONER_MONGO_URL": url, "SOONER_CONFIG": ""}
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(main, list(args), input=input, env=env, catch_exceptions=False)
    invoke.store = Store(url)
    return invoke


def test_user_add_prompts_twice_and_stores_only_a_hash(cli):
    result = cli("user", "add", "alice", "--admin", input="correct-horse\ncorrect-horse\n")
    assert result.exit_code == 0, result.output
    assert "created web user alice (admin)" in result.output
    user = cli.store.users.get("alice")
    assert user["role"] == "admin" and user["hash"].startswith("$argon2id$") and "correct-horse" not in str(user)
    assert cli.store.users.authenticate("alice", "correct-horse")["_id"] == "alice"


def test_user_add_reads_one_line_with_password_stdin_and_refuses_duplicates(cli):
    assert cli("user", "add", "bob", "--password-stdin", input="s3cret-pass\n").exit_code == 0
    assert cli.store.users.get("bob")["role"] == "viewer"
    again = cli("user", "add", "bob", "--password-stdin", input="other-pass\n")
    assert again.exit_code == 1 and "exists already" in again.output
    short = cli("user", "add", "carol", "--password-stdin", input="short\n")
    assert short.exit_code == 1 and "too short" in short.output


def test_user_list_passwd_role_and_remove(cli):
    cli("user", "add", "dave", "--password-stdin", input="first-password\n")
    assert "dave" in cli("user", "list").output and "viewer" in cli("user", "list").output
    assert cli("user", "passwd", "dave", "--password-stdin", input="second-password\n").exit_code == 0
    assert cli.store.users.authenticate("dave", "second-password")
    assert cli("user", "role", "dave", "admin").exit_code == 0
    assert cli.store.users.get("dave")["role"] == "admin"
    assert cli("user", "remove", "dave").exit_code == 0
    missing = cli("user", "remove", "dave")
    assert missing.exit_code == 1 and "no web user named 'dave'" in missing.output


def test_tokens_are_shown_once_and_can_be_revoked(cli):
    cli("user", "add", "erin", "--password-stdin", input="erin-password\n")
    created = cli("token", "create", "erin", "--name", "ci")
    token = created.stdout.strip()
    assert token.startswith("sooner_")
    assert cli.store.tokens.authenticate(token)["_id"] == "erin"
    listing = cli("token", "list").output
    token_id = token.split("_")[1]
    assert token_id in listing and token not in listing
    assert cli("token", "revoke", token_id).exit_code == 0
    with pytest.raises(Exception, match="invalid API token"):
        cli.store.tokens.authenticate(token)
    assert cli("token", "create", "nobody").exit_code == 1


def test_run_stats_follow_new_runs_and_status_changes(mock_store):
    # given a job whose first run failed
    mock_store.jobs.record_deployed("a.sh", commit="c" * 40, blob="b" * 40)
    service = RunService(mock_store)
    first = service.queue("a.sh", ManualTrigger())
    service.finish(first.id, RunStatus.FAILED)
    stats = RunStats(mock_store, refresh_s=0)
    assert stats.get(["a.sh"])["a.sh"].failing
    # when a second run is queued, then succeeds
    second = service.queue("a.sh", ManualTrigger())
    assert stats.get(["a.sh"])["a.sh"].last.id == second.id
    service.finish(second.id, RunStatus.SUCCEEDED)
    # then the stats follow both changes
    got = stats.get(["a.sh"])["a.sh"]
    assert got.last.status is RunStatus.SUCCEEDED and got.success_rate == 0.5 and not got.failing
