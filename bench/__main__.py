"""``python -m bench``: every benchmark of issue #12, one table of figures next to their baselines, and RESULTS.md.

Each bench runs as its own subprocess with ``--json`` (one JSON line per
figure, see :func:`bench.figure`); its human output is kept for RESULTS.md.
A bench that fails becomes a row saying so, and the suite goes on. The
figures are for people: the machine is often shared, so read them with the
load average printed beside them. Tests never assert times.

    python -m bench [--quick] [--only NAME[,NAME]] [--list]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import make_figure

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"


@dataclass(frozen=True)
class Bench:
    """One bench script, its arguments for a full and for a ``--quick`` run."""

    name: str
    script: str
    what: str
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()
    json: bool = True  # False: the script has no --json; ``parse`` reads its text instead


SUITE = [
    Bench("runtime", "runtime.py", "one worker's no-op throughput, dispatch latency, progress calls, output ingest",
          quick=("--runs", "100", "--latency-runs", "30")),
    Bench("launcher", "launcher.py", "a run's process start: Launcher.start (launcher, supervisor) vs a bare posix_spawn",
          quick=("--starts", "100")),
    Bench("rq", "rq_baseline.py", "RQ + local redis-server: SimpleWorker jobs/s, latency, 4 workers, idle RSS",
          quick=("--runs", "100", "--runs-4", "100", "--latency-runs", "30")),
    Bench("scheduler_scale", "scheduler_scale.py", "100 and 1,000 every-second jobs: missed ticks, lateness, CPU",
          quick=("--seconds", "6")),
    Bench("embedded_server", "embedded_server.py", "the embedded database alone: a run's commands/s at 1, 4, 8 clients",
          quick=("--runs", "400")),
    Bench("round_trips", "round_trips.py", "database commands per cron fire and per no-op run vs a bare insert",
          quick=("--jobs", "50", "--runs", "30")),
    Bench("web", "web.py", "live output: line latency to a browser, 50 Socket.IO clients vs HTTP polling",
          full=("--clients", "50", "--seconds", "20", "--rate", "20"),
          quick=("--clients", "50", "--seconds", "4", "--rate", "20", "--lines", "50")),
    Bench("live_fanout", "live_fanout.py", "50 Socket.IO clients of one run vs 50 clients polling the REST API",
          quick=("--seconds", "4")),
    Bench("api_poll", "api_poll.py", "GET /api/v1/runs/{id} 304 polls vs a static 304",
          quick=("--seconds", "2", "--clients", "2")),
    Bench("webhook_latency", "webhook_latency.py", "webhook POST -> run stored vs a bare insert",
          quick=("--count", "50")),
    Bench("footprint", "footprint.py", "idle memory of sooner up, one-shot command start-up", json=False,
          quick=("--repeat", "3", "--settle", "2")),
]

# Figures of one bench compared with a baseline another bench measured (key, baseline key, target).
CROSS = [
    ("no-op runs/s, one worker vs RQ SimpleWorker (function; the issue's baseline)", "throughput.one_worker",
     "rq.function", "ratio >= 1"),
    ("no-op runs/s, one worker vs RQ SimpleWorker spawning the same script", "throughput.one_worker", "rq.spawn",
     "ratio >= 1"),
    ("dispatch queued->started p50 vs RQ enqueue->started", "latency.started", "rq.latency_started", None),
    ("manual run ->no-op finished p50 vs RQ enqueue->finished", "latency.finished", "rq.latency_finished", None),
    ("idle memory, sooner up (whole tree) vs rq worker", "footprint.up_rss", "rq.worker_rss", None),
    ("idle memory, sooner up (whole tree) vs rq worker + redis-server", "footprint.up_rss", "rq.stack_rss", None),
]
BASELINE_ONLY = {baseline for _, _, baseline, _ in CROSS} - {key for _, key, _, _ in CROSS}


@dataclass
class Outcome:
    """What one bench run gave: its figures, its output, how long it took, and why it failed (if it did)."""

    bench: Bench
    command: list[str]
    figures: list[dict[str, Any]] = field(default_factory=list)
    output: str = ""
    seconds: float = 0.0
    problem: str | None = None


def run_bench(bench: Bench, quick: bool, timeout_s: float) -> Outcome:
    """Run one bench in a subprocess and collect its figures; a failure is recorded, never raised."""
    command = [sys.executable, str(ROOT / "bench" / bench.script), *(bench.quick if quick else bench.full)]
    if bench.json:
        command.append("--json")
    outcome = Outcome(bench, command)
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired as exc:
        outcome.output = _text(exc.stdout) + _text(exc.stderr)
        outcome.problem = f"timed out after {timeout_s:.0f} s"
    else:
        outcome.output = done.stdout + (f"\n[stderr]\n{done.stderr}" if done.stderr.strip() else "")
        if done.returncode != 0:
            last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["no message"]
            outcome.problem = f"exit {done.returncode}: {last[0][:200]}"
    outcome.seconds = time.monotonic() - started
    outcome.figures = parse(bench, outcome.output)
    return outcome


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def parse(bench: Bench, output: str) -> list[dict[str, Any]]:
    """The figures in a bench's output: its JSON lines, or for a text-only bench what :func:`parse_text` finds."""
    if not bench.json:
        return parse_text(bench, output)
    figures = []
    for line in output.splitlines():
        if line.startswith('{"figure"'):
            try:
                found = json.loads(line)
                if not isinstance(found["figure"], str) or not isinstance(found["value"], (int, float, type(None))):
                    raise TypeError(line)
                # rebuilt, so a bench printing its own lines (live_fanout.py) gets a key, a ratio and a verdict
                figures.append(make_figure(found["figure"], found.get("value"), found.get("unit") or "",
                                           baseline=found.get("baseline"), baseline_value=found.get("baseline_value"),
                                           target=found.get("target") or None, key=found.get("key"),
                                           note=found.get("note"), baseline_unit=found.get("baseline_unit")))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut by a timeout, or not a figure: the rest still counts
    return figures


