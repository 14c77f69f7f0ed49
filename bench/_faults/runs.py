"""Races on what makes, moves and repeats runs: retries, dedupe keys, moves, a scheduler down for ticks.

Real ``sooner worker``/``sooner scheduler`` processes and concurrent one-shot
``sooner`` commands (released together through a file, after their imports)
against the embedded server. Each script writes one ledger line per
execution, so a run that executed twice, or not at all, is seen whatever the
database says.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

from _faults.harness import PY, Deadline, Lab, Tally, finished, numbered_loss, queue, stored, wait_for
from sooner.model import FINISHED, RetryPolicy, Run, RunStatus
from sooner.model.target import worker_target
from sooner.store import Store
from sooner.worker.testing import deploy_files

# One `sooner ARGS` per process, each waiting (after its imports) for the go file: the race starts together.
RACER = """import os, runpy, sys, time
import pymongo, sooner.cli, sooner.cli.failed, sooner.cli.move, sooner.cli.runtime
open(sys.argv[2], 'w').close()
deadline = time.monotonic() + 60
while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.002)
sys.argv = ['sooner', *sys.argv[3:]]
runpy.run_module('sooner', run_name='__main__')
"""


def race(lab: Lab, env: dict[str, str], commands: list[list[str]], tag: str) -> list[subprocess.CompletedProcess]:
    """Run each ``sooner`` command in a process of its own, all released at once; their results."""
    go = lab.tmp / f"go-{tag}"
    ready = [lab.tmp / f"ready-{tag}-{i}" for i in range(len(commands))]
    processes = [subprocess.Popen([sys.executable, "-c", RACER, str(go), str(ready[i]), *command], cwd=lab.tmp,
                                  env=lab.env(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i, command in enumerate(commands)]
    try:
        wait_for(lambda: all(path.exists() for path in ready), 60, f"{len(commands)} racers to be ready")
        go.touch()
        results = []
        for process, command in zip(processes, commands):
            out, err = process.communicate(timeout=60)
            results.append(subprocess.CompletedProcess(command, process.returncode, out, err))
        return results
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)


def check_commands(tally: Tally, results: list[subprocess.CompletedProcess], allowed: tuple[int, ...] = (0,)) -> None:
    for result in results:
        tally.check("crashes", "Traceback" not in result.stderr and result.returncode in allowed,
                    f"`sooner {' '.join(result.args)}` exited {result.returncode}: {result.stderr.strip()[-300:]}")


def ledger_of(path: Path) -> Counter:
    return Counter(line.split()[0] for line in path.read_text().splitlines()) if path.exists() else Counter()


def all_finished(store: Store, job: str, count: int, timeout: float) -> list[Run]:
    """The job's runs once ``count`` exist and all have finished (whatever exists at the deadline otherwise)."""
    def done() -> list[Run] | None:
        runs = store.runs.list(job=job, limit=1000)
        return runs if len(runs) >= count and all(r.status in FINISHED for r in runs) else None
    try:
        return wait_for(done, timeout, f"{count} finished runs of {job}", interval=0.05)
    except Deadline:  # the caller counts what is missing
        return store.runs.list(job=job, limit=1000)


# -- retries until the attempts are used up ----------------------------------------
CHAINS = 3
ATTEMPTS = 2
FAIL = PY + """import fcntl, json, os, sys, time
chain = json.loads(os.environ['SOONER_DATA'])['chain']
run = os.environ['SOONER_RUN_ID']
ledger = open(@LEDGER@, 'a', buffering=1)
lock = open(os.path.join(@LOCKS@, f'{chain}.lock'), 'w')
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    ledger.write(f'overlap {chain} {run}\\n')
ledger.write(f'{run} {chain}\\n')
for i in range(20):
    print(f'line {i}', flush=True)
time.sleep(0.2)  # long enough for a second attempt of the chain, if one started, to find the lock
print('no data today', file=sys.stderr)
sys.exit(3)
"""


