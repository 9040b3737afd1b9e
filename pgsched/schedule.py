"""When a job fires: a cron expression in a timezone, a fixed interval, or one instant.

Cron has 5 fields (minute hour day-of-month month day-of-week) or 6 with **seconds first**
(``*/10 * * * * *`` = every 10 seconds), parsed by croniter and evaluated in the job's IANA
timezone on the local wall clock. The daylight-saving rule:

- a local time that does not exist (spring forward: 02:30 in Europe/Berlin on the last
  Sunday of March) fires once, shifted forward by the gap: at 03:30 local, 01:30 UTC;
- a local time that happens twice (fall back: 02:30 on the last Sunday of October) fires
  once, at its first occurrence: 02:30 CEST, 00:30 UTC.

So a daily 02:30 job fires exactly once on both days. Intervals are plain elapsed seconds
from the first fire time (no timezone involved); a one-off fires once at its instant.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, croniter

from pgsched.errors import InvalidInput
from pgsched.instants import check_readable

MAX_INTERVAL_S = 366 * 24 * 3600.0
# The floor of an interval, as cron's seconds field: an interval of 1e-300 s was accepted and
# the beat made 320,001 runs of it in 6 s.
MIN_INTERVAL_S = 1.0
# IANA names are at most 32 characters (America/Argentina/ComodRivadavia); a longer one is a
# mistake, and zoneinfo answers a 256-character one with OSError ("File name too long").
MAX_TZ_LENGTH = 64


class InvalidSchedule(InvalidInput):
    """The schedule is not valid."""


@dataclass(frozen=True)
class Schedule:
    cron: str | None = None
    every_s: float | None = None
    at: datetime | None = None
    tz: str = "UTC"

    def __post_init__(self) -> None:
        given = [
            name for name, value in (("cron", self.cron), ("every", self.every_s), ("at", self.at)) if value is not None
        ]
        if len(given) != 1:
            raise InvalidSchedule(
                f"a schedule needs exactly one of cron, every or at; got {', '.join(given) or 'none'}"
            )
        zone(self.tz)
        if self.cron is not None:
            _check_cron(self.cron)
        if self.every_s is not None:
            if (
                isinstance(self.every_s, bool)
                or not isinstance(self.every_s, (int, float))
                or not MIN_INTERVAL_S <= self.every_s <= MAX_INTERVAL_S
                or math.isnan(self.every_s)
            ):
                raise InvalidSchedule(
                    f"every must be a number of seconds >= {MIN_INTERVAL_S:.0f} and "
                    f"<= {MAX_INTERVAL_S:.0f}, got {self.every_s!r}"
                )
        if self.at is not None and (not isinstance(self.at, datetime) or self.at.tzinfo is None):
            raise InvalidSchedule(f"at must be a timezone-aware datetime, got {self.at!r}")
        if self.at is not None:
            try:
                check_readable("at", self.at)
            except InvalidInput as exc:
                raise InvalidSchedule(str(exc)) from None

    def next_after(self, after: datetime, anchor: datetime | None = None) -> datetime | None:
        """The first fire time strictly after ``after`` (None: a one-off already past).

        ``anchor`` is a fire time of an interval schedule; intervals count from it.
        """
        if self.at is not None:
            return self.at if self.at > after else None
        if self.every_s is not None:
            # Exact integer arithmetic on the (microsecond) interval: float division can put
            # k * every_s a hair below a grid point and return `after` itself.
            start, every = anchor or after, self._every()
            return start + ((after - start) // every + 1) * every
        return next(self._cron_times(after))

    def fire_times(
        self, after: datetime, until: datetime, limit: int, anchor: datetime | None = None
    ) -> list[datetime]:
        """Fire times in (after, until], at most ``limit`` of them, oldest first."""
        times: list[datetime] = []
        current = self.next_after(after, anchor)
        while current is not None and current <= until and len(times) < limit:
            times.append(current)
            current = self.next_after(current, anchor or current)
        return times

    def recent(self, since: datetime, until: datetime, limit: int, anchor: datetime | None = None) -> list[datetime]:
        """The newest ``limit`` fire times in [since, until], oldest first: a catch-up after a
        long outage looks back from ``until`` instead of walking forward through every tick."""
        if until < since or limit < 1:
            return []
        if self.at is not None:
            return [self.at] if since <= self.at <= until else []
        if self.every_s is not None:
            start, every = anchor or since, self._every()
            last = (until - start) // every
            first = max(-((start - since) // every), last - limit + 1)
            return [start + k * every for k in range(first, last + 1)]
        times: list[datetime] = []
        for instant in self._cron_times_before(until + timedelta(seconds=1)):
            if instant > until:
                continue
            if instant < since or len(times) == limit:
                break
            if not times or instant < times[-1]:
                times.append(instant)
        return times[::-1]

    def upcoming(self, after: datetime, count: int) -> list[datetime]:
        """The next ``count`` fire times after ``after`` (fewer for a one-off)."""
        times: list[datetime] = []
        current = self.next_after(after)
        while current is not None and len(times) < count:
            times.append(current)
            current = self.next_after(current, current)
        return times

    def _every(self) -> timedelta:
        assert self.every_s is not None
        return max(timedelta(seconds=self.every_s), timedelta(microseconds=1))

    def _cron_times(self, after: datetime) -> Iterator[datetime]:
        """Cron fire instants after ``after``, from local wall-clock candidates (see module doc)."""
        assert self.cron is not None
        local_zone = zone(self.tz)
        local_start = after.astimezone(local_zone).replace(tzinfo=None)
        # Near a DST change start that much earlier: in a repeated hour the wall clock after `after`
        # may be earlier than `after`'s own wall-clock reading; instants not after `after` are
        # skipped below. Elsewhere start at `after` (an hour of a per-second cron is 3,600 steps).
        candidates = croniter(
            self.cron, local_start - _dst_margin(after, local_zone), second_at_beginning=_has_seconds(self.cron)
        )
        while True:
            wall = candidates.get_next(datetime)
            instant = wall.replace(tzinfo=local_zone, fold=0).astimezone(timezone.utc)
            if instant > after:
                yield instant

    def _cron_times_before(self, before: datetime) -> Iterator[datetime]:
        """Cron fire instants before ``before``, newest first (same wall-clock mapping)."""
        assert self.cron is not None
        local_zone = zone(self.tz)
        local_start = before.astimezone(local_zone).replace(tzinfo=None)
        candidates = croniter(
            self.cron, local_start + _dst_margin(before, local_zone), second_at_beginning=_has_seconds(self.cron)
        )
        while True:
            wall = candidates.get_prev(datetime)
            instant = wall.replace(tzinfo=local_zone, fold=0).astimezone(timezone.utc)
            if instant < before:
                yield instant


def zone(name: str) -> ZoneInfo:
    if not isinstance(name, str) or not name or len(name) > MAX_TZ_LENGTH:
        shown = name if not isinstance(name, str) or len(name) <= MAX_TZ_LENGTH else f"{name[:MAX_TZ_LENGTH]}..."
        raise InvalidSchedule(
            f"tz must be an IANA timezone name such as Europe/Berlin (at most {MAX_TZ_LENGTH} "
            f"characters), got {shown!r}"
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidSchedule(f"unknown timezone {name!r}: use an IANA name such as Europe/Berlin or UTC") from None


def _dst_margin(instant: datetime, local_zone: ZoneInfo) -> timedelta:
    """The size of a UTC-offset change within three hours of ``instant`` (most zones shift by
    an hour, Antarctica/Troll by two), or zero when there is none."""
    offsets = [(instant + timedelta(hours=h)).astimezone(local_zone).utcoffset() or timedelta(0) for h in (-3, 0, 3)]
    return max(offsets) - min(offsets)


def _has_seconds(cron: str) -> bool:
    return len(cron.split()) == 6


def _check_cron(cron: str) -> None:
    if not isinstance(cron, str) or len(cron.split()) not in (5, 6):
        raise InvalidSchedule(
            f"invalid cron expression {cron!r}: give 5 fields (minute hour day month weekday) or 6 with seconds first"
        )
    _parse_cron(cron)


@functools.lru_cache(maxsize=1024)  # the beat rebuilds each due job's Schedule every round
def _parse_cron(cron: str) -> None:
    try:
        croniter(cron, datetime(2000, 1, 1), second_at_beginning=_has_seconds(cron)).get_next(datetime)
    except (CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, ValueError, KeyError) as exc:
        raise InvalidSchedule(f"invalid cron expression {cron!r}: {exc}") from None
