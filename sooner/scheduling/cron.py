"""Cron maths: validate expressions and timezones, compute fire times.

Every part of Sooner (scheduler, CLI, web UI) computes fire times with the
functions here, so there is one cron semantics everywhere:

* Fields as Debian cron (cronie) reads them: 5 fields
  (``minute hour day-of-month month day-of-week``) with ``*``, ``*/n``,
  ``a``, ``a-b``, ``a-b/n``, lists and three-letter names; day-of-week 0 and
  7 are both Sunday; day-of-month and day-of-week combine with AND when
  either starts with ``*`` (``*/2`` too) and with OR otherwise.  Beyond
  cronie: a 6th field of **seconds, last**; the aliases ``@hourly @daily
  @midnight @weekly @monthly @yearly @annually`` in any case; ``N/n``
  (``N-max/n``); ``?`` for ``*`` in the day fields; and cronsim's ``L`` and
  ``LW`` (day of month), ``5L`` and ``5#3`` (day of week).  Rejected:
  ``@reboot``, hashed/random values (``H``, ``R``, ``~``), reversed ranges
  (cronie silently never runs them, or reads day-of-week ``5-0`` as
  ``5-7``) and a 7th (year) field.  The engine is cronsim, fed naive wall
  times so that DST stays ours (below); its one divergence from cronie, a
  stepped single-value range (``5-5/10`` is ``5``), is rewritten first.
* Expressions are evaluated on the wall clock of the job's IANA timezone and
  each matching wall-clock time is mapped to real instants (UTC) with the
  DST behaviour people know from Vixie cron / cronie:

  - a wall-clock time skipped by a spring-forward change fires once, at the
    transition itself (the first instant after the gap); several skipped
    times collapse into that one fire, and also with a fire that is due at
    the first wall-clock time after the gap (``*/15`` fires once at 03:00);
  - a wall-clock time repeated by a fall-back change fires once (at its first
    occurrence) when the hour field is *fixed*, and twice (in both copies of
    the hour) when the hour field is a *wildcard*.

  **Fixed-hour rule.**  As in cronie (``HR_STAR`` in ``entry.c``), the hour
  field is a wildcard exactly when it starts with ``*``: ``*`` and ``*/3``
  (and ``@hourly``).  Anything else -- ``2``, ``1,13``, ``1-3``,
  ``8-18/2`` -- names fixed hours.  Unlike cronie we ignore the minute field
  (cronie also treats ``*/5 2 * * *`` as a wildcard job): the contract is
  that a job with a fixed hour fires once in the repeated hour.  Also unlike
  cronie, the skipped-time rule holds for wildcard jobs too (cronie's
  wildcard jobs do not catch up skipped minutes: its ``30 * * * *`` drops
  02:30 on a spring-forward day, ours fires it at 03:00), and several
  skipped times give one fire (cronie runs a fixed job once per time).

Results are always strictly increasing in real time.  All functions are
pure: no I/O; the only state is a cache of validated expressions.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from itertools import islice
from typing import NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cron_descriptor import Options, get_description
from cronsim import CronSim, CronSimError

from sooner.errors import ScheduleError

UTC = timezone.utc

ALIASES: dict[str, str] = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}

_MONTH_NAMES = "jan feb mar apr may jun jul aug sep oct nov dec".split()
_DAY_NAMES = "sun mon tue wed thu fri sat".split()


@dataclass(frozen=True)
class _Field:
    """One field as written by the user (seconds last): its range and extra forms."""

    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    extras: tuple[str, ...] = ()

    def reason(self, value: str) -> str:
        """Say why ``value`` is not a valid field, for an error message."""
        numbers = [int(n) for n in re.findall(r"(?<![/#\w])\d+", value)]  # not steps, not n in 5#n
        if any(not self.low <= n <= self.high for n in numbers):
            return f"values must be within {self.low}-{self.high}"
        if any(int(a) > int(b) for a, b in re.findall(r"(?<![/#\w])(\d+)-(\d+)", value)):
            return f"ranges must run from low to high, as in {self.low}-{self.high}"
        forms = [*(["names"] if self.names else []), "ranges", "lists", "steps", *self.extras]
        return f"expected numbers within {self.low}-{self.high}, {', '.join(forms[:-1])} or {forms[-1]}"

    def value_of(self, text: str) -> int | None:
        """A number or name as a number, or None if it is neither."""
        if text.isdigit():
            return int(text)
        lowered = text.lower()
        return self.names.index(lowered) + self.low if lowered in self.names else None


_FIELDS: tuple[_Field, ...] = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31, extras=("L", "LW")),
    _Field("month", 1, 12, names=tuple(_MONTH_NAMES)),
    _Field("day-of-week", 0, 7, names=tuple(_DAY_NAMES), extras=("5L", "5#3")),
    _Field("second", 0, 59),
)
_HOUR, _DAY_FIELDS = 1, (2, 4)

# croniter's syntax for hashed (H) and random (R) values; both depend on
# state outside the expression, so two processes would disagree on fire times.
_HASHED = re.compile(r"^[hr](\(\d+-\d+\))?(/\d+)?$", re.IGNORECASE)
_STEPPED_RANGE = re.compile(r"^(\w+)-(\w+)/\d+$")

# Any moment; used to check that an expression can ever fire.
_PROBE_START = datetime(2000, 1, 1)
_MICROSECOND = timedelta(microseconds=1)


def validate_cron(expr: str) -> str:
    """Return ``expr`` normalised (trimmed, single spaces, aliases lowercased).

    Raises :class:`ScheduleError` naming the expression and what is wrong when
    it is empty, has the wrong number of fields, uses an unsupported alias or
    value, has an out-of-range value, or can never fire.
    """
    if not isinstance(expr, str):
        raise ScheduleError(f"invalid cron expression {expr!r}: expected a string")
    return _compile(expr).normalised


@dataclass(frozen=True)
class _Cron:
    """A validated expression: as the user wrote it, and in the engine's form."""

    normalised: str
    engine: str  # cronsim's field order: a 6th (seconds) field comes first
    wildcard_hour: bool


