"""Property test: Sooner's fire times agree with a brute-force reading of cron.

The oracle below shares no code with sooner.scheduling.cron or its engine.
It reads an expression the way crontab(5) and cronie's ``entry.c`` do
(``*``, ``*/n``, ``a``, ``a-b``, ``a-b/n``, lists, three-letter names in any
case, day-of-week 7 = Sunday; day-of-month and day-of-week ANDed when either
starts with ``*``, else ORed), then walks real time minute by minute in UTC
and applies the documented DST rules (docs/architecture.md, "Schedules
(contract)") to each instant's wall-clock reading:

* a wall time skipped by a forward change fires once, at the first instant
  after the gap (several skipped times and the first time after the gap
  collapse into that one fire);
* in a repeated wall time the second copy fires only when the hour field
  starts with ``*``.

It skips whole local days or hours that cannot match, but only while the UTC
offset does not change, so every instant near a DST change is looked at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from sooner.errors import ScheduleError
from sooner.scheduling.cron import last_fire_at_or_before, next_fires

UTC = timezone.utc
MINUTE = timedelta(minutes=1)
HORIZON = timedelta(days=400)
FIRES = 3

# Europe/Dublin has negative DST; Sao Paulo (until 2019) and Santiago skip or
# repeat the hour around midnight; Lord Howe shifts by 30 minutes; Chatham
# changes at 02:45; Kathmandu is +05:45 without DST.
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu",
         "America/Sao_Paulo", "America/Santiago", "Europe/Dublin", "Pacific/Chatham"]
YEARS = (2000, 2037)

MONTH_NAMES = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
# cronie's entry.c: what each @-shortcut sets, and which fields it marks as ``*``.
SHORTCUTS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


# --- the oracle: crontab(5) read directly -------------------------------------------------

def parse_field(text: str, low: int, high: int, names: list[str] | None = None) -> frozenset[int]:
    """Expand one field: ``range = number | number "-" number ["/" number] | "*" ["/" number]``."""
    values: set[int] = set()
    for term in text.split(","):
        match = re.fullmatch(r"(?:(\*)|(\w+)(?:-(\w+))?)(?:/(\d+))?", term)
        assert match, f"not crontab(5) syntax: {text!r}"
        star, first, last, step = match.groups()
        assert star or last or not step, f"cronie rejects number/step: {term!r}"
        start = low if star else number(first, low, names)
        stop = high if star else number(last or first, low, names)
        assert low <= start <= stop <= high, f"out of range: {term!r}"
        values.update(range(start, stop + 1, int(step or 1)))
    return frozenset(values)


def number(text: str, low: int, names: list[str] | None) -> int:
    """A decimal number, or a three-letter name (any case) counted from ``low``."""
    if text.isdigit():
        return int(text)
    assert names is not None and text.lower() in names, f"unknown name {text!r}"
    return names.index(text.lower()) + low


@dataclass(frozen=True)
class Spec:
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_and: bool
    hour_star: bool

    @classmethod
    def parse(cls, expr: str) -> Spec:
        fields = SHORTCUTS.get(expr, expr).split()
        minute, hour, dom, month, dow = fields[:5]
        weekdays = parse_field(dow, 0, 7, DAY_NAMES)
        return cls(
            seconds=parse_field(fields[5], 0, 59) if len(fields) == 6 else frozenset({0}),
            minutes=parse_field(minute, 0, 59),
            hours=parse_field(hour, 0, 23),
            days=parse_field(dom, 1, 31),
            months=parse_field(month, 1, 12, MONTH_NAMES),
            weekdays=frozenset(day % 7 for day in weekdays),
            days_and=dom.startswith("*") or dow.startswith("*"),
            hour_star=hour.startswith("*"),
        )

    def day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        by_date, by_weekday = day.day in self.days, day.isoweekday() % 7 in self.weekdays
        return (by_date and by_weekday) if self.days_and else (by_date or by_weekday)

    def minute_matches(self, wall: datetime) -> bool:
        return wall.minute in self.minutes and wall.hour in self.hours and self.day_matches(wall.date())


def oracle_fires(spec: Spec, zone: ZoneInfo, after: datetime, end: datetime) -> list[datetime]:
    """The first ``FIRES`` fire instants in ``(after, end]``, walking UTC minute by minute."""
    fires: list[datetime] = []
    moment = after.replace(second=0, microsecond=0)
    while moment <= end and len(fires) < FIRES:
        local = moment.astimezone(zone)
        wall = local.replace(tzinfo=None, fold=0)
        found: set[datetime] = set()
        previous = (moment - MINUTE).astimezone(zone).replace(tzinfo=None, fold=0)
        skipped = previous + MINUTE
        while skipped < wall:  # a forward change ends at ``moment``
            if spec.minute_matches(skipped):
                found.add(moment)
                break
            skipped += MINUTE
        second_copy = local.fold == 1
        if spec.minute_matches(wall) and (spec.hour_star or not second_copy):
            found.update(moment + timedelta(seconds=second) for second in spec.seconds)
        fires.extend(sorted(fire for fire in found if after < fire <= end))
        moment = next_moment(spec, zone, moment, wall)
    return fires[:FIRES]


def next_moment(spec: Spec, zone: ZoneInfo, moment: datetime, wall: datetime) -> datetime:
    """The next instant to look at: skip what cannot match, while the UTC offset stays put."""
    if not spec.day_matches(wall.date()):
        target = datetime.combine(wall.date() + timedelta(days=1), datetime.min.time())
    elif wall.hour not in spec.hours:
        target = wall.replace(minute=0) + timedelta(hours=1)
    else:
        later = [minute for minute in spec.minutes if minute > wall.minute]
        target = wall.replace(minute=min(later)) if later else wall.replace(minute=0) + timedelta(hours=1)
    jump = target - wall
    offsets = {(moment + jump * part / 2).astimezone(zone).utcoffset() for part in range(3)}
    return moment + jump if len(offsets) == 1 else moment + MINUTE


def never_fires(spec: Spec) -> bool:
    """No date in 28 years (the Gregorian weekday/leap cycle within 1901-2099) matches."""
    day = date(2000, 1, 1)
    while day.year < 2028:
        if spec.day_matches(day):
            return False
        day += timedelta(days=1)
    return True


@lru_cache(maxsize=None)
def transitions(name: str) -> list[datetime]:
    """UTC instants where the zone's offset changes in YEARS, found by scanning and bisecting."""
    zone, found = ZoneInfo(name), []
    moment = datetime(YEARS[0], 1, 1, tzinfo=UTC)
    while moment.year < YEARS[1]:
        later = moment + timedelta(days=7)  # changes are months apart
        if moment.astimezone(zone).utcoffset() != later.astimezone(zone).utcoffset():
            low, high = moment, later
            while high - low > MINUTE:
                middle = low + (high - low) / 2
                same = middle.astimezone(zone).utcoffset() == low.astimezone(zone).utcoffset()
                low, high = (middle, high) if same else (low, middle)
            found.append(high)
        moment = later
    return found


