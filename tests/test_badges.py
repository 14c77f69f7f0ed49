"""Status badges: /badge/<job>.svg per state, parsed as XML; public only for jobs with public_badge."""

from __future__ import annotations

import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from types import SimpleNamespace
from urllib.parse import quote

import pytest

from conftest import served, run_sooner, signed_in
from sooner.clock import FakeClock, utcnow
from sooner.config import load_settings
from sooner.model import ManualTrigger, RunStatus
from sooner.model.job_settings import InvalidJobSetting, settings_changes
from sooner.store import Store
from sooner.webapp import create_app
from sooner.worker.testing import deploy_files

SVG = "{http://www.w3.org/2000/svg}"
ODD = 'odd/<b>&"quote".sh'


@pytest.fixture
def web(embedded_store, fast_passwords):
    clock = FakeClock(utcnow())
    store = Store(embedded_store.url, embedded_store.database_name, clock=clock)
    settings = load_settings(None, environ={}, overrides={
        "secret_key": "k" * 40, "mongo_url": store.url, "database": store.database_name})
    deploy_files(store, {"public.sh": "#!/bin/sh\n", "private.sh": "#!/bin/sh\n", ODD: "#!/bin/sh\n"},
                 settings={"public.sh": {"public_badge": True}, ODD: {"public_badge": True}})
    store.users.add("viewer", "viewer-password")
    app, _ = create_app(settings, store, live=False)
    app.config["TESTING"] = True
    with served(app) as base:
        yield SimpleNamespace(base=base, clock=clock, store=store, app=app, service=app.extensions["sooner"].runs)
    store.close()


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=20) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def badge_of(web, job: str) -> tuple[str, str]:
    """(state, message text) of the job's badge, fetched anonymously from the real server and parsed as XML."""
    status, headers, body = fetch(f"{web.base}/badge/{quote(job)}.svg")
    assert status == 200, body
    assert headers["Content-Type"].startswith("image/svg+xml")
    assert headers["Cache-Control"] == "public, max-age=30"
    root = ET.fromstring(body)
    assert root.tag == f"{SVG}svg"
    texts = root.findall(f".//{SVG}text")
    assert texts[0].text == job
    return texts[1].get("data-state"), texts[1].text


def test_a_badge_shows_never_run_running_passing_and_failing(web):
    assert badge_of(web, "public.sh") == ("never_run", "never run")
    run = web.service.queue("public.sh", ManualTrigger())
    assert badge_of(web, "public.sh")[0] == "running"  # queued counts as running
    assert web.service.take(run.id, "w1", 30) is not None
    assert badge_of(web, "public.sh")[0] == "running"
    web.clock.advance(60)
    web.service.finish(run.id, RunStatus.SUCCEEDED, exit_code=0)
    state, text = badge_of(web, "public.sh")
    assert state == "passing" and text.startswith("passing · ") and text.endswith(" UTC")
    second = web.service.queue("public.sh", ManualTrigger())
    web.service.take(second.id, "w1", 30)
    web.service.finish(second.id, RunStatus.FAILED, exit_code=3)
    assert badge_of(web, "public.sh")[0] == "failing"


def test_odd_job_names_are_escaped_in_the_svg(web):
    state, _ = badge_of(web, ODD)  # parses as XML, and the name reads back as it is
    assert state == "never_run"
    _, _, body = fetch(f"{web.base}/badge/{quote(ODD)}.svg")
    assert b"<b>" not in body


def test_a_private_badge_is_404_for_anonymous_and_shown_to_signed_in_users(web):
    status, _, _ = fetch(f"{web.base}/badge/private.sh.svg")
    assert status == 404
    assert fetch(f"{web.base}/badge/nothing.sh.svg")[0] == 404  # the same answer as a job that does not exist
    client = signed_in(web.app, "viewer", "viewer-password")
    answer = client.get("/badge/private.sh.svg")
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "private, max-age=30"
    ET.fromstring(answer.data)


def test_public_badge_is_a_yes_no_job_setting(web):
    job = web.store.jobs.get("private.sh")
    assert settings_changes(job, {"public_badge": "yes"}) == {"public_badge": True}
    with pytest.raises(InvalidJobSetting, match="public_badge"):
        settings_changes(job, {"public_badge": "maybe"})


def test_sooner_job_set_public_badge(site):
    from sooner.store import open_store

    store = open_store(load_settings(site / "config.json", environ={}))
    try:
        deploy_files(store, {"hello.sh": "#!/bin/sh\n"})
    finally:
        store.close()
    changed = run_sooner("job", "set", "hello.sh", "--public-badge", "yes", cwd=site)
    assert changed.returncode == 0 and "public_badge=True" in changed.stdout, changed.stderr
    shown = run_sooner("job", "show", "hello.sh", cwd=site)
    assert "badge:     public" in shown.stdout
