"""When a job fires (pgsched.schedule), without a database: cron with 5 fields or 6 with
seconds first, intervals on the grid of their first fire time, one-offs, the look-back the
beat uses for catch-up (``recent``), and daylight-saving days in Europe and the US."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from pgsched.errors import InvalidInput
from pgsched.schedule import InvalidSchedule, Schedule

UTC = timezone.utc
T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)  # a Monday, no DST anywhere near
US = timedelta(microseconds=1)


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


# ---- cron


def test_five_field_cron_fires_on_each_matching_minute() -> None:
    every_20_min = Schedule(cron="*/20 * * * *")
    assert every_20_min.fire_times(T0 + s(5 * 60), T0 + s(3600), 10) == [T0 + s(20 * 60), T0 + s(40 * 60), T0 + s(3600)]


def test_six_field_cron_reads_the_seconds_field_first() -> None:
    # "5 0 * * * *" is second 5 of minute 0 of every hour, not minute 5 of hour 0.
    schedule = Schedule(cron="5 0 * * * *")
    assert schedule.upcoming(T0, 3) == [T0 + s(5), T0 + s(3605), T0 + s(7205)]
    assert Schedule(cron="*/10 * * * * *").fire_times(T0, T0 + s(35), 10) == [T0 + s(10), T0 + s(20), T0 + s(30)]


def test_cron_is_read_on_the_wall_clock_of_its_timezone() -> None:
    nine_in_berlin = Schedule(cron="0 9 * * *", tz="Europe/Berlin")
    assert nine_in_berlin.next_after(utc(2026, 1, 10)) == utc(2026, 1, 10, 8)  # CET, UTC+1
    assert nine_in_berlin.next_after(utc(2026, 7, 10)) == utc(2026, 7, 10, 7)  # CEST, UTC+2


def test_cron_next_after_a_fire_time_is_the_following_one() -> None:
    per_minute = Schedule(cron="* * * * *")
    assert per_minute.next_after(T0) == T0 + s(60)
    assert per_minute.next_after(T0 - US) == T0
    assert per_minute.next_after(T0 + s(59.999999)) == T0 + s(60)


# ---- intervals


def test_interval_without_anchor_fires_one_interval_after() -> None:
    assert Schedule(every_s=90).next_after(T0) == T0 + s(90)


def test_interval_stays_on_the_grid_of_its_anchor_fire_time() -> None:
    every_minute = Schedule(every_s=60)
    anchor = T0 + s(7)
    assert every_minute.next_after(T0 + s(100), anchor=anchor) == T0 + s(127)
    assert every_minute.next_after(T0 + s(127), anchor=anchor) == T0 + s(187)
    assert every_minute.fire_times(T0 + s(100), T0 + s(300), 10, anchor=anchor) == [
        T0 + s(127),
        T0 + s(187),
        T0 + s(247),
    ]
    # hours later, still on the same second
    assert every_minute.next_after(T0 + s(5 * 3600 + 30), anchor=anchor) == T0 + s(5 * 3600 + 67)


@pytest.mark.parametrize("every_s", [1.1, 1.3, 2.7, 4 / 3, 10 / 3])  # fractional, above the 1 s floor
def test_fractional_interval_fire_times_strictly_increase_on_the_anchor_grid(every_s: float) -> None:
    schedule = Schedule(every_s=every_s)
    times = schedule.fire_times(T0, T0 + s(20), 1000, anchor=T0)
    assert times == sorted(set(times)), "fire times repeat"
    assert len(times) == math.floor(20 / every_s + 1e-9)
    for fire_time in times:
        assert schedule.next_after(fire_time, anchor=T0) > fire_time
        # a fire time is in a window that ends exactly at it (until is inclusive)
        assert schedule.recent(T0, fire_time, 1, anchor=T0) == [fire_time]


# ---- one-offs


def test_one_off_fires_once_at_its_instant() -> None:
    at = T0 + s(600)
    once = Schedule(at=at)
    assert once.next_after(T0) == at
    assert once.next_after(at) is None
    assert once.next_after(at + s(1)) is None
    assert once.fire_times(T0, T0 + s(86400), 10) == [at]
    assert once.upcoming(T0, 5) == [at]
    assert once.recent(T0, at, 5) == [at]
    assert once.recent(T0, at - US, 5) == []
    assert once.recent(at + US, at + s(60), 5) == []


def test_one_off_in_another_offset_is_the_same_instant() -> None:
    at = datetime(2026, 1, 5, 12, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    assert Schedule(at=at).next_after(T0) == utc(2026, 1, 5, 11)


# ---- fire_times, recent, upcoming


def test_fire_times_is_after_exclusive_until_inclusive_and_at_most_limit() -> None:
    per_minute = Schedule(cron="* * * * *")
    assert per_minute.fire_times(T0, T0 + s(180), 10) == [T0 + s(60), T0 + s(120), T0 + s(180)]
    assert per_minute.fire_times(T0, T0 + s(180), 2) == [T0 + s(60), T0 + s(120)]
    assert per_minute.fire_times(T0, T0 + s(59), 10) == []


def test_recent_returns_the_newest_n_oldest_first() -> None:
    per_minute = Schedule(cron="* * * * *")
    assert per_minute.recent(T0, T0 + s(3600), 3) == [T0 + s(3480), T0 + s(3540), T0 + s(3600)]
    every_minute = Schedule(every_s=60)
    assert every_minute.recent(T0, T0 + s(3630), 3, anchor=T0) == [T0 + s(3480), T0 + s(3540), T0 + s(3600)]


def test_recent_includes_since_and_stops_there() -> None:
    per_minute = Schedule(cron="* * * * *")
    assert per_minute.recent(T0 + s(60), T0 + s(180), 100) == [T0 + s(60), T0 + s(120), T0 + s(180)]
    assert Schedule(every_s=60).recent(T0 + s(60), T0 + s(180), 100, anchor=T0) == [
        T0 + s(60),
        T0 + s(120),
        T0 + s(180),
    ]


@pytest.mark.parametrize(
    "schedule, fire_time, anchor",
    [
        (Schedule(cron="* * * * *"), T0 + s(120), None),
        (Schedule(cron="*/5 * * * * *"), T0 + s(15), None),
        (Schedule(cron="0 9 * * *", tz="America/New_York"), utc(2026, 1, 5, 14), None),
        (Schedule(every_s=7), T0 + s(21), T0),
        (Schedule(every_s=1.25), T0 + s(3.75), T0),
        (Schedule(at=T0 + s(33)), T0 + s(33), None),
    ],
    ids=["cron", "cron-seconds", "cron-tz", "every", "every-fractional", "at"],
)
def test_recent_until_with_microseconds_is_inclusive_and_never_exceeded(
    schedule: Schedule, fire_time: datetime, anchor: datetime | None
) -> None:
    since = T0 - s(3600)
    assert schedule.recent(since, fire_time, 3, anchor=anchor)[-1] == fire_time
    assert schedule.recent(since, fire_time + US, 3, anchor=anchor)[-1] == fire_time
    before = schedule.recent(since, fire_time - US, 3, anchor=anchor)
    assert fire_time not in before
    assert all(t <= fire_time - US for t in before)


def test_recent_of_an_empty_window_or_zero_limit_is_empty() -> None:
    per_minute = Schedule(cron="* * * * *")
    assert per_minute.recent(T0 + s(60), T0, 10) == []
    assert per_minute.recent(T0, T0 + s(600), 0) == []
    assert per_minute.recent(T0 + s(1), T0 + s(59), 10) == []
    assert Schedule(every_s=60).recent(T0 + s(1), T0 + s(59), 10, anchor=T0) == []


def test_recent_agrees_with_fire_times_over_a_day() -> None:
    schedule = Schedule(cron="7,37 */2 * * *", tz="Asia/Kolkata")
    forward = schedule.fire_times(T0, T0 + s(86400), 1000)
    assert len(forward) == 24
    assert schedule.recent(T0 + US, T0 + s(86400), 1000) == forward


def test_upcoming_lists_the_next_n_fire_times() -> None:
    assert Schedule(cron="0 * * * *").upcoming(T0, 5) == [T0 + s(3600 * k) for k in range(1, 6)]
    assert Schedule(every_s=30).upcoming(T0, 3) == [T0 + s(30), T0 + s(60), T0 + s(90)]
    assert Schedule(at=T0 - s(1)).upcoming(T0, 5) == []


# ---- daylight saving time


@pytest.mark.parametrize(
    "tz, cron, day, expected",
    [
        # spring forward: 02:30 does not exist, fires at 03:30 local
        ("Europe/Berlin", "30 2 * * *", (2026, 3, 29), utc(2026, 3, 29, 1, 30)),
        # fall back: 02:30 happens twice, fires at the first (CEST)
        ("Europe/Berlin", "30 2 * * *", (2026, 10, 25), utc(2026, 10, 25, 0, 30)),
        ("America/New_York", "30 2 * * *", (2026, 3, 8), utc(2026, 3, 8, 7, 30)),  # 03:30 EDT
        ("America/New_York", "30 1 * * *", (2026, 11, 1), utc(2026, 11, 1, 5, 30)),  # 01:30 EDT, not EST
    ],
    ids=["berlin-spring", "berlin-fall", "new-york-spring", "new-york-fall"],
)
def test_daily_job_at_a_shifted_local_time_fires_exactly_once_on_the_dst_day(
    tz: str, cron: str, day: tuple[int, int, int], expected: datetime
) -> None:
    schedule = Schedule(cron=cron, tz=tz)
    zone = ZoneInfo(tz)
    local_day_start = datetime(*day, tzinfo=zone).astimezone(UTC)
    local_day_end = (datetime(*day, tzinfo=zone) + timedelta(days=1)).astimezone(UTC)
    window = (local_day_start - s(86400), local_day_end + s(86400))
    forward = schedule.fire_times(window[0], window[1], 10)
    backward = schedule.recent(window[0], window[1], 10)
    stepped = schedule.upcoming(window[0], 3)
    for times in (forward, backward, stepped):
        on_the_day = [t for t in times if local_day_start <= t < local_day_end]
        assert on_the_day == [expected]
        assert len(times) == 3
    assert schedule.next_after(expected - US) == expected
    assert schedule.next_after(expected) > expected + s(20 * 3600)


@pytest.mark.parametrize(
    "tz, day, fire_count",
    [
        ("Europe/Berlin", (2026, 3, 29), 23 * 4),
        ("Europe/Berlin", (2026, 10, 25), 24 * 4),  # every wall time once: the repeated hour once
        ("America/New_York", (2026, 3, 8), 23 * 4),
        ("America/New_York", (2026, 11, 1), 24 * 4),
    ],
    ids=["berlin-spring", "berlin-fall", "new-york-spring", "new-york-fall"],
)
def test_quarter_hourly_job_never_fires_twice_at_one_instant_across_a_dst_change(
    tz: str, day: tuple[int, int, int], fire_count: int
) -> None:
    schedule = Schedule(cron="*/15 * * * *", tz=tz)
    zone = ZoneInfo(tz)
    start = datetime(*day, tzinfo=zone).astimezone(UTC) - US
    end = (datetime(*day, tzinfo=zone) + timedelta(days=1)).astimezone(UTC) - US
    forward = schedule.fire_times(start, end, 1000)
    assert len(forward) == len(set(forward)) == fire_count
    assert all(later - earlier >= s(15 * 60) for earlier, later in zip(forward, forward[1:]))
    assert schedule.recent(start + US, end, 1000) == forward
    # walking one fire time at a time, as the beat does, gives the same instants
    walked, current = [], start
    while (current := schedule.next_after(current)) <= end:
        walked.append(current)
    assert walked == forward


# ---- invalid input


def test_invalid_schedule_is_invalid_input() -> None:
    assert issubclass(InvalidSchedule, InvalidInput)


@pytest.mark.parametrize(
    "kwargs, fragments",
    [
        ({"cron": "61 * * * *"}, ["invalid cron expression", "61 * * * *", "out of range"]),
        ({"cron": "* * *"}, ["invalid cron expression", "5 fields"]),
        ({"cron": "* * * * * * *"}, ["invalid cron expression", "5 fields", "6 with seconds first"]),
        ({"cron": "every day at noon please"}, ["invalid cron expression", "every day at noon please"]),
        ({"cron": "0 0 31 2 *"}, ["invalid cron expression", "0 0 31 2 *"]),
        ({"cron": ""}, ["invalid cron expression"]),
        ({"cron": "* * * * *", "tz": "Mars/Olympus_Mons"}, ["unknown timezone", "Mars/Olympus_Mons"]),
        ({"cron": "* * * * *", "tz": ""}, ["tz must be an IANA timezone name"]),
        ({"every_s": 0}, ["every must be", ">= 1", "got 0"]),
        ({"every_s": -5}, ["every must be", "got -5"]),
        ({"every_s": float("nan")}, ["every must be", "got nan"]),
        ({"every_s": float("inf")}, ["every must be", "got inf"]),
        ({"every_s": True}, ["every must be", "got True"]),
        ({"every_s": "60"}, ["every must be", "got '60'"]),
        ({"at": datetime(2026, 1, 1, 12)}, ["at must be a timezone-aware datetime"]),
        ({}, ["exactly one of cron, every or at", "got none"]),
        ({"cron": "* * * * *", "every_s": 60}, ["exactly one of cron, every or at", "got cron, every"]),
        ({"every_s": 60, "at": T0}, ["exactly one of cron, every or at", "got every, at"]),
    ],
    ids=[
        "cron-61-minutes",
        "cron-3-fields",
        "cron-7-fields",
        "cron-words",
        "cron-never-matches",
        "cron-empty",
        "unknown-tz",
        "empty-tz",
        "every-zero",
        "every-negative",
        "every-nan",
        "every-inf",
        "every-bool",
        "every-str",
        "naive-at",
        "none",
        "cron-and-every",
        "every-and-at",
    ],
)
def test_invalid_schedule_is_refused_with_a_message_naming_the_problem(kwargs: dict, fragments: list[str]) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        Schedule(**kwargs)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_a_two_hour_dst_shift_loses_no_fire_time_and_forward_and_backward_agree() -> None:
    # Antarctica/Troll moves its clocks by two hours (UTC+0 -> UTC+2 on 2026-03-29 at 01:00 UTC).
    schedule = Schedule(cron="*/15 * * * *", tz="Antarctica/Troll")
    start, end = datetime(2026, 3, 29, 0, 30, tzinfo=timezone.utc), datetime(2026, 3, 29, 2, 30, tzinfo=timezone.utc)
    forward = schedule.fire_times(start, end, 100)
    backward = schedule.recent(start, end, 100)
    assert backward == [start, *forward]
    assert [t - start for t in backward] == [timedelta(minutes=15 * k) for k in range(9)]
