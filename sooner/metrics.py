"""What each Sooner process counts for ``/metrics``, and how it reaches the web server.

Workers and schedulers are separate processes, often on other hosts, and the
web server runs several gunicorn processes: no process can expose another's
counters. So each counts in its own prometheus_client registry
(:data:`PROCESS`), and publishes a snapshot of it to the store every few
seconds (:class:`Publisher`, ``store.metrics``); ``/metrics``
(:mod:`sooner.webapp.metrics`) reads the snapshots back, labels each with its
process, and adds what the database itself says (runs by status, queue
depth, worker heartbeats). No web process holds state of its own, which is
what makes it safe under any number of gunicorn processes.

Counters and histograms start at zero when a process starts; Prometheus'
``rate()`` reads such a reset as a restart, per ``process`` label.
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram

if TYPE_CHECKING:
    from sooner.store import Store

PUBLISH_EVERY_S = 5.0
# Seconds: from a few milliseconds (a warm worker) to minutes (a queue that waits).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class ProcessMetrics:
    """The counters of one process (see the module docstring); tests make their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.dispatch_latency = Histogram(
            "sooner_dispatch_latency_seconds", "From when a run could start (queued, or its retry time) to its "
            "script starting", buckets=LATENCY_BUCKETS, registry=self.registry)
        self.fire_lateness = Histogram(
            "sooner_fire_lateness_seconds", "From a time trigger's tick to its run being stored",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.runs_finished = Counter("sooner_runs_finished", "Runs this process ended, by job and status",
                                     ["job", "status"], registry=self.registry)
        self.output_bytes = Counter("sooner_output_bytes", "Bytes of run output this process stored",
                                    registry=self.registry)
        self.rpc_calls = Counter("sooner_rpc_calls", "Calls scripts made (progress, emit …) over either channel, "
                                 "by method", ["method"], registry=self.registry)

    def samples(self) -> list[dict[str, Any]]:
        """Every sample of the registry as plain data (what a snapshot in the store holds)."""
        rows = []
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # creation times are per process and say nothing across a fleet
                rows.append({"family": family.name, "type": family.type, "help": family.documentation,
                             "name": sample.name, "labels": dict(sample.labels), "value": float(sample.value)})
        return rows


PROCESS = ProcessMetrics()


class Publisher:
    """Writes this process's snapshot to the store at most every ``every_s`` (callers call it often)."""

    def __init__(self, store: Store, kind: str, name: str, *, metrics: ProcessMetrics = PROCESS,
                 every_s: float = PUBLISH_EVERY_S) -> None:
        self.store, self.kind, self.name, self.metrics, self.every_s = store, kind, name, metrics, every_s
        self._next = 0.0

    def maybe_publish(self, *, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now < self._next:
            return False
        self._next = now + self.every_s
        self.store.metrics.publish(self.kind, self.name, self.metrics.samples(), host=socket.gethostname(),
                                   pid=os.getpid())
        return True
