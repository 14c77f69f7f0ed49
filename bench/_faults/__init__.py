"""The faults of ``bench/faults.py``: one :class:`Fault` per row of its table, each trial with real processes.

A fault's ``trial(lab, tally, index)`` injects the fault once and counts in the
:class:`~_faults.harness.Tally` what it cost (see each module's docstring for
what counts as lost, doubled, a lost line or a crash there). ``index`` is the
trial's number, for faults that vary a detail from trial to trial.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from _faults import calls, lifetime, outage, runs, site
from _faults.harness import Lab, Tally


@dataclass(frozen=True)
class Fault:
    """One row of the table: a short name for ``--only``, what the row says, and one trial."""

    name: str
    label: str
    trial: Callable[[Lab, Tally, int], None]


FAULTS = [
    Fault("progress-overflow", "progress overflow (stderr and socket)", calls.progress_overflow),
    Fault("emit-flood", "hostile RPC/emit flood", calls.emit_flood),
    Fault("worker-kill", "worker kill -9 mid-run (orphan + retry overlap)", lifetime.worker_kill),
    Fault("db-sigstop", "DB SIGSTOP during streaming (mongo_url)", outage.sigstop_mongo_url),
    Fault("db-kill", "DB kill -9 during streaming (mongo_url)", outage.kill9_mongo_url),
    Fault("embedded-kill", "embedded DB kill -9 (lock held) during streaming", outage.kill9_embedded),
    Fault("end-in-outage", "run ends during outage", outage.ends_during_outage),
    Fault("corrupt-db-json", "corrupt db.json", site.corrupt_db_json),
    Fault("timeout-tree", "timeout with setsid grandchild", lifetime.timeout_tree),
    Fault("output-flood", "output flood over the cap", lifetime.output_flood),
    Fault("retries", "retries exhaust (attempts chain)", runs.retries_exhaust),
    Fault("dedupe-race", "dedupe race (8 concurrent requests)", runs.dedupe_race),
    Fault("relocate", "relocate queued run", runs.relocate_queued),
    Fault("scheduler-down", "scheduler down for N ticks (missed recorded)", runs.scheduler_down),
]
