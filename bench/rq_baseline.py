#!/usr/bin/env python3
"""RQ baselines (not tests): the same no-op work through RQ and a local ``redis-server``, next to Sooner, one run.

Needs ``redis-server`` on PATH (Debian: ``apt-get install -y redis-server``) and
``rq`` (``pip install -e '.[bench]'``). The bench starts its own server on a
free port in a temporary folder (``--save '' --appendonly no``) and stops it.

1. One RQ ``SimpleWorker`` draining ``--runs`` queued jobs, in this process:
   (a) a no-op Python function, which is what RQ's published figures and the
   issue's 82.7 jobs/s baseline measure (RQ runs the function in-process, no
   new process per job); (b) a function that spawns the same no-op script a
   Sooner run executes, the like-for-like comparison (Sooner starts a process
   per run). The Sooner figure for one worker is ``bench/runtime.py`` 1.
2. Enqueue -> started and enqueue -> finished latency, p50, one job at a time
   through an ``rq worker -w rq.SimpleWorker`` process (RQ's own timestamps).
3. ``--runs-4`` jobs through 4 ``rq worker`` SimpleWorker processes (function),
   next to 4 ``sooner worker --capacity 4`` processes on the embedded database
   and a 4-thread ``subprocess`` spawn loop; every figure counts from the first
   enqueue to the last job done, with the workers already up.
4. Idle RSS of an ``rq worker`` process and of ``redis-server``.

    python bench/rq_baseline.py [--runs 500] [--runs-4 1000] [--latency-runs 100] [--json]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import figure, use_json  # noqa: E402

NOOP_SCRIPT = "#!/bin/sh\nexit 0\n"
RQ = str(Path(sys.executable).with_name("rq"))
# Jobs name their function by import path: run as a script this module is __main__, which RQ refuses.
NOOP, SPAWN = "bench.rq_baseline.noop", "bench.rq_baseline.spawn"


def noop() -> None:
    """The RQ job of 1a: nothing at all."""


def spawn(script: str) -> int:
    """The RQ job of 1b: run the no-op script as a Sooner worker would (one process per job)."""
    return subprocess.run([script]).returncode


class RedisServer:
    """A throw-away ``redis-server`` on a free port, no persistence; ``stop()`` ends it."""

    def __init__(self, folder: Path) -> None:
        from sooner.webapp.testing import free_port

        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server not found: apt-get install -y redis-server (Debian) to run the RQ baseline")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--dir", str(folder)], stdout=subprocess.DEVNULL)

    def connect(self):
        import redis

        client = redis.Redis.from_url(self.url)
        wait(lambda: _answers(client), 10, "redis-server to answer PING")
        return client

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def _answers(client) -> bool:
    import redis

    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def wait(condition, timeout: float, what: str, poll_s: float = 0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"timed out waiting for {what}")


def rq_workers(url: str, count: int, folder: Path) -> list[subprocess.Popen]:
    """``count`` ``rq worker`` SimpleWorker processes on queue ``default``, importing this module from ROOT."""
    return [subprocess.Popen([RQ, "worker", "-w", "rq.worker.SimpleWorker", "-u", url, "-P", str(ROOT), "-n",
                              f"bench-{i}-{os.getpid()}", "-q"], cwd=folder, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL) for i in range(count)]


def stop_all(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def one_worker(connection, script: str, count: int) -> dict[str, float]:
    """1: jobs/s of one in-process SimpleWorker draining ``count`` queued jobs, per job kind."""
    from rq import Queue, SimpleWorker

    queue = Queue("one", connection=connection)
    rates = {}
    for kind, func, args in (("function", NOOP, ()), ("spawn", SPAWN, (script,))):
        queue.enqueue_many([Queue.prepare_data(func, args) for _ in range(count)])
        worker = SimpleWorker([queue], connection=connection)
        started = time.perf_counter()
        worker.work(burst=True, logging_level="WARNING")
        rates[kind] = count / (time.perf_counter() - started)
        if queue.finished_job_registry.count < count:
            raise RuntimeError(f"RQ finished {queue.finished_job_registry.count} of {count} {kind} jobs")
        connection.flushdb()
    return rates


def rq_latency(connection, url: str, folder: Path, count: int) -> tuple[list[float], list[float]]:
    """2: enqueue -> started and enqueue -> finished, ms, one job at a time through one ``rq worker`` process."""
    from rq import Queue

    queue = Queue(connection=connection)
    workers = rq_workers(url, 1, folder)
    try:
        warm = queue.enqueue(NOOP)
        wait(lambda: warm.get_status(refresh=True) == "finished", 60, "the RQ worker's first job")
        started, finished = [], []
        for i in range(count):
            job = queue.enqueue(NOOP)
            wait(lambda: job.get_status(refresh=True) == "finished", 30, "an RQ job")
            job.refresh()
            started.append((job.started_at - job.enqueued_at).total_seconds() * 1000)
            finished.append((job.ended_at - job.enqueued_at).total_seconds() * 1000)
            time.sleep(0.005 + (i % 7) * 0.004)  # as bench/runtime.py: enqueue at varying points
        return started, finished
    finally:
        stop_all(workers)


def rq_four(connection, url: str, folder: Path, count: int) -> tuple[float, int]:
    """3: jobs/s of 4 ``rq worker`` processes, workers up first; and the RSS of one of them while idle."""
    from rq import Queue, Worker

    queue = Queue(connection=connection)  # "default", the queue rq worker listens on
    workers = rq_workers(url, 4, folder)
    try:
        wait(lambda: len(Worker.all(connection=connection)) >= 4, 60, "4 RQ workers", poll_s=0.05)
        rss = psutil.Process(workers[0].pid).memory_info().rss  # idle: registered, nothing queued yet
        warm = [queue.enqueue(NOOP) for _ in range(8)]  # every worker has imported this module
        wait(lambda: all(j.get_status(refresh=True) == "finished" for j in warm), 60, "the warm-up jobs")
        before = queue.finished_job_registry.count
        started = time.perf_counter()
        queue.enqueue_many([Queue.prepare_data(NOOP, ()) for _ in range(count)])
        wait(lambda: queue.finished_job_registry.count >= before + count, 600, f"{count} RQ jobs", poll_s=0.01)
        return count / (time.perf_counter() - started), rss
    finally:
        stop_all(workers)


def spawn_threads(script: str, count: int, threads: int = 4) -> float:
    """3, baseline: spawns/s of ``threads`` threads each running the script with subprocess in a loop."""
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda _: subprocess.run([script]), range(count)))
    return count / (time.perf_counter() - started)


def sooner_four(folder: Path, count: int) -> tuple[float, float, float]:
    """3: runs/s of 4 ``sooner worker --capacity 4`` processes on the embedded database, workers up first,
    the seconds this process took to queue the runs (one by one, through the run service), and the
    drain rate alone: the same number of runs queued while no worker runs, then 4 fresh workers
    started, from the first run's recorded start to the last one's end."""
    from sooner.model import ManualTrigger, RunStatus
    from sooner.runs.service import RunService
    from sooner.site import init_site
    from sooner.store import open_store
    from sooner.store.embedded import EmbeddedServer
    from sooner.webapp.testing import Process
    from sooner.worker.testing import deploy_files

    settings = init_site(folder / "site")
    config = folder / "site" / "config.json"
    store = open_store(settings)
    workers: list[Process] = []

    def start_workers(names: list[str]) -> list[Process]:
        started = [Process(["worker", "-n", name, "--capacity", "4"], config, folder / f"{name}.log")
                   for name in names]
        wait(lambda: all(store.workers.get(name) for name in names), 60, "4 Sooner workers", poll_s=0.05)
        return started

    def drained(ids: list[str]) -> dict:
        wait(lambda: not store.runs.list(status=RunStatus.QUEUED, limit=1)
             and not store.runs.list(status=RunStatus.RUNNING, limit=1), 600, f"{count} runs", poll_s=0.02)
        runs = store.reads.runs_by_id(ids, fields=("status", "started_at", "finished_at"))
        failed = [i for i in ids if runs[i].status is not RunStatus.SUCCEEDED]
        if failed:
            raise RuntimeError(f"{len(failed)} of {count} runs did not succeed, e.g. {failed[:3]}")
        return runs

    try:
        deploy_files(store, {"noop.sh": NOOP_SCRIPT})
        workers = start_workers([f"bench-{i}" for i in range(4)])
        service = RunService(store, settings)
        warm = [service.queue("noop.sh", ManualTrigger()) for _ in range(8)]  # each worker has the tree cached
        wait(lambda: all(store.runs.get(r.id).finished for r in warm if r), 60, "the warm-up runs", poll_s=0.05)
        started = time.perf_counter()
        ids = [run.id for run in (service.queue("noop.sh", ManualTrigger()) for _ in range(count)) if run]
        queued_s = time.perf_counter() - started
        drained(ids)
        elapsed = time.perf_counter() - started
        for worker in workers:
            worker.stop()
        # The drain alone: queue first, then start the workers (their trees are cached by now).
        ids = [run.id for run in (service.queue("noop.sh", ManualTrigger()) for _ in range(count)) if run]
        workers = start_workers([f"drain-{i}" for i in range(4)])
        runs = drained(ids).values()
        first = min(run.started_at for run in runs if run.started_at)
        last = max(run.finished_at for run in runs if run.finished_at)
        return count / elapsed, queued_s, count / max((last - first).total_seconds(), 1e-3)
    finally:
        for worker in workers:
            worker.stop()
        store.close()
        EmbeddedServer(settings.state_dir).stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=500, help="jobs for one worker (1)")
    parser.add_argument("--runs-4", type=int, default=1000, help="jobs for 4 workers (3)")
    parser.add_argument("--latency-runs", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="also print one JSON line per figure (python -m bench)")
    args = parser.parse_args()
    use_json(args.json)
    with tempfile.TemporaryDirectory(prefix="sooner-bench-rq-") as tmp:
        folder = Path(tmp)
        script = folder / "noop.sh"
        script.write_text(NOOP_SCRIPT)
        script.chmod(0o755)
        server = RedisServer(folder)
        try:
            connection = server.connect()
            rates = one_worker(connection, str(script), args.runs)
            print(f"1. one RQ SimpleWorker, {args.runs} queued jobs: {rates['function']:.0f} jobs/s (no-op function, "
                  f"the issue's baseline), {rates['spawn']:.0f} jobs/s (spawning the same no-op script as Sooner)")
            figure("RQ SimpleWorker jobs/s (function)", rates["function"], "jobs/s", key="rq.function")
            figure("RQ SimpleWorker jobs/s (spawning the script)", rates["spawn"], "jobs/s", key="rq.spawn")
            started, finished = rq_latency(connection, server.url, folder, args.latency_runs)
            p50s, p50f = statistics.median(started), statistics.median(finished)
            print(f"2. RQ latency, {args.latency_runs} jobs one at a time: enqueue->started p50 {p50s:.1f} ms, "
                  f"enqueue->finished p50 {p50f:.1f} ms")
            figure("RQ enqueue->started p50", p50s, "ms", key="rq.latency_started")
            figure("RQ enqueue->finished p50 (function)", p50f, "ms", key="rq.latency_finished")
            four, rss = rq_four(connection, server.url, folder, args.runs_4)
            threads = spawn_threads(str(script), args.runs_4)
            sooner, queued_s, drain = sooner_four(folder, args.runs_4)
            print(f"3. {args.runs_4} no-op jobs: 4 Sooner workers x capacity 4 {sooner:.0f} runs/s; 4 RQ "
                  f"SimpleWorkers {four:.0f} jobs/s; 4-thread spawn loop {threads:.0f} spawns/s\n"
                  f"   queueing the Sooner runs one by one took {queued_s:.1f} s of that; queued first, "
                  f"4 fresh workers drained them at {drain:.0f} runs/s")
            figure("no-op runs/s, 4 workers x capacity 4", sooner, "runs/s", key="throughput.four_workers",
                   baseline="4 RQ SimpleWorkers (function)", baseline_value=four, target="ratio >= 1",
                   note=f"queueing took {queued_s:.1f} s")
            figure("no-op runs/s, 4 workers x capacity 4, drain of a full queue", drain, "runs/s",
                   key="throughput.four_workers_drain", baseline="4 RQ SimpleWorkers (function)",
                   baseline_value=four, target="ratio >= 1",
                   note="runs queued before the workers started; first start to last end")
            figure("no-op runs/s, 4 workers x capacity 4 (vs spawning)", sooner, "runs/s",
                   key="throughput.four_workers_spawn", baseline="4-thread subprocess spawn loop",
                   baseline_value=threads, target="ratio >= 0.5")
            redis_rss = psutil.Process(server.process.pid).memory_info().rss
            print(f"4. idle RSS: rq worker {rss / 1e6:.0f} MB, redis-server {redis_rss / 1e6:.0f} MB")
            figure("idle RSS, rq worker", rss / 1e6, "MB", key="rq.worker_rss")
            figure("idle RSS, rq worker + redis-server", (rss + redis_rss) / 1e6, "MB", key="rq.stack_rss")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
