"""Scheduled floors (issue 29): windows open on their days and hours (past
midnight and in their time zone too), are due a build horizon ahead, raise
a demand pool's floor while due, and the surplus left at the close waits
for decay_after_s (no flapping at the edges). Injected clock throughout."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from warmcache.clock import ManualClock
from warmcache.config import Config, DemandConfig, load_config
from warmcache.schedules import Schedule, floor
from warmcache.service import WarmCache

MONDAY = dt.datetime(2026, 12, 7, tzinfo=dt.UTC).timestamp()  # a Monday, 00:00 UTC


def at(day: int, hh: int, mm: int = 0) -> float:
    return MONDAY + day * 86_400 + hh * 3600 + mm * 60


WEEKDAYS = Schedule(
    az="az1",
    flavor="small",
    days=("mon", "tue", "wed", "thu", "fri"),
    start="08:00",
    end="18:00",
    min_running=5,
)


def test_a_window_is_open_from_its_start_to_just_before_its_end_on_its_days() -> None:
    assert not WEEKDAYS.open_at(at(0, 7, 59))
    assert WEEKDAYS.open_at(at(0, 8, 0)) and WEEKDAYS.open_at(at(0, 17, 59))
    assert not WEEKDAYS.open_at(at(0, 18, 0))
    assert not WEEKDAYS.open_at(at(5, 9))  # Saturday


def test_a_window_past_midnight_belongs_to_the_day_it_opens() -> None:
    night = Schedule(az="a", flavor="f", days=("fri",), start="22:00", end="02:00", min_running=1)
    assert night.open_at(at(4, 23)) and night.open_at(at(5, 1, 59))  # Fri 23:00, Sat 01:59
    assert not night.open_at(at(5, 2)) and not night.open_at(at(3, 23))  # Sat 02:00, Thu
    assert not night.open_at(at(4, 1))  # Friday 01:00 belongs to Thursday's night


def test_a_window_keeps_its_own_time_zone() -> None:
    paris = WEEKDAYS.model_copy(update={"timezone": "Europe/Paris"})  # UTC+1 in December
    assert paris.open_at(at(0, 7)) and not paris.open_at(at(0, 17))


def test_a_window_is_due_a_horizon_before_it_opens() -> None:
    assert floor([WEEKDAYS], "az1", "small", at(0, 7, 57), lead_s=180) == 5
    assert floor([WEEKDAYS], "az1", "small", at(0, 7, 56), lead_s=180) == 0
    assert floor([WEEKDAYS], "az1", "large", at(0, 9), lead_s=180) == 0  # another pool
    bigger = WEEKDAYS.model_copy(update={"min_running": 8, "start": "12:00"})
    assert floor([WEEKDAYS, bigger], "az1", "small", at(0, 12), lead_s=0) == 8


@pytest.mark.parametrize(
    "bad",
    [
        {"start": "8:00"},
        {"end": "24:00"},
        {"days": ("monday",)},
        {"timezone": "Mars/Olympus"},
        {"end": "08:00"},
        {"min_running": -1},
    ],
)
def test_a_bad_window_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Schedule.model_validate({**WEEKDAYS.model_dump(), **bad})


def test_schedules_come_from_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "service.toml"
    path.write_text(
        '[[schedules]]\naz = "az1"\nflavor = "small"\ndays = ["mon", "tue"]\n'
        'start = "08:00"\nend = "18:00"\nmin_running = 50\n'
    )
    config: Config = load_config(path, environ={})
    assert config.schedules[0].min_running == 50 and config.schedules[0].days == ("mon", "tue")


def test_the_leader_holds_the_floor_while_due_and_the_surplus_decays_after(
    make_service: Callable[..., WarmCache], clock: ManualClock
) -> None:
    clock.advance(at(0, 7, 50) - clock.now())
    svc = make_service(
        demand=DemandConfig(bin_s=60, refresh_s=0, build_s=60),
        cycle_interval_s=60,
        schedules=(WEEKDAYS,),
    )
    svc.rules.put(
        "az1",
        "small",
        {
            "max_instance_per_cycle": 10,
            "total_instances": 10,
            "sizing": "demand",
            "decay_after_s": 600,
        },
    )
    svc.run_cycle()  # 07:50
    assert svc.pools()[0].ready == 0  # no demand, the window not due yet
    clock.advance(at(0, 7, 57) - clock.now())
    svc.run_cycle()
    assert svc.pools()[0].ready == 0  # 3 minutes ahead: not yet
    clock.advance(at(0, 7, 58) - clock.now())  # due: the horizon is 120 s (build + cycle)
    svc.run_cycle()
    assert svc.pools()[0].target == 5 and svc.pools()[0].ready == 5
    clock.advance(120)  # 08:00: open
    assert svc.explain("az1", "small")["sizing"]["scheduled_floor"] == 5  # type: ignore[index]
    clock.advance(at(0, 18) - clock.now())  # closed: the target falls, the VMs stay a while
    svc.run_cycle()
    assert svc.pools()[0].target == 0 and svc.pools()[0].ready == 5
    clock.advance(599)
    svc.run_cycle()
    assert svc.pools()[0].ready == 5
    clock.advance(2)
    svc.run_cycle()
    assert svc.pools()[0].ready < 5  # retiring, replace_per_cycle at a time
