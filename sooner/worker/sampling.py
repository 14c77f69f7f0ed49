"""What a worker measures for monitoring: its runs' process trees, its own process and its host.

:class:`TreeUsage` follows one run's process tree. The run's loop samples the
tree (every :data:`~sooner.worker.supervise.SAMPLE_S` where the memory limit needs
it, else every :data:`MONITOR_S`); each sample also reads every process's CPU times. It keeps the peak of the
tree's summed RSS and the CPU seconds summed over the tree's processes (each
process's growth since the sample before; a process that ends between samples
loses what it used after the last one, which is why the supervisor also reports
its children's ``rusage`` once the tree is gone and :meth:`TreeUsage.result`
takes the larger), and every ``sample_s`` it turns what it saw into one
:class:`~sooner.model.sample.Sample` of the run.

:class:`WorkerSampler` makes the host's and the worker process's samples every
``sample_s``; the worker's heartbeat that finds it due stores those and the
runs' buffered samples in one ``insert_many`` (:meth:`sooner.store.samples.SampleRepo.insert`).
"""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime
from typing import Callable, Iterable

import psutil

from sooner.model.run import RunUsage
from sooner.model.sample import Sample, SampleKind

# How often a run's tree is sampled for monitoring alone (no memory limit): listing a tree reads every
# process's /proc stat (~3 ms of CPU on a host of 130 processes), so not every SAMPLE_S; a peak between two
# samples still counts through the supervisor's rusage report (the largest process's peak).
MONITOR_S = 1.0
# A run's buffer holds at most this many samples (an outage: heartbeats that cannot store them); older ones go.
RUN_BUFFER = 720


class TreeUsage:
    """The measured usage of one run's process tree (thread-safe: the run's thread observes, the heartbeat takes).

    ``clock`` gives the samples' times; ``every_s`` is how much time one sample covers.
    """

    def __init__(self, run_id: str, clock: Callable[[], datetime], every_s: float,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.run_id = run_id
        self.clock = clock
        self.every_s = every_s
        self.monotonic = monotonic
        self.peak_rss_bytes = 0
        self.cpu_s = 0.0
        self.observed = False
        self._cpu: dict[psutil.Process, float] = {}  # each process's CPU seconds at the last observation
        self._window_start = monotonic()
        self._window_cpu = 0.0
        self._window_rss = 0
        self._window_seen = False
        self._samples: list[Sample] = []
        self._lock = threading.Lock()

    def observe(self, processes: Iterable[psutil.Process]) -> int:
        """Read the tree's memory and CPU times; returns its summed RSS in bytes (what the memory limit checks)."""
        rss, cpu = 0, {}
        for process in processes:
            try:
                with process.oneshot():
                    rss += process.memory_info().rss
                    times = process.cpu_times()
            except psutil.Error:  # it ended meanwhile
                continue
            cpu[process] = times.user + times.system
        used = sum(max(0.0, seconds - self._cpu.get(process, 0.0)) for process, seconds in cpu.items())
        self._cpu = cpu
        now = self.monotonic()
        with self._lock:
            self.observed = True
            self.cpu_s += used
            self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
            self._window_cpu += used
            self._window_rss = max(self._window_rss, rss)
            self._window_seen = True
            if now - self._window_start >= self.every_s:
                self._close_window(now)
        return rss

    def _close_window(self, now: float) -> None:
        elapsed = max(now - self._window_start, 1e-6)
        self._samples.append(Sample(SampleKind.RUN, self.run_id, self.clock(),
                                    cpu_percent=round(100.0 * self._window_cpu / elapsed, 2),
                                    rss_bytes=self._window_rss))
        del self._samples[:-RUN_BUFFER]
        self._window_start, self._window_cpu, self._window_rss, self._window_seen = now, 0.0, 0, False

    def close(self) -> None:
        """The tree is gone: what the last, partial window saw becomes a sample too."""
        with self._lock:
            if self._window_seen:
                self._close_window(self.monotonic())

    def pending(self) -> int:
        """How many samples wait for :meth:`take_samples`."""
        with self._lock:
            return len(self._samples)

    def take_samples(self) -> list[Sample]:
        """The samples made since the last call (the heartbeat stores them)."""
        with self._lock:
            taken, self._samples = self._samples, []
        return taken

    def result(self, reported: tuple[float, int] | None = None) -> RunUsage | None:
        """The run's usage: the sampled peak and CPU seconds, or the supervisor's report of them where larger.

        ``reported`` is (CPU seconds, max RSS bytes of one process) from the supervisor's
        ``rusage`` of every process it and its children waited for; None when it was not
        received. None when nothing was measured at all.
        """
        if reported is None and not self.observed:
            return None
        cpu, rss = reported if reported is not None else (0.0, 0)
        return RunUsage(peak_rss_bytes=max(self.peak_rss_bytes, rss), cpu_s=max(self.cpu_s, cpu))


class WorkerSampler:
    """The host's and the worker process's samples, every ``every_s`` (monotonic time)."""

    def __init__(self, name: str, every_s: float, clock: Callable[[], datetime],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.every_s = every_s
        self.clock = clock
        self.monotonic = monotonic
        # Its own Process: cpu_percent(None) measures since the previous call on the same object, and the
        # heartbeat's stats() keeps another for the workers document.
        self._process = psutil.Process()
        self._process.cpu_percent(None)
        psutil.cpu_percent(None)
        self._next = monotonic() + every_s

    def due(self) -> bool:
        return self.monotonic() >= self._next

    def sample(self) -> list[Sample]:
        """The host's and this process's samples now; the next are due ``every_s`` later."""
        self._next = self.monotonic() + self.every_s
        now = self.clock()
        samples = []
        try:
            memory = psutil.virtual_memory()
            samples.append(Sample(SampleKind.HOST, self.name, now, cpu_percent=psutil.cpu_percent(None),
                                  rss_bytes=int(memory.total - memory.available),
                                  mem_used_percent=float(memory.percent), load1=round(os.getloadavg()[0], 2)))
        except (psutil.Error, OSError):
            pass
        try:
            with self._process.oneshot():
                samples.append(Sample(SampleKind.WORKER, self.name, now, cpu_percent=self._process.cpu_percent(None),
                                      rss_bytes=self._process.memory_info().rss))
        except psutil.Error:
            pass
        return samples
