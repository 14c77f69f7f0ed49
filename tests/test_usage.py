"""Usage counters (issue #11): a job's runs by trigger type, API token and webhook hook, in the API and on the
job page. Runs are started the real ways (both APIs with tokens, a session, a signed webhook delivery, by hand)
over a real HTTP server, and counted on read from ``runs``."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
import requests

from conftest import served, signed_in
from sooner.config import load_settings
from sooner.model import ManualTrigger
from sooner.runs.service import RunService

JOB, OTHER = "reports/daily.sh", "etl/load.py"


@pytest.fixture
def store(mock_store, fast_passwords):
    mock_store.users.add("ann", "ann-password", admin=True)
    for name in (JOB, OTHER):
        mock_store.jobs.record_deployed(name, commit="c" * 40, blob="b" * 40)
        mock_store.jobs.set_enabled(name, True)
    mock_store.hooks.create("github", "ship-it", JOB, secret="s" * 32, by="ann")
    return mock_store


@pytest.fixture
def app(store):
    from sooner.webapp import create_app

    settings = load_settings(None, environ={}, overrides={"secret_key": "k" * 40, "mongo_url": store.url})
    app, _ = create_app(settings, store, live=False)
    app.config["TESTING"] = True
    return app


def token(store, name: str) -> tuple[str, str]:
    """A new API token of ann: (its text, its id)."""
    text, doc = store.tokens.create("ann", name)
    return text, doc["_id"]


def deliver(base: str, delivery: str) -> requests.Response:
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    signature = hmac.new(b"s" * 32, body, hashlib.sha256).hexdigest()
    return requests.post(f"{base}/hooks/github/ship-it", data=body, timeout=10, headers={
        "Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": f"sha256={signature}"})


def test_runs_started_each_way_are_counted_by_trigger_token_and_hook(store, app):
    ci_text, ci_id = token(store, "ci")
    bot_text, bot_id = token(store, "bot")
    with served(app) as base:
        # given runs started through the v1 API (ci twice), the old API (bot), a session, a webhook, by hand
        for _ in range(2):
            started = requests.post(f"{base}/api/v1/jobs/{JOB}/runs", json={}, timeout=10,
                                    headers={"Authorization": f"Bearer {ci_text}"})
            assert started.status_code == 201, started.text
        old = requests.post(f"{base}/api/jobs/{JOB}/runs", json={}, timeout=10,
                            headers={"Authorization": f"Bearer {bot_text}"})
        assert old.status_code == 201, old.text
        client = signed_in(app, "ann", "ann-password")
        by_session = client.post(f"/api/v1/jobs/{JOB}/runs", json={}, headers={"X-CSRF-Token": client.csrf})
        assert by_session.status_code == 201, by_session.text
        delivered = deliver(base, "delivery-1")
        assert delivered.status_code == 202, delivered.text
        RunService(store).queue(JOB, ManualTrigger(author="ann"))
        RunService(store).queue(OTHER, ManualTrigger(author="ann"))
        # when the usage is asked for over HTTP
        answer = requests.get(f"{base}/api/v1/jobs/{JOB}/usage", timeout=10,
                              headers={"Authorization": f"Bearer {ci_text}"})
        page = client.get(f"/jobs/{JOB}")
    # then the API token that started each api run is recorded and counted, with its name
    assert answer.status_code == 200, answer.text
    usage = answer.json()
    assert usage["job"] == JOB and usage["total"] == 6 and usage["since"] is None
    assert usage["triggers"] == {"api": 4, "manual": 1, "webhook": 1}
    assert usage["tokens"] == [{"token": ci_id, "name": "ci", "runs": 2}, {"token": bot_id, "name": "bot", "runs": 1},
                               {"token": None, "name": None, "runs": 1}]
    assert usage["hooks"] == [{"hook": "ship-it", "runs": 1}]
    # and the job page shows the same counts
    assert page.status_code == 200
    assert 'id="usage"' in page.text and "6 runs in all" in page.text
    assert f'<span class="mono meta">{ci_id}</span> 2' in page.text and "no token (signed in) 1" in page.text
    assert '<span class="mono">ship-it</span> 1' in page.text


def test_usage_since_counts_only_later_runs_and_bad_input_is_a_clear_400(store, app):
    text, _ = token(store, "ci")
    RunService(store).queue(JOB, ManualTrigger(author="ann"))
    headers = {"Authorization": f"Bearer {text}"}
    with served(app) as base:
        later = requests.get(f"{base}/api/v1/jobs/{JOB}/usage", params={"since": "2999-01-01T00:00:00Z"},
                             headers=headers, timeout=10)
        earlier = requests.get(f"{base}/api/v1/jobs/{JOB}/usage", params={"since": "2000-01-01T00:00:00+00:00"},
                               headers=headers, timeout=10)
        bad = requests.get(f"{base}/api/v1/jobs/{JOB}/usage", params={"since": "yesterday"}, headers=headers, timeout=10)
        missing = requests.get(f"{base}/api/v1/jobs/nope.sh/usage", headers=headers, timeout=10)
        anonymous = requests.get(f"{base}/api/v1/jobs/{JOB}/usage", timeout=10)
    assert later.status_code == 200 and later.json()["total"] == 0 and later.json()["triggers"] == {}
    assert later.json()["since"].startswith("2999-01-01")
    assert earlier.json()["total"] == 1
    assert bad.status_code == 400 and "since" in bad.json()["error"]["details"]
    assert missing.status_code == 404 and "nope.sh" in missing.json()["error"]["message"]
    assert anonymous.status_code == 401


def test_the_usage_and_waiting_endpoints_are_in_the_valid_openapi_document(app):
    from openapi_spec_validator import validate

    client = signed_in(app, "ann", "ann-password")
    spec = client.get("/api/v1/openapi.json").json
    validate(spec)
    assert "/api/v1/jobs/{name}/usage" in spec["paths"]
    assert "/api/v1/runs/{run_id}/waiting" in spec["paths"]


def test_a_revoked_token_still_counts_without_a_name(store, app):
    text, token_id = token(store, "gone")
    with served(app) as base:
        started = requests.post(f"{base}/api/v1/jobs/{JOB}/runs", json={}, timeout=10,
                                headers={"Authorization": f"Bearer {text}"})
        assert started.status_code == 201
        store.tokens.revoke(token_id)
        reader, _ = token(store, "reader")
        usage = requests.get(f"{base}/api/v1/jobs/{JOB}/usage", headers={"Authorization": f"Bearer {reader}"},
                             timeout=10).json()
    assert usage["tokens"] == [{"token": token_id, "name": None, "runs": 1}]
