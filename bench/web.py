#!/usr/bin/env python3
"""Web UI benchmarks (not tests): each figure is printed next to a baseline measured in the same run.

1. Line latency, script ``print`` -> run page DOM in headless Chromium (a
   MutationObserver stamps each line as it is added), p50/p95/max, through the
   real stack: worker subprocess -> embedded MongoDB -> `sooner web`
   (gunicorn) -> Socket.IO -> browser. Baseline: a peer that polls its log
   file every 250 ms, simulated on the same line cadence.
2. Fan-out: 50 concurrent Socket.IO clients (python-socketio, websocket
   transport) watching one run while output chunks are inserted by
   one writer at ``--rate`` chunks/s: chunks/s and messages/s delivered in total, and
   insert -> client latency p50/p95. Baseline: the same 50 clients polling
   the JSON output endpoint every 250 ms.

Target: p95 line latency < 150 ms (the polling peer delivers in ~200 ms).

    python bench/web.py [--lines 200] [--clients 50] [--seconds 5] [--json]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import figure, use_json  # noqa: E402
from sooner.config import load_settings  # noqa: E402
from sooner.model import ManualTrigger, Run, RunStatus  # noqa: E402
from sooner.runs.service import RunService  # noqa: E402
from sooner.site import init_site  # noqa: E402
from sooner.store import open_store  # noqa: E402
from sooner.store.embedded import EmbeddedServer  # noqa: E402
from sooner.webapp.testing import Process, WebServer, chromium_problem, launch_chromium, sign_in  # noqa: E402
from sooner.worker.testing import deploy_files  # noqa: E402

USER, PASSWORD = "bench", "bench-password"
WRITER = "bench-output-writer"  # the worker name the fan-out runs are claimed under; no such worker runs
LINE_INTERVAL_S = 0.02
LATENCY_SCRIPT = "#!" + sys.executable + """
import json, os, sys, time
data = json.loads(os.environ["SOONER_DATA"])
while not os.path.exists(data["gate"]):
    time.sleep(0.005)
for i in range(data["lines"]):
    print("lat %d %.6f" % (i, time.time()), flush=True)
    time.sleep(data["interval"])
