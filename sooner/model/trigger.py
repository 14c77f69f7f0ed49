"""What started a run: a tagged union stored as the run's ``trigger`` subdocument.

Each kind is a frozen dataclass named by its ``type`` (``cron``, ``manual``,
``api``, ``event``, ``retry``, ``relocate``, ``webhook``, ``signed_url``); :func:`trigger_from_doc` picks the class by
``type`` and keeps fields it does not know in ``extra``, so documents written
by a newer Sooner survive a round trip. :meth:`Trigger.describe` is the one
line the CLI, the web UI and the API show.

A new kind (webhooks, signed URLs …) is a subclass decorated with
:func:`trigger_kind`; nothing else changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="Trigger")

_KINDS: dict[str, type[Trigger]] = {}


def trigger_kind(cls: type[T]) -> type[T]:
    """Register a Trigger subclass under its ``type`` so stored documents turn back into it."""
    if not cls.type or cls.type in _KINDS and _KINDS[cls.type] is not cls:
        raise ValueError(f"trigger type {cls.type!r} is empty or registered already")
    _KINDS[cls.type] = cls
    return cls


def trigger_from_doc(doc: Mapping[str, Any] | None) -> Trigger:
    """The Trigger a stored ``trigger`` subdocument describes (an unknown type keeps its fields)."""
    doc = dict(doc or {})
    kind = str(doc.pop("type", "") or "")
    cls = _KINDS.get(kind)
    if cls is None:
        common = {k: doc.pop(k) for k in ("source", "author", "message", "source_ref") if k in doc}
        return OtherTrigger(**common, type_name=kind or "unknown", extra=doc)
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    known = {k: doc.pop(k) for k in list(doc) if k in names}
    return cls(**known, extra=doc)


@dataclass(frozen=True)
class Trigger:
    """Fields every kind may carry: who (``author``), from where (``source``) and a ``message``.

    ``source_ref`` is the short form (``hello.sh#41``, :mod:`sooner.model.run_ref`) of the run
    this one follows (a retried, re-run or relocated run), recorded when the trigger is made so
    that :meth:`describe` needs no lookup; triggers stored before run numbers lack it and show the id.
    """

    type: ClassVar[str] = ""
    source: str | None = None
    author: str | None = None
    message: str | None = None
    source_ref: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def kind(self) -> str:
        return self.type

    def to_doc(self) -> dict[str, Any]:
        """The stored form: ``type`` plus every field that is set (``extra`` included)."""
        doc: dict[str, Any] = {"type": self.kind}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is not None and value is not False:
                doc[f.name] = value
        doc.update(self.extra)
        return doc

    def describe(self) -> str:
        """One line saying what started the run."""
        return " ".join([self.kind, *self._details(), *([f"by {self.author}"] if self.author else [])])

    def _details(self) -> list[str]:
        return []

    @property
    def source_run(self) -> str | None:
        """The run this one follows from (an emitting or a failed run), if any."""
        return None


@trigger_kind
@dataclass(frozen=True)
class CronTrigger(Trigger):
    """A tick of the job's schedule; ``scheduled_for`` makes firing idempotent per (job, tick)."""

    type: ClassVar[str] = "cron"
    scheduled_for: datetime | None = None
    schedule: str | None = None
    timezone: str | None = None
    catch_up: bool = False
    missed: int | None = None
    missed_capped: bool = False
    missed_from: datetime | None = None

    def _details(self) -> list[str]:
        parts = [_utc_text(self.scheduled_for)] if self.scheduled_for else []
        if self.catch_up:
            more = "more than " if self.missed_capped else ""
            parts.append(f"(catch-up for {more}{self.missed or 0} missed)")
        return parts


@trigger_kind
@dataclass(frozen=True)
class ManualTrigger(Trigger):
    """Someone asked for a run (``sooner run``, Run now, Re-run)."""

    type: ClassVar[str] = "manual"
    rerun_of: str | None = None

    def _details(self) -> list[str]:
        return [f"(re-run of {self.source_ref or self.rerun_of})"] if self.rerun_of else []


@trigger_kind
@dataclass(frozen=True)
class ApiTrigger(Trigger):
    """A REST API call started the run; ``token`` is the id of the API token it came with (None: a session)."""

    type: ClassVar[str] = "api"
    token: str | None = None


@trigger_kind
@dataclass(frozen=True)
class EventTrigger(Trigger):
    """An emitted event the job is hooked to; ``source`` is the emitting run, if a run emitted it."""

    type: ClassVar[str] = "event"
    event: str | None = None
    event_id: str | None = None
    source_job: str | None = None

    def _details(self) -> list[str]:
        parts = [f"“{self.event}”"] if self.event else []
        if self.source_job:
            parts.append(f"from {self.source_job}")
        return parts

    @property
    def source_run(self) -> str | None:
        return self.source


@trigger_kind
@dataclass(frozen=True)
class RetryTrigger(Trigger):
    """A retry of the run in ``source``, which ended ``previous_status``."""

    type: ClassVar[str] = "retry"
    previous_status: str | None = None

    def _details(self) -> list[str]:
        return [f"of {self.source_ref or self.source}"] if self.source else []

    @property
    def source_run(self) -> str | None:
        return self.source


@trigger_kind
@dataclass(frozen=True)
class RelocateTrigger(Trigger):
    """Kill and relocate: the run in ``source`` was cancelled on ``from_worker`` and continues as this one."""

    type: ClassVar[str] = "relocate"
    from_worker: str | None = None

    def _details(self) -> list[str]:
        parts = [f"of {self.source_ref or self.source}"] if self.source else []
        return parts + ([f"from worker {self.from_worker}"] if self.from_worker else [])

    @property
    def source_run(self) -> str | None:
        return self.source


@trigger_kind
@dataclass(frozen=True)
class WebhookTrigger(Trigger):
    """A verified webhook delivery (``sooner.model.webhook``), stored in Strider's trigger spec shape:
    ``author`` {name, email, username}, ``message``, ``url``, ``timestamp`` and
    ``source`` {type: webhook, provider, hook, delivery}. In memory ``author`` is the shown name."""

    type: ClassVar[str] = "webhook"
    provider: str | None = None
    hook: str | None = None
    delivery: str | None = None
    event: str | None = None
    branch: str | None = None
    url: str | None = None
    timestamp: datetime | None = None
    author_name: str | None = None
    author_email: str | None = None
    author_username: str | None = None

    def __post_init__(self) -> None:
        # Stored documents carry the spec's subdocuments; read them back into the flat fields.
        author: Any = self.author
        if isinstance(author, Mapping):
            for key in ("name", "email", "username"):
                object.__setattr__(self, f"author_{key}", author.get(key))
            object.__setattr__(self, "author", author.get("username") or author.get("name"))
        source: Any = self.source
        if isinstance(source, Mapping):
            for key in ("provider", "hook", "delivery"):
                object.__setattr__(self, key, source.get(key))
            object.__setattr__(self, "source", None)

    def to_doc(self) -> dict[str, Any]:
        doc = super().to_doc()
        for key in ("author_name", "author_email", "author_username", "provider", "hook", "delivery"):
            doc.pop(key, None)
        author = {"name": self.author_name, "email": self.author_email, "username": self.author_username}
        doc["author"] = {key: value for key, value in author.items() if value}
        doc["source"] = {"type": "webhook", "provider": self.provider, "hook": self.hook, "delivery": self.delivery}
        return doc

    def _details(self) -> list[str]:
        parts = [f"{self.provider}/{self.hook}"]
        return parts + [part for part in (self.event, self.branch) if part]


@trigger_kind
@dataclass(frozen=True)
class SignedUrlTrigger(Trigger):
    """A GET of a signed trigger URL (``sooner sign``); ``expires_at`` is the URL's expiry."""

    type: ClassVar[str] = "signed_url"
    expires_at: datetime | None = None

    def _details(self) -> list[str]:
        return [f"(URL valid until {_utc_text(self.expires_at)})"] if self.expires_at else []


@dataclass(frozen=True)
class OtherTrigger(Trigger):
    """A stored trigger of a type this version does not know; kept as it was."""

    type_name: str = "unknown"

    @property
    def kind(self) -> str:
        return self.type_name

    def to_doc(self) -> dict[str, Any]:
        doc = super().to_doc()
        del doc["type_name"]
        return doc


def _utc_text(moment: datetime) -> str:
    from datetime import timezone

    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
