#!/usr/bin/env python3
"""Footprint of ``sooner up`` and start-up time of one-shot commands (a bench, not a test; issue #12).

Starts ``sooner up`` on a temporary site (HOME in a temporary folder, a free
port), waits for ``/healthz`` and for the local worker, lets it settle, then
sums RSS and USS over the whole process tree (``sooner up`` and its
descendants, plus the embedded database, which runs in a session of its own)
and lists each process. Then it times one-shot commands against the running
site (``sooner --help``, ``sooner jobs``), each the median of ``--repeat``
runs, with the baselines measured in the same run: ``python -c pass``,
``python -c "import pymongo"`` and ``python -c "import pymongo, flask"``.

Targets (issue #12): the idle tree under 150 MB RSS; ``sooner jobs`` well
under 380 ms.

    python bench/footprint.py [--repeat 7] [--settle 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise SystemExit(f"bench: gave up waiting for {what}")


def tree(root: psutil.Process, db_pid: int | None) -> list[psutil.Process]:
    processes = [root, *root.children(recursive=True)]
    if db_pid and db_pid not in {p.pid for p in processes}:
        try:
            processes.append(psutil.Process(db_pid))
        except psutil.NoSuchProcess:
            pass
    return processes


def describe(process: psutil.Process) -> tuple[str, float, float | None]:
    cmdline = " ".join(process.cmdline())
    if "-c" in process.cmdline() and "supervise" in cmdline:
        cmdline = "launcher (worker/supervise.py)"
    memory = process.memory_full_info() if hasattr(process, "memory_full_info") else process.memory_info()
    uss = getattr(memory, "uss", None)
    return cmdline[:90], memory.rss / 1e6, uss / 1e6 if uss is not None else None


def timed(command: list[str], repeat: int, env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Median wall time and median CPU time (user + system; ms) of ``command``.

    CPU time is the steadier figure on a shared machine: waiting for a core counts in wall time only.
    """
    walls, cpus = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _pid, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        walls.append((time.perf_counter() - start) * 1000)
        cpus.append((usage.ru_utime + usage.ru_stime) * 1000)
        if process.returncode != 0:
            raise SystemExit(f"bench: {' '.join(command)} failed")
    return statistics.median(walls), statistics.median(cpus)


# ru_maxrss would not do: Linux carries a parent's peak over fork and exec. VmHWM is this
# process image's own peak; each interpreter reports it, from inside, into a file.
REPORT = ("\nwith open('/proc/self/status') as _s, open({out!r}, 'w') as _f:\n"
          "    _f.write(next(line.split()[1] for line in _s if line.startswith('VmHWM:')))\n")
SOONER = "import sys\nsys.argv = ['sooner', *{args!r}]\nfrom sooner.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass"


def peak_rss_mb(code: str, env: dict[str, str], cwd: Path) -> float:
    with tempfile.NamedTemporaryFile(suffix=".rss") as out:
        subprocess.run([PY, "-c", code + REPORT.format(out=out.name)], env=env, cwd=cwd,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        return int(Path(out.name).read_text()) / 1000  # KB on Linux


def measure_tree(up: subprocess.Popen, site: Path) -> None:
    record = json.loads((site / ".sooner" / "db.json").read_text())
    print("\nsooner up, idle: one line per process")
    print(f"{'pid':>7} {'RSS MB':>7} {'USS MB':>7}  command")
    total_rss = total_uss = 0.0
    processes = tree(psutil.Process(up.pid), record.get("pid"))
    for process in processes:
        try:
            cmdline, rss, uss = describe(process)
        except psutil.Error:
            continue
        total_rss += rss
        total_uss += uss or 0.0
        shown_uss = f"{uss:7.1f}" if uss is not None else "      -"
        print(f"{process.pid:>7} {rss:7.1f} {shown_uss}  {cmdline}")
    print(f"{'total':>7} {total_rss:7.1f} {total_uss:7.1f}  ({len(processes)} processes; target < 150 MB RSS)")


def measure_commands(site: Path, env: dict[str, str], repeat: int) -> None:
    print(f"\none-shot start-up, median of {repeat}: wall ms, CPU ms, peak RSS MB")
    rows = [
        ("python -c pass", [PY, "-c", "pass"], "pass"),
        ("python -c 'import pymongo'", [PY, "-c", "import pymongo"], "import pymongo"),
        ("python -c 'import pymongo, flask'", [PY, "-c", "import pymongo, flask"], "import pymongo, flask"),
    ] + [(f"sooner {' '.join(args)}", [PY, "-m", "sooner", *args], SOONER.format(args=args))
         for args in (["--help"], ["jobs"], ["runs"])]
    for _label, command, _code in rows:
        subprocess.run(command, env=env, cwd=site, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # caches
    for label, command, code in rows:
        wall, cpu = timed(command, repeat, env, site)
        print(f"  {label:<36} {wall:7.0f} ms {cpu:7.0f} ms {peak_rss_mb(code, env, site):7.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds idle before measuring memory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sooner-footprint-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        site = Path(tmp) / "site"
        env = {**os.environ, "HOME": str(home), "SOONER_CONFIG": "", "PYTHONPATH": str(ROOT)}
        env.pop("SOONER_MONGO_URL", None)
        # As an installed Sooner runs: with cached bytecode (__pycache__/ is ignored by git), else each
        # process compiles Sooner's modules again, which costs time (~60 ms of `sooner jobs`) and memory.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run([PY, "-m", "compileall", "-q", str(ROOT / "sooner")], env=env, check=False)
        port = free_port()
        up = subprocess.Popen([PY, "-m", "sooner", "up", str(site), "--port", str(port)], env=env, cwd=tmp,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            started = time.monotonic()
            wait_until(lambda: up.poll() is not None or healthy(port), 120, "/healthz")
            if up.poll() is not None:
                raise SystemExit(f"bench: sooner up exited with {up.returncode}")
            print(f"sooner up answered /healthz after {time.monotonic() - started:.1f} s")
            wait_until(lambda: (site / ".sooner" / "db.json").exists(), 30, "the database record")
            time.sleep(args.settle)  # idle, as the issue measures it: not a synchronisation
            measure_tree(up, site)
            measure_commands(site, env, args.repeat)
        finally:
            up.send_signal(signal.SIGINT)
            stopping = time.monotonic()
            try:
                up.wait(60)
                print(f"\nCtrl-C stopped everything in {time.monotonic() - stopping:.1f} s (exit {up.returncode})")
            except subprocess.TimeoutExpired:
                up.kill()
                print("\nsooner up did not stop within 60 s; killed")
            subprocess.run([PY, "-m", "sooner", "--config", str(site / "config.json"), "db", "stop"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
