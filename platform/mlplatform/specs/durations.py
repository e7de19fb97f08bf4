"""Durations in specs: '90m', '24h', '7d', '2w', and calendar months '1mo'.

`m` is minutes, `mo` months. A month is a calendar month, not 30 days: going back `1mo` from
2024-03-01 lands on 2024-02-01, so a `1mo` drift window ending at a monthly partition's end covers
exactly that partition; a day past the end of the shorter month is clamped to its last day
(2024-03-31 - 1mo = 2024-02-29). Months are allowed where a moment is shifted (`drift.window`,
`drift.cooldown`); lags and rolling windows are SQL intervals of a fixed length and refuse them.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TypeVar

_DURATION_RE = re.compile(r"^\s*(\d+)\s*(mo|m|h|d|w)\s*$")
_DURATION_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks", "mo": "months"}
_EXAMPLES = "'30m', '24h', '7d', '2w' or '1mo'"
# Shortest and longest calendar month: bounds when a month must be compared with a fixed length.
MONTH_MIN, MONTH_MAX = timedelta(days=28), timedelta(days=31)

Moment = TypeVar("Moment", datetime, date)


@dataclass(frozen=True)
class Duration:
    """Calendar months plus a fixed part; one of the two is zero for a parsed spec duration."""

    months: int = 0
    fixed: timedelta = timedelta(0)

    def before(self, moment: Moment) -> Moment:
        """`moment` minus this duration (works for datetime, date and pandas Timestamp)."""
        return shift_months(moment, -self.months) - self.fixed

    def after(self, moment: Moment) -> Moment:
        return shift_months(moment, self.months) + self.fixed

    @property
    def shortest(self) -> timedelta:
        """The least time it can span (months of 28 days)."""
        return self.fixed + self.months * MONTH_MIN

    @property
    def longest(self) -> timedelta:
        return self.fixed + self.months * MONTH_MAX


def shift_months(moment: Moment, months: int) -> Moment:
    """`moment` moved by whole calendar months, the day clamped to the target month's last day."""
    if not months:
        return moment
    index = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(index, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


def parse_calendar_duration(text: str) -> Duration:
    """'90m', '24h', '7d', '2w', '1mo' -> Duration."""
    match = _DURATION_RE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a duration like {_EXAMPLES}")
    amount, unit = int(match.group(1)), _DURATION_UNITS[match.group(2)]
    if unit == "months":
        return Duration(months=amount)
    return Duration(fixed=timedelta(**{unit: amount}))


def parse_duration(text: str) -> timedelta:
    """'90m', '24h', '7d', '2w' -> timedelta; calendar months ('1mo') have no fixed length: refused."""
    duration = parse_calendar_duration(text)
    if duration.months:
        raise ValueError(
            f"{text!r}: a calendar month has no fixed length, so it is not allowed here (use days or "
            "weeks, e.g. '30d'); months are allowed in drift.window and drift.cooldown"
        )
    return duration.fixed


# One partition of each grain (`partition_grain` of a spec).
GRAIN_DURATIONS = {"day": Duration(fixed=timedelta(days=1)), "week": Duration(fixed=timedelta(weeks=1))}
GRAIN_DURATIONS["month"] = Duration(months=1)
DEFAULT_DRIFT_WINDOW = "7d"
# The default drift window follows the grain when one partition is longer than a week.
DEFAULT_DRIFT_WINDOW_BY_GRAIN = {"day": DEFAULT_DRIFT_WINDOW, "week": DEFAULT_DRIFT_WINDOW, "month": "1mo"}


def shorter_than_grain(window: Duration, grain: str) -> bool:
    """Whether `window` can be shorter than one partition of `grain` (30d is, against a 31-day month)."""
    partition = GRAIN_DURATIONS[grain]
    if window.months and not window.fixed and partition.months and not partition.fixed:
        return window.months < partition.months
    return window.shortest < partition.longest