"""
OBSERVER = """
window.__arrivals = [];
document.addEventListener("DOMContentLoaded", function () {
  var out = document.getElementById("output");
  if (!out) { return; }
  new MutationObserver(function (records) {
    var now = Date.now();
    records.forEach(function (record) {
      record.addedNodes.forEach(function (node) {
        var re = /lat (\\d+) (\\d+\\.\\d+)/g, m;
        while ((m = re.exec(node.textContent)) !== null) { window.__arrivals.push([+m[1], +m[2] * 1000, now]); }
      });
    });
  }).observe(out, { childList: true });
});
"""


def percentiles(values: list[float]) -> str:
    values = sorted(values)
    if not values:
        return "no samples"
    p = lambda q: values[min(len(values) - 1, int(round(q * (len(values) - 1))))]  # noqa: E731
    return f"p50 {p(0.50):6.1f} ms   p95 {p(0.95):6.1f} ms   max {values[-1]:6.1f} ms   (n={len(values)})"


def pick(values: list[float], q: float) -> float | None:
    """The ``q`` quantile of ``values`` (as :func:`percentiles` prints it), None without samples."""
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else None


def wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


# -- 1. line latency -----------------------------------------------------------

def line_latency(env, lines: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    gate = env.root / "gate"
    run = RunService(env.store).queue("latency.py", ManualTrigger(author=USER),
                                      data={"gate": str(gate), "lines": lines, "interval": LINE_INTERVAL_S})
    assert run is not None
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page()
        sign_in(page, env.web.base_url, USER, PASSWORD)
        page.add_init_script(OBSERVER)
        page.goto(f"{env.web.base_url}/runs/{run.id}")
        page.wait_for_selector("#live[data-state=live]")
        wait(lambda: env.store.runs.get(run.id).status is RunStatus.RUNNING, 30, "the run to start")
        gate.touch()
        arrivals = wait(lambda: (lambda a: a if len(a) >= lines else None)(page.evaluate("window.__arrivals")),
                        60 + lines * LINE_INTERVAL_S * 3, "all lines in the browser")
        browser.close()
    return [arrival - printed for _, printed, arrival in arrivals]


def polling_peer_latency(lines: int, poll_s: float = 0.25) -> list[float]:
    """A peer that polls a log file every 250 ms, on the same line cadence."""
    with tempfile.NamedTemporaryFile("w+", delete=False) as log:
        path = log.name
    done = threading.Event()

    def write() -> None:
        with open(path, "a") as out:
            for i in range(lines):
                out.write("lat %d %.6f\n" % (i, time.time()))
                out.flush()
                time.sleep(LINE_INTERVAL_S)
        done.set()
    latencies: list[float] = []
    writer = threading.Thread(target=write)
    writer.start()
    offset = 0
    while not done.is_set() or offset < Path(path).stat().st_size:
        time.sleep(poll_s)
        with open(path) as source:
            source.seek(offset)
            text = source.read()
            offset = source.tell()
        now = time.time()
        latencies += [(now - float(m.group(2))) * 1000 for m in re.finditer(r"lat (\d+) (\d+\.\d+)", text)]
    writer.join()
    return latencies


# -- 2. fan-out ------------------------------------------------------------------

def session_cookie(base: str) -> str:
    import requests

    session = requests.Session()
    page = session.get(base + "/login")
    token = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
    session.post(base + "/login", data={"username": USER, "password": PASSWORD, "csrf_token": token})
    return "; ".join(f"{k}={v}" for k, v in session.cookies.items())


def watched_run(env) -> Run:
    """A running run that no real worker owns: this benchmark writes its output itself."""
    service = RunService(env.store)
    # Aimed at a worker name that never starts, then claimed under it, so the bench worker leaves it alone.
    queued = service.queue("latency.py", ManualTrigger(author=USER), target=WRITER)
    assert queued is not None
    run = service.take(queued.id, WRITER, lease_s=24 * 3600)
    assert run is not None and run.status is RunStatus.RUNNING, run
    return run


PRODUCER = """
import sys, time
from sooner.store import Store
store = Store(sys.argv[1], sys.argv[2])
run_id, seconds, rate = sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
seq, start = 0, time.monotonic()
while time.monotonic() < start + seconds:
    store.output.append(run_id, [(seq, "stdout", "chunk %d %.6f\\n" % (seq, time.time()), None)])
    seq += 1
    pause = start + seq / rate - time.monotonic()
    if pause > 0:
        time.sleep(pause)
print(seq)
"""


def produce(store, run_id: str, seconds: float, rate: float) -> int:
    """Insert one chunk at a time at ``rate`` chunks/s from another process (as a worker would)."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", PRODUCER, store.url, store.database_name, run_id, str(seconds),
                           str(rate)], capture_output=True, text=True, check=True, cwd=ROOT)
    return int(done.stdout.strip())


def fan_out(env, clients: int, seconds: float, rate: float) -> dict:
    import socketio

    run = watched_run(env)
    cookie = session_cookie(env.web.base_url)
    lock = threading.Lock()
    stats = {"messages": 0, "chunks": 0, "latencies": []}
    sockets = []
    for _ in range(clients):
        client = socketio.Client(reconnection=False)

        @client.on("output")
        def on_output(message):
            now = time.time()
            with lock:
                stats["messages"] += 1
                stats["chunks"] += len(message["chunks"])
                for chunk in message["chunks"]:
                    stats["latencies"].append((now - float(chunk["text"].split()[2])) * 1000)
        client.connect(env.web.base_url, headers={"Cookie": cookie}, transports=["websocket"])
        assert client.call("join_run", {"run": run.id, "after_seq": -1}, timeout=10)["ok"]
        sockets.append(client)
    started = time.monotonic()
    produced = produce(env.store, run.id, seconds, rate)
    wait(lambda: stats["chunks"] >= produced * clients, 60, "every client to get every chunk")
    elapsed = time.monotonic() - started
    for client in sockets:
        client.disconnect()
    return {"produced": produced, "elapsed": elapsed, **stats}


