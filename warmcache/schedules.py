"""Scheduled floors (issue 29): ``[[schedules]]`` windows that hold at
least so many running VMs in a pool at known busy times (weekdays
08:00-18:00, at least 50 running), so that the pool is full when the
demand arrives rather than after the forecast sees it.

A window raises its pool's floor from ``lead_s`` before it opens (the
pool's build horizon: VMs a cycle starts then are ready at the opening)
until it closes. Closing does not drop VMs at once: what the floor held
beyond the pool's own target is a surplus, retired only after the rule's
``decay_after_s`` (or ``service.shrink_after_s``), and a window that
opens again meanwhile keeps it; so nothing flaps at a window's edges.
Pure: the sizer asks ``floor(az, flavor, now, lead_s)``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class Schedule(BaseModel):
    """One window: on ``days``, from ``start`` to ``end`` (local time in
    ``timezone``; an end at or before the start runs past midnight), the
    pool holds at least ``min_running`` running VMs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    az: str = Field(min_length=1, max_length=63, description="The pool's AZ.")
    flavor: str = Field(min_length=1, max_length=63, description="The pool's flavor.")
    days: tuple[str, ...] = Field(
        default=DAYS, min_length=1, description='Days it opens on: "mon" ... "sun".'
    )
    start: str = Field(description='Opens at "HH:MM" (local time).')
    end: str = Field(description='Closes at "HH:MM" (local time; at or before start: next day).')
    timezone: str = Field(default="UTC", description='An IANA zone, e.g. "Europe/Paris".')
    min_running: int = Field(ge=0, le=100_000, description="Running VMs held at least.")

    @field_validator("days")
    @classmethod
    def _days(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [d for d in value if d not in DAYS]
        if bad:
            raise ValueError(f"days are mon, tue, wed, thu, fri, sat, sun; got {bad}")
        return value

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        if not _CLOCK.fullmatch(value):
            raise ValueError(f'a time of day is "HH:MM" (00:00-23:59), got {value!r}')
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Schedule:
        if self.start == self.end:
            raise ValueError("start and end are the same: give a window (or 00:00-23:59)")
        return self

    def open_at(self, at: float) -> bool:
        """Whether the window is open at epoch ``at``."""
        zone = ZoneInfo(self.timezone)
        local = dt.datetime.fromtimestamp(at, zone)
        minute = local.hour * 60 + local.minute
        start, end = _minutes(self.start), _minutes(self.end)
        if start < end:
            return DAYS[local.weekday()] in self.days and start <= minute < end
        # past midnight: open from start on a listed day, or before end on
        # the day after one
        if minute >= start:
            return DAYS[local.weekday()] in self.days
        yesterday = (local - dt.timedelta(days=1)).weekday()
        return minute < end and DAYS[yesterday] in self.days

    def due(self, now: float, lead_s: float) -> bool:
        """Open now, or opening within ``lead_s`` (checked every minute of
        the lead: windows open on the minute)."""
        step = 60.0
        at = now
        while True:
            if self.open_at(at):
                return True
            at += step
            if at > now + lead_s:
                return False


def _minutes(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


def floor(schedules: Sequence[Schedule], az: str, flavor: str, now: float, lead_s: float) -> int:
    """The running VMs the pool's due windows ask for (0: none due)."""
    return max(
        (
            s.min_running
            for s in schedules
            if s.az == az and s.flavor == flavor and s.due(now, lead_s)
        ),
        default=0,
    )
