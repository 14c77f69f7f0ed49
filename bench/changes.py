#!/usr/bin/env python3
"""What following changes costs the embedded database (not a test): change stream vs polling.

Measures the nx-27017 server's CPU (psutil, whole process) over the same
window while a client

* does nothing (the baseline idle cost),
* polls for queued runs every 25 ms as a worker does (``claim_candidates``),
* keeps one change stream on ``runs`` open (``store.changes``), as the live
  hub does for each followed collection,

and checks the stream delivers every insert made meanwhile. The result is why
workers poll and only the live hub follows ``store.changes`` (see
docs/architecture.md, embedded default).

    python bench/changes.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sooner.site import init_site  # noqa: E402
from sooner.store import Store, open_store  # noqa: E402
from sooner.store.embedded import EmbeddedServer  # noqa: E402

POLL_S = 0.025  # the worker's idle poll (sooner/worker/loop.py POLL_S)


def server_cpu_percent(server: psutil.Process, load: Callable[[threading.Event], None], seconds: float) -> float:
    """The server's CPU use (% of one core) while ``load`` runs for ``seconds``."""
    stop = threading.Event()
    thread = threading.Thread(target=load, args=(stop,))
    before, started = server.cpu_times(), time.monotonic()
    thread.start()
    stop.wait(seconds)
    stop.set()
    thread.join()
    after, elapsed = server.cpu_times(), time.monotonic() - started
    return (after.user + after.system - before.user - before.system) / elapsed * 100


def loads(store: Store) -> dict[str, Callable[[threading.Event], None]]:
    def idle(stop: threading.Event) -> None:
        stop.wait()

    def poll(stop: threading.Event) -> None:
        while not stop.is_set():
            store.runs.claim_candidates("bench", [], now=store.clock.now())
            stop.wait(POLL_S)

    def stream(stop: threading.Event) -> None:
        with store.changes.open("runs") as changes:  # type: ignore[union-attr]
            while not stop.is_set():
                changes.next()
    return {"idle (baseline)": idle, "worker poll every 25 ms": poll, "one change stream": stream}


def delivered(store: Store, count: int = 20) -> int:
    """How many of ``count`` inserts an open change stream reports (within 5 s)."""
    stream = store.changes.open("runs")
    if stream is None:
        return -1
    with stream:
        for i in range(count):
            store.collection("runs").insert_one({"_id": f"bench-{i}", "job": "bench", "status": "succeeded"})
        seen, deadline = 0, time.monotonic() + 5
        while seen < count and time.monotonic() < deadline:
            if stream.next() is not None:
                seen += 1
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    site = Path(tempfile.mkdtemp(prefix="sooner-bench-")) / "site"
    settings = init_site(site)
    try:
        store = open_store(settings)
        info = json.loads((settings.state_dir / "db.json").read_text())
        server = psutil.Process(info["pid"])
        results = {name: server_cpu_percent(server, load, args.seconds) for name, load in loads(store).items()}
        poll = results["worker poll every 25 ms"]
        print(f"embedded server CPU over {args.seconds:g} s per load (same run):")
        for name, percent in results.items():
            ratio = f"{percent / poll:6.1f}x the poll" if poll > 0 else ""
            print(f"  {name:<26} {percent:6.1f}% of a core  {ratio}")
        print(f"  change stream delivered {delivered(store)} of 20 inserts")
        store.close()
    finally:
        EmbeddedServer(settings.state_dir).stop()


if __name__ == "__main__":
    main()
