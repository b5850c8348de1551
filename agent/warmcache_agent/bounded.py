"""A socket server with bounded work, for the agent's socket and the proxy.

``socketserver``'s threading servers start one thread per connection, with
no bound: 200 idle connections made 202 threads on an agent. Here at most
``workers`` connections are served at once and ``queue`` more wait for a
worker; a connection beyond that is handed to ``refuse`` (a short reply:
busy, retry), run by one refuser thread, and closed, or closed at once when
there is no ``refuse`` (the proxy: a busy reply would cost a TLS handshake).
``admit`` sees each address at accept, before anything else: a connection
it refuses is closed at once, without taking a slot. Every connection gets
``idle_timeout_s`` as its socket timeout, so a client that connects and
sends nothing, or stops half way through a request, is dropped after that
long instead of holding a worker forever.

The interface is the part of ``socketserver`` callers use:
``serve_forever(poll_interval)``, ``shutdown()``, ``server_close()`` and
``server_address``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

Handler = Callable[[socket.socket, Any], None]


def once(stop: Callable[[], None]) -> Callable[..., None]:
    """``stop`` as a signal handler that runs once. A second SIGTERM comes
    while the first is being handled (systemd signals the whole unit, and
    the launcher forwards it to its child too); Python runs the handler
    again in the same thread, inside the first one's ``Event.set`` or
    ``Thread.start``, whose locks are not re-entrant: the agent hung there."""
    done: list[bool] = []

    def handler(*_signal: object) -> None:
        if done:
            return
        done.append(True)
        stop()

    return handler


class BoundedServer:
    def __init__(
        self,
        listener: socket.socket,
        handle: Handler,
        refuse: Handler | None,
        *,
        admit: Callable[[Any], bool] | None = None,
        workers: int,
        queue_size: int,
        idle_timeout_s: float,
        name: str,
    ) -> None:
        if workers < 1 or queue_size < 0 or idle_timeout_s <= 0:
            raise ValueError("workers >= 1, queue_size >= 0, idle_timeout_s > 0")
        self.socket = listener
        self.server_address = listener.getsockname()
        self._handle = handle
        self._refuse = refuse
        self._admit = admit
        self.idle_timeout_s = idle_timeout_s
        self._slots = threading.BoundedSemaphore(workers + queue_size)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._refusals: queue.SimpleQueue[tuple[socket.socket, Any] | None] = queue.SimpleQueue()
        self._refuser = threading.Thread(
            target=self._refuse_loop, name=f"{name}-refuser", daemon=True
        )
        self._refuser.start()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()  # not serving yet: shutdown() returns at once
        self.refused = 0  # beyond the workers and the queue
        self.denied = 0  # refused by ``admit``
        self.serving = 0  # connections holding a worker or waiting for one
        self._count = threading.Lock()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._stopped.clear()
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self.socket, selectors.EVENT_READ)
                while not self._stop.is_set():
                    if selector.select(poll_interval):
                        self._accept()
        finally:
            self._stopped.set()

    def _accept(self) -> None:
        try:
            conn, address = self.socket.accept()
        except OSError:
            return
        if self._admit is not None and not self._admit(address):
            self.denied += 1
            _close_now(conn)
            return
        conn.settimeout(self.idle_timeout_s)
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            if self._refuse is None:
                _close_now(conn)
            else:
                self._refusals.put((conn, address))
            return
        with self._count:
            self.serving += 1
        try:
            self._pool.submit(self._serve, conn, address)
        except RuntimeError:  # shutting down
            self._done()
            conn.close()

    def _serve(self, conn: socket.socket, address: Any) -> None:
        try:
            self._handle(conn, address)
        except Exception:  # a bug in one connection must not stop the server
            log.exception("connection from %s failed", address)
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            self._done()

    def _done(self) -> None:
        with self._count:
            self.serving -= 1
        self._slots.release()

    def _refuse_loop(self) -> None:
        while (item := self._refusals.get()) is not None:
            conn, address = item
            try:
                conn.settimeout(min(self.idle_timeout_s, 2.0))
                assert self._refuse is not None  # only queued when there is one
                self._refuse(conn, address)
            except Exception as exc:
                log.info("refusing %s: %s", address, exc)
            finally:
                with contextlib.suppress(OSError):
                    conn.close()

    def shutdown(self) -> None:
        self._stop.set()
        self._stopped.wait()

    def server_close(self, wait: bool = False) -> None:
        """Close the listener; ``wait``: let the requests being served finish
        first (those still queued are dropped either way)."""
        self._refusals.put(None)
        self.socket.close()
        self._pool.shutdown(wait=wait, cancel_futures=True)


def _close_now(conn: socket.socket) -> None:
    """Close without reading or answering anything (a reset: the kernel
    frees the connection at once, with no TIME_WAIT left here)."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        conn.close()