def retries_exhaust(lab: Lab, tally: Tally, index: int) -> None:
    """Three failing runs with attempts=2 on two workers: three chains of exactly 3, then a 4-way manual retry."""
    store, env = lab.database()
    ledger, locks = lab.tmp / "ledger", lab.tmp / "locks"
    locks.mkdir()
    deploy_files(store, {"fail.py": FAIL.replace("@LEDGER@", repr(str(ledger))).replace("@LOCKS@", repr(str(locks)))},
                 settings={"fail.py": {"retry": RetryPolicy(attempts=ATTEMPTS, backoff_base_s=0).to_doc()}})
    lab.worker(env, "w1", "--capacity", "3")
    lab.worker(env, "w2", "--capacity", "3")
    firsts = [queue(store, "fail.py", data={"chain": k}) for k in range(CHAINS)]
    runs = all_finished(store, "fail.py", CHAINS * (ATTEMPTS + 1), 60)
    for k, first in enumerate(firsts):
        chain = [r for r in runs if (r.data or {}).get("chain") == k]
        attempts = sorted(r.attempt for r in chain)
        tally.add("lost", ATTEMPTS + 1 - len(chain), f"chain {k}: attempts {attempts}, expected 1..{ATTEMPTS + 1}")
        tally.add("doubled", len(chain) - (ATTEMPTS + 1), f"chain {k}: attempts {attempts}, expected 1..{ATTEMPTS + 1}")
        linked = store.reads.chain(store.runs.get(first.id))
        tally.check("lost", [r.attempt for r in linked] == list(range(1, ATTEMPTS + 2)),
                    f"chain {k}: the stored chain links attempts {[r.attempt for r in linked]}")
        for run in chain:
            tally.check("lost", run.status is RunStatus.FAILED and run.exit_code == 3,
                        f"chain {k}: attempt {run.attempt} ended {run.status.value} ({run.exit_code})")
            lost, note = numbered_loss(stored(store, run.id, "stdout").splitlines(), "line ", 20)
            lost += "no data today" not in stored(store, run.id, "stderr")
            tally.add("lines_lost", lost, f"chain {k} attempt {run.attempt}: {note}")
    wait_for(lambda: store.failed.page().total >= CHAINS, 10, "the Failed view")
    in_view = store.failed.page()
    lasts = {r.id for r in runs if r.attempt == ATTEMPTS + 1}
    tally.check("lost", {r.id for r in in_view.runs} == lasts,
                f"the Failed view holds {len(in_view.runs)} runs, not exactly the {len(lasts)} last attempts")
    tally.add("doubled", in_view.total - CHAINS, f"the Failed view holds {in_view.total} runs, expected {CHAINS}")
    # four people retry the same exhausted run at once: one new attempt
    last = next((r for r in runs if r.attempt == ATTEMPTS + 1 and (r.data or {}).get("chain") == 0), None)
    if last is not None:
        results = race(lab, env, [["retry", last.id]] * 4, "retry")
        check_commands(tally, results, allowed=(0, 1))
        tally.check("lost", any(r.returncode == 0 for r in results), "no `sooner retry` of the 4 succeeded")
        runs = all_finished(store, "fail.py", CHAINS * (ATTEMPTS + 1) + 1, 30)
        extra = len([r for r in runs if (r.data or {}).get("chain") == 0]) - (ATTEMPTS + 2)
        tally.add("lost", -extra, "4 concurrent `sooner retry` started no attempt")
        tally.add("doubled", extra, f"4 concurrent `sooner retry` started {extra + 1} attempts")
    executions = ledger_of(ledger)
    overlaps = executions.pop("overlap", 0)
    tally.add("doubled", overlaps, "an attempt started while an earlier one of its chain still ran")
    repeats = sum(n - 1 for n in executions.values())
    tally.add("doubled", repeats, f"{repeats} runs executed twice")
    ids = {r.id for r in store.runs.list(job="fail.py", limit=1000)}
    tally.add("lost", len(ids - set(executions)), "runs recorded as failed that never executed")


