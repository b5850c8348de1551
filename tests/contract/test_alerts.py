"""One contract for the alert-sink port (STYLE.md §6.6): the log sink (the
embedded default) and SMTP against a real server (aiosmtpd). An alert's
subject and body arrive intact, ``dropped`` stays 0 when the backend is
up, and ``close`` delivers what was queued."""

from __future__ import annotations

import email
import logging
from collections.abc import Callable, Iterator
from email.message import Message
from typing import Any

import pytest

from warmcache.clock import ManualClock
from warmcache.ports import AlertSink
from warmcache.testing.ports import free_port

Delivered = Callable[[], list[tuple[str, str]]]


class _Inbox:
    def __init__(self) -> None:
        self.mails: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append(email.message_from_bytes(envelope.content))
        return "250 OK"


def _text(mail: Message) -> str:
    payload = mail.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode().replace("\r\n", "\n").rstrip("\n")  # SMTP lines end in CRLF


@pytest.fixture(params=["log", "smtp"])
def sink(request: pytest.FixtureRequest) -> Iterator[tuple[AlertSink, Delivered]]:
    if request.param == "log":
        from warmcache.adapters.log_alerts import LogAlerts

        caplog: pytest.LogCaptureFixture = request.getfixturevalue("caplog")
        caplog.set_level(logging.WARNING, "warmcache.alerts")
        log_sink = LogAlerts()
        yield (
            log_sink,
            lambda: [
                tuple(r.getMessage().split("\n", 1))  # type: ignore[misc]
                for r in caplog.records
                if r.name == "warmcache.alerts"
            ],
        )
        log_sink.close()
        return
    controller_module = pytest.importorskip("aiosmtpd.controller")
    from warmcache.adapters.smtp_alerts import SmtpAlerts

    inbox, port = _Inbox(), free_port()
    controller = controller_module.Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    smtp = SmtpAlerts(
        "127.0.0.1",
        port,
        "w@example.test",
        ["sre@example.test"],
        clock=ManualClock(),
        max_per_window=100,
    )
    try:
        yield smtp, lambda: [(str(m["Subject"]), _text(m)) for m in inbox.mails]
    finally:
        smtp.close()
        controller.stop()


def test_an_alert_arrives_with_its_subject_and_body(
    sink: tuple[AlertSink, Delivered],
) -> None:
    alerts, delivered = sink
    alerts.alert(
        "warmcache purged vm-1",
        "vm-1 (small, az1, h1) failed 3 health polls\nit was destroyed — record removed",
    )
    alerts.alert("warmcache cycle 7: built 2 VM(s), ok", "built: az1/small: 2")
    alerts.close()
    assert delivered() == [
        (
            "warmcache purged vm-1",
            "vm-1 (small, az1, h1) failed 3 health polls\nit was destroyed — record removed",
        ),
        ("warmcache cycle 7: built 2 VM(s), ok", "built: az1/small: 2"),
    ]
    assert alerts.dropped == 0