@lru_cache(maxsize=1024)
def _compile(expr: str) -> _Cron:
    """Validate and translate ``expr`` once; the scheduler asks for it every tick."""
    fields = expr.split()
    normalised = " ".join(fields)
    if not fields:
        raise ScheduleError(f"invalid cron expression {normalised!r}: it is empty")
    if len(fields) == 1 and fields[0].startswith("@"):
        alias = _validate_alias(normalised)
        return _Cron(alias, _to_engine(ALIASES[alias].split()), hour_is_wildcard(alias))
    if len(fields) not in (5, 6):
        hint = " (a year field is not supported)" if len(fields) == 7 else ""
        raise ScheduleError(
            f"invalid cron expression {normalised!r}: expected 5 or 6 fields, "
            f"got {len(fields)}{hint}"
        )
    for field, value in zip(_FIELDS, fields):
        if _HASHED.match(value):
            raise ScheduleError(
                f"invalid cron expression {normalised!r}: {field.name} field "
                f"{value!r}: hashed (H) and random (R) values are not supported"
            )
    engine = _to_engine(fields)
    _check_fields(normalised, fields)
    return _Cron(normalised, engine, hour_is_wildcard(normalised))


def _validate_alias(alias: str) -> str:
    """Validate a single ``@name`` alias and return it lowercased."""
    lowered = alias.lower()
    if lowered in ALIASES:
        return lowered
    if lowered == "@reboot":
        raise ScheduleError(
            f"invalid cron expression {alias!r}: @reboot is not supported "
            "(Sooner schedules by time, not by machine start)"
        )
    raise ScheduleError(
        f"invalid cron expression {alias!r}: unknown alias, expected one of "
        + ", ".join(sorted(ALIASES))
    )


def _to_engine(fields: list[str]) -> str:
    """Translate Sooner's fields (seconds last) into a cronsim expression (seconds first)."""
    translated = [_engine_field(index, value) for index, value in enumerate(fields)]
    return " ".join(translated[5:] + translated[:5])


def _engine_field(index: int, value: str) -> str:
    """One field in cronsim's syntax, where it differs from Sooner's."""
    if value == "?" and index in _DAY_FIELDS:
        return "*"
    terms = value.split(",")
    for position, term in enumerate(terms):
        # cronsim reads a stepped single-value range ``5-5/10`` as ``5/10``
        # (5, 15, ...); cronie as 5.  The step of a one-value range is moot.
        match = _STEPPED_RANGE.match(term)
        if match:
            first, last = (_FIELDS[index].value_of(end) for end in match.groups())
            if first is not None and first == last:
                terms[position] = term.partition("/")[0]
    return ",".join(terms)


