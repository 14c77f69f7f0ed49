#!/usr/bin/env python3
"""A run's process start (not tests): CPU and latency of ``Launcher.start`` next to a bare ``posix_spawn``.

Each start of a no-op ``/bin/sh`` script goes through the worker's launcher: a
fork of the launcher becomes the run's supervisor, which spawns the script and
waits until its tree is gone. The CPU of the launcher's whole tree (launcher,
supervisors, scripts: ``psutil`` reads the launcher's own and reaped children's
times, and those of each supervisor alive, with its scripts) is divided by the starts, and compared with the same script started by
``os.posix_spawn`` from this process and waited for, in the same run.

    python bench/launcher.py [--starts 300] [--json]
"""

from __future__ import annotations

import argparse
import os
import resource
import select
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import figure, use_json  # noqa: E402
from sooner.worker.supervise import IDLE_S, Launcher, Supervised  # noqa: E402

ENV = {"PATH": "/usr/bin:/bin"}


def _tree_cpu(process: psutil.Process) -> float:
    """CPU seconds of the launcher, the supervisors it reaped, and those alive now (each with its scripts)."""
    times = process.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in process.children():
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue  # reaped meanwhile: counted in the launcher's children_* from now on (a small miss)
        total += times.user + times.system + times.children_user + times.children_system
    return total


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _until_gone(supervised: Supervised) -> None:
    while not supervised.status_closed:
        select.select([supervised.status_fd], [], [])
        supervised.read_status()
    supervised.close()


def _wait_idle(launcher_process: psutil.Process) -> None:
    """Until no supervisor has a child left (the last scripts' times reached their supervisors)."""
    deadline = time.monotonic() + 10 * IDLE_S
    while any(child.children() for child in launcher_process.children()) and time.monotonic() < deadline:
        time.sleep(IDLE_S / 5)


def launcher_starts(script: str, cwd: str, starts: int) -> tuple[float, float]:
    """(CPU ms of the launcher's tree per start, p50 ms of Launcher.start)."""
    launcher = Launcher()
    try:
        launcher.warm()
        assert launcher._process is not None
        process = psutil.Process(launcher._process.pid)
        for _ in range(20):  # warm-up: the launcher's pages, the page cache
            _until_gone(launcher.start([script], cwd=cwd, env=ENV))
        _wait_idle(process)
        cpu, latencies = _tree_cpu(process), []
        for _ in range(starts):
            started = time.perf_counter()
            supervised = launcher.start([script], cwd=cwd, env=ENV)
            latencies.append(time.perf_counter() - started)
            _until_gone(supervised)
        _wait_idle(process)
        cpu = _tree_cpu(process) - cpu
    finally:
        launcher.close()
    latencies.sort()
    return cpu * 1000 / starts, latencies[len(latencies) // 2] * 1000


def bare_spawns(script: str, starts: int) -> tuple[float, float]:
    """(CPU ms of the script per spawn, p50 ms of posix_spawn) from this process."""
    for _ in range(20):
        os.waitpid(os.posix_spawn(script, [script], ENV), 0)
    cpu, latencies = _children_cpu(), []
    for _ in range(starts):
        started = time.perf_counter()
        pid = os.posix_spawn(script, [script], ENV)
        latencies.append(time.perf_counter() - started)
        os.waitpid(pid, 0)
    latencies.sort()
    return (_children_cpu() - cpu) * 1000 / starts, latencies[len(latencies) // 2] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=300, help="no-op scripts started each way")
    parser.add_argument("--json", action="store_true", help="also print one JSON line per figure (python -m bench)")
    args = parser.parse_args()
    use_json(args.json)
    with tempfile.TemporaryDirectory(prefix="sooner-bench-") as tmp:
        script = os.path.join(tmp, "noop.sh")
        Path(script).write_text("#!/bin/sh\nexit 0\n")
        os.chmod(script, 0o755)
        cpu, p50 = launcher_starts(script, tmp, args.starts)
        bare_cpu, bare_p50 = bare_spawns(script, args.starts)
    print(f"Launcher.start of a no-op script, {args.starts} times: {cpu:.2f} ms of CPU per start "
          f"(launcher, supervisor, script), start p50 {p50:.2f} ms")
    print(f"posix_spawn of the same script: {bare_cpu:.2f} ms of CPU per start, spawn p50 {bare_p50:.2f} ms")
    figure("CPU per run start (launcher, supervisor, script)", cpu, "ms", baseline="posix_spawn of the script",
           baseline_value=bare_cpu, key="launcher.cpu")
    figure("Launcher.start p50", p50, "ms", baseline="posix_spawn p50", baseline_value=bare_p50, key="launcher.p50")


if __name__ == "__main__":
    main()
