"""`sooner init`, `sooner jobs` and `sooner job show|enable|disable|set` through the real CLI."""

from __future__ import annotations

import json
import stat

import pytest

from sooner.config import load_settings
from sooner.model import Job
from sooner.model.job_settings import InvalidJobSetting, settings_changes
from sooner.store import open_store

from conftest import run_sooner


@pytest.fixture
def site_with_job(site):
    store = open_store(load_settings(site / "config.json", environ={}))
    store.jobs.record_deployed("hello.sh", commit="0123456789abcdef", blob="b1")
    store.jobs.record_deployed("gone.sh", commit="0123456789abcdef", blob="b2")
    store.jobs.mark_deleted("gone.sh", commit="fedcba9876543210")
    store.close()
    return site


def test_init_creates_a_complete_site(tmp_path):
    result = run_sooner("init", str(tmp_path / "s"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    site = tmp_path / "s"
    assert (site / "scripts.git" / "HEAD").read_text().strip() == "ref: refs/heads/main"
    hook = site / "scripts.git" / "hooks" / "post-update"
    assert hook.stat().st_mode & stat.S_IXUSR
    assert str(site / "config.json") in hook.read_text()
    assert stat.S_IMODE((site / "config.json").stat().st_mode) == 0o600
    assert len(json.loads((site / "config.json").read_text())["secret_key"]) >= 32
    assert (site / "scripts-working-copy" / ".git").is_dir()


def test_init_refuses_an_existing_site(site):
    result = run_sooner("init", str(site), cwd=site)
    assert result.returncode == 1
    assert "a site already exists here" in result.stderr


def test_jobs_lists_new_jobs_disabled_and_hides_deleted(site_with_job):
    result = run_sooner("jobs", cwd=site_with_job)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ENABLED", "SCHEDULE", "WORKER", "COMMIT", "LAST", "RUN", "ALERT"]
    assert lines[1].split()[:5] == ["hello.sh", "no", "-", "any", "01234567"]
    assert "gone.sh" not in result.stdout
    assert "gone.sh" in run_sooner("jobs", "--all", cwd=site_with_job).stdout


def test_enable_set_and_show_a_job(site_with_job):
    assert run_sooner("job", "enable", "hello.sh", cwd=site_with_job).returncode == 0
    result = run_sooner("job", "set", "hello.sh", "--schedule", "*/5 * * * *", "--timezone", "Europe/Berlin",
                        "--worker", "vip", "--hook", "data-ready", cwd=site_with_job)
    assert result.returncode == 0, result.stderr
    assert "no worker named or tagged 'vip' is online" in result.stderr
    shown = run_sooner("job", "show", "hello.sh", cwd=site_with_job).stdout
    assert "(enabled)" in shown
    assert "*/5 * * * *" in shown and "Europe/Berlin" in shown and "vip" in shown and "data-ready" in shown
    fires = [line for line in shown.splitlines() if line.startswith("  20")]
    assert len(fires) == 5
    assert all(line.rstrip().endswith(("(+0100)", "(+0200)")) for line in fires)
    listed = run_sooner("jobs", cwd=site_with_job).stdout
    assert "*/5 * * * * (Europe/Berlin)" in listed and "vip" in listed


@pytest.mark.parametrize("args, message", [
    (["--schedule", "*/0 * * *"], "schedule:"),
    (["--schedule", "61 * * * *"], "schedule:"),
    (["--timezone", "Europe/Berln"], "timezone:"),
    (["--hook", "bad event name"], "invalid event name"),
    (["--worker", "a b"], "invalid worker name"),
    ([], "nothing to change"),
])
def test_invalid_job_settings_are_refused_clearly(site_with_job, args, message):
    result = run_sooner("job", "set", "hello.sh", *args, cwd=site_with_job)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_and_deleted_jobs_are_reported(site_with_job):
    missing = run_sooner("job", "enable", "nope.sh", cwd=site_with_job)
    assert missing.returncode == 1 and "no job named 'nope.sh'" in missing.stderr
    deleted = run_sooner("job", "enable", "gone.sh", cwd=site_with_job)
    assert deleted.returncode == 1 and "removed from the repository" in deleted.stderr


def test_no_hook_removes_a_hook(site_with_job):
    run_sooner("job", "set", "hello.sh", "--hook", "a", "--hook", "b", cwd=site_with_job)
    run_sooner("job", "set", "hello.sh", "--no-hook", "a", cwd=site_with_job)
    store = open_store(load_settings(site_with_job / "config.json", environ={}))
    assert store.jobs.get("hello.sh").hooks == ("b",)
    store.close()


def test_version_and_help_work_everywhere(tmp_path):
    assert run_sooner("--version", cwd=tmp_path).stdout.startswith("sooner, version")
    for args in (["--help"], ["job", "--help"], ["job", "set", "--help"], ["db", "--help"], ["init", "--help"]):
        result = run_sooner(*args, cwd=tmp_path)
        assert result.returncode == 0 and "Usage:" in result.stdout


def test_init_with_examples_deploys_them_disabled_with_hooks(tmp_path):
    result = run_sooner("init", "--examples", str(tmp_path / "s"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "created job examples/chain/report.py (disabled)" in result.stdout
    site = tmp_path / "s"
    store = open_store(load_settings(site / "config.json", environ={}))
    try:
        jobs = {job.name: job for job in store.jobs.list()}
        assert {"examples/backup.sh", "examples/chain/extract.sh", "examples/chain/report.py",
                "examples/queues/feed.py", "examples/queues/drain.py"} <= set(jobs)
        assert not any(job.enabled for job in jobs.values())
        assert jobs["examples/chain/report.py"].hooks == ("extract-done",)
        assert (site / "scripts-working-copy" / "examples" / "backup.sh").stat().st_mode & stat.S_IXUSR
    finally:
        store.close()
        from sooner.store.embedded import EmbeddedServer

        EmbeddedServer(site / ".sooner").stop()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e309", "-5", "2592001"])
def test_a_timeout_that_is_not_finite_or_out_of_range_is_one_error_line(site_with_job, value):
    result = run_sooner("job", "set", "hello.sh", "--timeout", value, cwd=site_with_job)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "sooner: error: timeout: must be a finite number of seconds from 0 to 2592000 (30 days), got "), lines


@pytest.mark.parametrize("value, stored", [(0, None), (0.5, 0.5), (2592000, 2592000.0)])
def test_timeouts_at_the_edges_are_accepted(value, stored):
    # settings_changes is what the web form calls too
    assert settings_changes(Job(name="j"), {"timeout_s": value}) == {"timeout_s": stored}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.001, True, "10"])
def test_settings_changes_refuses_a_timeout_that_is_not_a_finite_number_of_seconds(value):
    with pytest.raises(InvalidJobSetting) as info:
        settings_changes(Job(name="j"), {"timeout_s": value})
    assert info.value.key == "timeout"
