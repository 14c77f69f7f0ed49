#!/usr/bin/env python3
"""Live output fan-out (not a test): 50 Socket.IO clients on one run, chunk -> client latency p50/p95, next to
50 clients polling the REST API every 250 ms, measured in the same run (issue #12).

The real stack, as ``sooner up`` runs it: the site's embedded database and ``sooner web`` (gunicorn, one worker
process, threads). A producer process appends one output chunk every ``--interval-ms`` (50 ms) straight to the
store (``store.output.append``, ``t`` = now; the chunk's text carries the same time to the microsecond), so no
worker is needed: the run is claimed under a worker name that never starts. The clients live in ``--procs``
separate processes (python-socketio, WebSocket transport, bearer token in the ``auth`` payload, as a browser's
``live.js`` connects), so the client side is not the bottleneck. Latency = client receive time - chunk time;
every client must get every chunk exactly once, or the figure is refused.

a. Socket.IO: ``join_run`` then the room's ``output`` messages;
b. baseline: ``GET /api/v1/runs/{id}/output?after=SEQ`` every 250 ms per client (bearer token).

Target (issue #12): (a) p95 < 250 ms with 50 clients.

    python bench/live_fanout.py [--clients 50] [--seconds 10] [--interval-ms 50] [--procs 10] [--json]
    python bench/live_fanout.py --profile profile.svg   # py-spy record of the web worker during (a)
    python bench/live_fanout.py --profile profile.txt   # the same, collapsed stacks (text); pip install py-spy

``--json`` prints one JSON line per figure ``{figure, value, unit, baseline, baseline_value, ratio, target}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sooner.config import load_settings  # noqa: E402
from sooner.model import ManualTrigger, RunStatus  # noqa: E402
from sooner.runs.service import RunService  # noqa: E402
from sooner.site import init_site  # noqa: E402
from sooner.store import open_store  # noqa: E402
from sooner.store.embedded import EmbeddedServer  # noqa: E402
from sooner.webapp.testing import WebServer  # noqa: E402

USER, PASSWORD = "bench", "bench-password"
JOB = "bench/fanout.sh"
WRITER = "bench-fanout-writer"  # the run is claimed under this name; no such worker runs
TARGET_P95_MS = 250.0
POLL_S = 0.25

# One client process: ``count`` clients of one kind; each prints nothing until every client has the last chunk
# (or the deadline passed); then one JSON line: per client, the latencies and whether seqs came once, in order.
CLIENT = r"""
import json, sys, threading, time
mode, base, token, run_id, count, last, deadline, ready_file, transport = sys.argv[1:10]
count, last, deadline = int(count), int(last), float(deadline)
results = [{"latencies": [], "seqs": []} for _ in range(count)]
done = [threading.Event() for _ in range(count)]

def got(i, chunks, now):
    result = results[i]
    for chunk in chunks:
        result["seqs"].append(chunk["seq"])
        result["latencies"].append((now - float(chunk["text"].split()[2])) * 1000)
        if chunk["seq"] >= last:
            done[i].set()

def socket_client(i):
    import socketio
    client = socketio.Client(reconnection=False)
    client.on("output", lambda message: got(i, message["chunks"], time.time()))
    client.connect(base, auth={"token": token}, transports=[transport], wait_timeout=30)
    answer = client.call("join_run", {"run": run_id, "after_seq": -1}, timeout=30)
    assert answer["ok"], answer
    return client

def poller(i, start):
    import http.client
    connection = http.client.HTTPConnection(base.split("//")[1].split(":")[0], int(base.rsplit(":", 1)[1]), timeout=30)
    after = -1
    start.wait()
    next_at = time.monotonic()
    while not done[i].is_set() and time.time() < deadline:
        next_at += 0.25
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        connection.request("GET", f"/api/v1/runs/{run_id}/output?after={after}",
                           headers={"Authorization": f"Bearer {token}"})
        answer = connection.getresponse()
        body = json.loads(answer.read())
        assert answer.status == 200, body
        got(i, body["chunks"], time.time())
        if body["chunks"]:
            after = body["chunks"][-1]["seq"]

if mode == "socket":
    clients = [socket_client(i) for i in range(count)]
    open(ready_file, "w").close()
