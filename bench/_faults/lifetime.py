"""A run's processes live as long as the run: worker kill -9, a timeout with escaped grandchildren, output caps.

Real ``sooner worker`` (and ``sooner scheduler``) processes; every process is
checked by pid *and* create time, and found by the ``SOONER_RUN_ID`` in its
environment. Scripts prove overlap themselves: each takes an exclusive
``flock`` on one file per job before it works, and writes ``overlap`` to its
ledger if the lock was held (by an orphan of an earlier attempt).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from _faults.harness import (
    PY,
    Daemon,
    Lab,
    Tally,
    eventually,
    finished,
    kill_survivors,
    numbered_loss,
    processes_of,
    queue,
    stored,
    survivors,
    wait_for,
)
from sooner.model import RetryPolicy, RunStatus
from sooner.model.target import worker_target
from sooner.store import Store
from sooner.worker.testing import deploy_files

# The first attempt prints until it is killed (it leaves a setsid sleep behind); its retry prints 50 lines.
KILL_SCRIPT = PY + """import fcntl, os, subprocess, sys, time
ledger = open(@LEDGER@, 'a', buffering=1)
run = os.environ['SOONER_RUN_ID']
lock = open(@LOCK@, 'w')
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    ledger.write(f'overlap {run}\\n')
    fcntl.flock(lock, fcntl.LOCK_EX)