def parse_text(bench: Bench, output: str) -> list[dict[str, Any]]:
    """footprint.py prints text only: its idle-tree total and ``sooner jobs`` start-up."""
    figures = []
    total = re.search(r"^\s*total\s+([\d.]+)\s+([\d.]+)", output, re.M)
    if total:
        figures.append(make_figure("idle RSS, sooner up (web, scheduler, worker, database)", float(total.group(1)),
                                   "MB", key="footprint.up_rss", target="< 150", note=f"USS {total.group(2)} MB"))
    # "label  wall ms  [CPU ms]  peak MB": the CPU column came later, so it is optional
    timings = {m[1]: (float(m[2]), m[3]) for m in
               re.finditer(r"^  (\S.*?)\s+(\d+) ms\s+(?:(\d+) ms\s+)?[\d.]+ MB$", output, re.M)}
    if "sooner jobs" in timings:
        wall, cpu = timings["sooner jobs"]
        base = timings.get("python -c 'import pymongo, flask'")
        figures.append(make_figure("one-shot `sooner jobs` start-up (wall)", wall, "ms", key="footprint.jobs_ms",
                                   baseline="python -c 'import pymongo, flask'",
                                   baseline_value=base[0] if base else None, target="< 380",
                                   note=f"CPU {cpu} ms" if cpu else None))
    return figures