else:
    start = threading.Event()
    threads = [threading.Thread(target=poller, args=(i, start), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    open(ready_file, "w").close()
    start.set()
for event in done:
    event.wait(max(0.0, deadline - time.time()))
if mode == "socket":
    for client in clients:
        client.disconnect()
print(json.dumps(results))
"""

PRODUCER = r"""
import sys, time
from datetime import datetime, timezone
from sooner.store import Store
url, database, run_id, chunks, interval = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
store = Store(url, database)
start = time.monotonic()
for seq in range(chunks):
    pause = start + seq * interval - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    now = time.time()
    store.output.append(run_id, [(seq, "stdout", "chunk %d %.6f\n" % (seq, now),
                                  datetime.fromtimestamp(now, timezone.utc))])
"""


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


class Bench:
    """A temporary site: embedded database, one user with a token, ``sooner web``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.settings = init_site(root / "site")
        self.config = root / "site" / "config.json"
        self.store = open_store(self.settings)
        self.store.users.add(USER, PASSWORD, admin=True)
        self.token, _ = self.store.tokens.create(USER, "bench")
        self.store.jobs.record_deployed(JOB, commit="c" * 40, blob="b" * 40)
        self.web = WebServer(self.config, root / "web.log").wait_ready()
        self.database_pid = EmbeddedServer(self.settings.state_dir).status().pid

    def watched_run(self) -> str:
        service = RunService(self.store)
        queued = service.queue(JOB, ManualTrigger(author=USER), target=WRITER)
        assert queued is not None
        run = service.take(queued.id, WRITER, lease_s=24 * 3600)
        assert run is not None and run.status is RunStatus.RUNNING, run
        return run.id

    def web_worker_pid(self) -> int:
        import psutil

        children = psutil.Process(self.web.process.pid).children()
        if len(children) != 1:
            raise RuntimeError(f"expected one gunicorn worker, found {len(children)}")
        return children[0].pid

    def cpu_s(self) -> tuple[float, float]:
        """CPU seconds used so far by the web worker and by the database server."""
        import psutil

        web, database = psutil.Process(self.web_worker_pid()), psutil.Process(self.database_pid)
        return tuple(sum(p.cpu_times()[:2]) for p in (web, database))  # type: ignore[return-value]

    def close(self) -> None:
        self.web.stop()
        self.store.close()
        EmbeddedServer(load_settings(self.config, environ={}).state_dir).stop()


def measure(bench: Bench, mode: str, args: argparse.Namespace, profile: Path | None = None) -> dict[str, Any]:
    """Start the clients, wait until all are connected (or polling), produce the chunks; gather the results."""
    run_id = bench.watched_run()
    chunks = max(1, int(args.seconds * 1000 / args.interval_ms))
    deadline = time.time() + 60 + args.seconds * 3
    per = [args.clients // args.procs + (1 if i < args.clients % args.procs else 0) for i in range(args.procs)]
    procs, ready = [], []
    for i, count in enumerate(c for c in per if c):
        ready.append(bench.root / f"ready-{mode}-{i}")
        procs.append(subprocess.Popen([sys.executable, "-c", CLIENT, mode, bench.web.base_url, bench.token, run_id,
                                       str(count), str(chunks - 1), str(deadline), str(ready[-1]), args.transport],
                                      stdout=subprocess.PIPE, text=True, cwd=ROOT))
    while not all(path.exists() for path in ready):
        if any(proc.poll() is not None for proc in procs):
            raise RuntimeError(f"a {mode} client process failed before it was ready (see its stderr above)")
        if time.time() > deadline:
            raise RuntimeError(f"the {mode} clients did not get ready in time")
        time.sleep(0.02)
    spy = _start_profile(bench, profile, args.seconds) if profile else None
    cpu_before, started = bench.cpu_s(), time.monotonic()
    subprocess.run([sys.executable, "-c", PRODUCER, bench.store.url, bench.store.database_name, run_id, str(chunks),
                    str(args.interval_ms / 1000)], check=True, cwd=ROOT)
    cpu = [(after - before) / (time.monotonic() - started) for before, after in zip(cpu_before, bench.cpu_s())]
    results: list[dict] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=max(5.0, deadline - time.time() + 5))
        if proc.returncode != 0:
            raise RuntimeError(f"a {mode} client process failed ({proc.returncode}): see its stderr above")
        results += json.loads(out)
    if spy is not None:
        spy.wait(timeout=args.seconds + 30)
    # Sorted: python-socketio's client runs each message's handler in a thread of its own, so two messages can
    # be recorded swapped; the order the server sends is what tests/test_live_fanout.py checks (Node's client).
    bad = [i for i, r in enumerate(results) if sorted(r["seqs"]) != list(range(chunks))]
    if bad:
        first = sorted(results[bad[0]]["seqs"])
        raise RuntimeError(f"{mode}: {len(bad)} clients did not get chunks 0..{chunks - 1} exactly once "
                           f"(client {bad[0]} got {len(first)}: {first[:5]}…{first[-5:]})")
    latencies = [value for r in results for value in r["latencies"]]
    return {"p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95),
            "max": max(latencies), "n": len(latencies), "chunks": chunks, "web_cpu": cpu[0], "db_cpu": cpu[1]}


def _start_profile(bench: Bench, out: Path, seconds: float) -> subprocess.Popen:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen([spy, "record", "--pid", str(bench.web_worker_pid()), "--duration", str(int(seconds)),
                             "--rate", "50", "--format", "raw" if out.suffix == ".txt" else "flamegraph", "--output", str(out),
                             "--nonblocking"])


def figures(pushed: dict[str, Any], polled: dict[str, Any], clients: int) -> list[dict[str, Any]]:
    baseline = f"{clients} clients polling GET /api/v1/runs/{{id}}/output every 250 ms"
    return [{"figure": f"live output to {clients} Socket.IO clients of one run, p{q} chunk latency",
             "value": round(pushed[f"p{q}"], 1), "unit": "ms", "baseline": baseline,
             "baseline_value": round(polled[f"p{q}"], 1), "ratio": round(pushed[f"p{q}"] / polled[f"p{q}"], 3),
             "target": f"p95 < {TARGET_P95_MS:g} ms" if q == 95 else "", "key": f"live_fanout.p{q}",
             "note": f"CPU during the fan-out: web {pushed['web_cpu']:.0%}, database {pushed['db_cpu']:.0%} "
                     f"(polling: {polled['web_cpu']:.0%}, {polled['db_cpu']:.0%})"} for q in (50, 95)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the producer writes")
    parser.add_argument("--interval-ms", type=float, default=50.0, help="one chunk every this many ms")
    parser.add_argument("--procs", type=int, default=10, help="client processes the clients are spread over")
    parser.add_argument("--transport", choices=("websocket", "polling"), default="websocket",
                        help="the Socket.IO clients' transport (browsers fall back to long-polling behind some proxies)")
    parser.add_argument("--profile", type=Path, help="py-spy record the web worker during (a) into this file")
    parser.add_argument("--json", action="store_true", help="one JSON line per figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sooner-bench-fanout-") as tmp:
        bench = Bench(Path(tmp))
        try:
            pushed = measure(bench, "socket", args, args.profile)
            polled = measure(bench, "poll", args)
        finally:
            bench.close()
    rows = figures(pushed, polled, args.clients)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print(f"Live fan-out: {args.clients} clients in {args.procs} processes, one run, one chunk every "
          f"{args.interval_ms:g} ms for {args.seconds:g} s ({pushed['chunks']} chunks); `sooner web` (gunicorn "
          f"gthread), embedded database, {os.cpu_count()} CPUs shared")
    for name, result in ((f"a. Socket.IO ({args.transport})", pushed), ("b. baseline: poll every 250 ms", polled)):
        print(f"  {name:<32} p50 {result['p50']:7.1f} ms   p95 {result['p95']:7.1f} ms   "
              f"max {result['max']:7.1f} ms   (n={result['n']}; CPU: web {result['web_cpu']:.0%}, "
              f"database {result['db_cpu']:.0%})")
    met = pushed["p95"] < TARGET_P95_MS
    print(f"target (a) p95 < {TARGET_P95_MS:g} ms: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
