"""``sooner user …`` and ``sooner token …`` (in-process, on mongomock), the RunStats cache, and ``sooner web``
refusing an address that is taken (a real process and a real socket)."""

from __future__ import annotations

import itertools
import os
import socket

import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner

from sooner.cli import main
from sooner.errors import SoonerError
from sooner.model import ManualTrigger, RunStatus
from sooner.runs.service import RunService
from sooner.store import Store
from sooner.webapp.server import check_can_listen
from sooner.webapp.stats import RunStats

from conftest import run_sooner

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


# --- `sooner web` on an address that is taken ---------------------------------------------------------------------

@pytest.fixture
def taken_port():
    """A port on 127.0.0.1 that a real listening socket of this test holds."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    yield holder.getsockname()[1]
    holder.close()


def test_sooner_web_on_a_taken_port_fails_with_one_line_before_claiming_anything(taken_port, tmp_path):
    # given a port another server listens on; when `sooner web` is started on it
    result = run_sooner("web", "--port", str(taken_port), cwd=tmp_path,
                        env={"SOONER_CONFIG": "", "SOONER_MONGO_URL": f"mongomock://web-{os.getpid()}"})
    # then it exits 1 with one clear line, and never said the UI was up
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"sooner: error: 127.0.0.1:{taken_port} is in use (Address already in use): "
        "stop the other server or set web_port"]


def test_the_address_check_passes_once_the_port_is_free_again():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    with pytest.raises(SoonerError, match=rf"127\.0\.0\.1:{port} is in use"):
        check_can_listen("127.0.0.1", port)
    holder.close()
    check_can_listen("127.0.0.1", port)


def test_an_address_that_is_not_this_machine_s_is_named_as_such():
    with pytest.raises(SoonerError, match=r"cannot listen on 192\.0\.2\.1:8080 \(Cannot assign requested address\)"):
        check_can_listen("192.0.2.1", 8080)
