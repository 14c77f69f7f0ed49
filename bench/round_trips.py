#!/usr/bin/env python3
"""Database round trips (not tests): commands per cron fire and per no-op run, next to a bare insert.

A PyMongo command listener counts every command this process sends to the
embedded database, by name, and ``psutil`` reads the database server's CPU
time around each phase:

1. one scheduler tick that fires ``--jobs`` every-second cron jobs at once
   (a fake clock moves the scheduler one second; the jobs' trigger cursors are
   set by the tick before), against the baseline of inserting the same number
   of run-sized documents one ``insert_one`` at a time into the same database;
2. ``--runs`` no-op runs drained by one in-process worker (claim, start,
   output, finish, events), commands per run by name, with heartbeats and
   idle polls counted separately.

Target (issue #12): scheduler database work per fire <= 1.5x a bare insert;
worker <= 6 commands per no-op run.

    python bench/round_trips.py [--jobs 200] [--runs 100] [--json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

import psutil
from pymongo import monitoring

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import figure, use_json  # noqa: E402
from sooner.clock import FakeClock  # noqa: E402
from sooner.config import load_settings  # noqa: E402
from sooner.model import ManualTrigger, RunStatus  # noqa: E402
from sooner.runs.service import RunService  # noqa: E402
from sooner.scheduling.scheduler import Scheduler  # noqa: E402
from sooner.site import init_site  # noqa: E402
from sooner.store import open_store  # noqa: E402
from sooner.store.embedded import EmbeddedServer  # noqa: E402
from sooner.worker.loop import Worker  # noqa: E402
from sooner.worker.testing import deploy_files  # noqa: E402


class CommandCounter(monitoring.CommandListener):
    """Counts commands by name while ``counting`` is set (PyMongo calls it from any thread)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.counting = False
        self.ignored: threading.Thread | None = None  # a thread whose commands are not counted (a watcher)
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if (self.counting and event.command_name not in ("endSessions", "hello", "isMaster", "ping")
                and threading.current_thread() is not self.ignored):
            collection = event.command.get(event.command_name)
            name = f"{event.command_name} {collection}" if isinstance(collection, str) else event.command_name
            with self._lock:
                self.counts[name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def take(self) -> Counter[str]:
        with self._lock:
            counts, self.counts = self.counts, Counter()
        return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="every-second cron jobs fired in one tick")
    parser.add_argument("--runs", type=int, default=100, help="no-op runs through one worker")
    parser.add_argument("--json", action="store_true", help="also print one JSON line per figure (python -m bench)")
    args = parser.parse_args()
    use_json(args.json)
    counter = CommandCounter()
    monitoring.register(counter)  # before the store's client exists: it applies to clients created later
    with tempfile.TemporaryDirectory(prefix="sooner-bench-") as tmp:
        settings = init_site(Path(tmp) / "site")
        settings = load_settings(settings.site_dir / "config.json", environ={},
                                 overrides={"database": f"bench{uuid.uuid4().hex[:8]}"})
        store = open_store(settings)
        try:
            server = psutil.Process(EmbeddedServer(settings.state_dir).status().pid)
            cron_fires(store, settings, server, counter, args.jobs)
            noop_runs(store, settings, server, counter, args.runs, Path(tmp) / "cache")
        finally:
            store.client.drop_database(settings.database)
            store.close()
            EmbeddedServer(settings.state_dir).stop()


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def cron_fires(store, settings, server: psutil.Process, counter: CommandCounter, jobs: int) -> None:
    files = {f"every/{i:04d}.sh": "#!/bin/sh\nexit 0\n" for i in range(jobs)}
    deploy_files(store, files, settings={name: {"schedule": "* * * * * *", "overlap": "allow"} for name in files})
    clock = FakeClock(store.clock.now().replace(microsecond=0) + timedelta(seconds=1))
    scheduler = Scheduler(store, settings, clock)
    scheduler.tick()  # takes every job's cursor
    clock.advance(1)
    counter.take()
    counter.counting = True
    cpu, started = _cpu(server), time.perf_counter()
    fired = scheduler.tick()
    tick_cpu, tick_s = _cpu(server) - cpu, time.perf_counter() - started
    counter.counting = False
    tick_counts = counter.take()
    if len(fired) != jobs:
        raise SystemExit(f"expected {jobs} fires in one tick, got {len(fired)}")
    sample = store.runs.get(fired[0].id).to_doc()
    baseline = store.collection("bench_bare_inserts")
    counter.counting = True
    cpu, started = _cpu(server), time.perf_counter()
    for _ in range(jobs):
        baseline.insert_one({**sample, "_id": uuid.uuid4().hex})
    bare_cpu, bare_s = _cpu(server) - cpu, time.perf_counter() - started
    counter.counting = False
    bare_counts = counter.take()
    total = sum(tick_counts.values())
    print(f"1. cron fires: one tick fired {jobs} jobs in {tick_s * 1000:.0f} ms with {total} commands "
          f"({total / jobs:.2f} per fire: {_names(tick_counts)})")
    print(f"   database CPU {tick_cpu * 1000 / jobs:.2f} ms per fire vs {bare_cpu * 1000 / jobs:.2f} ms per bare "
          f"insert_one ({sum(bare_counts.values()) / jobs:.2f} commands each, {bare_s * 1000:.0f} ms in all) "
          f"-> ratio {tick_cpu / max(bare_cpu, 1e-9):.2f} (target <= 1.5)")
    figure(f"database CPU per cron fire ({jobs} in one tick)", tick_cpu * 1000 / jobs, "ms", key="trips.fire_cpu",
           baseline="bare insert_one", baseline_value=bare_cpu * 1000 / jobs, target="ratio <= 1.5",
           note=f"{total / jobs:.2f} commands per fire")
    for name in files:
        store.jobs.set_enabled(name, False)
    service = RunService(store, settings)
    for run in fired:  # not for the worker of part 2
        service.cancel(run.id, by="bench")


