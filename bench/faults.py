#!/usr/bin/env python3
"""Fault injection (issue #9): each fault N times with real processes, and the table of what it cost.

Every fault is injected into real ``sooner`` processes (workers, schedulers,
one-shot commands, database servers) talking to a real database: the
embedded nx-27017 server of a temporary site, or an nx-27017 server reached
through ``mongo_url`` where the fault kills or freezes the database. Per trial
it counts:

- runs lost: a run that should exist or complete but does not, or ended
  lost/failed when it should have succeeded (an acknowledged event that was
  not stored counts here too);
- runs doubled: an extra run, two processes of one run alive at once (an
  orphan beside its retry, a process left after its run ended), an event or a
  tick stored twice, a second server on one data directory;
- lines lost: printed lines missing from the stored output, repeated or out
  of order, and calls (progress, emits, RPC requests) that vanished without
  being stored or refused;
- crashes: a worker, scheduler or command that died, exited non-zero or left
  a traceback where a message was expected, and an unrelated process that was
  signalled.

It prints a Markdown table (fault | trials | runs lost | runs doubled | lines
lost | crashes), a note for everything counted, and the total wall time, and
exits 1 if any of the last four cells is not 0. Times are shrunk through the
settings (2 s leases, 1 s kill grace, 50 ms flushes) so the default run takes
a few minutes on 2 cores. Everything lives in one temporary directory, and
every process it starts is stopped.

    .venv/bin/python bench/faults.py [--trials 3] [--only NAME ...] [--list] [--keep DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _faults import FAULTS, Fault  # noqa: E402
from _faults.harness import KINDS, Deadline, Lab, Tally  # noqa: E402
from sooner.site import init_site  # noqa: E402
from sooner.store.embedded import EmbeddedServer  # noqa: E402

HEADERS = ("fault", "trials", "runs lost", "runs doubled", "lines lost", "crashes")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=positive, default=3, metavar="N", help="trials per fault (default 3)")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=[f.name for f in FAULTS],
                        help="run only these faults (see --list)")
    parser.add_argument("--list", action="store_true", help="list the faults' names and exit")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="copy the logs and ledgers of every trial that counted something into DIR")
    args = parser.parse_args()
    if args.list:
        for fault in FAULTS:
            print(f"{fault.name:20} {fault.label}")
        return 0
    chosen = [f for f in FAULTS if not args.only or f.name in args.only]
    # The bench's own store and server handles warn about what the faults do to them; the table says it all.
    logging.getLogger("sooner").setLevel(logging.ERROR)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sooner-faults-") as tmp:
        settings = init_site(Path(tmp) / "site")
        server = EmbeddedServer(settings.state_dir)
        try:
            url = server.ensure_running(keep=True)
            rows = [(fault, run_fault(fault, args.trials, Path(tmp), url, args.keep)) for fault in chosen]
        finally:
            server.stop()
    elapsed = time.monotonic() - started
    print_report(rows, elapsed)
    return 1 if any(any(t.counts()) for _, tallies in rows for t in tallies) else 0


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run_fault(fault: Fault, trials: int, tmp: Path, url: str, keep: Path | None) -> list[Tally]:
    """``trials`` trials of ``fault``, each in a directory and a lab of its own; one tally per trial."""
    tallies = []
    for index in range(trials):
        directory = tmp / f"{fault.name}-{index}"
        directory.mkdir()
        tally, lab = Tally(), Lab(directory, url)
        began = time.monotonic()
        try:
            fault.trial(lab, tally, index)
        except Deadline as exc:  # what the trial waited for never happened: the run did not do its work
            tally.add("lost", 1, str(exc))
        except Exception as exc:  # noqa: BLE001 - reported, and counted: the table must not look clean
            tally.add("crashes", 1, f"the trial raised {type(exc).__name__}: {exc}")
            traceback.print_exc()
        finally:
            lab.close(tally)
        counts = ", ".join(f"{kind.replace('_', ' ')} {n}" for kind, n in zip(KINDS, tally.counts()) if n)
        print(f"{fault.name} trial {index + 1}/{trials}: {counts or 'clean'} ({time.monotonic() - began:.1f} s)",
              file=sys.stderr, flush=True)
        for note in tally.notes:
            print(f"    {note}", file=sys.stderr, flush=True)
        if keep is not None and any(tally.counts()):
            kept = keep_files(directory, keep / directory.name)
            print(f"    kept {kept} files in {keep / directory.name}", file=sys.stderr, flush=True)
        tallies.append(tally)
    return tallies


def keep_files(directory: Path, target: Path) -> int:
    """Copy the small regular files of a trial (logs, ledgers, db.json …; no caches, sockets or databases)."""
    count = 0
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        inside = relative.parts[0] if len(relative.parts) > 1 else ""
        if inside == "t" or inside.startswith("cache-") or "scripts.git" in relative.parts:
            continue
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 2 * 2**20 \
                and not path.name.endswith((".db", ".db-wal", ".db-shm", ".sqlite")):
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target / relative)
            count += 1
    return count


def print_report(rows: list[tuple[Fault, list[Tally]]], elapsed: float) -> None:
    print("| " + " | ".join(HEADERS) + " |")
    print("|" + "|".join("---" if i == 0 else "--:" for i in range(len(HEADERS))) + "|")
    for fault, tallies in rows:
        sums = [sum(t.counts()[i] for t in tallies) for i in range(len(KINDS))]
        print(f"| {fault.label} | {len(tallies)} | " + " | ".join(str(n) for n in sums) + " |")
    print()
    for fault, tallies in rows:
        for index, tally in enumerate(tallies):
            for note in tally.notes:
                print(f"- {fault.name}, trial {index + 1}: {note}")
            for remark in tally.remarks:
                print(f"- {fault.name}, trial {index + 1} (remark, not counted): {remark}")
    print(f"total wall time: {elapsed:.0f} s ({elapsed / 60:.1f} min)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