# --- random expressions and start instants ------------------------------------------------

STEPS = (1, 2, 3, 4, 5, 7, 10, 12, 15, 20, 30, 45, 61)


@lru_cache(maxsize=None)
def terms(low: int, high: int, names: tuple[str, ...] = ()) -> tuple[tuple[str, ...], ...]:
    """Every ``a``, ``a-b``, ``a-a`` and ``a-b/n`` of a field (a few steps), by kind."""
    values = range(low, high + 1)
    spelled = [spell(name) for name in names for spell in (str.lower, str.upper, str.title)]
    return (
        (*map(str, values), *spelled),
        tuple(f"{a}-{b}" for a in values for b in values if a < b),
        tuple(f"{a}-{a}" for a in values),  # a single-value range
        tuple(f"{a}-{b}/{n}" for a in values for b in values if a <= b for n in STEPS),
        tuple(f"{a}-{a}/{n}" for a in values for n in STEPS),
    )


def field(draw: st.DrawFn, low: int, high: int, names: list[str] | None = None, stars: int = 1) -> str:
    """One crontab(5) field; ``stars`` weights ``*`` (day fields want it often, or little fires)."""
    kind = draw(st.integers(0, stars + 1))
    if kind < stars:
        return "*"
    if kind == stars:
        return f"*/{draw(st.sampled_from(STEPS))}"
    pools = terms(low, high, tuple(names or ()))
    count = draw(st.integers(1, 3))
    return ",".join(draw(st.sampled_from(pools[draw(st.integers(0, len(pools) - 1))])) for _ in range(count))


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, str, datetime]:
    """An expression (hours biased to 0-3, where DST changes happen), a zone and a start instant."""
    shape = draw(st.integers(0, 9))
    if shape == 0:
        expr = draw(st.sampled_from(sorted(SHORTCUTS)))
    else:
        hour = field(draw, 0, 3) if draw(st.booleans()) else field(draw, 0, 23)
        fields = [field(draw, 0, 59), hour, field(draw, 1, 31, stars=3),
                  field(draw, 1, 12, MONTH_NAMES, stars=3), field(draw, 0, 7, DAY_NAMES, stars=3)]
        if shape == 1:
            fields.append(field(draw, 0, 59))  # seconds
        expr = " ".join(fields)
    name = draw(st.sampled_from(ZONES))
    return expr, name, start_instant(draw, name)


