#!/usr/bin/env python3
"""Webhook latency (not a test): a signed delivery POSTed → its run stored as queued, p50/p95, next to a
bare insert into the same database from the same client, measured in the same run.

The real stack: the site's embedded database and ``sooner web`` (gunicorn, one worker process), started
as a user would; Standard Webhooks hooks made through the store (as ``sooner hook add`` does). One
client sends ``--count`` deliveries one after another on a kept-alive connection (latency, not
throughput; hooks take 30 deliveries at once, so they are spread over several hooks).

What is timed, and why: the hook answers 202 only after the run service has inserted the run (the
insert is acknowledged), so **POST sent → 202 received** is an upper bound of POST → run stored as
queued, with no watcher of our own in the way (a change stream costs nx-27017 about 39% of a core
and a poller adds its interval). Every run is then read back (not timed) to check it is ``queued``.
The run's ``queued_at`` is the handler's time when it took the request, so **POST → queued_at** is
the part spent before the handler (connection, parsing, the hook's lookup), on the same machine's clock
(ms precision, truncated). Each delivery is 9 commands, 4 of them writes (measured in-process with a
command listener: hook, job x2, deploy, the claim's insert, the run number, the run's insert, marking
the claim accepted, the delivery log).
Baseline: ``insert_one`` of a run-sized document with the same data into the same database, sent →
acknowledged, from this process.

    python bench/webhook_latency.py [--count 200] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import figure, use_json  # noqa: E402
from sooner.config import load_settings  # noqa: E402
from sooner.model import RunStatus  # noqa: E402
from sooner.model.webhook import standard_signature  # noqa: E402
from sooner.site import init_site  # noqa: E402
from sooner.store import open_store  # noqa: E402
from sooner.store.embedded import EmbeddedServer  # noqa: E402
from sooner.webapp.testing import WebServer  # noqa: E402

JOB = "bench/on-hook.sh"
PER_HOOK = 25  # under the per-hook burst of 30, so no delivery waits for the rate limit


def percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]  # noqa: E731
    return pick(0.50), pick(0.95)


def payload(i: int) -> bytes:
    return json.dumps({"type": "bench.delivery", "data": {"i": i, "sent": "x" * 200}}).encode()


def deliveries(port: int, hooks: list[tuple[str, str]], count: int) -> list[dict]:
    """POST ``count`` signed deliveries, round robin over ``hooks``; each with its timings and run id."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    done = []
    for i in range(count):
        name, secret = hooks[i % len(hooks)]
        body, msg_id, stamp = payload(i), f"msg_{uuid.uuid4().hex}", str(int(time.time()))
        headers = {"Content-Type": "application/json", "webhook-id": msg_id, "webhook-timestamp": stamp,
                   "webhook-signature": "v1," + standard_signature(secret, msg_id, stamp, body)}
        sent_wall, sent = time.time(), time.perf_counter()
        connection.request("POST", f"/hooks/standard/{name}", body=body, headers=headers)
        answer = connection.getresponse()
        text = answer.read()
        elapsed = time.perf_counter() - sent
        if answer.status != 202:
            raise RuntimeError(f"delivery {i} answered {answer.status}: {text[:200]!r}")
        done.append({"run": json.loads(text)["run"], "sent_wall": sent_wall, "answer_ms": elapsed * 1000})
    connection.close()
    return done


def bare_inserts(store, count: int) -> list[float]:
    """The baseline: one acknowledged insert_one of a run-sized document at a time, from this process."""
    scratch = store.collection("bench_inserts")  # a scratch collection: no index but _id, like a bare write
    document = store.collection("runs").find_one({}, {"_id": 0})
    times = []
    for _ in range(count):
        copy = {**document, "_id": uuid.uuid4().hex}
        sent = time.perf_counter()
        scratch.insert_one(copy)
        times.append((time.perf_counter() - sent) * 1000)
    scratch.drop()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200, help="deliveries (and baseline inserts)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line per figure (python -m bench)")
    args = parser.parse_args()
    use_json(args.json)
    with tempfile.TemporaryDirectory(prefix="sooner-bench-hook-") as tmp:
        root = Path(tmp)
        settings = init_site(root / "site")
        config = root / "site" / "config.json"
        store = open_store(settings)
        web = None
        try:
            store.jobs.record_deployed(JOB, commit="c" * 40, blob="b" * 40)
            store.jobs.set_enabled(JOB, True)
            hooks = []
            for k in range(math.ceil(args.count / PER_HOOK)):
                hook = store.hooks.create("standard", f"bench-{k}", JOB, by="bench")
                hooks.append((hook.name, hook.secret))
            web = WebServer(config, root / "web.log").wait_ready()
            deliveries(web.port, hooks, min(10, args.count))  # warm up: connections, caches, imports
            sent = deliveries(web.port, hooks, args.count)
            runs = store.reads.runs_by_id([d["run"] for d in sent], fields=("queued_at",))
            for delivery in sent:
                run = runs.get(delivery["run"])
                if run is None or run.status is not RunStatus.QUEUED:
                    raise RuntimeError(f"run {delivery['run']} is {run and run.status}, not stored as queued")
            answer = [d["answer_ms"] for d in sent]
            before = [(runs[d["run"]].queued_at.timestamp() - d["sent_wall"]) * 1000 for d in sent]
            baseline = bare_inserts(store, args.count)
            base50, base95 = percentiles(baseline)
            print(f"Webhook latency, one `sooner web` process, embedded database; {args.count} Standard Webhooks "
                  f"deliveries one at a time over {len(hooks)} hooks, every run checked queued afterwards")
            print(f"{'':<52} {'p50 ms':>8} {'p95 ms':>8} {'p50 ratio':>10} {'p95 ratio':>10}")
            for name, values in (("POST sent -> 202 (run stored as queued before it)", answer),
                                 ("POST sent -> the handler's clock (run's queued_at)", before),
                                 ("baseline: bare insert_one, sent -> acknowledged", baseline)):
                p50, p95 = percentiles(values)
                print(f"{name:<52} {p50:8.2f} {p95:8.2f} {p50 / base50:9.1f}x {p95 / base95:9.1f}x")
            answer50, answer95 = percentiles(answer)
            figure("webhook POST -> 202 (run stored) p50", answer50, "ms", key="webhook.p50",
                   baseline="bare insert_one", baseline_value=base50, note=f"p95 {answer95:.1f} ms")
        finally:
            if web is not None:
                web.stop()
            store.close()
            EmbeddedServer(load_settings(config, environ={}).state_dir).stop()


if __name__ == "__main__":
    main()