def _check_fields(normalised: str, fields: list[str]) -> None:
    """Raise a ScheduleError naming the first bad field, or saying it never fires."""
    try:
        next(CronSim(_to_engine(fields), _PROBE_START))
        return
    except (CronSimError, ValueError):
        pass
    except StopIteration:  # cronsim found no match within 50 years
        _never_fires(normalised)
    for index, value in enumerate(fields):
        alone = ["*"] * len(fields)
        alone[index] = value
        try:
            CronSim(_to_engine(alone), _PROBE_START)
        except (CronSimError, ValueError):
            field = _FIELDS[index]
            raise ScheduleError(
                f"invalid cron expression {normalised!r}: {field.name} field {value!r} "
                f"is invalid ({field.reason(value)})"
            ) from None
    # Every field is fine alone: cronsim refused a day that no month has.
    _never_fires(normalised)


def _never_fires(normalised: str) -> NoReturn:
    """Reject expressions such as ``0 0 30 2 *`` that match no date at all."""
    raise ScheduleError(
        f"invalid cron expression {normalised!r}: it never fires "
        "(no date matches its day-of-month, month and day-of-week fields)"
    )


def validate_timezone(name: str) -> str:
    """Return ``name`` if it is a known IANA timezone, else raise ScheduleError."""
    try:
        if isinstance(name, str) and name:
            ZoneInfo(name)
            return name
    except (ZoneInfoNotFoundError, ValueError, OSError):
        pass
    raise ScheduleError(
        f"unknown timezone {name!r}: expected an IANA name such as 'Europe/Berlin'"
    )


def describe(expr: str) -> str:
    """Describe a cron expression in English ("Every 5 minutes").

    Never raises for a valid expression: when cron-descriptor cannot describe
    it, the expression itself is returned.
    """
    try:
        fields = ALIASES.get(expr.strip().lower(), expr).split()
        if len(fields) == 6:
            # cron-descriptor reads a 6-field expression as seconds-first.
            fields = [fields[5], *fields[:5]]
        options = Options(locale_code="en_US", use_24hour_time_format=True)
        return str(get_description(" ".join(fields).upper(), options))
    except Exception:  # a description is cosmetic; never fail because of it
        return expr


def next_fires(expr: str, tz: str, after: datetime, n: int = 5) -> list[datetime]:
    """Return the next ``n`` fire times strictly after ``after``.

    ``after`` must be timezone-aware (any zone).  Results are aware datetimes
    in the job's timezone ``tz``, strictly increasing; fewer than ``n`` when
    the schedule runs out (the engine gives up after 50 years without a match).
    Raises ScheduleError for an invalid expression or timezone.

    Compare results in UTC: Python compares two datetimes that share a tzinfo
    by wall clock, ignoring ``fold``, so 02:30+02:00 and 02:30+01:00 of a
    repeated hour compare equal until converted.
    """
    schedule = _Schedule.parse(expr, tz)
    fires = islice(_iter_fires(schedule, _to_utc(after, "after")), max(n, 0))
    return [instant.astimezone(schedule.zone) for instant in fires]


def fires_between(
    expr: str, tz: str, start: datetime, end: datetime, limit: int = 1000
) -> list[datetime]:
    """Return fire times ``t`` with ``start < t <= end``, in UTC, oldest first.

    At most ``limit`` times are returned (the earliest ones), so a scheduler
    catching up after a long outage does a bounded amount of work.
    """
    schedule = _Schedule.parse(expr, tz)
    start_utc, end_utc = _to_utc(start, "start"), _to_utc(end, "end")
    fires: list[datetime] = []
    if limit <= 0:
        return fires
    for instant in _iter_fires(schedule, start_utc):
        if instant > end_utc:
            break
        fires.append(instant)
        if len(fires) >= limit:
            break
    return fires


def last_fire_at_or_before(expr: str, tz: str, when: datetime) -> datetime | None:
    """Return the latest fire time ``t <= when`` in UTC, or None if there is none.

    Used by the ``catch_up_once`` missed-tick policy.
    """
    schedule = _Schedule.parse(expr, tz)
    when_utc = _to_utc(when, "when")
    # A wall-clock time up to one DST shift later than ``when``'s own can
    # still map to an instant at or before it (first copy of a repeated hour).
    try:
        local = when_utc.astimezone(schedule.zone)
        upper = when_utc.replace(tzinfo=None) + max(_fold_offsets(local)) + _MICROSECOND
    except OverflowError:
        upper = datetime.max  # ``when`` is at the end of time
    for wall in _wall_times(schedule.cron, upper, reverse=True):
        instants = schedule.instants(wall)
        if instants[0] <= when_utc:
            break
    else:
        return None
    # The answer lies between instants[0] and ``when``; walk forward to it.
    latest = instants[0]
    for instant in _iter_fires(schedule, latest):
        if instant > when_utc:
            break
        latest = instant
    return latest


