#!/usr/bin/env python3
"""Scheduler scale (not a test): N jobs on an every-second schedule, every tick fired? how late? next to bare inserts.

For each N in ``--jobs`` (default 100,1000): a fresh database on the site's
embedded server, N deployed jobs on ``* * * * * *`` (overlap allow), and a
real ``sooner scheduler`` process for ``--seconds``. No worker runs, so the
runs stay queued; the database is dropped afterwards. Then, over the ticks
from ``WARM_UP_S`` after the first fire to ``TAIL_S`` before the stop:

- missed = N x seconds - distinct (job, tick) runs, and the missed-tick
  records (``store.missed``) the scheduler wrote in that window;
- lateness = the run's ``queued_at`` (stamped when it is inserted) minus its
  ``trigger.scheduled_for``, p50/p99/max;
- CPU seconds of the scheduler process and of the database server (psutil).

Baseline, same database, same N and seconds: a loop in this process that
wakes at each second and inserts N run-sized documents (one ``insert_many``,
as the scheduler's tick does) into a scratch collection, with ``queued_at``
stamped the same way; the same lateness measure and CPU.

Targets (issue #12): 0 missed; lateness p99 < 1 s at 1,000 jobs and < 100 ms at 100 jobs.

    python bench/scheduler_scale.py [--jobs 100,1000] [--seconds 30] [--json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import figure, use_json  # noqa: E402
from sooner.config import load_settings  # noqa: E402
from sooner.site import init_site  # noqa: E402
from sooner.store import open_store  # noqa: E402
from sooner.store.embedded import EmbeddedServer  # noqa: E402
from sooner.webapp.testing import Process  # noqa: E402
from sooner.worker.testing import deploy_files  # noqa: E402

WARM_UP_S = 2  # the first ticks: the scheduler takes every job's cursor, caches are cold
TAIL_S = 2  # ticks this close to the stop may still be in flight
TARGET_P99_MS = {100: 100, 1000: 1000}


def cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def fires(store) -> list[tuple[str, datetime, datetime]]:
    """(job, scheduled_for, queued_at) of every cron run in the database."""
    docs = store.collection("runs").find({}, {"job": 1, "trigger": 1, "queued_at": 1})
    return [(d["job"], _utc(d["trigger"]["scheduled_for"]), _utc(d["queued_at"])) for d in docs
            if (d.get("trigger") or {}).get("scheduled_for") and d.get("queued_at")]


def window(since: datetime, stopped: datetime) -> tuple[datetime, datetime]:
    """The whole seconds measured: from WARM_UP_S after ``since`` (the first fire seen) to TAIL_S before the stop.

    A tick in the window that has no run by the stop, TAIL_S later or more, counts as missed.
    """
    first = since.replace(microsecond=0) + timedelta(seconds=WARM_UP_S)
    last = stopped.replace(microsecond=0) - timedelta(seconds=TAIL_S)
    return first, last


def summarise(rows: list[tuple[str, datetime, datetime]], jobs: int, since: datetime, stopped: datetime) -> dict:
    if not rows:
        raise SystemExit("nothing fired: see the scheduler log")
    first, last = window(since, stopped)
    seconds = int((last - first).total_seconds()) + 1
    inside = [(job, tick, queued) for job, tick, queued in rows if first <= tick <= last]
    late = [(queued - tick).total_seconds() * 1000 for _, tick, queued in inside]
    fired = len({(job, tick) for job, tick, _ in inside})
    return {"first": first, "last": last, "expected": jobs * seconds, "fired": fired,
            "missed": jobs * seconds - fired, "p50": pct(late, 0.5), "p99": pct(late, 0.99),
            "max": max(late, default=float("nan")), "seconds": seconds}


def scheduler_run(store, config: Path, log: Path, database: psutil.Process, jobs: int, seconds: float) -> dict:
    files = {f"every/{i:04d}.sh": "#!/bin/sh\nexit 0\n" for i in range(jobs)}
    deploy_files(store, files, settings={name: {"schedule": "* * * * * *", "overlap": "allow"} for name in files})
    scheduler = Process(["scheduler"], config, log, env={"SOONER_DATABASE": store.database_name})
    process = psutil.Process(scheduler.process.pid)
    runs = store.collection("runs")
    deadline = time.monotonic() + 60
    while runs.find_one({}, {"_id": 1}) is None:  # CPU counts from the first fire: start-up is not the figure
        if time.monotonic() > deadline or not scheduler.alive():
            scheduler.stop()
            raise SystemExit(f"the scheduler fired nothing within 60 s:\n{scheduler.output()[-2000:]}")
        time.sleep(0.02)
    since = datetime.now(timezone.utc)
    sched_before, db_before = cpu_s(process), cpu_s(database)
    time.sleep(seconds)  # the measured period itself, not a synchronisation: the scheduler runs meanwhile
    sched_cpu, db_cpu = cpu_s(process) - sched_before, cpu_s(database) - db_before
    stopped = datetime.now(timezone.utc)
    if not scheduler.alive():
        raise SystemExit(f"the scheduler exited:\n{scheduler.output()[-2000:]}")
    scheduler.stop()
    for name in files:
        store.jobs.set_enabled(name, False)
    stats = summarise(fires(store), jobs, since, stopped)
    records = [m for m in store.missed.list() if stats["first"] <= _utc(m.scheduled_for) <= stats["last"]]
    return {**stats, "records": len(records), "cpu": sched_cpu, "db_cpu": db_cpu}


def bare_run(store, database: psutil.Process, jobs: int, seconds: float) -> dict:
    """The baseline: wake at each whole second, insert ``jobs`` run-sized documents at once; a late loop catches up."""
    sample = store.collection("runs").find_one({}, {"_id": 0}) or {}
    scratch = store.collection("bench_bare_fires")
    stop = threading.Event()
    me = psutil.Process()
    acks: list[float] = []  # tick -> insert_many acknowledged, ms: what the lateness measure leaves out

    def loop() -> None:
        tick = datetime.now(timezone.utc).replace(microsecond=0)
        while not stop.is_set():
            tick += timedelta(seconds=1)  # every tick, late if the inserts fall behind (as the scheduler catches up)
            if stop.wait(max(0.0, (tick - datetime.now(timezone.utc)).total_seconds())):
                return
            queued = datetime.now(timezone.utc)
            scratch.insert_many([{**sample, "_id": uuid.uuid4().hex, "job": f"every/{i:04d}.sh",
                                  "trigger": {"type": "cron", "scheduled_for": tick}, "queued_at": queued}
                                 for i in range(jobs)], ordered=False)
            acks.append((datetime.now(timezone.utc) - tick).total_seconds() * 1000)
    since = datetime.now(timezone.utc)
    cpu_before, db_before = cpu_s(me), cpu_s(database)
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    time.sleep(seconds)  # the measured period
    stopped = datetime.now(timezone.utc)
    stop.set()
    thread.join(60)
    cpu, db_cpu = cpu_s(me) - cpu_before, cpu_s(database) - db_before
    rows = [(d["job"], _utc(d["trigger"]["scheduled_for"]), _utc(d["queued_at"]))
            for d in scratch.find({}, {"job": 1, "trigger": 1, "queued_at": 1})]
    scratch.drop()
    return {**summarise(rows, jobs, since, stopped), "cpu": cpu, "db_cpu": db_cpu, "ack_p99": pct(acks, 0.99)}


def report(jobs: int, seconds: float, sched: dict, bare: dict) -> None:
    print(f"{jobs} jobs every second, {sched['seconds']} ticks measured ({seconds:g} s run, "
          f"{sched['first']:%H:%M:%S}-{sched['last']:%H:%M:%S})")
    for name, row in (("sooner scheduler", sched), ("baseline: bare insert_many", bare)):
        extra = f", {row['records']} missed-tick records" if "records" in row else ""
        extra += f", insert acknowledged p99 {row['ack_p99']:.0f} ms after the tick" if "ack_p99" in row else ""
        print(f"   {name:<28} fired {row['fired']}/{row['expected']} (missed {row['missed']}{extra}); lateness "
              f"p50 {row['p50']:.1f} ms, p99 {row['p99']:.1f} ms, max {row['max']:.1f} ms; CPU s: process "
              f"{row['cpu']:.1f}, database {row['db_cpu']:.1f}")
    figure(f"scheduler, {jobs} every-second jobs: missed ticks", sched["missed"], "ticks", key=f"scale.{jobs}.missed",
           baseline="bare insert_many at the tick", baseline_value=bare["missed"], target="<= 0",
           note=f"{sched['fired']}/{sched['expected']} fired, {sched['records']} missed-tick records")
    target = TARGET_P99_MS.get(jobs)
    if sched["fired"] == 0:  # nothing to measure lateness on: later than the whole window
        print(f"   no run of a tick in the window was stored within {TAIL_S} s of the stop: lateness is unknown")
    figure(f"scheduler, {jobs} every-second jobs: lateness p99", sched["p99"], "ms", key=f"scale.{jobs}.p99",
           baseline="bare insert_many at the tick", baseline_value=bare["p99"],
           target=f"< {target}" if target else None, note=f"p50 {sched['p50']:.1f} ms, max {sched['max']:.1f} ms; "
                                                          f"baseline insert acknowledged p99 {bare['ack_p99']:.0f} ms")
    figure(f"scheduler, {jobs} every-second jobs: CPU", sched["cpu"] / seconds * 100, "% of a core",
           key=f"scale.{jobs}.cpu", baseline="bare insert loop", baseline_value=bare["cpu"] / seconds * 100,
           note=f"database server {sched['db_cpu'] / seconds * 100:.0f}% (baseline "
                f"{bare['db_cpu'] / seconds * 100:.0f}%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", default="100,1000", help="comma-separated job counts, one measurement each")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the scheduler runs per job count")
    parser.add_argument("--json", action="store_true", help="also print one JSON line per figure (python -m bench)")
    args = parser.parse_args()
    use_json(args.json)
    counts = [int(part) for part in args.jobs.split(",") if part.strip()]
    if args.seconds < WARM_UP_S + TAIL_S + 2:
        raise SystemExit(f"--seconds must be at least {WARM_UP_S + TAIL_S + 2}")
    with tempfile.TemporaryDirectory(prefix="sooner-bench-scale-") as tmp:
        root = Path(tmp)
        settings = init_site(root / "site")
        config = root / "site" / "config.json"
        try:
            for jobs in counts:
                scoped = load_settings(config, environ={}, overrides={"database": f"scale{jobs}{uuid.uuid4().hex[:6]}"})
                store = open_store(scoped)
                try:
                    database = psutil.Process(EmbeddedServer(settings.state_dir).status().pid)
                    sched = scheduler_run(store, config, root / f"scheduler-{jobs}.log", database, jobs, args.seconds)
                    bare = bare_run(store, database, jobs, args.seconds)
                    report(jobs, args.seconds, sched, bare)
                finally:
                    store.client.drop_database(scoped.database)
                    store.close()
        finally:
            EmbeddedServer(settings.state_dir).stop()


if __name__ == "__main__":
    main()
