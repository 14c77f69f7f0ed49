"""A worker's side of load-aware dispatch: its fleet view, its measured speed, and which candidates to try.

The rules are :mod:`sooner.model.dispatch`'s; this keeps the facts they need without a database
command per claim: the ``workers`` list is read once per heartbeat (:meth:`Dispatcher.refresh`),
and the recent finished runs that speeds come from at most every ``speed_every_s``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from sooner.model import Worker as WorkerRecord
from sooner.model.dispatch import Candidate, FleetView, fleet_speeds, hold_order

if TYPE_CHECKING:
    from sooner.config import Settings
    from sooner.store import Store

logger = logging.getLogger(__name__)

SPEED_EVERY_S = 30.0  # how often a worker re-measures its speed
SPEED_SAMPLES = 500  # recent finished runs (of the whole fleet) a speed is measured on


class Dispatcher:
    """What one worker knows about the fleet, refreshed by its heartbeat; see the module docstring."""

    def __init__(self, store: Store, settings: Settings, name: str, capacity: int, tags: Sequence[str]) -> None:
        self.store = store
        self.settings = settings
        self.name = name
        self.capacity = capacity
        self.tags = tuple(tags)
        self.speed: float | None = None  # advertised in the heartbeat; None until measured
        self.speed_every_s = SPEED_EVERY_S
        self.view = FleetView()
        self._next_speed = 0.0
        self._seen: dict[str, float] = {}  # candidate id -> when this worker first saw it (monotonic)

    @property
    def hold_s(self) -> float:
        return self.settings.dispatch_hold_ms / 1000.0

    def refresh(self, now: datetime) -> None:
        """Read the fleet (one query) and, when due, measure this worker's speed (one more)."""
        if time.monotonic() >= self._next_speed:
            self._next_speed = time.monotonic() + self.speed_every_s
            self.speed = fleet_speeds(self.store.runs.recent_samples(SPEED_SAMPLES)).get(self.name)
        self.view = FleetView.of(self.store.workers.list(), now, self.settings.heartbeat_s)

    def choose(self, offers: Sequence[Candidate], now: datetime) -> list[Candidate]:
        """The offers to try now, oldest first: those a faster worker with a free slot should get are held back."""
        if self.hold_s <= 0 or not offers:
            return list(offers)
        clock = time.monotonic()
        self._seen = {offer.id: self._seen.get(offer.id, clock) for offer in offers}
        seen_s = {run_id: clock - first for run_id, first in self._seen.items()}
        me = WorkerRecord(self.name, capacity=self.capacity, tags=self.tags, speed=self.speed)
        return hold_order(offers, me, self.view, now, self.hold_s, seen_s)