def hour_is_wildcard(expr: str) -> bool:
    """Tell whether the hour field of a valid expression starts with ``*``.

    Such jobs fire in both copies of an hour repeated by a fall-back change;
    jobs with fixed hours fire only in the first copy (see module docstring).
    """
    fields = ALIASES.get(expr.strip().lower(), expr).split()
    return fields[_HOUR].startswith("*")


@dataclass(frozen=True)
class _Schedule:
    """A validated expression in the engine's form, with its zone and hour kind."""

    cron: str
    zone: ZoneInfo
    wildcard_hour: bool

    @classmethod
    def parse(cls, expr: str, tz: str) -> _Schedule:
        """Validate ``expr`` and ``tz``; raise ScheduleError if either is bad.

        Cheap after the first call for an expression (``_compile`` is cached,
        ZoneInfo caches zones).
        """
        if not isinstance(expr, str):
            validate_cron(expr)  # raises
        compiled = _compile(expr)
        return cls(cron=compiled.engine, zone=ZoneInfo(validate_timezone(tz)),
                   wildcard_hour=compiled.wildcard_hour)

    def instants(self, wall: datetime) -> list[datetime]:
        """Map a naive wall-clock time to its fire instants (UTC), sorted.

        Per PEP 495, fold=0 reads a repeated time with the earlier offset (the
        earlier instant) and a skipped time with the offset from before the
        gap (an instant after the gap), so the order of the two readings
        tells which case applies.
        """
        first = wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
        second = wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
        if first == second:
            return [first]
        if first < second:  # repeated by a fall-back change
            return [first, second] if self.wildcard_hour else [first]
        return [_transition(self.zone, second, first)]  # skipped by spring-forward


def _to_utc(moment: datetime, name: str) -> datetime:
    """Convert an aware datetime to UTC; a naive one is a programming error."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {moment!r}")
    return moment.astimezone(UTC)


def _fold_offsets(local: datetime) -> tuple[timedelta, timedelta]:
    """Return the UTC offsets of both readings (fold 0 and 1) of a wall time."""
    first = local.replace(fold=0).utcoffset()
    second = local.replace(fold=1).utcoffset()
    assert first is not None and second is not None  # ZoneInfo always answers
    return first, second


def _iter_fires(schedule: _Schedule, after_utc: datetime) -> Iterator[datetime]:
    """Yield fire instants (UTC) strictly after ``after_utc``, strictly increasing.

    Wall-clock candidates come from the engine on naive local time; each maps to
    one or two instants.  Instants wait in a heap until no later candidate can
    produce an earlier instant: the earliest instant a wall time maps to never
    decreases as wall time increases.
    """
    # Wall times at or before this one cannot map to an instant after
    # ``after_utc``: it is that instant's own wall time, or the start of the
    # repeated hour when the instant lies in its first copy.
    try:
        local = after_utc.astimezone(schedule.zone)
        start = after_utc.replace(tzinfo=None) + min(_fold_offsets(local))
    except OverflowError:
        return  # ``after_utc`` is at the end of time
    pending: list[datetime] = []
    last: datetime | None = None
    for wall in _wall_times(schedule.cron, start):
        instants = schedule.instants(wall)
        for instant in instants:
            if instant > after_utc:
                heapq.heappush(pending, instant)
        while pending and pending[0] <= instants[0]:
            instant = heapq.heappop(pending)
            if instant != last:
                last = instant
                yield instant
    for instant in sorted(pending):
        if instant != last:
            last = instant
            yield instant


def _wall_times(engine_expr: str, start: datetime, reverse: bool = False) -> Iterator[datetime]:
    """Yield naive wall-clock times matching, strictly after ``start`` (before, if ``reverse``).

    cronsim is given naive times, so it applies no DST rules of its own.
    """
    times = CronSim(engine_expr, start, reverse=reverse)
    while True:
        try:
            yield next(times)
        except (StopIteration, OverflowError, ValueError):
            return  # no match within cronsim's 50 years, or past year 1 or 9999


def _transition(zone: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """Return the first instant in ``(before, after]`` with ``after``'s UTC offset.

    That is the moment of the DST change between the two instants; zoneinfo
    does not expose transitions, so bisect (transitions fall on whole seconds).
    """
    target = after.astimezone(zone).utcoffset()
    low, high = before, after
    while high - low > timedelta(seconds=1):
        middle = (low + (high - low) / 2).replace(microsecond=0)
        if middle.astimezone(zone).utcoffset() == target:
            high = middle
        else:
            low = middle
    return high
