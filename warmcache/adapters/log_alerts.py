"""LogAlerts: alerts to the Python log (the embedded default; SMTP in production)."""

from __future__ import annotations

import logging


class LogAlerts:
    def __init__(self) -> None:
        self._log = logging.getLogger("warmcache.alerts")

    def alert(self, subject: str, body: str) -> None:
        self._log.warning("%s\n%s", subject, body)

    @property
    def dropped(self) -> int:
        return 0

    def close(self) -> None:
        pass