# -- concurrent requests with one dedupe key -------------------------------------
RACERS = 8
WINDOW_S = 3.0  # longer than the racers take to start, shorter than a wait worth making


def dedupe_race(lab: Lab, tally: Tally, index: int) -> None:
    """8 concurrent `sooner run --dedupe-key K` processes, then 8 more once the window has passed: one run each."""
    store, env = lab.database()
    ledger = lab.tmp / "ledger"
    deploy_files(store, {"dedupe.sh": f"#!/bin/sh\necho \"$SOONER_RUN_ID\" >> {ledger}\necho ran\n"},
                 settings={"dedupe.sh": {"dedupe_window_s": WINDOW_S}})
    lab.worker(env, "w1")
    key = f"order-{index}"
    for round_ in ("fresh", "after the window"):
        before = {r.id for r in store.runs.list(job="dedupe.sh", limit=1000)}
        if before:  # wait (on the store's clock) until the holder's window has passed
            queued = max(r.queued_at for r in store.runs.list(job="dedupe.sh", limit=1000) if r.queued_at)
            wait_for(lambda: store.clock.now() > queued + timedelta(seconds=WINDOW_S + 0.05), 10,
                     "the dedupe window to pass")
        results = race(lab, env, [["run", "dedupe.sh", "--dedupe-key", key]] * RACERS, round_.split()[0])
        check_commands(tally, results)
        new = [r for r in store.runs.list(job="dedupe.sh", limit=1000) if r.id not in before]
        tally.add("lost", 1 - len(new), f"{round_}: {RACERS} requests made no run")
        tally.add("doubled", len(new) - 1, f"{round_}: {RACERS} requests with one key made {len(new)} runs")
        if len(new) == 1:  # (with extra runs, the answers below differ too: counted once, above)
            answers = Counter(r.stdout.strip() for r in results)
            tally.check("doubled", list(answers) == [new[0].id],
                        f"{round_}: the requests were answered with run ids {sorted(answers)}, not {new[0].id}")
            firsts = sum("already queued" not in r.stderr for r in results)
            tally.add("doubled", firsts - 1, f"{round_}: {firsts} requests were told they made the run")
    runs = all_finished(store, "dedupe.sh", 2, 30)
    for run in runs:
        tally.check("lost", run.status is RunStatus.SUCCEEDED, f"run {run.id} ended {run.status.value}")
    executions = ledger_of(ledger)
    tally.add("doubled", sum(n - 1 for n in executions.values()), "a deduplicated run executed twice")
    tally.add("lost", len({r.id for r in runs} - set(executions)), "a run never executed")


# -- moving queued runs ------------------------------------------------------------
RELOCATED = PY + """import os
open(@LEDGER@, 'a').write(f"{os.environ['SOONER_RUN_ID']} {os.environ['SOONER_WORKER']}\\n")
print('on', os.environ['SOONER_WORKER'], flush=True)
"""
BLOCKER = PY + """import os, time
deadline = time.monotonic() + 60
while not os.path.exists(@GO@) and time.monotonic() < deadline:
    time.sleep(0.01)
"""


