"""The monitoring charts: the JSON endpoints behind them over a real HTTP server, the run page's usage facts,
and one headless Chromium check that the workers page draws its charts with no console error."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import timedelta
from typing import Any

import pytest

from conftest import require_chromium, served, signed_in
from sooner.model import ManualTrigger, RunStatus
from sooner.model.run import RunUsage
from sooner.model.sample import Sample, SampleKind
from sooner.runs.service import RunService
from sooner.webapp.context import EXTENSION
from sooner.webapp.testing import launch_chromium, sign_in
from sooner.worker.testing import deploy_files

MB = 1 << 20


@pytest.fixture
def seeded(mock_web_app) -> dict[str, Any]:
    """Worker w1 with 20 minutes of host and process samples, queue samples, and a finished run with its own."""
    app, _, _ = mock_web_app
    store = app.extensions[EXTENSION].store
    now = store.clock.now()
    store.workers.register("w1", instance="i1", host="box", pid=1, capacity=2, tags=[], version="0", stale_after_s=30,
                           now=now)
    times = [now - timedelta(seconds=5 * i) for i in range(240, 0, -1)]
    store.samples.insert([Sample(SampleKind.HOST, "w1", t, cpu_percent=40.0, rss_bytes=3000 * MB, mem_used_percent=37.5,
                                 load1=0.5) for t in times])
    store.samples.insert([Sample(SampleKind.WORKER, "w1", t, cpu_percent=2.5, rss_bytes=80 * MB) for t in times])
    store.samples.insert([Sample(SampleKind.QUEUE, "", t, depth=i % 4, running=1) for i, t in enumerate(times)])
    deploy_files(store, {"hungry.sh": "#!/bin/sh\n"})
    service = RunService(store)
    run = service.queue("hungry.sh", ManualTrigger(author="admin"))
    assert run is not None and service.take(run.id, "w1", lease_s=60) is not None
    store.runs.mark_started(run.id, pid=1, commit=None, now=now - timedelta(seconds=30))
    store.samples.insert([Sample(SampleKind.RUN, run.id, now - timedelta(seconds=s), cpu_percent=95.0,
                                 rss_bytes=(60 - s) * MB) for s in (25, 20, 15, 10)])
    service.finish(run.id, RunStatus.SUCCEEDED, exit_code=0, usage=RunUsage(peak_rss_bytes=52 * MB, cpu_s=12.25))
    token, _ = store.tokens.create("admin")
    return {"app": app, "store": store, "run": run.id, "now": now, "auth": {"Authorization": f"Bearer {token}"}}


@pytest.fixture(scope="module")
def chromium_ok() -> None:
    """Headless Chromium can start (a failure under CI, a skip elsewhere, with the reason)."""
    require_chromium()


def get(url: str, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_the_fleet_endpoint_has_the_last_hour_and_then_only_newer_samples(seeded):
    store, auth, now = seeded["store"], seeded["auth"], seeded["now"]
    with served(seeded["app"]) as base:
        # when the workers page first asks, it gets the last hour of every series
        status, body = get(f"{base}/api/v1/workers/samples", auth)
        assert status == 200, body
        (w1,) = body["workers"]
        assert w1["name"] == "w1" and len(w1["host"]) == len(w1["process"]) == 240
        assert w1["host"][-1] == {"t": round(now.timestamp() - 5, 3), "cpu_percent": 40.0, "rss_bytes": 3000 * MB,
                                  "mem_used_percent": 37.5, "load1": 0.5}
        assert len(body["queue"]) == 240 and {"depth", "running"} <= set(body["queue"][0])
        # runs per minute covers the whole hour, with the run that finished in the last minute
        assert len(body["runs_per_minute"]) == 61 and body["runs_per_minute"][-1]["runs"] == 1
        assert sum(m["runs"] for m in body["runs_per_minute"]) == 1 and body["runs_per_minute_capped"] is False
        # when it polls with the newest time it has, it gets only what came later
        store.samples.insert([Sample(SampleKind.HOST, "w1", now, cpu_percent=90.0)])
        status, body = get(f"{base}/api/v1/workers/samples?since={now.timestamp() - 5}", auth)
        assert [s["cpu_percent"] for s in body["workers"][0]["host"]] == [90.0] and body["workers"][0]["process"] == []


def test_one_workers_and_one_runs_samples_and_what_is_refused(seeded):
    auth, run_id = seeded["auth"], seeded["run"]
    with served(seeded["app"]) as base:
        status, body = get(f"{base}/api/v1/workers/w1/samples", auth)
        assert status == 200 and body["name"] == "w1" and len(body["host"]) == 240
        status, body = get(f"{base}/api/v1/runs/{run_id}/samples", auth)
        assert status == 200, body
        assert (body["peak_rss_bytes"], body["cpu_s"], body["status"]) == (52 * MB, 12.25, "succeeded")
        assert [s["rss_bytes"] for s in body["samples"]] == [35 * MB, 40 * MB, 45 * MB, 50 * MB]
        # an unknown worker or run is a 404, a bad since a 400 naming it, and nothing answers without a token
        assert get(f"{base}/api/v1/workers/nobody/samples", auth)[0] == 404
        assert get(f"{base}/api/v1/runs/ffffffffffffffffffffffff/samples", auth)[0] == 404
        status, body = get(f"{base}/api/v1/workers/samples?since=yesterday", auth)
        assert status == 400 and "since" in body["error"]["details"]
        assert get(f"{base}/api/v1/workers/samples", {})[0] == 401


def test_the_run_page_shows_peak_memory_and_cpu_time_and_where_its_chart_reads(seeded):
    client = signed_in(seeded["app"], "admin", "admin-password")
    page = client.get(f"/runs/{seeded['run']}").text
    assert '<dd id="run-peak-rss">52.0 MiB</dd>' in page and '<dd id="run-cpu-s">12.25 s</dd>' in page
    assert f'data-samples-url="/api/v1/runs/{seeded["run"]}/samples"' in page
    assert "vendor/uPlot.iife.min.js" in page and "cdn" not in page.lower()


def test_the_run_page_says_why_a_run_has_no_samples(seeded):
    # A run that ended within its first second has none and never will: "yet" would mislead.
    store = seeded["store"]
    service = RunService(store)
    quick = service.queue("hungry.sh", ManualTrigger(author="admin"))
    assert quick is not None and service.take(quick.id, "w1", lease_s=60) is not None
    store.runs.mark_started(quick.id, pid=1, commit=None, now=seeded["now"])
    client = signed_in(seeded["app"], "admin", "admin-password")
    running = client.get(f"/runs/{quick.id}").text
    assert "No samples of its processes yet" in running and "ended before its first sample" not in running
    service.finish(quick.id, RunStatus.SUCCEEDED, exit_code=0)
    ended = client.get(f"/runs/{quick.id}").text
    assert "the run ended before its first sample" in ended and "samples of its processes yet" not in ended


@pytest.mark.browser
def test_the_workers_page_draws_its_charts_in_headless_chromium(chromium_ok, seeded):
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with served(seeded["app"]) as base, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(15_000)
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            sign_in(page, base, "admin", "admin-password")
            # when the workers page loads, then its charts are drawn from the samples: fleet and w1's
            page.goto(f"{base}/workers")
            page.wait_for_selector("#monitoring[data-updated]")
            page.wait_for_selector('.worker-charts[data-worker="w1"] canvas')
            assert page.locator("#monitoring canvas").count() >= 4
            assert page.locator('.worker-charts[data-worker="w1"] h3').text_content() == "w1"
            assert "Queue depth" in page.locator("#fleet-charts").text_content()
            # and the run page draws its run's chart
            page.goto(f"{base}/runs/{seeded['run']}")
            page.wait_for_selector("#run-usage canvas")
            page.wait_for_function("document.querySelector('#run-usage .empty').hidden")
        finally:
            browser.close()
    assert errors == []


@pytest.mark.browser
def test_a_run_with_a_single_sample_charts_it_on_a_minute_not_years(chromium_ok, seeded):
    from playwright.sync_api import sync_playwright

    store, now = seeded["store"], seeded["now"]
    service = RunService(store)
    run = service.queue("hungry.sh", ManualTrigger(author="admin"))  # a run of two seconds: one sample, at its end
    assert run is not None and service.take(run.id, "w1", lease_s=60) is not None
    store.runs.mark_started(run.id, pid=1, commit=None, now=now - timedelta(seconds=2))
    store.samples.insert([Sample(SampleKind.RUN, run.id, now, cpu_percent=0.0, rss_bytes=5 * MB)])
    service.finish(run.id, RunStatus.SUCCEEDED, exit_code=0)
    with served(seeded["app"]) as base, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(15_000)
            sign_in(page, base, "admin", "admin-password")
            page.goto(f"{base}/runs/{run.id}")
            page.wait_for_selector("#run-usage canvas")
            page.wait_for_selector("#run-usage .empty", state="hidden")
            span = page.evaluate("(() => { const x = document.querySelector('#run-usage .usage-chart').chart.scales.x;"
                                 " return x.max - x.min; })()")
        finally:
            browser.close()
    assert 0 < span <= 120, span  # seconds on the time axis around the one sample (was about two and a half years)

