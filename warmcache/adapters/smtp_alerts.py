"""SmtpAlerts: alerts by email (cycle summaries, errors, purges, reconcile
findings), rate-limited.

Sending goes through a ``Batcher`` (one mail per write, like the event
sinks' writes), so a slow or dead mail server never slows a build cycle or
a purge: a mail the server refused is tried again every ``retry_s``, and
past ``queue_size`` waiting mails new ones are dropped and counted
(``dropped``). Within each
``window_s`` at most ``max_per_window`` mails go out; the alerts that did not
fit are counted and summarised in the next mail ("N more alerts were
suppressed"), never silently lost from the record (every alert is also an
event).
"""

from __future__ import annotations

import smtplib
import ssl
import threading
from collections.abc import Callable
from email.message import EmailMessage

from warmcache.adapters.batching import Batcher
from warmcache.ports import Clock


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
        tls: bool = False,
        ca: str = "",
        username: str = "",
        password: str = "",
        max_per_window: int = 10,
        window_s: float = 600.0,
        timeout_s: float = 10.0,
        queue_size: int = 1000,
        retry_s: float = 5.0,
        smtp_factory: Callable[..., smtplib.SMTP] = smtplib.SMTP,
    ) -> None:
        if not recipients:
            raise ValueError("at least one recipient")
        self._host, self._port = host, port
        self._sender, self._recipients = sender, list(recipients)
        self._clock = clock
        self._starttls = starttls
        self._tls = tls
        self._ca = ca
        self._username, self._password = username, password
        self._max = max_per_window
        self._window_s = window_s
        self._timeout_s = timeout_s
        self._smtp = smtp_factory
        self._sent_at: list[float] = []
        self._suppressed = 0
        self._lock = threading.Lock()
        # One mail per write: a failed write is retried whole, and a retried
        # batch of several would send its first mails twice.
        self._outbox: Batcher[tuple[str, str]] = Batcher(
            self._send, name="smtp-alerts", max_queue=queue_size, batch=1, retry_s=retry_s
        )

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
                body += (
                    f"\n\n({self._suppressed} more alert(s) were suppressed by the rate "
                    f"limit of {self._max} per {self._window_s:.0f} s; see the events.)\n"
                )
                self._suppressed = 0
        self._outbox.put((subject, body))

    @property
    def dropped(self) -> int:
        return self._outbox.dropped

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued mail is sent; False on timeout."""
        return self._outbox.flush(timeout_s)

    def _send(self, mails: list[tuple[str, str]]) -> None:
        for subject, body in mails:
            message = EmailMessage()
            message["From"] = self._sender
            message["To"] = ", ".join(self._recipients)
            message["Subject"] = subject
            message.set_content(body)
            with self._connect() as smtp:
                if self._starttls:
                    smtp.starttls(context=self._context())
                if self._username:
                    smtp.login(self._username, self._password)
                smtp.send_message(message)

    def _context(self) -> ssl.SSLContext:
        """The server's certificate verified (against ``ca`` when given)."""
        return ssl.create_default_context(cafile=self._ca or None)

    def _connect(self) -> smtplib.SMTP:
        if self._tls:  # SMTPS: TLS from the first byte
            return smtplib.SMTP_SSL(
                self._host, self._port, timeout=self._timeout_s, context=self._context()
            )
        return self._smtp(self._host, self._port, timeout=self._timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what is queued (up to ``timeout_s``; one attempt each once a
        send failed), then stop; what is left is counted in ``dropped``."""
        self._outbox.close(timeout_s)
