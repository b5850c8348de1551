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
* Slow and hostile clients (``_Bounds``): a request must arrive whole
  (headers and body) within ``service.http_read_timeout_s`` of its first
  byte, however steadily it trickles, else its connection is closed; and
  at most ``service.http_connection_limit`` connections are open, at most
  ``service.http_connections_per_client`` from one address. A connection
  over either bound does not wait in the backlog (waitress stops accepting
  at its limit: 1,100 connections trickling a byte every 10 s kept
  ``/healthz`` unreachable): the connection that has waited longest on a
  request it has not finished sending, else the longest idle one, is
  closed to make room, within the client's own connections first. A
  request being served is never cut.

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
from collections import Counter
from typing import Any

from waitress.channel import HTTPChannel
from waitress.server import create_server as _create_server
from waitress.task import ErrorTask, ThreadedTaskDispatcher, WSGITask
from waitress.utilities import Error

from warmcache.config import ServiceConfig
from warmcache.deadline import RECEIVED_AT
from warmcache.errors import BodyTooLarge, HeadersTooLarge, InternalError, InvalidRequest
from warmcache.errors import Overloaded as OverloadedError

log = logging.getLogger(__name__)
_QUIET = logging.getLogger("warmcache.web.queue_depth")
_QUIET.disabled = True

# waitress's own refusals get the API's stable codes (warmcache.errors).
CODES = {
    cls.http_status: cls.code
    for cls in (InvalidRequest, BodyTooLarge, HeadersTooLarge, InternalError, OverloadedError)
}


class Overloaded(Error):  # type: ignore[misc]
    code = 503
    reason = "Service Unavailable"