def cross_rows(figures: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The CROSS rows whose two figures were both measured in this run."""
    rows = []
    for name, key, base_key, target in CROSS:
        ours, theirs = figures.get(key), figures.get(base_key)
        if ours and theirs:
            rows.append(make_figure(name, ours["value"], ours["unit"], key=f"{key}~{base_key}",
                                    baseline=theirs["figure"], baseline_value=theirs["value"],
                                    baseline_unit=theirs["unit"], target=target))
    return rows


def table_rows(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """Every figure for the table, cross-bench rows after their bench's figures; failed benches as rows too."""
    by_key = {f["key"]: f for o in outcomes for f in o.figures}
    rows = []
    for outcome in outcomes:
        rows += [f for f in outcome.figures if f["key"] not in BASELINE_ONLY]
        if outcome.problem:
            rows.append({"figure": f"[{outcome.bench.name}] {outcome.problem}", "value": None, "unit": "",
                         "baseline": None, "baseline_value": None, "ratio": None, "target": None, "met": None})
    return rows + cross_rows(by_key)


def _num(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 100 or float(value).is_integer():
        text = f"{value:,.0f}"
    else:
        text = f"{value:,.2f}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{text} {unit}".strip()


def cells(row: dict[str, Any]) -> list[str]:
    """figure | Sooner | baseline | ratio | target | met?"""
    unit = row.get("baseline_unit") or row["unit"]
    baseline = f"{row['baseline']}: {_num(row['baseline_value'], unit)}" if row.get("baseline") else "-"
    verdict = {True: "yes", False: "NO", None: "-"}[row.get("met")]
    return [row["figure"], _num(row["value"], row["unit"]), baseline,
            f"{row['ratio']:.2f}x" if row.get("ratio") is not None else "-", row.get("target") or "-", verdict]


HEADER = ["figure", "Sooner", "baseline (same run)", "ratio", "target", "met?"]


def text_table(rows: list[dict[str, Any]]) -> str:
    grid = [HEADER] + [cells(row) for row in rows]
    widths = [max(len(line[i]) for line in grid) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in grid]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"
    return "\n".join([line(HEADER), line(["---"] * len(HEADER))] + [line(cells(row)) for row in rows])


def machine() -> dict[str, str]:
    """CPU, RAM, Python and library versions: what a reader needs to weigh the figures."""
    cpuinfo = _read("/proc/cpuinfo")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    memory = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.M)
    versions = {}
    for package in ("nx-27017", "pymongo", "rq", "redis"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {"CPU": f"{model.group(1).strip() if model else platform.processor() or 'unknown'}, "
                   f"{os.cpu_count()} logical cores",
            "RAM": f"{int(memory.group(1)) / 1024 / 1024:.1f} GiB" if memory else "unknown",
            "OS": platform.platform(), "Python": platform.python_version(),
            **versions, "redis-server": _redis_server_version(), "commit": _commit()}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _redis_server_version() -> str:
    try:
        done = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    found = re.search(r"v=(\S+)", done.stdout)
    return found.group(1) if found else done.stdout.strip()


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                               timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"{head}{' with uncommitted changes' if dirty else ''}" if head else "unknown"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def write_results(path: Path, command: str, started: datetime, about: dict[str, str], loads: tuple[str, str],
                  outcomes: list[Outcome], rows: list[dict[str, Any]]) -> None:
    lines = ["# Benchmark results", "", "Generated by `python -m bench`; do not edit by hand. Figures are for people "
             "(tests never assert times); on a shared machine read them with the load average.", "",
             f"- Command: `{command}` (from the repository root)", f"- Date: {started:%Y-%m-%d %H:%M} UTC",
             *(f"- {name}: {value}" for name, value in about.items()),
             f"- Load average (1, 5, 15 min): before {loads[0]}, after {loads[1]}", "", markdown_table(rows), "",
             *(f"- {row['figure']}: {row['note']}" for row in rows if row.get("note")), "", "## Benches", ""]
    for outcome in outcomes:
        state = outcome.problem or "ok"
        lines += [f"- **{outcome.bench.name}** ({outcome.bench.what}): {outcome.seconds:.0f} s, {state}; "
                  f"`{shlex.join(['python', *map(_relative, outcome.command[1:])])}`"]
    lines += ["", "## Raw output", ""]
    for outcome in outcomes:
        human = "\n".join(line for line in outcome.output.splitlines() if not line.startswith('{"figure"'))
        lines += [f"<details><summary>{outcome.bench.name}</summary>", "", "```", human.strip(), "```", "",
                  "</details>", ""]
    path.write_text("\n".join(lines))


def _relative(arg: str) -> str:
    return arg[len(str(ROOT)) + 1:] if arg.startswith(str(ROOT) + os.sep) else arg


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes in all)")
    parser.add_argument("--only", help="comma-separated bench names (see --list)")
    parser.add_argument("--list", action="store_true", help="list the benches and exit")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one bench may take")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write the Markdown results")
    args = parser.parse_args()
    if args.list:
        for bench in SUITE:
            print(f"{bench.name:<16} bench/{bench.script:<20} {bench.what}")
        return
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else [b.name for b in SUITE]
    unknown = sorted(set(names) - {b.name for b in SUITE})
    if unknown:
        parser.error(f"--only: no bench named {', '.join(unknown)} (known: {', '.join(b.name for b in SUITE)})")
    command = shlex.join(["python", "-m", "bench", *sys.argv[1:]])
    started, load_before, about = datetime.now(timezone.utc), load(), machine()
    outcomes = []
    for bench in (b for b in SUITE if b.name in names):
        print(f"running {bench.name}: {bench.what} ...", file=sys.stderr, flush=True)
        outcome = run_bench(bench, args.quick, args.timeout)
        print(f"  {bench.name}: {outcome.seconds:.0f} s, {len(outcome.figures)} figures"
              f"{', ' + outcome.problem if outcome.problem else ''}", file=sys.stderr, flush=True)
        outcomes.append(outcome)
    rows = table_rows(outcomes)
    loads = (load_before, load())
    print(text_table(rows))
    print(f"\nload average before {loads[0]}, after {loads[1]}; {about['CPU']}; "
          f"written to {_relative(str(args.results))}")
    write_results(args.results, command, started, about, loads, outcomes, rows)


if __name__ == "__main__":
    main()
