"""Tests for sooner.scheduling.cron: cron validation, fire times and DST behaviour.

Expected fire times are written out by hand as ISO strings with their UTC
offset, so each row checks both the instant and the job-local wall clock.
tests/test_cron_properties.py compares against an independent brute-force
reading of crontab(5) over random expressions, zones and start instants.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim

from sooner.errors import ScheduleError, SoonerError
from sooner.scheduling import cron
from sooner.scheduling.cron import (
    describe,
    fires_between,
    hour_is_wildcard,
    last_fire_at_or_before,
    next_fires,
    validate_cron,
    validate_timezone,
)

UTC = timezone.utc
BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"
LORD_HOWE = "Australia/Lord_Howe"

# Thursday 15 January 2026, 10:17:30 UTC; no DST change anywhere near it.
THU = "2026-01-15T10:17:30+00:00"


def at(iso: str) -> datetime:
    """Parse an aware ISO datetime."""
    moment = datetime.fromisoformat(iso)
    assert moment.tzinfo is not None
    return moment


def iso(moments: list[datetime]) -> list[str]:
    """Render datetimes as ISO strings with their offset, for readable diffs."""
    return [moment.isoformat() for moment in moments]


# (expression, timezone, after, expected next fires)
NEXT_FIRES_TABLE = [
    ("* * * * *", "UTC", THU,
     ["2026-01-15T10:18:00+00:00", "2026-01-15T10:19:00+00:00", "2026-01-15T10:20:00+00:00"]),
    ("*/5 * * * *", "UTC", THU,
     ["2026-01-15T10:20:00+00:00", "2026-01-15T10:25:00+00:00", "2026-01-15T10:30:00+00:00"]),
    ("0 * * * *", "UTC", THU,
     ["2026-01-15T11:00:00+00:00", "2026-01-15T12:00:00+00:00", "2026-01-15T13:00:00+00:00"]),
    ("30 9 * * *", "UTC", THU,
     ["2026-01-16T09:30:00+00:00", "2026-01-17T09:30:00+00:00", "2026-01-18T09:30:00+00:00"]),
    ("0 0 * * *", "UTC", THU,
     ["2026-01-16T00:00:00+00:00", "2026-01-17T00:00:00+00:00"]),
    ("0 12 * * 1-5", "UTC", THU,
     ["2026-01-15T12:00:00+00:00", "2026-01-16T12:00:00+00:00", "2026-01-19T12:00:00+00:00"]),
    ("0 0 1 * *", "UTC", THU,
     ["2026-02-01T00:00:00+00:00", "2026-03-01T00:00:00+00:00", "2026-04-01T00:00:00+00:00"]),
    ("0 0 1 1 *", "UTC", THU,
     ["2027-01-01T00:00:00+00:00", "2028-01-01T00:00:00+00:00"]),
    ("0 0 * * 0", "UTC", THU,
     ["2026-01-18T00:00:00+00:00", "2026-01-25T00:00:00+00:00", "2026-02-01T00:00:00+00:00"]),
    ("0 0 * * 7", "UTC", THU,
     ["2026-01-18T00:00:00+00:00", "2026-01-25T00:00:00+00:00", "2026-02-01T00:00:00+00:00"]),
    ("0 0 * * sun", "UTC", THU,
     ["2026-01-18T00:00:00+00:00", "2026-01-25T00:00:00+00:00"]),
    ("0 0 13 * 5", "UTC", "2026-04-01T00:00:00+00:00",
     ["2026-04-03T00:00:00+00:00", "2026-04-10T00:00:00+00:00", "2026-04-13T00:00:00+00:00",
      "2026-04-17T00:00:00+00:00", "2026-04-24T00:00:00+00:00", "2026-05-01T00:00:00+00:00"]),
    ("0 0 13 * 5", "UTC", "2026-02-12T00:00:00+00:00",  # Friday the 13th fires once
     ["2026-02-13T00:00:00+00:00", "2026-02-20T00:00:00+00:00"]),
    ("@hourly", "UTC", THU,
     ["2026-01-15T11:00:00+00:00", "2026-01-15T12:00:00+00:00"]),
    ("@daily", "UTC", THU,
     ["2026-01-16T00:00:00+00:00", "2026-01-17T00:00:00+00:00"]),
    ("@midnight", "UTC", THU,
     ["2026-01-16T00:00:00+00:00"]),
    ("@weekly", "UTC", THU,
     ["2026-01-18T00:00:00+00:00", "2026-01-25T00:00:00+00:00"]),
    ("@monthly", "UTC", THU,
     ["2026-02-01T00:00:00+00:00", "2026-03-01T00:00:00+00:00"]),
    ("@yearly", "UTC", THU,
     ["2027-01-01T00:00:00+00:00"]),
    ("@annually", "UTC", THU,
     ["2027-01-01T00:00:00+00:00"]),
    ("* * * * * */15", "UTC", THU,  # sixth field = seconds
     ["2026-01-15T10:17:45+00:00", "2026-01-15T10:18:00+00:00", "2026-01-15T10:18:15+00:00"]),
    ("30 9 * * * 15", "UTC", THU,
     ["2026-01-16T09:30:15+00:00", "2026-01-17T09:30:15+00:00"]),
    ("0 9-17/4 * * *", "UTC", THU,
     ["2026-01-15T13:00:00+00:00", "2026-01-15T17:00:00+00:00", "2026-01-16T09:00:00+00:00"]),
    ("15,45 8,20 * * *", "UTC", THU,
     ["2026-01-15T20:15:00+00:00", "2026-01-15T20:45:00+00:00", "2026-01-16T08:15:00+00:00"]),
    ("0 0 L * *", "UTC", THU,
     ["2026-01-31T00:00:00+00:00", "2026-02-28T00:00:00+00:00", "2026-03-31T00:00:00+00:00"]),
    ("0 0 * * 5#3", "UTC", THU,
     ["2026-01-16T00:00:00+00:00", "2026-02-20T00:00:00+00:00", "2026-03-20T00:00:00+00:00"]),
    ("0 0 * * 5L", "UTC", THU,  # last Friday of the month
     ["2026-01-30T00:00:00+00:00", "2026-02-27T00:00:00+00:00", "2026-03-27T00:00:00+00:00"]),
    ("0 0 LW * *", "UTC", THU,  # last weekday of the month
     ["2026-01-30T00:00:00+00:00", "2026-02-27T00:00:00+00:00", "2026-03-31T00:00:00+00:00"]),
    ("0 0 ? * 3", "UTC", THU,  # ``?`` is ``*``
     ["2026-01-21T00:00:00+00:00", "2026-01-28T00:00:00+00:00"]),
    ("5/20 * * * *", "UTC", THU,  # ``N/step`` is ``N-max/step``
     ["2026-01-15T10:25:00+00:00", "2026-01-15T10:45:00+00:00", "2026-01-15T11:05:00+00:00"]),
    ("0 0 29 2 *", "UTC", THU,
     ["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"]),
    ("0 0 31 * *", "UTC", THU,
     ["2026-01-31T00:00:00+00:00", "2026-03-31T00:00:00+00:00", "2026-05-31T00:00:00+00:00"]),
    ("0 0 * jan-mar mon", "UTC", "2026-03-20T00:00:00+00:00",
     ["2026-03-23T00:00:00+00:00", "2026-03-30T00:00:00+00:00", "2027-01-04T00:00:00+00:00"]),
    ("0 9 * * *", "Asia/Tokyo", THU,
     ["2026-01-16T09:00:00+09:00", "2026-01-17T09:00:00+09:00"]),
    ("0 9 * * *", NEW_YORK, THU,
     ["2026-01-15T09:00:00-05:00", "2026-01-16T09:00:00-05:00"]),
    ("0 9 * * *", "Asia/Kolkata", THU,
     ["2026-01-16T09:00:00+05:30", "2026-01-17T09:00:00+05:30"]),
    ("0 0 * * 1", BERLIN, THU,
     ["2026-01-19T00:00:00+01:00", "2026-01-26T00:00:00+01:00"]),
    ("0 9 * * *", "Asia/Kathmandu", THU,
     ["2026-01-16T09:00:00+05:45", "2026-01-17T09:00:00+05:45"]),
    ("0 * * * *", "UTC", "2026-01-15T12:00:00+02:00",  # ``after`` in another zone
     ["2026-01-15T11:00:00+00:00", "2026-01-15T12:00:00+00:00"]),
    ("0 * * * *", "UTC", "2026-01-15T10:00:00+00:00",  # strictly after
     ["2026-01-15T11:00:00+00:00"]),
    ("0 * * * *", "UTC", "2026-01-15T10:59:59.999999+00:00",
     ["2026-01-15T11:00:00+00:00"]),
    ("  */30   *  * * *  ", "UTC", THU,  # untidy spacing is accepted
     ["2026-01-15T10:30:00+00:00", "2026-01-15T11:00:00+00:00"]),
]


# Debian cron (cronie) rules that croniter 7.0.0 broke (First hour, item 12).
VIXIE_TABLE = [
    # A single-value range is that one value, not ``*``.
    ("* 23-23 2-11 */4 *", "UTC", THU,
     ["2026-05-02T23:00:00+00:00", "2026-05-02T23:01:00+00:00", "2026-05-02T23:02:00+00:00"]),
    ("* 23-23 2-11 */4 *", "UTC", "2026-05-02T23:58:30+00:00",
     ["2026-05-02T23:59:00+00:00", "2026-05-03T23:00:00+00:00"]),
    ("* 23-23 2-11 */4 *", "UTC", "2026-05-11T23:59:00+00:00",
     ["2026-09-02T23:00:00+00:00"]),
    ("43-43 */2 16 * *", "UTC", THU,
     ["2026-01-16T00:43:00+00:00", "2026-01-16T02:43:00+00:00", "2026-01-16T04:43:00+00:00"]),
    ("43-43 */2 16 * *", "UTC", "2026-01-16T22:43:00+00:00",
     ["2026-02-16T00:43:00+00:00"]),
    ("0 12 * * 3-3", "UTC", THU,  # Wednesdays only
     ["2026-01-21T12:00:00+00:00", "2026-01-28T12:00:00+00:00"]),
    ("5-5/10 * * * *", "UTC", THU,  # a stepped single-value range is still one value
     ["2026-01-15T11:05:00+00:00", "2026-01-15T12:05:00+00:00"]),
    # Day-of-month and day-of-week: AND when either starts with ``*``.
    ("13,51 * 26 6-10 */2", "UTC", THU,
     ["2026-07-26T00:13:00+00:00", "2026-07-26T00:51:00+00:00", "2026-07-26T01:13:00+00:00"]),
    ("13,51 * 26 6-10 */2", "UTC", "2026-07-26T23:51:00+00:00",
     ["2026-09-26T00:13:00+00:00"]),
    ("* */5 */12 * */3", "UTC", THU,
     ["2026-01-25T00:00:00+00:00", "2026-01-25T00:01:00+00:00"]),
    ("* */5 */12 * */3", "UTC", "2026-01-25T20:59:00+00:00",
     ["2026-02-01T00:00:00+00:00"]),
    ("0 0 */10 * 1", "UTC", THU,  # ``*/10`` starts with ``*``: the 1st/11th/21st/31st that is a Monday
     ["2026-05-11T00:00:00+00:00", "2026-06-01T00:00:00+00:00"]),
    ("0 0 1-10 * 1", "UTC", "2026-01-25T00:00:00+00:00",  # neither starts with ``*``: OR
     ["2026-01-26T00:00:00+00:00", "2026-02-01T00:00:00+00:00", "2026-02-02T00:00:00+00:00"]),
]


@pytest.mark.parametrize(("expr", "tz", "after", "expected"), VIXIE_TABLE)
def test_next_fires_follow_debian_cron_field_rules(
    expr: str, tz: str, after: str, expected: list[str]
) -> None:
    fires = next_fires(expr, tz, at(after), n=len(expected))

    assert iso(fires) == expected


@pytest.mark.parametrize(("expr", "dates", "hours"), [
    ("13,51 * 26 6-10 */2", ["2026-07-26", "2026-09-26"], set(range(24))),
    ("* */5 */12 * */3",
     ["2026-01-25", "2026-02-01", "2026-02-25", "2026-03-01", "2026-03-25", "2026-04-01",
      "2026-04-25", "2026-05-13", "2026-06-13", "2026-07-01", "2026-07-25", "2026-08-01",
      "2026-09-13", "2026-10-25", "2026-11-01", "2026-11-25", "2026-12-13"],
     {0, 5, 10, 15, 20}),
])
def test_star_day_field_ands_the_day_fields_over_a_whole_year(
    expr: str, dates: list[str], hours: set[int]
) -> None:
    fires = fires_between(expr, "UTC", at("2026-01-01T00:00:00+00:00"),
                          at("2027-01-01T00:00:00+00:00"), limit=100_000)

    assert sorted({fire.date().isoformat() for fire in fires}) == dates
    assert {fire.hour for fire in fires} == hours
    minutes_per_hour = 2 if expr.startswith("13,51") else 60
    assert len(fires) == len(dates) * len(hours) * minutes_per_hour


@pytest.mark.parametrize(("expr", "tz", "after", "expected"), NEXT_FIRES_TABLE)
def test_next_fires_match_hand_written_table(
    expr: str, tz: str, after: str, expected: list[str]
) -> None:
    fires = next_fires(expr, tz, at(after), n=len(expected))

    assert iso(fires) == expected
    assert all(fire.tzinfo == ZoneInfo(tz) for fire in fires)


# (expression, timezone, after, expected) around DST changes:
# Berlin 2026-03-29 02:00 CET -> 03:00 CEST (01:00 UTC),
# Berlin 2026-10-25 03:00 CEST -> 02:00 CET (01:00 UTC),
# New York 2026-03-08 02:00 EST -> 03:00 EDT, 2026-11-01 02:00 EDT -> 01:00 EST,
# Lord Howe 2026-10-04 02:00 -> 02:30 (+10:30 -> +11:00),
# Lord Howe 2026-04-05 02:00 -> 01:30 (+11:00 -> +10:30).
DST_TABLE = [
    # Spring forward, fixed hours: a skipped time fires once, at the change.
    ("30 2 * * *", BERLIN, "2026-03-28T12:00:00+00:00",
     ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00"]),
    ("0 2 * * *", BERLIN, "2026-03-28T12:00:00+00:00",
     ["2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00"]),
    ("15 1-3 * * *", BERLIN, "2026-03-28T12:00:00+00:00",
     ["2026-03-29T01:15:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:15:00+02:00",
      "2026-03-30T01:15:00+02:00"]),
    # Spring forward, wildcard hours: skipped times collapse into one fire.
    ("*/15 * * * *", BERLIN, "2026-03-29T00:30:00+00:00",
     ["2026-03-29T01:45:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:15:00+02:00"]),
    ("0 * * * *", BERLIN, "2026-03-28T23:30:00+00:00",
     ["2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T04:00:00+02:00"]),
    ("30 * * * *", BERLIN, "2026-03-29T00:00:00+00:00",
     ["2026-03-29T01:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:30:00+02:00"]),
    # Fall back, fixed hours: the repeated time fires once, at its first copy.
    ("30 2 * * *", BERLIN, "2026-10-24T12:00:00+00:00",
     ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]),
    ("0 2 * * *", BERLIN, "2026-10-24T12:00:00+00:00",
     ["2026-10-25T02:00:00+02:00", "2026-10-26T02:00:00+01:00"]),
    ("15 1-3 * * *", BERLIN, "2026-10-24T12:00:00+00:00",
     ["2026-10-25T01:15:00+02:00", "2026-10-25T02:15:00+02:00", "2026-10-25T03:15:00+01:00",
      "2026-10-26T01:15:00+01:00"]),
    ("30 2 * * *", BERLIN, "2026-10-25T00:40:00+00:00",  # between the two copies
     ["2026-10-26T02:30:00+01:00"]),
    ("30 2 * * *", BERLIN, "2026-10-25T01:10:00+00:00",  # inside the second copy
     ["2026-10-26T02:30:00+01:00"]),
    # Fall back, wildcard hours: both copies of the hour fire.
    ("*/15 * * * *", BERLIN, "2026-10-24T23:50:00+00:00",
     ["2026-10-25T02:00:00+02:00", "2026-10-25T02:15:00+02:00", "2026-10-25T02:30:00+02:00",
      "2026-10-25T02:45:00+02:00", "2026-10-25T02:00:00+01:00", "2026-10-25T02:15:00+01:00",
      "2026-10-25T02:30:00+01:00", "2026-10-25T02:45:00+01:00", "2026-10-25T03:00:00+01:00"]),
    ("*/15 * * * *", BERLIN, "2026-10-25T00:40:00+00:00",  # ``after`` in the first copy
     ["2026-10-25T02:45:00+02:00", "2026-10-25T02:00:00+01:00", "2026-10-25T02:15:00+01:00"]),
    ("*/15 * * * *", BERLIN, "2026-10-25T01:20:00+00:00",  # ``after`` in the second copy
     ["2026-10-25T02:30:00+01:00", "2026-10-25T02:45:00+01:00"]),
    ("0 * * * *", BERLIN, "2026-10-24T23:30:00+00:00",
     ["2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00", "2026-10-25T03:00:00+01:00"]),
    # New York.
    ("30 2 * * *", NEW_YORK, "2026-03-07T12:00:00+00:00",
     ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]),
    ("*/30 * * * *", NEW_YORK, "2026-03-08T06:15:00+00:00",
     ["2026-03-08T01:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-08T03:30:00-04:00"]),
    ("30 1 * * *", NEW_YORK, "2026-10-31T12:00:00+00:00",
     ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]),
    ("30 * * * *", NEW_YORK, "2026-11-01T04:00:00+00:00",
     ["2026-11-01T00:30:00-04:00", "2026-11-01T01:30:00-04:00", "2026-11-01T01:30:00-05:00",
      "2026-11-01T02:30:00-05:00"]),
    ("0 2 * * *", NEW_YORK, "2026-10-31T12:00:00+00:00",  # 02:00 happens once
     ["2026-11-01T02:00:00-05:00", "2026-11-02T02:00:00-05:00"]),
    # Lord Howe: half-hour shifts.
    ("0 2 * * *", LORD_HOWE, "2026-10-03T00:00:00+00:00",
     ["2026-10-04T02:30:00+11:00", "2026-10-05T02:00:00+11:00"]),
    ("15 2 * * *", LORD_HOWE, "2026-10-03T00:00:00+00:00",
     ["2026-10-04T02:30:00+11:00", "2026-10-05T02:15:00+11:00"]),
    ("45 1 * * *", LORD_HOWE, "2026-04-04T00:00:00+00:00",
     ["2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"]),
    ("*/15 * * * *", LORD_HOWE, "2026-04-04T14:20:00+00:00",
     ["2026-04-05T01:30:00+11:00", "2026-04-05T01:45:00+11:00", "2026-04-05T01:30:00+10:30",
      "2026-04-05T01:45:00+10:30", "2026-04-05T02:00:00+10:30"]),
    ("*/15 1 * * *", LORD_HOWE, "2026-04-04T14:20:00+00:00",  # fixed hour 1
     ["2026-04-05T01:30:00+11:00", "2026-04-05T01:45:00+11:00", "2026-04-06T01:00:00+10:30"]),
    # Sao Paulo 2018-11-04: midnight is skipped (00:00 -03:00 -> 01:00 -02:00).
    ("30 0 * * *", "America/Sao_Paulo", "2018-11-03T12:00:00+00:00",
     ["2018-11-04T01:00:00-02:00", "2018-11-05T00:30:00-02:00"]),
    ("0 0 * * 0", "America/Sao_Paulo", "2018-11-03T12:00:00+00:00",
     ["2018-11-04T01:00:00-02:00", "2018-11-11T00:00:00-02:00"]),
    # Seconds field across a gap: all of 02:xx:xx collapses into 03:00:00.
    ("* * * * * */20", BERLIN, "2026-03-29T00:59:30+00:00",
     ["2026-03-29T01:59:40+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:00:20+02:00"]),
]


# The UTC instants of the 2026 DST changes used above.
TRANSITIONS = {
    BERLIN: ["2026-03-29T01:00:00+00:00", "2026-10-25T01:00:00+00:00"],
    NEW_YORK: ["2026-03-08T07:00:00+00:00", "2026-11-01T06:00:00+00:00"],
    LORD_HOWE: ["2026-04-04T15:00:00+00:00", "2026-10-03T15:30:00+00:00"],
}


@pytest.mark.parametrize(("expr", "tz", "after", "expected"), DST_TABLE)
def test_next_fires_follow_cron_dst_rules(
    expr: str, tz: str, after: str, expected: list[str]
) -> None:
    fires = next_fires(expr, tz, at(after), n=len(expected))

    assert iso(fires) == expected


def test_skipped_time_fires_once_right_after_spring_forward() -> None:
    fires = next_fires("30 2 * * *", BERLIN, at("2026-03-29T00:00:00+00:00"), n=1)

    assert fires[0] == at("2026-03-29T01:00:00+00:00")
    assert fires[0].isoformat() == "2026-03-29T03:00:00+02:00"


def test_fixed_hour_job_fires_once_in_repeated_fall_back_hour() -> None:
    day = fires_between(
        "30 2 * * *", BERLIN, at("2026-10-24T22:00:00+00:00"), at("2026-10-25T23:00:00+00:00")
    )

    assert day == [at("2026-10-25T00:30:00+00:00")]


def test_cronsim_alone_drops_a_skipped_time_of_a_wildcard_hour_job_which_we_fire() -> None:
    # Guards why the engine reads naive wall times and Sooner maps them to
    # instants: cronsim's own DST handling (like cronie's) never runs the
    # skipped 02:30 of ``30 * * * *``; Sooner's contract fires it at 03:00.
    start = datetime(2026, 3, 29, 1, 0, tzinfo=ZoneInfo(BERLIN))
    raw = CronSim("30 * * * *", start)
    cronsim_fires = [next(raw) for _ in range(2)]

    ours = next_fires("30 * * * *", BERLIN, start, n=3)

    assert [f.isoformat() for f in cronsim_fires] == [
        "2026-03-29T01:30:00+01:00", "2026-03-29T03:30:00+02:00"]
    assert iso(ours) == [
        "2026-03-29T01:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:30:00+02:00"]


@pytest.mark.parametrize("tz", [BERLIN, NEW_YORK, LORD_HOWE])
def test_wildcard_quarter_hour_job_fires_every_15_real_minutes_across_dst(tz: str) -> None:
    for transition in TRANSITIONS[tz]:
        start = at(transition) - timedelta(hours=12)
        fires = fires_between("*/15 * * * *", tz, start, start + timedelta(days=1))

        assert len(fires) == 4 * 24
        gaps = {later - earlier for earlier, later in zip(fires, fires[1:])}
        assert gaps == {timedelta(minutes=15)}, (tz, transition)


@pytest.mark.parametrize("tz", [BERLIN, NEW_YORK, LORD_HOWE, "UTC"])
@pytest.mark.parametrize("expr", ["30 2 * * *", "0 2 * * *", "15 1-3 * * *", "*/30 * * * *",
                                  "0 * * * *", "30 * * * *", "45 1 * * *", "*/15 1 * * *"])
def test_fires_are_strictly_increasing_and_consistent_across_a_year(expr: str, tz: str) -> None:
    start, end = at("2026-01-01T00:00:00+00:00"), at("2027-01-01T00:00:00+00:00")

    fires = fires_between(expr, tz, start, end, limit=100_000)

    assert all(earlier < later for earlier, later in zip(fires, fires[1:]))
    assert all(start < fire <= end for fire in fires)
    # Every local date gets exactly one fire for daily fixed-time jobs.
    if expr in ("30 2 * * *", "0 2 * * *", "45 1 * * *"):
        dates = [fire.astimezone(ZoneInfo(tz)).date() for fire in fires]
        assert len(dates) == len(set(dates)) == 365
    # next_fires walks the same sequence one step at a time.
    for earlier, later in zip(fires[::97], fires[1::97]):
        assert next_fires(expr, tz, earlier, n=1) == [later]


@pytest.mark.parametrize("tz", sorted(TRANSITIONS))
@pytest.mark.parametrize(("expr", "span"), [
    ("30 2 * * *", timedelta(days=3)), ("15 1-3 * * *", timedelta(days=2)),
    ("*/15 * * * *", timedelta(hours=6)), ("30 * * * *", timedelta(hours=6)),
    ("*/15 1 * * *", timedelta(days=2)), ("* * * * * */20", timedelta(minutes=20)),
])
def test_last_fire_at_or_before_agrees_with_forward_fires_around_dst(
    expr: str, span: timedelta, tz: str
) -> None:
    for transition in TRANSITIONS[tz]:
        start = at(transition) - span
        fires = fires_between(expr, tz, start, at(transition) + span, limit=100_000)

        assert len(fires) >= 3
        for previous, fire in zip(fires, fires[1:]):
            assert last_fire_at_or_before(expr, tz, fire) == fire
            assert last_fire_at_or_before(expr, tz, fire - timedelta(microseconds=1)) == previous


def test_repeated_calls_reuse_the_parsed_schedule() -> None:
    # Measured 2.64 ms per job per tick when every call re-validated.
    next_fires("7 7 * * *", "Asia/Kathmandu", at(THU), n=1)
    before = cron._compile.cache_info()

    for _ in range(3):
        next_fires("7 7 * * *", "Asia/Kathmandu", at(THU), n=1)

    after = cron._compile.cache_info()
    assert (after.hits - before.hits, after.misses - before.misses) == (3, 0)


def test_fires_between_excludes_start_includes_end_and_returns_utc() -> None:
    fires = fires_between(
        "0 * * * *", BERLIN, at("2026-01-15T10:00:00+00:00"), at("2026-01-15T13:00:00+00:00")
    )

    assert iso(fires) == ["2026-01-15T11:00:00+00:00", "2026-01-15T12:00:00+00:00",
                          "2026-01-15T13:00:00+00:00"]
    assert all(fire.tzinfo is UTC for fire in fires)


def test_fires_between_returns_the_earliest_fires_up_to_limit() -> None:
    start = at("2026-01-15T00:00:00+00:00")

    fires = fires_between("* * * * *", "UTC", start, start + timedelta(days=30), limit=3)

    assert iso(fires) == ["2026-01-15T00:01:00+00:00", "2026-01-15T00:02:00+00:00",
                          "2026-01-15T00:03:00+00:00"]


def test_fires_between_is_empty_for_an_empty_window_or_zero_limit() -> None:
    start = at(THU)

    assert fires_between("* * * * *", "UTC", start, start) == []
    assert fires_between("* * * * *", "UTC", start, start - timedelta(hours=1)) == []
    assert fires_between("* * * * *", "UTC", start, start + timedelta(hours=1), limit=0) == []


def test_fires_between_catches_up_both_copies_of_repeated_hour_for_wildcard_job() -> None:
    fires = fires_between(
        "*/15 * * * *", BERLIN, at("2026-10-25T00:00:00+00:00"), at("2026-10-25T02:00:00+00:00")
    )

    assert len(fires) == 8
    assert fires[0] == at("2026-10-25T00:15:00+00:00")


def test_last_fire_at_or_before_includes_an_exact_fire_time() -> None:
    when = at("2026-01-15T11:00:00+00:00")

    assert last_fire_at_or_before("0 * * * *", "UTC", when) == when
    assert last_fire_at_or_before("0 * * * *", "UTC", when - timedelta(seconds=1)) == at(
        "2026-01-15T10:00:00+00:00")


def test_last_fire_at_or_before_returns_utc() -> None:
    last = last_fire_at_or_before("30 9 * * *", "Asia/Tokyo", at(THU))

    assert last == at("2026-01-15T00:30:00+00:00")
    assert last is not None and last.tzinfo is UTC


def test_last_fire_at_or_before_finds_first_copy_when_asked_during_second_copy() -> None:
    # 01:30 UTC is 02:30 CET, in the second copy; 02:45 CEST (00:45 UTC) was the last fire.
    when = at("2026-10-25T01:30:00+00:00")

    assert last_fire_at_or_before("45 2 * * *", BERLIN, when) == at("2026-10-25T00:45:00+00:00")
    assert last_fire_at_or_before("45 * * * *", BERLIN, when) == at("2026-10-25T00:45:00+00:00")


def test_last_fire_at_or_before_returns_none_when_nothing_fired_before() -> None:
    assert last_fire_at_or_before("0 0 2 1 *", "UTC", datetime(1, 1, 1, 12, tzinfo=UTC)) is None


def test_next_fires_returns_nothing_for_non_positive_n() -> None:
    assert next_fires("* * * * *", "UTC", at(THU), n=0) == []


def test_next_fires_rejects_a_naive_after() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fires("* * * * *", "UTC", datetime(2026, 1, 15))


def test_next_fires_rejects_an_invalid_expression_or_timezone() -> None:
    with pytest.raises(ScheduleError, match="'61 \\* \\* \\* \\*'"):
        next_fires("61 * * * *", "UTC", at(THU))
    with pytest.raises(ScheduleError, match="'Mars/Olympus'"):
        next_fires("* * * * *", "Mars/Olympus", at(THU))


@pytest.mark.parametrize(("given", "normalised"), [
    ("*/5 * * * *", "*/5 * * * *"),
    ("  */5   *\t* * *  ", "*/5 * * * *"),
    ("@DAILY", "@daily"),
    (" @hourly ", "@hourly"),
    ("0 0 * * MON-FRI", "0 0 * * MON-FRI"),
    ("30 9 * * * 15", "30 9 * * * 15"),
    ("0 0 13 * 5", "0 0 13 * 5"),
    ("0 0 ? * 3", "0 0 ? * 3"),
    ("* 23-23 * * 3-3", "* 23-23 * * 3-3"),
])
def test_validate_cron_returns_normalised_expression(given: str, normalised: str) -> None:
    assert validate_cron(given) == normalised


@pytest.mark.parametrize(("expr", "fragment"), [
    ("*/0 * * *", "expected 5 or 6 fields, got 4"),
    ("", "it is empty"),
    ("   ", "it is empty"),
    ("garbage", "expected 5 or 6 fields, got 1"),
    ("* * * * * * 2026", "a year field is not supported"),
    ("@reboot", "@reboot is not supported"),
    ("@fortnightly", "unknown alias"),
    ("60 * * * *", "minute field '60' is invalid (values must be within 0-59)"),
    ("* 24 * * *", "hour field '24' is invalid (values must be within 0-23)"),
    ("* * 32 * *", "day-of-month field '32'"),
    ("* * 0 * *", "day-of-month field '0'"),
    ("* * * 13 *", "month field '13'"),
    ("* * * * 8", "day-of-week field '8' is invalid (values must be within 0-7)"),
    ("* * * * * 60", "second field '60'"),
    ("1-70 * * * *", "minute field '1-70'"),
    ("*/0 * * * *", "minute field '*/0'"),
    ("a b c d e", "minute field 'a'"),
    ("* * * foo *", "month field 'foo'"),
    ("1,2,,3 * * * *", "minute field '1,2,,3'"),
    ("0 ? * * *", "hour field '?'"),
    ("H * * * *", "hashed (H) and random (R) values are not supported"),
    ("R * * * *", "hashed (H) and random (R) values are not supported"),
    ("0 0 30 2 *", "it never fires"),
    ("0 0 31 4,6 *", "it never fires"),
    ("0 0 */10 2 1#5", "it never fires"),
    ("10-5 * * * *", "minute field '10-5' is invalid (ranges must run from low to high"),
    ("* * * * 5-0", "day-of-week field '5-0' is invalid (ranges must run from low to high"),
    ("0 0 15W * *", "day-of-month field '15W' is invalid (expected numbers within 1-31, ranges, "
                    "lists, steps, L or LW)"),
    ("0 0 * * L5", "day-of-week field 'L5' is invalid (expected numbers within 0-7, names, "
                   "ranges, lists, steps, 5L or 5#3)"),
    ("~ * * * *", "minute field '~'"),
])
def test_validate_cron_names_the_expression_and_the_problem(expr: str, fragment: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        validate_cron(expr)

    message = str(caught.value)
    assert message.startswith(f"invalid cron expression {' '.join(expr.split())!r}: ")
    assert fragment in message


def test_validate_cron_error_message_matches_the_documented_example() -> None:
    with pytest.raises(ScheduleError) as caught:
        validate_cron("*/0 * * *")

    assert str(caught.value) == "invalid cron expression '*/0 * * *': expected 5 or 6 fields, got 4"


def test_schedule_error_is_both_a_sooner_error_and_a_value_error() -> None:
    with pytest.raises(ScheduleError) as caught:
        validate_cron("nope")

    assert isinstance(caught.value, SoonerError)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("name", ["UTC", "Europe/Berlin", "America/New_York",
                                  "Australia/Lord_Howe", "Etc/GMT+5"])
def test_validate_timezone_accepts_iana_names(name: str) -> None:
    assert validate_timezone(name) == name


@pytest.mark.parametrize("name", ["Europe/Berln", "", "Europe", "../etc/passwd", " UTC",
                                  "utc+2"])
def test_validate_timezone_rejects_unknown_names(name: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        validate_timezone(name)

    assert str(caught.value).startswith(f"unknown timezone {name!r}")


@pytest.mark.parametrize(("expr", "wildcard"), [
    ("*/15 * * * *", True), ("0 * * * *", True), ("0 */2 * * *", True), ("@hourly", True),
    ("30 2 * * *", False), ("15 1-3 * * *", False), ("0 1,13 * * *", False),
    ("0 8-18/2 * * *", False), ("*/5 2 * * *", False), ("@daily", False),
])
def test_hour_field_is_wildcard_only_when_it_starts_with_a_star(expr: str, wildcard: bool) -> None:
    assert hour_is_wildcard(expr) is wildcard


@pytest.mark.parametrize(("expr", "description"), [
    ("*/5 * * * *", "Every 5 minutes"),
    ("30 2 * * *", "At 02:30"),
    ("0 0 * * 0", "At 00:00, only on Sunday"),
    ("0 0 * * 7", "At 00:00, only on Sunday"),
    ("0 0 13 * 5", "At 00:00, on day 13 of the month, or on Friday"),
    ("@daily", "At 00:00"),
    ("@hourly", "Every hour"),
    ("30 2 * * * 15", "At 02:30:15"),
    ("0 0 L * *", "At 00:00, on the last day of the month"),
])
def test_describe_gives_an_english_description(expr: str, description: str) -> None:
    assert describe(expr) == description


def test_describe_falls_back_to_the_expression_itself() -> None:
    assert describe("not a cron expression") == "not a cron expression"