def polling_clients(env, clients: int, seconds: float, rate: float, poll_s: float = 0.25) -> dict:
    import requests

    run = watched_run(env)
    cookie = session_cookie(env.web.base_url)
    url = f"{env.web.base_url}/runs/{run.id}/output"
    lock = threading.Lock()
    stats = {"requests": 0, "chunks": 0, "latencies": []}
    stop = threading.Event()
    target = {"n": None}

    def poll() -> None:
        session = requests.Session()
        session.headers["Cookie"] = cookie
        after = -1
        while not (stop.is_set() and target["n"] is not None and after >= target["n"] - 1):
            time.sleep(poll_s)
            page = session.get(url, params={"after": after, "limit": 2000},
                               headers={"Accept": "application/json"}).json()
            now = time.time()
            with lock:
                stats["requests"] += 1
                stats["chunks"] += len(page["chunks"])
                stats["latencies"] += [(now - float(c["text"].split()[2])) * 1000 for c in page["chunks"]]
            if page["chunks"]:
                after = page["chunks"][-1]["seq"]
    threads = [threading.Thread(target=poll) for _ in range(clients)]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    target["n"] = produce(env.store, run.id, seconds, rate)
    stop.set()
    for thread in threads:
        thread.join(60)
    return {"produced": target["n"], "elapsed": time.monotonic() - started, **stats}


# -- main ---------------------------------------------------------------------------

class Env:
    def __init__(self, root: Path) -> None:
        self.root = root
        settings = init_site(root / "site")
        self.config = root / "site" / "config.json"
        self.settings = settings
        self.store = open_store(settings)
        self.store.users.add(USER, PASSWORD, admin=True)
        deploy_files(self.store, {"latency.py": LATENCY_SCRIPT})
        self.web = WebServer(self.config, root / "web.log").wait_ready()
        self.worker = Process(["worker", "-n", "bench"], self.config, root / "worker.log")
        wait(lambda: self.store.workers.get("bench"), 30, "the worker")

    def close(self) -> None:
        self.worker.stop(hurry=True)
        self.web.stop()
        self.store.close()
        EmbeddedServer(load_settings(self.config, environ={}).state_dir).stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=100.0,
                        help="chunks/s the fan-out writer inserts (a worker flushes a busy run ~10 times/s)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line per figure (python -m bench)")
    args = parser.parse_args()
    use_json(args.json)
    problem = chromium_problem()
    with tempfile.TemporaryDirectory(prefix="sooner-bench-web-") as tmp:
        env = Env(Path(tmp))
        try:
            print(f"Sooner web benchmarks (output_flush_ms={env.settings.output_flush_ms}, "
                  f"{args.lines} lines every {LINE_INTERVAL_S * 1000:.0f} ms; {args.clients} clients)")
            if problem:
                print(f"1. line latency: skipped ({problem})")
            else:
                sooner = line_latency(env, args.lines)
                print("1. line latency, script print -> Chromium DOM")
                peer = polling_peer_latency(args.lines)
                print(f"   sooner (worker -> MongoDB -> Socket.IO): {percentiles(sooner)}")
                print(f"   baseline (poll a log file every 250 ms):  {percentiles(peer)}")
                figure("line latency print -> browser DOM p95", pick(sooner, 0.95), "ms", key="web.line_p95",
                       baseline="poll a log file every 250 ms", baseline_value=pick(peer, 0.95), target="< 150",
                       note=f"p50 {pick(sooner, 0.5):.1f} ms")
            pushed = fan_out(env, args.clients, args.seconds, args.rate)
            polled = polling_clients(env, args.clients, args.seconds, args.rate)
            print(f"2. fan-out to {args.clients} clients of one run ({pushed['produced']} chunks inserted in "
                  f"{args.seconds:g}s, {args.rate:g}/s, by one writer process)")
            print(f"   sooner Socket.IO: {pushed['chunks'] / pushed['elapsed']:8.0f} chunks/s delivered, "
                  f"{pushed['messages'] / pushed['elapsed']:6.0f} messages/s; "
                  f"latency {percentiles(pushed['latencies'])}")
            print(f"   baseline HTTP polling every 250 ms: {polled['chunks'] / polled['elapsed']:8.0f} chunks/s, "
                  f"{polled['requests'] / polled['elapsed']:6.0f} requests/s; "
                  f"latency {percentiles(polled['latencies'])}")
            for q in (0.5, 0.95):
                figure(f"live output to {args.clients} clients p{q * 100:.0f}", pick(pushed["latencies"], q), "ms",
                       key=f"web.fanout_p{q * 100:.0f}", baseline="HTTP polling every 250 ms",
                       baseline_value=pick(polled["latencies"], q), target="ratio < 1",
                       note=f"{pushed['chunks'] / pushed['elapsed']:.0f} chunks/s delivered")
        finally:
            env.close()


if __name__ == "__main__":
    main()