try:
    os.close(os.open(@FIRST@, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    first = True
except FileExistsError:
    first = False
ledger.write(f'start {run} {"first" if first else "retry"}\\n')
if first:
    subprocess.Popen(['sleep', '600'], start_new_session=True)
for i in range(60000 if first else 50):
    print(f'line {i}', flush=True)
    time.sleep(0.01)
ledger.write(f'end {run}\\n')
"""
RETRY_ONCE = {"retry": RetryPolicy(attempts=1, backoff_base_s=0).to_doc()}


def _kill_job(store: Store, tmp: Path, job: str) -> Path:
    ledger = tmp / f"{job}.ledger"
    script = (KILL_SCRIPT.replace("@LEDGER@", repr(str(ledger))).replace("@LOCK@", repr(str(tmp / f"{job}.lock")))
              .replace("@FIRST@", repr(str(tmp / f"{job}.first"))))
    deploy_files(store, {job: script}, settings={job: RETRY_ONCE})
    return ledger


def _sleeps(run_id: str) -> int:
    import psutil

    count = 0
    for pid in processes_of(run_id):
        try:
            count += psutil.Process(pid).name() == "sleep"
        except psutil.Error:
            pass
    return count


def worker_kill(lab: Lab, tally: Tally, index: int) -> None:
    """kill -9 of a worker mid-run: its script dies with it, and the retry never runs beside the old process.

    First the supervisor's way (scripts die with their worker; the scheduler ends the run lost, another
    worker runs the retry), then the second line of defence: with the test-only switch that keeps
    orphans alive, the worker restarted under its name kills them before the retry.
    """
    store, env = lab.database()
    ledger = _kill_job(store, lab.tmp, "kill.py")
    lab.scheduler(env)
    first = lab.worker(env, "w1")
    run = queue(store, "kill.py")
    _kill_and_check(lab, tally, store, run.id, first, "kill.py", ledger, orphans_expected=False,
                    restart=lambda: lab.worker(env, "w2"))
    kept = {"SOONER_TEST_KEEP_ORPHANS": "1", "SOONER_LEASE_S": "30"}
    ledger = _kill_job(store, lab.tmp, "keep.py")
    third = lab.worker(env, "w3", **kept)
    run = queue(store, "keep.py", target=worker_target("w3"))
    _kill_and_check(lab, tally, store, run.id, third, "keep.py", ledger, orphans_expected=True,
                    restart=lambda: lab.worker(env, "w3", **kept))


def _kill_and_check(lab: Lab, tally: Tally, store: Store, run_id: str, worker: Daemon, job: str, ledger: Path, *,
                    orphans_expected: bool, restart: Callable[[], Daemon]) -> None:
    wait_for(lambda: _sleeps(run_id) >= 1 and stored(store, run_id, "stdout").count("\n") >= 20, 30,
             f"{job}'s script and its escaped sleep")
    tree = processes_of(run_id)
    worker.kill9()
    try:
        if not orphans_expected:
            gone = eventually(lambda: not survivors(tree), 5)
            tally.check("doubled", gone, f"{job}: {len(survivors(tree))} processes of run {run_id} outlived "
                                         f"their worker's kill -9 by 5 s")
        restart()
        if orphans_expected:
            gone = eventually(lambda: not survivors(tree), 10)
            tally.check("doubled", gone, f"{job}: the restarted worker left {len(survivors(tree))} processes "
                                         f"of run {run_id} alive")
    finally:
        kill_survivors(tree)
    old = finished(store, run_id, 30)
    if old is None or old.status is not RunStatus.LOST:
        tally.add("lost", 1, f"{job}: run {run_id} did not end lost: {old and old.status.value}")
        return
    retry_id = wait_for(lambda: store.runs.get(run_id).next_attempt, 20, f"{job}: the retry of {run_id}")
    retry = finished(store, retry_id, 40)
    if retry is None or retry.status is not RunStatus.SUCCEEDED:
        tally.add("lost", 1, f"{job}: the retry {retry_id} did not succeed: {retry and retry.status.value} "
                             f"{stored(store, retry_id, 'system')[-300:]}")
    runs = store.runs.list(job=job, limit=10)
    tally.add("doubled", len(runs) - 2, f"{job}: {len(runs)} runs, expected the run and one retry")
    entries = ledger.read_text().splitlines()
    overlaps = [line for line in entries if line.startswith("overlap")]
    tally.add("doubled", len(overlaps), f"{job}: the retry found the lock held by an older process: {overlaps}")
    starts = [line for line in entries if line.startswith("start")]
    tally.add("doubled", len(starts) - 2, f"{job}: the script started {len(starts)} times, expected 2")
    if retry is not None and retry.status is RunStatus.SUCCEEDED:
        lost, note = numbered_loss(stored(store, retry_id, "stdout").splitlines(), "line ", 50)
        tally.add("lines_lost", lost, f"{job}: the retry's output: {note}")
    # The killed attempt's last lines may die in the killed worker's buffer; what is stored must be a
    # prefix, in order, without gaps or repeats.
    lines = stored(store, run_id, "stdout").splitlines()
    top = max((int(line[5:]) for line in lines if line.startswith("line ") and line[5:].isdigit()), default=-1)
    lost, note = numbered_loss(lines, "line ", top + 1)
    tally.add("lines_lost", lost, f"{job}: the killed attempt's stored output: {note}")


# -- a timeout with grandchildren that left the process group -------------------
ESCAPING = PY + """import os, signal, subprocess, time
subprocess.Popen(['sleep', '600'], start_new_session=True)
subprocess.Popen(['sh', '-c', 'sleep 600 & wait'])
subprocess.Popen(['setsid', 'sh', '-c', 'trap "" TERM; sleep 600 & wait'])  # ignores SIGTERM
if os.fork() == 0:  # a double fork into a session of its own
    os.setsid()
    if os.fork() == 0:
        os.execvp('sleep', ['sleep', '600'])
    os._exit(0)
marks = open(@MARKS@, 'a', buffering=1)
for i in range(100000):
    print(f'line {i}', flush=True)
    marks.write(f'{i}\\n')
    time.sleep(0.01)
"""


def timeout_tree(lab: Lab, tally: Tally, index: int) -> None:
    """A job with a 2 s timeout whose descendants escaped its group (setsid, a double fork, SIGTERM ignored)."""
    store, env = lab.database()
    marks = lab.tmp / "marks"
    deploy_files(store, {"escape.py": ESCAPING.replace("@MARKS@", repr(str(marks)))},
                 settings={"escape.py": {"timeout_s": 2}})
    lab.worker(env, "w1")
    run = queue(store, "escape.py")
    wait_for(lambda: _sleeps(run.id) >= 4, 20, "the script's four sleeps")
    tree = processes_of(run.id)
    try:
        done = finished(store, run.id, 30)
        if done is None or done.status is not RunStatus.TIMED_OUT:
            tally.add("lost", 1, f"run {run.id} did not end timed_out: {done and done.status.value}")
        gone = eventually(lambda: not survivors(tree) and not processes_of(run.id), 5)
        tally.check("doubled", gone, f"{len(survivors(tree))} processes of the timed-out run {run.id} were left "
                                     f"running 5 s after its end")
    finally:
        kill_survivors(tree)
        kill_survivors(processes_of(run.id))
    printed = len(marks.read_text().splitlines()) if marks.exists() else 0
    lines = stored(store, run.id, "stdout").splitlines()
    lost, note = numbered_loss(lines, "line ", printed)
    extra = len(lines) - printed  # at most the line printed as the kill came (before its mark was written)
    tally.add("lines_lost", lost + max(0, extra - 1), f"{note} (the script printed {printed}, stored {len(lines)})")


# -- output over the caps ------------------------------------------------------
RUN_CAP = 256 * 1024
LINE_CAP = 4096
FLOOD_LINES = 100_000
FLOOD = PY + """import sys
out = sys.stdout.buffer
for i in range(@N@):
    out.write(b'%06d ' % i + b'x' * 25 + b'\\n')
out.flush()
print('>>> sooner.progress(10, 10)', file=sys.stderr, flush=True)
print('>>> sooner.emit("capped", 1)', file=sys.stderr, flush=True)
out.write(b'tail\\n')
""".replace("@N@", str(FLOOD_LINES))
LONG_LINES = PY + """for i in range(50):
    print(f'short {i}', flush=True)
    if i % 10 == 5:
        print('L' * 10000 + f' {i}', flush=True)
"""


def output_flood(lab: Lab, tally: Tally, index: int) -> None:
    """3.2 MB of output over a 256 KB run cap, and 10 KB lines over a 4 KB line cap: cut, marked, run goes on."""
    store, env = lab.database()
    deploy_files(store, {"flood.py": FLOOD, "long.py": LONG_LINES})
    lab.worker(env, "w1", SOONER_OUTPUT_MAX_BYTES_PER_RUN=str(RUN_CAP), SOONER_OUTPUT_MAX_LINE_BYTES=str(LINE_CAP))
    flood, long = queue(store, "flood.py").id, queue(store, "long.py").id
    run = finished(store, flood, 60)
    if run is None or run.status is not RunStatus.SUCCEEDED:
        tally.add("lost", 1, f"flood.py: run {flood} did not succeed: {run and run.status.value}")
    else:
        everything = b"".join(b"%06d " % i + b"x" * 25 + b"\n" for i in range(FLOOD_LINES)) + b"tail\n"
        want = everything[:RUN_CAP].decode() + "\n"
        got = stored(store, flood, "stdout")
        if got != want:
            kept = min(len(got), len(want))
            same = next((i for i in range(kept) if got[i] != want[i]), kept)
            tally.add("lines_lost", want.count("\n") - want[:same].count("\n"),
                      f"flood.py: stored stdout differs from the first {RUN_CAP} bytes at byte {same}")
        system = stored(store, flood, "system")
        dropped = re.search(r"more were not stored", system) and re.search(r"\(([\d,]+) bytes\) more", system)
        count = int(dropped.group(1).replace(",", "")) if dropped else None
        tally.check("lines_lost", "output limit of 256 KB reached; the rest is not stored" in system
                    and count == len(everything) - RUN_CAP,
                    f"flood.py: the cap's markers are missing or count {count} bytes, not "
                    f"{len(everything) - RUN_CAP}: {system[-300:]!r}")
        tally.check("lines_lost", run.progress is not None and run.progress.current == 10,
                    f"flood.py: the progress call after the cap was not recorded ({run.progress})")
        events = store.events.list(name="capped")
        tally.add("lost", 1 - len(events), "flood.py: the event emitted after the cap was not stored")
        tally.add("doubled", len(events) - 1, "flood.py: the event emitted after the cap was stored twice")
    run = finished(store, long, 60)
    if run is None or run.status is not RunStatus.SUCCEEDED:
        tally.add("lost", 1, f"long.py: run {long} did not succeed: {run and run.status.value}")
        return
    text = ""
    for chunk in store.output.read(long):
        if chunk["stream"] == "system":
            text += "".join(line for line in chunk["text"].splitlines(keepends=True) if "line truncated" in line)
        else:
            text += chunk["text"]
    text = re.sub(r"line truncated: [\d.]+ KB,", "line truncated: N KB,", text)
    expected = ""
    for i in range(50):
        expected += f"short {i}\n"
        if i % 10 == 5:
            expected += "L" * LINE_CAP + "\nsooner: line truncated: N KB, kept the first 4 KB\n"
    if text != expected:
        got_lines, want_lines = text.splitlines(), expected.splitlines()
        tally.add("lines_lost", sum(1 for a, b in zip(got_lines, want_lines) if a != b)
                  + abs(len(got_lines) - len(want_lines)),
                  f"long.py: cut lines or their markers differ from what was expected: {text[:200]!r}")