def relocate_queued(lab: Lab, tally: Tally, index: int) -> None:
    """Runs queued for a busy worker a (and for a worker nobody runs) moved at once by `sooner move`."""
    store, env = lab.database()
    ledger, go = lab.tmp / "ledger", lab.tmp / "go"
    deploy_files(store, {"moved.py": RELOCATED.replace("@LEDGER@", repr(str(ledger))),
                         "blocker.py": BLOCKER.replace("@GO@", repr(str(go)))})
    lab.worker(env, "a", "--capacity", "1")
    lab.worker(env, "b", "--capacity", "2", "--tags", "gpu")
    blocker = queue(store, "blocker.py", target=worker_target("a"))
    wait_for(lambda: store.runs.get(blocker.id).status is RunStatus.RUNNING, 20, "the blocker to run on a")
    moves = [("a", ["--worker", "b"], {"b"}), ("a", ["--tag", "gpu"], {"b"}), ("a", ["--any"], {"a", "b"}),
             ("nobody", ["--worker", "b"], {"b"})]
    runs = [queue(store, "moved.py", target=worker_target(start)) for start, _, _ in moves]
    results = race(lab, env, [["move", run.id, *args] for run, (_, args, _) in zip(runs, moves)], "move")
    check_commands(tally, results)
    moved = [r.returncode == 0 and "moved run" in r.stdout for r in results]
    go.touch()
    finished(store, blocker.id, 30)
    all_finished(store, "moved.py", len(runs), 30)
    executions = [line.split() for line in ledger.read_text().splitlines()] if ledger.exists() else []
    for run, (_, args, targets), ok in zip(runs, moves, moved):
        where = [worker for run_id, worker in executions if run_id == run.id]
        done = store.runs.get(run.id)
        tally.check("lost", done.status is RunStatus.SUCCEEDED, f"run moved {args} ended {done.status.value}")
        tally.add("lost", 1 - len(where), f"run moved {args} never executed")
        tally.add("doubled", len(where) - 1, f"run moved {args} executed {len(where)} times: {where}")
        tally.check("lost", not ok or set(where) <= targets,
                    f"run moved {args} executed on {where}, not on its new target {sorted(targets)}")
    tally.add("doubled", len(store.runs.list(job="moved.py", limit=100)) - len(runs), "moves made extra runs")


# -- the scheduler is down for some ticks --------------------------------------------
DOWN_TICKS = 5


def tick_of(run: Run) -> datetime | None:
    return getattr(run.trigger, "scheduled_for", None)


def scheduler_down(lab: Lab, tally: Tally, index: int) -> None:
    """Two schedulers fire an every-second job, both are killed -9 for 5 ticks and restarted.

    Every tick from the first fired to the last must have exactly one run or one missed record.
    """
    store, env = lab.database()
    deploy_files(store, {"tick.sh": "#!/bin/sh\n"})
    store.jobs.update_settings("tick.sh", {"schedule": "* * * * * *", "overlap": "allow"})
    schedulers = [lab.scheduler(env) for _ in range(2)]

    def fired() -> list[Run]:
        return [r for r in store.runs.list(job="tick.sh", limit=1000) if tick_of(r) is not None]

    wait_for(lambda: len(fired()) >= 3, 30, "three ticks fired")
    for scheduler in schedulers:
        scheduler.kill9()
    down_at = store.clock.now()
    wait_for(lambda: store.clock.now() >= down_at + timedelta(seconds=DOWN_TICKS), DOWN_TICKS + 5,
             f"{DOWN_TICKS} ticks without a scheduler")
    count = len(fired())
    for _ in range(2):
        lab.scheduler(env)
    wait_for(lambda: len(fired()) >= count + 3, 30, "three ticks fired after the restart")
    moments = Counter(tick for r in fired() if (tick := tick_of(r)) is not None)
    first, last = min(moments), max(moments)
    records = store.missed.list("tick.sh")
    lost = doubled = 0
    tick = first
    while tick <= last:
        seen = moments.get(tick, 0) + sum(1 for m in records if m.covers(tick))
        lost += seen == 0
        doubled += max(0, seen - 1)
        tick += timedelta(seconds=1)
    tally.add("lost", lost, f"{lost} ticks from {first:%H:%M:%S} to {last:%H:%M:%S} neither fired nor recorded")
    tally.add("doubled", doubled, f"{doubled} ticks fired twice, or fired and recorded, or recorded twice")
    for record in records:
        span = int((record.scheduled_for - record.first).total_seconds()) + 1
        tally.check("lost", record.count == span, f"a record of {span} ticks counts {record.count}")
    tally.check("lost", any(m.count >= DOWN_TICKS - 1 for m in records),
                f"no record of the {DOWN_TICKS} s downtime: {[(m.first, m.count) for m in records]}")
