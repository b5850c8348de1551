"""waitress, fitted to the API's contract in two places.

* Refusals waitress makes itself, before the app sees a request (a body
  over the limit, a malformed chunk, oversized headers, an app crash), get
  the API's shape and stable codes, ``{"error", "detail"}``, instead of
  waitress's plain-text pages (``_JsonErrorTask``).
* Bounded work: ``service.http_threads`` run requests and at most
  ``service.http_queue`` more wait for one; a request beyond that is
  answered 503 ``overloaded`` at once, by a thread of its own, rather than
  queued without bound (``_BoundedDispatcher``). A caller of a
  millisecond service learns at once that it must retry or go elsewhere.

Both hook into waitress 3: a channel class attribute (``error_task_class``),
the server's ``channel_class``, and ``create_server``'s ``_dispatcher``
(which waitress calls a test shim: private, hence the pin below 4 in
setup.cfg, and tests/integration/test_serve.py checks both behaviours).
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
from typing import Any

from waitress.channel import HTTPChannel
from waitress.server import create_server as _create_server
from waitress.task import ErrorTask, ThreadedTaskDispatcher
from waitress.utilities import Error

from warmcache.config import ServiceConfig
from warmcache.errors import BodyTooLarge, HeadersTooLarge, InternalError, InvalidRequest
from warmcache.errors import Overloaded as OverloadedError

log = logging.getLogger(__name__)

# waitress's own refusals get the API's stable codes (warmcache.errors).
CODES = {
    cls.http_status: cls.code
    for cls in (InvalidRequest, BodyTooLarge, HeadersTooLarge, InternalError, OverloadedError)
}


class Overloaded(Error):  # type: ignore[misc]
    code = 503
    reason = "Service Unavailable"


class _JsonErrorTask(ErrorTask):  # type: ignore[misc]
    def execute(self) -> None:
        error = self.request.error
        body = json.dumps(
            {
                "error": CODES.get(error.code, "invalid_request"),
                "detail": f"{error.reason}: {error.body}",
            }
        ).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        if error.code == 503:
            self.response_headers.append(("Retry-After", "1"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)
        self.channel.linger = True


LINGER_S = 2.0
LINGER_BYTES = 1 << 20


class _JsonChannel(HTTPChannel):  # type: ignore[misc]
    """A lingering close after an error reply: a client still sending a body
    we refused (too large, malformed) would otherwise get a reset in place
    of the reply, as the kernel resets a socket closed with unread data. So
    the write side is shut, what the client still sends is read and dropped
    (for at most LINGER_S and LINGER_BYTES), and only then is it closed."""

    error_task_class = _JsonErrorTask
    linger = False
    _linger_until: float | None = None
    _drained = 0

    def handle_close(self) -> None:
        if self.linger and self._linger_until is None and self.connected:
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                super().handle_close()
                return
            self._linger_until = time.monotonic() + LINGER_S
            self.will_close = False
            return
        super().handle_close()

    def readable(self) -> bool:
        if self._linger_until is not None:
            return True
        return bool(super().readable())

    def writable(self) -> bool:
        if self._linger_until is not None:
            if time.monotonic() > self._linger_until:
                super().handle_close()
            return False
        return bool(super().writable())

    def handle_read(self) -> None:
        if self._linger_until is None:
            super().handle_read()
            return
        try:
            data = self.socket.recv(65536)
        except OSError:
            data = b""
        self._drained += len(data)
        if not data or self._drained > LINGER_BYTES or time.monotonic() > self._linger_until:
            super().handle_close()


class _BoundedDispatcher(ThreadedTaskDispatcher):  # type: ignore[misc]
    """Queue at most ``max_queue`` requests beyond the busy threads; refuse
    the rest with 503, written by one refuser thread (an error reply takes
    microseconds and needs no worker)."""

    def __init__(self, max_queue: int) -> None:
        super().__init__()
        self.max_queue = max_queue
        self.refused = 0
        self._refusals: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=self._refuse, name="http-refuser", daemon=True).start()

    def add_task(self, channel: Any) -> None:
        with self.lock:
            idle = len(self.threads) - self.stop_count - self.active_count
            full = idle <= 0 and len(self.queue) >= self.max_queue
        if not full:
            super().add_task(channel)
            return
        self.refused += 1
        channel.requests[0].error = Overloaded(
            "every worker thread is busy and the queue is full; retry"
        )
        self._refusals.put(channel)

    def _refuse(self) -> None:
        while True:
            channel = self._refusals.get()
            try:
                channel.service()
            except Exception:  # a refusal must never take the refuser down
                log.exception("could not refuse a request")


def create_server(app: Any, cfg: ServiceConfig) -> Any:
    dispatcher = _BoundedDispatcher(cfg.http_queue)
    dispatcher.set_thread_count(cfg.http_threads)  # waitress does it only for its own
    server = _create_server(
        app,
        host=cfg.listen_host,
        port=cfg.listen_port,
        threads=cfg.http_threads,
        max_request_body_size=cfg.http_max_body_bytes,
        channel_timeout=cfg.http_idle_timeout_s,
        # how often idle connections are looked for: a fraction of the timeout
        cleanup_interval=max(0.1, min(30.0, cfg.http_idle_timeout_s / 4)),
        connection_limit=cfg.http_connection_limit,
        ident="warmcache",
        clear_untrusted_proxy_headers=True,
        _dispatcher=dispatcher,
    )
    server.channel_class = _JsonChannel
    return server
