"""Dispatch in a discrete-event simulation: 100 workers of mixed speed and capacity, 10,000 runs.

The simulated workers decide with the same model functions the real worker calls
(:func:`sooner.model.dispatch.hold_order` over a :class:`FleetView` built from heartbeat-stale
``Worker`` records, speeds from :func:`fleet_speeds` over recent finished runs), poll every 25 ms
while they have room, and heartbeat every 2 s. Time is simulated (no sleeping).
"""

from __future__ import annotations

import heapq
import itertools
import random
import statistics
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sooner.model import Worker
from sooner.model.dispatch import Candidate, FleetView, Sample, fleet_speeds, hold_order

START = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)
POLL_S = 0.025
HEARTBEAT_S = 2.0
SPEED_EVERY_S = 10.0
HOLD_S = 0.1
CANDIDATES = 20
SPEEDS = (0.5, 1.0, 2.0)


@dataclass
class SimWorker:
    name: str
    capacity: int
    true_speed: float
    running: int = 0
    speed: float | None = None  # what it measured and advertises
    published: Worker | None = None
    polling: bool = False
    taken: int = 0
    busy_s: float = 0.0


@dataclass
class Result:
    waits: list[float] = field(default_factory=list)
    workers: list[SimWorker] = field(default_factory=list)
    utilisation: float = 0.0

    def runs_per_slot(self, speed: float) -> float:
        group = [w for w in self.workers if w.true_speed == speed]
        return sum(w.taken for w in group) / sum(w.capacity for w in group)


def at(t: float) -> datetime:
    return START + timedelta(seconds=t)


def simulate(runs: int, load: float, hold_s: float = HOLD_S, seed: int = 7) -> Result:
    rng = random.Random(seed)
    workers = [SimWorker(f"w{i:03d}", rng.choice((1, 2, 4, 8)), SPEEDS[i % 3]) for i in range(100)]
    jobs = {f"job{j}": rng.uniform(0.5, 3.0) for j in range(20)}
    names = list(jobs)
    capacity_rate = sum(w.capacity * w.true_speed for w in workers) / statistics.mean(jobs.values())
    events: list[tuple[float, int, str, object]] = []
    order = itertools.count()

    def push(t: float, kind: str, what: object) -> None:
        heapq.heappush(events, (t, next(order), kind, what))

    t = 0.0
    for index in range(runs):
        t += rng.expovariate(load * capacity_rate)
        push(t, "arrive", Candidate(id=f"r{index:05d}", job=rng.choice(names), queued_at=at(t)))
    last_arrival = t
    for w in workers:
        phase = rng.uniform(0, HEARTBEAT_S)
        push(phase, "beat", w)
    push(SPEED_EVERY_S, "speeds", None)

    queue: list[Candidate] = []
    arrived: dict[str, float] = {}
    samples: deque[Sample] = deque(maxlen=500)
    view = FleetView()
    result = Result(workers=workers)
    busy_in_window = 0.0

    def wake_all(now: float) -> None:
        for w in workers:
            if not w.polling and w.running < w.capacity:
                w.polling = True
                push(now + rng.uniform(0, POLL_S), "poll", w)

    while events:
        now, _, kind, what = heapq.heappop(events)
        if kind == "arrive":
            assert isinstance(what, Candidate)
            queue.append(what)
            arrived[what.id] = now
            wake_all(now)
        elif kind == "beat":
            assert isinstance(what, SimWorker)
            what.published = Worker(what.name, capacity=what.capacity, heartbeat_at=at(now), speed=what.speed,
                                    running=tuple(range(what.running)))
            view = FleetView([w.published for w in workers if w.published is not None])
            if len(result.waits) < runs:
                push(now + HEARTBEAT_S, "beat", what)
        elif kind == "speeds":
            speeds = fleet_speeds(samples)
            for w in workers:
                w.speed = speeds.get(w.name)
            if len(result.waits) < runs:
                push(now + SPEED_EVERY_S, "speeds", None)
        elif kind == "done":
            w, started, duration = what  # type: ignore[misc]
            w.running -= 1
            window_end = min(now, last_arrival)
            busy_in_window += max(0.0, window_end - started)
            if queue:
                wake_all(now)
        elif kind == "poll":
            assert isinstance(what, SimWorker)
            w = what
            me = Worker(w.name, capacity=w.capacity, speed=w.speed)
            chosen = hold_order(queue[:CANDIDATES], me, view, at(now), hold_s)
            for candidate in chosen:
                if w.running >= w.capacity:
                    break
                queue.remove(candidate)
                result.waits.append(now - arrived[candidate.id])
                duration = jobs[candidate.job] / w.true_speed * rng.uniform(0.9, 1.1)
                w.running += 1
                w.taken += 1
                samples.appendleft(Sample(w.name, candidate.job, duration))
                push(now + duration, "done", (w, now, duration))
            if queue and w.running < w.capacity:
                push(now + POLL_S, "poll", w)
            else:
                w.polling = False
    slots = sum(w.capacity for w in workers)
    result.utilisation = busy_in_window / (slots * last_arrival)
    return result


def test_under_full_load_no_run_starves_slots_stay_busy_and_faster_workers_take_more():
    # given 100 workers of speeds 0.5/1/2 and capacities 1-8, and 10,000 runs arriving a little
    # faster than the fleet can run them
    result = simulate(10_000, load=1.05)

    # then every run was taken, none waited long, slots stayed busy while work arrived
    assert len(result.waits) == 10_000
    assert max(result.waits) < 10.0, f"a run waited {max(result.waits):.1f}s"
    assert result.utilisation >= 0.90, f"utilisation {result.utilisation:.3f}"
    # and each slot of a faster worker ran proportionally more runs
    slow, mid, fast = (result.runs_per_slot(s) for s in SPEEDS)
    assert fast / mid > 1.6 and mid / slow > 1.6, (slow, mid, fast)


def test_under_light_load_the_fastest_free_workers_get_the_runs_and_no_run_waits_past_the_hold():
    # given the same fleet at half load: free slots everywhere, so a pure pull would spread runs evenly
    result = simulate(2_000, load=0.5)
    baseline = simulate(2_000, load=0.5, hold_s=0.0)  # no holding back: whoever polls first takes it

    # then no run waited longer than the hold and a poll or two
    assert max(result.waits) <= HOLD_S + 2 * POLL_S, f"a run waited {max(result.waits):.3f}s"
    # and the fast workers took most runs, far more than without the preference rule
    fast_share = sum(w.taken for w in result.workers if w.true_speed == 2.0) / 2_000
    baseline_share = sum(w.taken for w in baseline.workers if w.true_speed == 2.0) / 2_000
    assert fast_share > 0.55, fast_share
    assert fast_share > baseline_share + 0.1, (fast_share, baseline_share)
    assert result.runs_per_slot(0.5) < 0.75 * baseline.runs_per_slot(0.5)