class _TimedTask(WSGITask):  # type: ignore[misc]
    """Tells the app when its request arrived, so that its deadline counts
    the time it waited in the queue for a worker."""

    def get_environment(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environment()
        at = getattr(self.request, "warmcache_received_at", None)
        if at is not None:
            environ[RECEIVED_AT] = at
        return environ


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


class _Bounds:
    """The connection bounds and the request deadline (see the module)."""

    def __init__(self, server: Any, cfg: ServiceConfig) -> None:
        self.server = server
        self.limit = cfg.http_connection_limit
        self.per_client = cfg.http_connections_per_client
        self.read_timeout_s = cfg.http_read_timeout_s
        self.clients: Counter[str] = Counter()
        self.evicted = 0
        self._maintain = server.maintenance
        server.maintenance = self.maintenance

    def admit(self, channel: _JsonChannel) -> None:
        """A new connection (on the accepting thread): make room for it."""
        self.clients[channel.client] += 1
        if self.clients[channel.client] > self.per_client:
            self._evict(channel, only=channel.client)
        if len(self.server.active_channels) > self.limit:
            self._evict(channel, only=None)

    def _evict(self, newcomer: _JsonChannel, only: str | None) -> None:
        """Close the connection that waited longest on an unfinished
        request, else the longest idle one; else (everything is being
        served) the newcomer."""
        waiting: _JsonChannel | None = None
        idle: _JsonChannel | None = None
        for channel in list(self.server.active_channels.values()):
            if (
                channel is newcomer
                or not isinstance(channel, _JsonChannel)
                or channel.requests
                or channel.will_close
                or (only is not None and channel.client != only)
            ):
                continue
            if channel.began is not None:
                if waiting is None or channel.began < (waiting.began or 0.0):
                    waiting = channel
            elif idle is None or channel.last_activity < idle.last_activity:
                idle = channel
        victim = waiting or idle or newcomer
        self.evicted += 1
        log.info("connection bound reached: closing one from %s", victim.client)
        victim.handle_close()

    def closed(self, channel: _JsonChannel) -> None:
        self.clients[channel.client] -= 1
        if self.clients[channel.client] <= 0:
            del self.clients[channel.client]

    def maintenance(self, now: float) -> None:
        """waitress's idle sweep, and the request deadline."""
        self._maintain(now)
        cutoff = now - self.read_timeout_s
        for channel in list(self.server.active_channels.values()):
            began = getattr(channel, "began", None)
            if began is not None and began < cutoff and not channel.requests:
                channel.will_close = True  # a trickle: closed on the next loop


def _always() -> bool:
    return True


class _JsonChannel(HTTPChannel):  # type: ignore[misc]
    """A lingering close after an error reply: a client still sending a body
    we refused (too large, malformed) would otherwise get a reset in place
    of the reply, as the kernel resets a socket closed with unread data. So
    the write side is shut, what the client still sends is read and dropped
    (for at most LINGER_S and LINGER_BYTES), and only then is it closed."""

    error_task_class = _JsonErrorTask
    task_class = _TimedTask
    linger = False
    _linger_until: float | None = None
    _drained = 0
    began: float | None = None  # the first byte of a request not yet whole
    _counted = False

    def __init__(self, server: Any, sock: Any, addr: Any, adj: Any, map: Any = None) -> None:
        super().__init__(server, sock, addr, adj, map)
        self.client = str(addr[0] if isinstance(addr, tuple) else addr)
        bounds: _Bounds | None = getattr(server, "warmcache_bounds", None)
        if bounds is not None:
            self._counted = True
            bounds.admit(self)

    def received(self, data: bytes) -> bool:
        before = self.request
        done = bool(super().received(data))
        now = time.monotonic()
        for whole in self.requests:  # stamped once, when it became whole
            if getattr(whole, "warmcache_received_at", None) is None:
                whole.warmcache_received_at = now
        if self.request is None:
            self.began = None
        elif self.request is not before or self.began is None:
            self.began = time.time()  # a new request began in this data
        return done

    def del_channel(self, map: Any = None) -> None:  # every close ends here
        if self._counted:
            self._counted = False
            bounds: _Bounds | None = getattr(self.server, "warmcache_bounds", None)
            if bounds is not None:
                bounds.closed(self)
        super().del_channel(map)

    def handle_close(self) -> None:
        if self.linger and self._linger_until is None and self.connected:
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                super().handle_close()
                return
            self._linger_until = time.monotonic() + LINGER_S
            self.will_close = False
            # The I/O loop asks every channel readable()/writable() on each
            # pass (a third of the server's CPU under load, py-spy): only a
            # lingering channel answers for itself, so the others keep
            # waitress's own methods with no override to go through.
            self.readable = _always
            self.writable = self._linger_writable
            return
        super().handle_close()

    def _linger_writable(self) -> bool:
        if self._linger_until is not None and time.monotonic() > self._linger_until:
            HTTPChannel.handle_close(self)
        return False

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
        # waitress warns once per request queued behind busy threads (under
        # load: thousands of lines a second, each formatted and written, ~2%
        # of the server's CPU); the queue is bounded here, and what it
        # refuses is logged at most every 10 s instead.
        self.queue_logger = _QUIET
        self.max_queue = max_queue
        self.refused = 0
        self._warn_at = 0.0
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
        if (now := time.monotonic()) >= self._warn_at:
            self._warn_at = now + 10.0
            log.warning(
                "every worker is busy and the queue (%d) is full: %d request(s) refused "
                "with 503 since start",
                self.max_queue,
                self.refused,
            )
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
        # how often idle and trickling connections are looked for: a
        # fraction of the shorter timeout
        cleanup_interval=max(
            0.1, min(30.0, min(cfg.http_idle_timeout_s, cfg.http_read_timeout_s) / 4)
        ),
        # _Bounds keeps the limit by closing a connection; waitress's own
        # (stop accepting) only beyond a margin, never reached in practice
        connection_limit=cfg.http_connection_limit + 64,
        ident="warmcache",
        clear_untrusted_proxy_headers=True,
        _dispatcher=dispatcher,
    )
    server.channel_class = _JsonChannel
    server.warmcache_bounds = _Bounds(server, cfg)
    return server
