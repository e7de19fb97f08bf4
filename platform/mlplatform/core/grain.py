"""Partition grains (`partitions.grain` of a spec): how long each is, and where a moment's starts."""

from __future__ import annotations

from datetime import date, datetime, timedelta

# month: the shortest, so offsets in partitions always reach far enough back
GRAIN_DAYS = {"day": 1, "week": 7, "month": 28}


def grain_floor(moment: datetime, grain: str) -> date:
    day = moment.date()
    if grain == "week":
        return day - timedelta(days=(day.weekday() + 1) % 7)  # Dagster weeks start on Sunday
    if grain == "month":
        return day.replace(day=1)
    return day


def next_grain(day: date, grain: str) -> date:
    if grain == "month":
        return (day.replace(day=28) + timedelta(days=4)).replace(day=1)
    return day + timedelta(days=GRAIN_DAYS[grain])


def partition_days(grain: str, start: datetime, end: datetime) -> list[date]:
    """The start days of the partitions of `grain` that overlap [start, end)."""
    days, day = [], grain_floor(start, grain)
    while datetime.combine(day, datetime.min.time()) < end:
        days.append(day)
        day = next_grain(day, grain)
    return days
