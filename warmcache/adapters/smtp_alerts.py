"""SmtpAlerts: alerts by email (cycle summaries, errors, purges, reconcile
findings), rate-limited.

Sending happens on a background thread from a bounded queue, so a slow or
dead mail server never slows a build cycle or a purge. Within each
``window_s`` at most ``max_per_window`` mails go out; the alerts that did not
fit are counted and summarised in the next mail ("N more alerts were
suppressed"), never silently lost from the record (every alert is also an
event).
"""

from __future__ import annotations

import logging
import queue
import smtplib
import ssl
import threading
from collections.abc import Callable
from email.message import EmailMessage

from warmcache.ports import Clock

log = logging.getLogger(__name__)


class SmtpAlerts:
    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        recipients: list[str],
        *,
        clock: Clock,
        starttls: bool = False,
        username: str = "",
        password: str = "",
        max_per_window: int = 10,
        window_s: float = 600.0,
        timeout_s: float = 10.0,
        queue_size: int = 1000,
        smtp_factory: Callable[..., smtplib.SMTP] = smtplib.SMTP,
    ) -> None:
        if not recipients:
            raise ValueError("at least one recipient")
        self._host, self._port = host, port
        self._sender, self._recipients = sender, list(recipients)
        self._clock = clock
        self._starttls = starttls
        self._username, self._password = username, password
        self._max = max_per_window
        self._window_s = window_s
        self._timeout_s = timeout_s
        self._smtp = smtp_factory
        self._queue: queue.Queue[tuple[str, str] | None] = queue.Queue(maxsize=queue_size)
        self._sent_at: list[float] = []
        self._suppressed = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="smtp-alerts", daemon=True)
        self._thread.start()

    def alert(self, subject: str, body: str) -> None:
        """Queue a mail (or count it as suppressed past the rate limit)."""
        now = self._clock.now()
        with self._lock:
            self._sent_at = [t for t in self._sent_at if now - t < self._window_s]
            if len(self._sent_at) >= self._max:
                self._suppressed += 1
                return
            self._sent_at.append(now)
            if self._suppressed:
                body += (f"\n\n({self._suppressed} more alert(s) were suppressed by the rate "
                         f"limit of {self._max} per {self._window_s:.0f} s; see the events.)\n")
                self._suppressed = 0
        try:
            self._queue.put_nowait((subject, body))
        except queue.Full:
            log.warning("alert queue full, dropped: %s", subject)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            subject, body = item
            message = EmailMessage()
            message["From"] = self._sender
            message["To"] = ", ".join(self._recipients)
            message["Subject"] = subject
            message.set_content(body)
            try:
                with self._smtp(self._host, self._port, timeout=self._timeout_s) as smtp:
                    if self._starttls:
                        smtp.starttls(context=ssl.create_default_context())
                    if self._username:
                        smtp.login(self._username, self._password)
                    smtp.send_message(message)
            except (OSError, smtplib.SMTPException) as exc:
                log.warning("could not mail alert %r: %s", subject, exc)

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what is queued (up to ``timeout_s``), then stop."""
        self._queue.put(None)
        self._thread.join(timeout=timeout_s)
