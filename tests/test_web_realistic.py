"""Every page renders with realistic data on the embedded database (500 jobs, 10,000 runs, a
5,000-chunk run, 300 events, 100 deploys, 20 workers). Page times are measured by bench/pages.py,
not asserted here."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from sooner.config import load_settings
from sooner.webapp import create_app
from sooner.webapp.testing import seed_realistic_data

from conftest import signed_in

pytestmark = pytest.mark.slow


def page_urls(ids: dict) -> list[str]:
    return ["/", "/jobs", "/jobs?show=failing", f"/jobs/{ids['job']}", f"/runs/{ids['run']}",
            f"/runs/{ids['run']}/output?before=2000", "/runs", "/runs?status=failed", "/workers", "/events",
            "/deploys", "/api/jobs"]


def signed_in_client(store, monkeypatch):
    monkeypatch.setattr("sooner.store.users._passwords", PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))
    settings = load_settings(None, environ={}, overrides={"secret_key": "k" * 40, "mongo_url": store.url,
                                                          "database": store.database_name})
    app, _ = create_app(settings, store, live=False)
    app.extensions["sooner"].stats.warm(job.name for job in store.jobs.list())  # what serve() does at start
    store.users.add("admin", "page-password", admin=True)
    return signed_in(app, "admin", "page-password")


def test_every_page_renders_with_realistic_data(embedded_store, monkeypatch):
    ids = seed_realistic_data(embedded_store)
    client = signed_in_client(embedded_store, monkeypatch)
    api_token, _ = embedded_store.tokens.create("admin")
    for url in page_urls(ids):
        headers = {"Authorization": f"Bearer {api_token}"} if url.startswith("/api/") else {}
        response = client.get(url, headers=headers)
        assert response.status_code == 200, (url, response.status_code)
    jobs_page = client.get("/jobs").text
    assert "team0/job000.sh" in jobs_page and "team24/job499.sh" in jobs_page
    run_page = client.get(f"/runs/{ids['run']}").text
    assert "line 4999 " in run_page  # the newest output is embedded in the page
    assert len(client.get("/api/jobs", headers={"Authorization": f"Bearer {api_token}"}).json["jobs"]) == 500
