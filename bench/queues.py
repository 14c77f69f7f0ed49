"""Benchmark: the queue browser on 1,000,000 entries (not a test; prints figures).

Fills one queue with N entries (default 1,000,000, inserted 10,000 at a time)
on the embedded nx-27017 server of a site made by `sooner.site.init_site`
(or reuses ``--site DIR`` when its queue already holds N entries), builds the
web app around that store and requests queue pages through Flask's test
client, signed in as an admin: filter + sort combinations, a deep page, a
search. For each it prints p50/p95 of the whole HTTP request (view, queries,
template) over ``--repeat`` requests after one warm-up request (which creates
the sort column's index when needed, reported separately), and the p50 of a
baseline: the plain PyMongo query a script would write for the same page
(same filter, sort, skip and limit; no shaping) — ratio = page / baseline.
Target: every page p95 < 200 ms.

With SOONER_BENCH_MONGO_URL (or SOONER_TEST_MONGO_URL) set, the same runs on
that real MongoDB too (in a scratch database that is dropped afterwards).

    python bench/queues.py [--entries 1000000] [--repeat 15] [--site DIR] [--keep]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from urllib.parse import parse_qsl

from argon2 import PasswordHasher
from bson import ObjectId
from werkzeug.datastructures import MultiDict

import sooner.store.users
from sooner.config import load_settings
from sooner.store.queue_filters import infer_columns, parse_view
from sooner.site import init_site
from sooner.store import Store, open_store
from sooner.webapp import create_app

QUEUE = "bench"
BATCH = 10_000
STATUSES = ["pending"] * 5 + ["working"] + ["done"] * 12 + ["failed"] * 2
START = datetime(2026, 1, 1, tzinfo=timezone.utc)

# (label, query string) — each also runs as a plain PyMongo query for the baseline.
PAGES = [
    ("newest first", ""),
    ("status=pending, newest first", "status=pending"),
    ("status=failed, sort size desc", "status=failed&sort=data.size&dir=desc"),
    ("host = host5, newest first", "f=data.host&op=eq&v=host5"),
    ("size in [1000, 500000), sort size",
     "f=data.size&op=gte&v=1000&f=data.size&op=lt&v=500000&sort=data.size&dir=asc"),
    ("url contains 'page/99', newest", "f=data.url&op=contains&v=page/99"),
    ("created in the last 2 h, newest", "f=createdAt&op=gte&v={recent}"),
    ("status=pending, page 100", "status=pending&page=100"),
    ("status=done, attempts=3, sort url", "status=done&f=data.attempts&op=eq&v=3&sort=data.url&dir=asc"),
    ("search 'host7', newest", "q=host7"),
]


def fill(store: Store, entries: int) -> float:
    """Insert ``entries`` entries in batches; returns the seconds it took."""
    queue = store.queues(QUEUE)
    queue._ensure_indexes()
    rng = random.Random(1)
    started = time.perf_counter()
    for first in range(0, entries, BATCH):
        docs = []
        for i in range(first, min(entries, first + BATCH)):
            moment = START + timedelta(seconds=i)
            docs.append({"_id": ObjectId(), "status": rng.choice(STATUSES),
                         "data": {"url": f"https://example.com/page/{i}", "host": f"host{i % 97}",
                                  "attempts": i % 5, "size": rng.randint(0, 10 ** 6)},
                         "createdAt": moment, "updatedAt": moment})
        queue.collection.insert_many(docs, ordered=False)
        if first and first % 100_000 == 0:
            print(f"  {first:,} entries after {time.perf_counter() - started:.0f} s", flush=True)
    return time.perf_counter() - started


def timed(action: Callable[[], Any], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return times


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def signed_in_client(store: Store):
    sooner.store.users._passwords = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
    settings = load_settings(None, environ={}, overrides={"secret_key": "b" * 40, "mongo_url": store.url})
    app, _ = create_app(settings, store, live=False)
    name = f"bench{uuid.uuid4().hex[:6]}"
    store.users.add(name, "bench-password", admin=True)
    client = app.test_client()
    page = client.get("/login")
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
    client.post("/login", data={"username": name, "password": "bench-password", "csrf_token": csrf})
    return client


def baseline(store: Store, query_string: str) -> Callable[[], Any]:
    """The plain PyMongo query for the same page (what the view asks for, unshaped)."""
    queue = store.queues(QUEUE)
    view = parse_view(MultiDict(parse_qsl(query_string)), infer_columns(queue.sample(200))[0])
    query = view.query
    if view.search_branches:
        query = {**query, "$or": list(view.search_branches)}
    return lambda: list(queue.collection.find(query).sort([view.sort_spec]).skip(view.skip).limit(view.per + 1))


def run_pages(store: Store, repeat: int, baseline_timeout_s: float) -> None:
    client = signed_in_client(store)
    recent = (START + timedelta(seconds=store.queues(QUEUE).estimated_count() - 7200)).isoformat()
    print(f"\n{'request':38} {'first ms':>9} {'p50 ms':>8} {'p95 ms':>8} {'raw p50':>9} {'ratio':>6}")
    # The JSON helpers first: a baseline that times out leaves the embedded
    # server evaluating it for a while, which would slow whatever runs next.
    for label, url in [("queue list", "/queues/"), ("stats (cold, then cached)", f"/queues/{QUEUE}/stats"),
                       ("count status=pending (cap 10,000)", f"/queues/{QUEUE}/count?status=pending")]:
        first = timed(lambda url=url: _ok(client.get(url)), 1)[0]
        times = timed(lambda url=url: _ok(client.get(url)), repeat)
        print(f"{label:38} {first:9.1f} {statistics.median(times):8.1f} {p95(times):8.1f}", flush=True)
    for label, query in PAGES:
        query = query.replace("{recent}", recent.replace("+00:00", "Z"))
        url = f"/queues/{QUEUE}?{query}"
        first = timed(lambda url=url: _ok(client.get(url)), 1)[0]
        times = timed(lambda url=url: _ok(client.get(url)), repeat)
        raw = _baseline_p50(store, query, baseline_timeout_s)
        ratio = f"{statistics.median(times) / raw:5.2f}" if raw else "  -"
        raw_text = f"{raw:9.1f}" if raw else f" >{baseline_timeout_s:.0f} s"
        print(f"{label:38} {first:9.1f} {statistics.median(times):8.1f} {p95(times):8.1f} {raw_text:>9} {ratio:>6}",
              flush=True)
    print("first = first request (creates the sort column's index when needed); p50/p95 over the next "
          f"{repeat}; raw = the same query in plain PyMongo (search: one $or), ratio = page p50 / raw p50")


def _baseline_p50(store: Store, query: str, timeout_s: float) -> float | None:
    import pymongo

    action = baseline(store, query)
    try:
        with pymongo.timeout(timeout_s):
            action()  # warm
        times = []
        for _ in range(3):
            with pymongo.timeout(timeout_s):
                times += timed(action, 1)
        return statistics.median(times)
    except pymongo.errors.PyMongoError as exc:
        if exc.timeout:
            return None
        raise


def _ok(response):
    if response.status_code != 200:
        raise SystemExit(f"{response.request.path}: HTTP {response.status_code}\n{response.text[:2000]}")
    return response


def embedded(args: argparse.Namespace) -> None:
    site = Path(args.site) if args.site else Path(tempfile.mkdtemp(prefix="sooner-bench-")) / "site"
    settings = load_settings(site / "config.json", environ={}) if (site / "config.json").exists() else init_site(site)
    store = open_store(settings)
    try:
        present = store.queues(QUEUE).estimated_count(max_age_s=0)
        print(f"embedded nx-27017 at {store.url}, site {site}")
        if present != args.entries:
            store.queues(QUEUE).collection.drop()
            print(f"filling {args.entries:,} entries …", flush=True)
            print(f"filled in {fill(store, args.entries):.0f} s")
        else:
            print(f"reusing {present:,} entries")
        run_pages(store, args.repeat, args.baseline_timeout)
    finally:
        if not args.keep and not args.site:
            from sooner.store.embedded import EmbeddedServer

            store.close()
            EmbeddedServer(settings.state_dir).stop()


def real(url: str, args: argparse.Namespace) -> None:
    database = f"sooner_bench_{uuid.uuid4().hex[:8]}"
    store = Store(url, database)
    store.ensure_indexes()
    try:
        print(f"\nreal MongoDB {url.split('@')[-1]}, database {database}: filling {args.entries:,} entries …")
        print(f"filled in {fill(store, args.entries):.0f} s")
        run_pages(store, args.repeat, args.baseline_timeout)
    finally:
        store.client.drop_database(database)
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--site", help="reuse this site (its queue is refilled unless it holds --entries)")
    parser.add_argument("--keep", action="store_true", help="leave the temporary site's database running")
    parser.add_argument("--baseline-timeout", type=float, default=10.0,
                        help="give up on a baseline query after this many seconds")
    parser.add_argument("--skip-embedded", action="store_true")
    args = parser.parse_args()
    if not args.skip_embedded:
        embedded(args)
    url = os.environ.get("SOONER_BENCH_MONGO_URL") or os.environ.get("SOONER_TEST_MONGO_URL")
    if url:
        real(url, args)


if __name__ == "__main__":
    main()
