#!/usr/bin/env python3
"""Worker runtime benchmarks (not tests): each figure is printed with its baseline, measured in the same run.

1. no-op job throughput through one worker (capacity 8) on the embedded
   database, vs spawning the same script with subprocess in a loop;
2. dispatch latency, queued -> process started, p50/p95, vs a bare Popen:
   with the worker in this process (the in-process doorbell), and with the
   worker in another process on this host (the host doorbell);
3. progress calls per second over stderr lines and over the socket (20,000
   each), vs the same script writing 20,000 plain lines;
4. output ingest MB/s and worker RSS while a script writes 50 MB, vs ``cat``
   of the same bytes to /dev/null through subprocess.

Targets on a 2-core machine: >= 100 no-op runs/s, p50 dispatch < 50 ms,
>= 20,000 calls/s, >= 20 MB/s with worker RSS < 100 MB.

    python bench/runtime.py [--runs 500] [--latency-runs 100] [--only N] [--json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import figure, use_json  # noqa: E402
from sooner.config import load_settings  # noqa: E402
from sooner.model import ManualTrigger, Run, RunStatus  # noqa: E402
from sooner.runs.service import RunService  # noqa: E402
from sooner.site import init_site  # noqa: E402
from sooner.store import open_store  # noqa: E402
from sooner.store.embedded import EmbeddedServer  # noqa: E402
from sooner.worker.loop import Worker  # noqa: E402
from sooner.worker.testing import deploy_files  # noqa: E402
from sooner.worker.tree import TreeCache  # noqa: E402

PY = "#!" + sys.executable + "\n"
CALLS = 20_000
OUTPUT_MB = 50

# Scripts that time a phase print "start=<epoch>" first; the phase ends when the run is recorded as finished.
STAMP = "import sys, time\nprint(f'start={time.time()}', flush=True)\n"
SCRIPTS = {
    "noop.sh": "#!/bin/sh\nexit 0\n",
    "stderr_calls.py": PY + STAMP + f"w = sys.stderr.write\nfor i in range({CALLS}):\n"
                                    f"    w('>>> sooner.progress(%d, {CALLS})\\n' % i)\n",
    "api_calls.py": PY + "from sooner import api\n" + STAMP + f"for i in range({CALLS}):\n    api.progress(i, {CALLS})\n",
    "socket_calls.py": PY + "from sooner.api_client import connect_from_env\nc = connect_from_env()\n" + STAMP
                       + f"for i in range({CALLS}):\n    c.progress(i, {CALLS})\n",
    "plain_lines.py": PY + STAMP + f"w = sys.stderr.write\nfor i in range({CALLS}):\n"
                                   f"    w('progress %d of {CALLS}\\n' % i)\n",
    "big_output.py": PY + STAMP + "line = ('x' * 1023 + '\\n').encode()\nblock = line * 64\n"
                                 f"out = sys.stdout.buffer\nfor _ in range({OUTPUT_MB} * 16):\n    out.write(block)\n",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500, help="no-op runs for the throughput figure")
    parser.add_argument("--latency-runs", type=int, default=100)
    parser.add_argument("--only", type=int, choices=[1, 2, 3, 4, 5], help="run only this benchmark (5: step 2 with the "
                        "worker in another process)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line per figure (python -m bench)")
    args = parser.parse_args()
    use_json(args.json)
    with tempfile.TemporaryDirectory(prefix="sooner-bench-") as tmp:
        settings = init_site(Path(tmp) / "site")
        # The ingest script writes OUTPUT_MB plus a stamp line, just over the default per-run cap (50 MiB).
        settings = load_settings(settings.site_dir / "config.json", environ={},
                                 overrides={"database": f"bench{uuid.uuid4().hex[:8]}",
                                            "output_max_bytes_per_run": 2 * OUTPUT_MB * 2 ** 20})
        store = open_store(settings)
        try:
            deploy_files(store, SCRIPTS)
            cache = Path(tmp) / "cache"
            tree = TreeCache(store, cache).path_for(store.deploys.latest()["commit"])
            if args.only in (None, 1):
                throughput(store, settings, tree, cache, args.runs)
            if args.only in (None, 5):
                latency_other_process(store, settings, cache, args.latency_runs)
            worker = Worker(store, settings, "bench", capacity=8, cache=cache)
            worker.register()
            stop = threading.Event()
            thread = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True)
            thread.start()
            steps = {2: lambda: latency(store, worker, args.latency_runs),
                     3: lambda: rpc(store, worker, tree),
                     4: lambda: ingest(store, worker, tree, Path(tmp))}
            for number, step in steps.items():
                if args.only in (None, number):
                    step()
            stop.set()
            thread.join(60)
        finally:
            store.client.drop_database(settings.database)
            store.close()
            EmbeddedServer(settings.state_dir).stop()


def queue(store, job) -> Run:
    """A manual run of ``job`` (a name or a Job), queued through the run service."""
    run = RunService(store).queue(job, ManualTrigger())
    assert run is not None
    return run


def run_and_wait(store, job: str, timeout: float = 300) -> Run:
    return wait_finished(store, queue(store, job).id, timeout)


def wait_finished(store, run_id: str, timeout: float = 300, poll_s: float = 0.05) -> Run:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = store.runs.get(run_id)
        if run.finished:
            return run
        time.sleep(poll_s)
    raise TimeoutError(f"run {run_id} did not finish")


def throughput(store, settings, tree: Path, cache: Path, count: int) -> None:
    started = time.perf_counter()
    for _ in range(count):
        subprocess.run([str(tree / "noop.sh")], cwd=tree)
    baseline = count / (time.perf_counter() - started)
    job = store.jobs.get("noop.sh")
    # Queue everything first, then let a fresh worker drain the queue.
    runs = [queue(store, job).id for _ in range(count)]
    worker = Worker(store, settings, "bench-throughput", capacity=8, cache=cache)
    worker.register()
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True)
    cpu = _cpu_meter(settings)
    started = time.perf_counter()
    thread.start()
    wait_finished(store, runs[-1], poll_s=0.05)
    while store.runs.list(status=RunStatus.QUEUED, limit=1) or store.runs.list(status=RunStatus.RUNNING, limit=1):
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    usage = cpu()
    stop.set()
    thread.join(30)
    failed = [r for r in runs if store.runs.get(r).status is not RunStatus.SUCCEEDED]
    assert not failed, failed[:3]
    rate = count / elapsed
    print(f"1. no-op throughput: {rate:.0f} runs/s through one worker (capacity {worker.capacity}) "
          f"vs {baseline:.0f} spawns/s with subprocess in a loop -> ratio {rate / baseline:.2f} "
          f"(target >= 100 runs/s)\n   CPU seconds during it, for {count} runs: {usage}")
    figure(f"no-op runs/s, one worker (capacity {worker.capacity})", rate, "runs/s", key="throughput.one_worker",
           baseline="subprocess spawn loop", baseline_value=baseline, target="ratio >= 0.5", note=usage)


def _cpu_meter(settings):
    """CPU time used from now on by this process (the worker), its children (scripts), the database server, and
    the whole machine (the launcher, the runs' supervisors and scripts are not this process's reaped children)."""
    info = EmbeddedServer(settings.state_dir).status()
    server = psutil.Process(info.pid) if info.pid else None
    me = psutil.Process()

    def snapshot() -> tuple[float, float, float]:
        mine = me.cpu_times()
        db = server.cpu_times() if server else None
        return (mine.user + mine.system, mine.children_user + mine.children_system,
                (db.user + db.system) if db else 0.0)
    before, machine_before, started = snapshot(), psutil.cpu_times(), time.monotonic()

    def report() -> str:
        after, machine = snapshot(), psutil.cpu_times()
        worker, scripts, db = (a - b for a, b in zip(after, before))
        busy = sum(getattr(machine, f) - getattr(machine_before, f) for f in ("user", "system", "nice", "irq",
                                                                               "softirq") if hasattr(machine, f))
        cores = busy / max(time.monotonic() - started, 1e-9)
        return (f"worker {worker:.1f}, scripts {scripts:.1f}, database server {db:.1f}; the machine "
                f"{busy:.1f} ({cores:.2f} of {psutil.cpu_count()} cores busy)")
    return report


WORKER_PROCESS = """
import sys, threading
from sooner.config import load_settings
from sooner.store import open_store
from sooner.worker.loop import Worker
from pathlib import Path
settings = load_settings(Path(sys.argv[1]), environ={}, overrides={"database": sys.argv[2]})
store = open_store(settings)
from pathlib import Path
worker = Worker(store, settings, "bench-other-process", capacity=8, cache=Path(sys.argv[3]))
worker.register()
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set(), worker.finished.set()), daemon=True).start()
print("ready", flush=True)
worker.run_forever(stop)
"""


def latency_other_process(store, settings, cache: Path, count: int) -> None:
    """Step 2's latencies with the worker in another process: runs queued here reach it by the host doorbell."""
    worker = subprocess.Popen([sys.executable, "-c", WORKER_PROCESS, str(settings.site_dir / "config.json"),
                               settings.database, str(cache)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        run_and_wait(store, "noop.sh")  # warm: the tree is materialised, the launcher started
        delays, complete = queue_and_time(store, count)
    finally:
        assert worker.stdin is not None
        worker.stdin.close()
        worker.wait(60)
    p50, done50 = statistics.median(delays), statistics.median(complete)
    print(f"5. the same with the worker in another process: queued->started p50 {p50:.1f} ms, "
          f"p95 {_percentile(delays, 95):.1f} ms; queued->finished p50 {done50:.1f} ms, "
          f"p95 {_percentile(complete, 95):.1f} ms")
    figure("dispatch latency queued->started p50, worker in another process", p50, "ms",
           key="latency.started_other_process", target="< 10", note=f"p95 {_percentile(delays, 95):.1f} ms")
    figure("manual run queued->no-op finished p50, worker in another process", done50, "ms",
           key="latency.finished_other_process", target="< 25", note=f"p95 {_percentile(complete, 95):.1f} ms")


def queue_and_time(store, count: int) -> tuple[list[float], list[float]]:
    """Queue ``count`` no-op runs one after another; their queued->started and queued->finished ms."""
    job = store.jobs.get("noop.sh")
    delays, complete = [], []
    for i in range(count):
        run = queue(store, job)
        done = wait_finished(store, run.id)
        assert done.started_at is not None and done.finished_at is not None and run.queued_at is not None, done
        delays.append((done.started_at - run.queued_at).total_seconds() * 1000)
        complete.append((done.finished_at - run.queued_at).total_seconds() * 1000)
        time.sleep(0.005 + (i % 7) * 0.004)  # queue at varying points of the worker's poll cycle
    return delays, complete


def latency(store, worker: Worker, count: int) -> None:
    worker.wait_idle(30)
    delays, complete = queue_and_time(store, count)
    spawn, spawn_done = [], []
    for _ in range(50):
        t = time.perf_counter()
        process = subprocess.Popen(["/bin/sh", "-c", "exit 0"])
        spawn.append((time.perf_counter() - t) * 1000)
        process.wait()
        spawn_done.append((time.perf_counter() - t) * 1000)
    p50, p95 = statistics.median(delays), _percentile(delays, 95)
    base = statistics.median(spawn)
    print(f"2. dispatch latency queued->started: p50 {p50:.1f} ms, p95 {p95:.1f} ms "
          f"vs bare Popen {base:.1f} ms -> ratio p50 {p50 / base:.1f} (target p50 < 50 ms)")
    done50, base_done = statistics.median(complete), statistics.median(spawn_done)
    print(f"   manual run queued->finished (no-op): p50 {done50:.1f} ms, p95 {_percentile(complete, 95):.1f} ms "
          f"vs Popen+wait {base_done:.1f} ms (target p50 < 25 ms)")
    figure("dispatch latency queued->started p50", p50, "ms", key="latency.started", baseline="bare Popen",
           baseline_value=base, target="< 10", note=f"p95 {p95:.1f} ms, {count} runs")
    figure("manual run queued->no-op finished p50", done50, "ms", key="latency.finished",
           baseline="Popen + wait", baseline_value=base_done, target="< 25",
           note=f"p95 {_percentile(complete, 95):.1f} ms")


def phase_seconds(store, run: Run) -> float:
    """From the script's "start=" stamp (after its imports) to the run's recorded end."""
    first = store.output.read(run.id, limit=3)
    start = next(float(line[6:]) for chunk in first for line in chunk["text"].splitlines() if line.startswith("start="))
    assert run.finished_at is not None, run
    return max(run.finished_at.timestamp() - start, 1e-3)


def rpc(store, worker: Worker, tree: Path) -> None:
    started = time.perf_counter()
    subprocess.run([str(tree / "plain_lines.py")], cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_rate = CALLS / (time.perf_counter() - started)
    plain = run_and_wait(store, "plain_lines.py")
    sooner_plain = CALLS / phase_seconds(store, plain)
    figure("plain lines/s through the worker", sooner_plain, "lines/s", key="rpc.plain_lines",
           baseline="the script to /dev/null", baseline_value=base_rate)
    print(f"3. protocol calls (20,000 progress calls, timed after the script's imports); baseline: the script "
          f"writing 20,000 plain lines: {base_rate:,.0f} lines/s to /dev/null (with Python start-up), "
          f"{sooner_plain:,.0f} lines/s through the worker")
    for job, label in (("stderr_calls.py", "stderr lines"), ("api_calls.py", "socket via sooner.api (notifications)"),
                       ("socket_calls.py", "socket, request/response each")):
        run = run_and_wait(store, job)
        assert run.status is RunStatus.SUCCEEDED and run.progress and run.progress.current == CALLS - 1, run
        rate = CALLS / phase_seconds(store, run)
        print(f"   {label}: {rate:,.0f} calls/s -> ratio {rate / sooner_plain:.2f} to plain lines through the worker "
              f"(target >= 20,000 calls/s)")
        figure(f"progress calls/s, {label}", rate, "calls/s", key=f"rpc.{job}",
               baseline="plain lines through the worker", baseline_value=sooner_plain, target=">= 20000")


def ingest(store, worker: Worker, tree: Path, tmp: Path) -> None:
    sample = tmp / "big.txt"
    with open(sample, "wb") as handle:
        subprocess.run([str(tree / "big_output.py")], cwd=tree, stdout=handle, check=True)
    size_mb = sample.stat().st_size / 1e6
    started = time.perf_counter()
    subprocess.run(["cat", str(sample)], stdout=subprocess.DEVNULL, check=True)
    base = size_mb / (time.perf_counter() - started)
    process = psutil.Process()
    peak = [process.memory_info().rss]
    done = threading.Event()

    def sample_rss() -> None:
        while not done.wait(0.02):
            peak.append(process.memory_info().rss)
    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    cpu = _cpu_meter(worker.settings)
    run = run_and_wait(store, "big_output.py")
    usage = cpu()
    done.set()
    sampler.join()
    assert run.status is RunStatus.SUCCEEDED, run
    stdout = [c["text"] for c in store.output.read(run.id) if c["stream"] == "stdout"]
    stamp = len(stdout[0].split("\n", 1)[0])
    with open(sample, "rb") as handle:
        sample_stamp = len(handle.readline()) - 1
    chars = sum(len(text) for text in stdout)
    assert chars - stamp == sample.stat().st_size - sample_stamp, (chars, sample.stat().st_size)  # all bytes
    rate = size_mb / phase_seconds(store, run)
    print(f"4. output ingest: {rate:.1f} MB/s ({size_mb:.0f} MB, all bytes stored), peak RSS of the "
          f"process running the worker {max(peak) / 1e6:.0f} MB vs cat to /dev/null {base:.0f} MB/s "
          f"-> ratio {rate / base:.3f} (target >= 20 MB/s, RSS < 100 MB)\n   CPU seconds during it: {usage}")
    figure(f"output ingest ({size_mb:.0f} MB)", rate, "MB/s", key="ingest.rate", baseline="cat to /dev/null",
           baseline_value=base, target=">= 20", note=usage)
    figure("peak RSS of the worker process during ingest", max(peak) / 1e6, "MB", key="ingest.rss", target="< 100")


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