def start_instant(draw: st.DrawFn, name: str) -> datetime:
    """Uniform over YEARS, or up to 15 min, 2 h, a day or 3 days before (or 1 h after) a DST change."""
    changes = transitions(name)
    if changes and draw(st.booleans()):
        change = draw(st.sampled_from(changes))
        span = draw(st.sampled_from([15 * 60, 2 * 3600, 26 * 3600, 3 * 24 * 3600]))
        before = draw(st.integers(-span, 3600))
        return change + timedelta(seconds=before, microseconds=draw(st.sampled_from([0, 0, 1, 999_999])))
    seconds = draw(st.integers(0, int((datetime(YEARS[1], 1, 1) - datetime(YEARS[0], 1, 1)).total_seconds())))
    return datetime(YEARS[0], 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)


@settings(max_examples=2500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
@example(("* 23-23 2-11 */4 *", "Europe/Berlin", datetime(2026, 3, 1, tzinfo=UTC)))
@example(("43-43 */2 16 * *", "America/New_York", datetime(2026, 3, 15, tzinfo=UTC)))
@example(("0 0 * * 3-3", "Asia/Kathmandu", datetime(2026, 1, 1, tzinfo=UTC)))
@example(("13,51 * 26 6-10 */2", "Australia/Lord_Howe", datetime(2026, 1, 1, tzinfo=UTC)))
@example(("* */5 */12 * */3", "UTC", datetime(2026, 1, 1, tzinfo=UTC)))
@example(("30 2 * * *", "Europe/Berlin", datetime(2026, 3, 28, 12, tzinfo=UTC)))
@example(("*/15 * * * *", "Australia/Lord_Howe", datetime(2026, 4, 4, 14, 20, tzinfo=UTC)))
@example(("30 0 * * *", "America/Sao_Paulo", datetime(2018, 11, 3, 12, tzinfo=UTC)))
@example(("15 23 * * *", "America/Sao_Paulo", datetime(2018, 2, 17, 12, tzinfo=UTC)))
def test_next_fires_agree_with_a_brute_force_reading_of_crontab(case: tuple[str, str, datetime]) -> None:
    expr, name, after = case
    spec, end = Spec.parse(expr), after + HORIZON

    try:
        fires = next_fires(expr, name, after, n=FIRES)
    except ScheduleError as error:
        assert "never fires" in str(error) and never_fires(spec), (expr, str(error))
        event("rejected: never fires")
        return

    expected = oracle_fires(spec, ZoneInfo(name), after, end)
    event(f"{len(expected)} fires within {HORIZON.days} days")
    if expected and any(after < change <= expected[-1] for change in transitions(name)):
        event("the fires cross a DST change")
    # In UTC: an ambiguous local time never compares equal to another zone's (PEP 495).
    assert [fire.astimezone(UTC) for fire in fires if fire <= end] == expected, (expr, name, after.isoformat())
    # Walking backwards finds the same fires, and nothing between ``after`` and the first one.
    for previous, fire in zip(expected, expected[1:]):
        assert last_fire_at_or_before(expr, name, fire) == fire
        assert last_fire_at_or_before(expr, name, fire - timedelta(microseconds=1)) == previous
    if expected:
        before_first = last_fire_at_or_before(expr, name, expected[0] - timedelta(microseconds=1))
        assert before_first is None or before_first <= after, (expr, name, after.isoformat())
