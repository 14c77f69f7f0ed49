#!/usr/bin/env python3
"""API polling speed (not a test): ``GET /api/v1/runs/{id}`` with ``If-None-Match`` → 304, requests/s from
ONE web process, next to a static 304 that the same process serves, measured in the same run.

The real stack: the site's embedded database and ``sooner web`` (gunicorn, one worker process, threads),
started as a user would. ``--clients`` client processes (raw ``http.client``, one kept-alive connection
each, so the client is not the bottleneck) send requests as fast as answers come, for ``--seconds``:

a. the poll with a bearer token and the token cache on (``web_token_cache_s``, default 10 s);
b. baseline: ``GET /static/app.css`` with its ``If-None-Match`` → 304 (public: no auth, no database);
c. the same poll with the token cache off (``web_token_cache_s=0``: token read, user read, argon2 verify).

Besides requests/s, ``psutil`` reads the CPU time of the web worker and of the database server per
request: the machine is shared, and CPU per request varies less than throughput does.

Target (issue #11): (a) >= 2,000 requests/s on this machine.

    python bench/api_poll.py [--seconds 5] [--clients 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import figure, use_json  # noqa: E402
from sooner.config import load_settings  # noqa: E402
from sooner.model import ManualTrigger  # noqa: E402
from sooner.runs.service import RunService  # noqa: E402
from sooner.site import init_site  # noqa: E402
from sooner.store import open_store  # noqa: E402
from sooner.store.embedded import EmbeddedServer  # noqa: E402
from sooner.webapp.testing import Process, WebServer, free_port  # noqa: E402

USER, PASSWORD = "bench", "bench-password"
JOB = "bench/poll.sh"
WARM_UP_S = 0.5

# One client process: waits for the start time, then sends GET after GET on one kept-alive connection.
CLIENT = r"""
import http.client, json, sys, time
port, path, headers, start, end = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
def get(extra):
    connection.request("GET", path, headers={**headers, **extra})
    answer = connection.getresponse()
    answer.read()
    return answer
first = get({})
assert first.status == 200, first.status
conditional = {"If-None-Match": first.getheader("ETag")}
while time.time() < start:
    get(conditional)
count, other = 0, 0
while time.time() < end:
    if get(conditional).status == 304:
        count += 1
    else:
        other += 1
