"""Monitoring samples: what a worker measured of its host, its own process and its runs' process trees.

Stored in ``samples`` (:mod:`sooner.store.samples`), one document per measurement, kept
``sample_retention_hours``. A sample belongs to one *series*, ``kind:key`` (``host:w1``,
``worker:w1``, ``run:<run id>``, ``queue:``): the one field the store looks samples up by.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any


class SampleKind(str, Enum):
    """What a sample measured."""

    HOST = "host"  # the worker's machine: CPU %, memory used (bytes and %), load average; key = worker name
    WORKER = "worker"  # the worker's own process: CPU %, RSS; key = worker name
    RUN = "run"  # a run's process tree: CPU % (summed over the tree), RSS (summed); key = run id
    QUEUE = "queue"  # runs queued for a worker, fleet-wide (the scheduler samples it); key = ""


def series_of(kind: SampleKind, key: str) -> str:
    """The series name a sample is stored and found under."""
    return f"{kind.value}:{key}"


@dataclass(frozen=True)
class Sample:
    """One measurement. Fields a kind does not measure are None."""

    kind: SampleKind
    key: str
    t: datetime
    cpu_percent: float | None = None
    rss_bytes: int | None = None
    load1: float | None = None  # host: 1-minute load average
    mem_used_percent: float | None = None  # host
    depth: int | None = None  # queue: runs queued
    running: int | None = None  # queue: runs running

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"series": series_of(self.kind, self.key), "kind": self.kind.value, "key": self.key,
                               "t": self.t}
        for name in _MEASURES:
            value = getattr(self, name)
            if value is not None:
                doc[name] = value
        return doc

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Sample | None:
        """The sample a document holds; None for a document this version cannot read."""
        try:
            kind = SampleKind(doc.get("kind"))
        except ValueError:
            return None
        t = doc.get("t")
        if not isinstance(t, datetime):
            return None
        values = {name: doc.get(name) for name in _MEASURES}
        if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values.values()):
            return None
        return cls(kind, str(doc.get("key") or ""), t, **values)

    def to_api(self) -> dict[str, Any]:
        """What the JSON endpoints show: ``t`` as epoch seconds (what charts plot) and the measures it has."""
        body: dict[str, Any] = {"t": round(self.t.timestamp(), 3)}
        for name in _MEASURES:
            value = getattr(self, name)
            if value is not None:
                body[name] = round(value, 2) if isinstance(value, float) else value
        return body


_MEASURES = ("cpu_percent", "rss_bytes", "load1", "mem_used_percent", "depth", "running")


def downsample(samples: list[Sample], points: int) -> list[Sample]:
    """At most ``points`` samples, in order: consecutive samples merged, CPU and load averaged, memory and depth peaked.

    A chart of a long series needs a few hundred points; peaks are kept so that a short
    spike of memory still shows.
    """
    if points <= 0 or len(samples) <= points:
        return samples
    size = -(-len(samples) // points)  # ceiling: at most ``points`` groups
    merged = []
    for start in range(0, len(samples), size):
        group = samples[start:start + size]
        merged.append(Sample(group[0].kind, group[0].key, group[-1].t,
                             cpu_percent=_mean(s.cpu_percent for s in group), rss_bytes=_peak(s.rss_bytes for s in group),
                             load1=_mean(s.load1 for s in group),
                             mem_used_percent=_peak(s.mem_used_percent for s in group),
                             depth=_peak(s.depth for s in group), running=_peak(s.running for s in group)))
    return merged


def _mean(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _peak(values: Any) -> Any:
    present = [v for v in values if v is not None]
    return max(present) if present else None
