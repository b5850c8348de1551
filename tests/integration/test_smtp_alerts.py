"""Email alerts against a real SMTP server (aiosmtpd) in the test process."""

from __future__ import annotations

import email
from collections.abc import Iterator
from email.message import Message
from typing import Any

import pytest

from warmcache.adapters.smtp_alerts import SmtpAlerts
from warmcache.clock import ManualClock
from warmcache.testing.polling import wait_for
from warmcache.testing.ports import free_port


class Inbox:
    def __init__(self) -> None:
        self.mails: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append(email.message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    aiosmtpd = pytest.importorskip("aiosmtpd.controller")
    inbox, port = Inbox(), free_port()
    controller = aiosmtpd.Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def test_alerts_are_mailed_and_rate_limited(smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    clock = ManualClock()
    alerts = SmtpAlerts(
        "127.0.0.1",
        port,
        "warmcache@example.test",
        ["sre@example.test"],
        clock=clock,
        max_per_window=2,
        window_s=60,
    )
    try:
        for i in range(4):
            alerts.alert(f"warmcache purged vm-{i}", f"vm-{i} failed its health polls")
        wait_for("two mails", lambda: len(inbox.mails) == 2, 10)
        assert [m["Subject"] for m in inbox.mails] == [
            "warmcache purged vm-0",
            "warmcache purged vm-1",
        ]
        assert inbox.mails[0]["To"] == "sre@example.test"
        clock.advance(61)  # a new window: the suppressed ones are summarised
        alerts.alert("warmcache cycle 9: built 3 VM(s), ok", "built: az1/small: 3")
        wait_for("the third mail", lambda: len(inbox.mails) == 3, 10)
        body = inbox.mails[2].get_payload(decode=True).decode()  # type: ignore[union-attr]
        assert "2 more alert(s) were suppressed" in body
    finally:
        alerts.close()


def test_a_dead_mail_server_never_blocks_the_caller() -> None:
    alerts = SmtpAlerts("127.0.0.1", free_port(), "w@x", ["y@x"], clock=ManualClock(), timeout_s=1)
    for i in range(5):
        alerts.alert(f"s{i}", "b")  # returns at once; failures are logged
    alerts.close(timeout_s=30)
    assert alerts.dropped == 5  # not sent, and counted


def test_a_mail_refused_while_the_server_is_down_is_sent_when_it_is_back() -> None:
    aiosmtpd = pytest.importorskip("aiosmtpd.controller")
    inbox, port = Inbox(), free_port()
    alerts = SmtpAlerts(
        "127.0.0.1",
        port,
        "w@example.test",
        ["sre@example.test"],
        clock=ManualClock(),
        timeout_s=1,
        retry_s=0.05,
    )
    controller = aiosmtpd.Controller(inbox, hostname="127.0.0.1", port=port)
    try:
        alerts.alert("warmcache purged vm-1", "sent while the server was down")
        assert not alerts.flush(0.3)  # still queued: the server is down
        controller.start()
        wait_for("the retried mail", lambda: inbox.mails, 10)
        assert [m["Subject"] for m in inbox.mails] == ["warmcache purged vm-1"]
        assert alerts.dropped == 0
    finally:
        alerts.close()
        controller.stop()


def test_config_wires_smtp_alerts(smtp: tuple[Inbox, int], tmp_path: Any) -> None:
    from pathlib import Path

    from warmcache.bootstrap import build
    from warmcache.config import parse_config

    inbox, port = smtp
    config_dir = Path(__file__).resolve().parents[2] / "config"
    service = build(
        parse_config(
            {
                "store": {"path": str(tmp_path / "s.db")},
                "events": {"kind": "log"},
                "catalog": {"path": str(config_dir / "flavors.toml")},
                "alerts": {
                    "kind": "smtp",
                    "smtp_host": "127.0.0.1",
                    "smtp_port": port,
                    "recipients": ["sre@example.test"],
                },
            },
            environ={},
        )
    )
    try:
        assert isinstance(service.alerts, SmtpAlerts)
        service.alerts.alert("warmcache reconcile: 1 finding(s)", "rogue domain")
        wait_for("the mail", lambda: inbox.mails, 10)
    finally:
        service.close()


def test_the_service_mails_its_cycle_report(smtp: tuple[Inbox, int], tmp_path: Any) -> None:
    from pathlib import Path

    from tests.fakes import fleet
    from warmcache.adapters.file_catalog import FileFlavorCatalog
    from warmcache.adapters.sqlite_events import LogEvents
    from warmcache.adapters.sqlite_store import SqliteStore
    from warmcache.config import ServiceConfig
    from warmcache.service import WarmCache

    inbox, port = smtp
    clock = ManualClock()
    store = SqliteStore(tmp_path / "s.db", clock=clock)
    agents = fleet(("az1",))
    for agent in agents.values():
        agent.attach(store, "wc")
    alerts = SmtpAlerts("127.0.0.1", port, "w@example.test", ["sre@example.test"], clock=clock)
    catalog = FileFlavorCatalog(Path(__file__).resolve().parents[2] / "config" / "flavors.toml")
    service = WarmCache(
        config=ServiceConfig(prefix="wc"),
        store=store,
        catalog=catalog,
        events=LogEvents(),
        agent_for=agents.__getitem__,
        clock=clock,
        alerts=alerts,
    )
    try:
        service.rules.put(
            "az1",
            "small",
            {"max_instance_per_cycle": 3, "total_instances": 3, "min_fault_domain": 3},
        )
        service.run_cycle()
        wait_for("the cycle report", lambda: inbox.mails, 10)
        assert "built 3 VM(s)" in inbox.mails[0]["Subject"]
        assert "az1/small: 3" in inbox.mails[0].get_payload(decode=True).decode()  # type: ignore[union-attr]
    finally:
        alerts.close()
        store.close()