print(json.dumps({"n": count, "other": other}))
"""


class Web(WebServer):
    """``sooner web`` on a free port with extra environment (``SOONER_WEB_TOKEN_CACHE_S``)."""

    def __init__(self, config: Path, log: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        Process.__init__(self, ["web", "--host", "127.0.0.1", "--port", str(self.port)], config, log, env=env)

    def worker(self) -> psutil.Process:
        """gunicorn's worker: the arbiter's one child, where the app runs."""
        children = psutil.Process(self.process.pid).children()
        if len(children) != 1:
            raise RuntimeError(f"expected one gunicorn worker, found {len(children)}")
        return children[0]


def cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def measure(web: Web, database: psutil.Process, path: str, headers: dict[str, str], clients: int,
            seconds: float) -> dict[str, float]:
    start = time.time() + WARM_UP_S + 0.5 + clients * 0.1  # after every client has connected and warmed up
    end = start + seconds
    procs = [subprocess.Popen([sys.executable, "-c", CLIENT, str(web.port), path, json.dumps(headers),
                               str(start), str(end)], stdout=subprocess.PIPE, text=True) for _ in range(clients)]
    worker = web.worker()
    while time.time() < start:
        time.sleep(0.005)
    web_before, db_before = cpu_s(worker), cpu_s(database)
    while time.time() < end:
        time.sleep(0.005)
    web_cpu, db_cpu = cpu_s(worker) - web_before, cpu_s(database) - db_before
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"a client failed ({proc.returncode}): see its stderr above")
        results.append(json.loads(out))
    n = sum(r["n"] for r in results)
    if any(r["other"] for r in results):
        raise RuntimeError(f"some answers were not 304: {results}")
    return {"rps": n / seconds, "web_ms": 1000 * web_cpu / max(n, 1), "db_ms": 1000 * db_cpu / max(n, 1), "n": n}


def row(name: str, figures: dict[str, float], baseline: dict[str, float]) -> str:
    ratio = figures["rps"] / baseline["rps"] if baseline["rps"] else float("nan")
    return (f"{name:<46} {figures['rps']:8.0f} {ratio:6.2f}x  {figures['web_ms']:8.3f}  {figures['db_ms']:8.3f}"
            f"  {figures['n']:8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="how long each case is measured")
    parser.add_argument("--clients", type=int, default=4, help="client processes, one connection each")
    parser.add_argument("--json", action="store_true", help="also print one JSON line per figure (python -m bench)")
    args = parser.parse_args()
    use_json(args.json)
    with tempfile.TemporaryDirectory(prefix="sooner-bench-poll-") as tmp:
        root = Path(tmp)
        settings = init_site(root / "site")
        config = root / "site" / "config.json"
        store = open_store(settings)
        try:
            store.users.add(USER, PASSWORD, admin=True)
            token, _ = store.tokens.create(USER, "bench")
            store.jobs.record_deployed(JOB, commit="c" * 40, blob="b" * 40)
            run = RunService(store).queue(JOB, ManualTrigger(author=USER))
            assert run is not None
            database = psutil.Process(EmbeddedServer(settings.state_dir).status().pid)
            poll = (f"/api/v1/runs/{run.id}", {"Authorization": f"Bearer {token}"})
            static = ("/static/app.css", {})
            figures = {}
            for cache_s in ("10", "0"):
                web = Web(config, root / f"web-{cache_s}.log", {"SOONER_WEB_TOKEN_CACHE_S": cache_s}).wait_ready()
                try:
                    if cache_s != "0":
                        figures["static"] = measure(web, database, *static, args.clients, args.seconds)
                    figures[cache_s] = measure(web, database, *poll, args.clients, args.seconds)
                finally:
                    web.stop()
            print(f"API polling, one `sooner web` process (gunicorn gthread), embedded database; "
                  f"{args.clients} client processes x 1 kept-alive connection, {args.seconds:g} s each, "
                  f"{os.cpu_count()} CPUs shared")
            print(f"{'case':<46} {'req/s':>8} {'ratio':>7}  {'web ms':>8}  {'db ms':>8}  {'answers':>8}")
            print(f"{'':<46} {'':>8} {'':>7}  {'CPU/req':>8}  {'CPU/req':>8}")
            print(row("b. baseline: static file 304, same process", figures["static"], figures["static"]))
            print(row("a. GET /api/v1/runs/{id} 304, token cache on", figures["10"], figures["static"]))
            print(row("c. the same, token cache off", figures["0"], figures["static"]))
            print(f"token cache gain: {figures['10']['rps'] / figures['0']['rps']:.2f}x requests/s, "
                  f"{figures['0']['web_ms'] / figures['10']['web_ms']:.2f}x less web CPU per poll; "
                  f"target (a) >= 2,000 req/s: {'met' if figures['10']['rps'] >= 2000 else 'NOT met'}")
            figure("GET /api/v1/runs/{id} 304 polls, token cache on", figures["10"]["rps"], "req/s",
                   key="api.poll", baseline="static file 304, same process", baseline_value=figures["static"]["rps"],
                   target=">= 2000", note=f"web CPU {figures['10']['web_ms']:.3f} ms/req")
            figure("the same poll, token cache off", figures["0"]["rps"], "req/s", key="api.poll_nocache",
                   baseline="static file 304, same process", baseline_value=figures["static"]["rps"])
        finally:
            store.close()
            EmbeddedServer(load_settings(config, environ={}).state_dir).stop()


if __name__ == "__main__":
    main()