def noop_runs(store, settings, server: psutil.Process, counter: CommandCounter, count: int, cache: Path) -> None:
    deploy_files(store, {"noop.sh": "#!/bin/sh\nexit 0\n"})
    service = RunService(store, settings)
    runs = [service.queue("noop.sh", ManualTrigger()) for _ in range(count)]
    worker = Worker(store, settings, "bench-trips", capacity=4, cache=cache)
    worker.register()
    stop = threading.Event()
    counter.take()
    counter.counting = True
    cpu, started = _cpu(server), time.perf_counter()
    thread = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True)
    thread.start()
    last = runs[-1]
    assert last is not None
    deadline = time.monotonic() + 300
    counter.ignored = threading.current_thread()  # this thread's polls below are not the worker's
    while time.monotonic() < deadline:
        if not store.runs.list(status=RunStatus.QUEUED, limit=1) and not store.runs.list(status=RunStatus.RUNNING,
                                                                                           limit=1):
            break
        time.sleep(0.05)
    elapsed, run_cpu = time.perf_counter() - started, _cpu(server) - cpu
    counter.counting = False
    stop.set()
    thread.join(30)
    counts = counter.take()
    total = sum(counts.values())
    print(f"2. no-op runs: {count} runs in {elapsed:.1f} s ({count / elapsed:.0f} runs/s), {total} commands "
          f"({total / count:.2f} per run, heartbeats and idle polls included: {_names(counts, count)}); "
          f"database CPU {run_cpu * 1000 / count:.1f} ms per run (target <= 6 commands per run)")
    figure("database commands per no-op run", total / count, "commands", key="trips.run_commands", target="<= 6",
           note=f"database CPU {run_cpu * 1000 / count:.1f} ms per run")


def _names(counts: Counter[str], per: int = 1) -> str:
    return ", ".join(f"{name} {n / per:.2f}" if per > 1 else f"{name} {n}" for name, n in counts.most_common())


if __name__ == "__main__":
    main()
