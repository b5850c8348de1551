"""``warmcache-proxy``: the only door from the network to a host agent.

HTTPS with client certificates required (mTLS: no certificate, or one from
another CA, fails the TLS handshake), an IP allow-list (a good certificate
from an address outside it gets 403), HTTP/1.1 parsed strictly by h11, and
strict validation of every request against the agent wire schema (wrong
types, out-of-range values and unknown fields get 400 before anything
reaches the agent). Bounded work, idle timeouts and request deadlines: see
``ProxyServer``. Valid requests
are forwarded to the agent's Unix socket; its reply comes back as the body,
with an HTTP status mapped from its error code.

    POST /v1/agent   body: one agent request (warmcache.wire), reply: the agent's
    GET  /healthz    the proxy is up and the agent answers
"""

from __future__ import annotations

import contextlib
import http
import ipaddress
import json
import logging
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import click
import h11
from pydantic import ValidationError

from warmcache.agent_codes import AgentCode
from warmcache.errors import InvalidRequest
from warmcache.logs import log_options, setup_logging
from warmcache.wire import MAX_LINE_BYTES, REQUEST_ADAPTER, error
from warmcache_agent.bounded import BoundedServer, once
from warmcache_agent.config import ServerLimits

log = logging.getLogger("warmcache.proxy")

# Agent error code -> HTTP status. The body is always the agent's reply.
STATUS_FOR: dict[AgentCode, int] = {
    AgentCode.INVALID_REQUEST: 400,
    AgentCode.FORBIDDEN: 403,
    AgentCode.NOT_FOUND: 404,
    AgentCode.METHOD_NOT_ALLOWED: 405,
    AgentCode.ALREADY_EXISTS: 409,
    AgentCode.INSUFFICIENT_CAPACITY: 409,
    AgentCode.HYPERVISOR_ERROR: 502,
    AgentCode.IMAGE_UNAVAILABLE: 502,  # the image server failed the agent
    AgentCode.IMAGE_INVALID: 502,  # the image server served other bytes
    AgentCode.AGENT_UNAVAILABLE: 503,
    AgentCode.BUSY: 503,
    AgentCode.INTERNAL_ERROR: 500,
}


def _status(reply: dict[str, Any]) -> int:
    """The HTTP status of an agent's error reply (a code it should not send: 502)."""
    code = str(reply.get("error"))
    return STATUS_FOR[AgentCode(code)] if code in AgentCode.__members__.values() else 502


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def server_context(cert: str, key: str, client_ca: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(client_ca)
    ctx.verify_mode = ssl.CERT_REQUIRED  # no client certificate: no handshake
    return ctx


def forward(socket_path: str, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """One request line to the agent's socket and its reply line back."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(socket_path)
            sock.sendall(json.dumps(request).encode() + b"\n")
            with sock.makefile("rb") as stream:
                line = stream.readline(MAX_LINE_BYTES + 1)
        reply: dict[str, Any] = json.loads(line)
        return reply
    except (OSError, ValueError) as exc:
        return error(AgentCode.AGENT_UNAVAILABLE, f"agent socket {socket_path}: {exc}")


class _Refusal(Exception):
    """Answer this request with an error and close the connection."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("error"))
        self.status = status
        self.body = body


class _Deadline:
    """The overall deadline of the request being read: ``whole_s`` from its
    first byte, however steadily it trickles in (each read also waits at
    most ``idle_s``)."""

    def __init__(self, idle_s: float, whole_s: float) -> None:
        self.idle_s = idle_s
        self.whole_s = whole_s
        self.until: float | None = None

    def begin(self) -> None:
        """The next request: its clock starts with its first byte."""
        self.until = None

    def started(self) -> None:
        if self.until is None:
            self.until = time.monotonic() + self.whole_s

    def timeout(self) -> float:
        """For the next read; ``_Refusal`` 408 once the deadline passed."""
        if self.until is None:
            return self.idle_s
        left = self.until - time.monotonic()
        if left <= 0:
            raise _Refusal(
                408,
                error(
                    AgentCode.INVALID_REQUEST,
                    f"the request did not arrive whole within {self.whole_s:g} s",
                ),
            )
        return min(self.idle_s, left)


class ProxyServer(BoundedServer):
    """HTTP/1.1 over TLS, parsed by h11 (strict: a malformed or duplicated
    Content-Length, or both Content-Length and Transfer-Encoding, is a 400),
    with keep-alive; a request refused before its body was read (403, 404,
    405, 408, 413) is answered, the rest of what the client sends is drained
    for a moment, and the connection is closed, so the body is never read as
    the next request.

    Against floods and slow clients: an address outside the allow-list is
    closed at accept, before any TLS handshake or worker slot; at most
    ``limits.workers`` connections are served at once and ``limits.queue``
    wait, the rest are closed at once (no handshake, no reply); a TLS
    handshake, and then each request (headers and body), must arrive whole
    within ``limits.request_timeout_s`` (408), and a connection silent for
    ``limits.idle_timeout_s`` is closed."""

    def __init__(
        self,
        listen: tuple[str, int],
        socket_path: str,
        context: ssl.SSLContext,
        allow: Sequence[Network],
        timeout_s: float = 120.0,
        limits: ServerLimits | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.context = context
        self.allow = list(allow)
        self.timeout_s = timeout_s
        limits = limits or ServerLimits()
        self.request_timeout_s = limits.request_timeout_s
        family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
        listener = socket.create_server(listen, family=family, backlog=128)
        super().__init__(
            listener,
            self._connection,
            None,  # beyond the queue: closed at once, no handshake
            admit=self.allowed,
            workers=limits.workers,
            queue_size=limits.queue,
            idle_timeout_s=limits.idle_timeout_s,
            name="proxy",
        )

    def allowed(self, address: Any) -> bool:
        """Is this peer in the allow-list? (At accept: a refused address
        costs no handshake, no slot and no log line.)"""
        try:
            client = ipaddress.ip_address(address[0])
        except (ValueError, IndexError, TypeError):
            return False
        if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped is not None:
            client = client.ipv4_mapped
        return any(client in net for net in self.allow)

    # --- connections ------------------------------------------------------------------

    def _connection(self, raw: socket.socket, address: Any) -> None:
        # One deadline for the whole handshake (CPython's do_handshake keeps
        # the socket timeout as its deadline across the reads it makes).
        raw.settimeout(min(self.idle_timeout_s, self.request_timeout_s))
        try:
            tls = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.warning("TLS handshake with %s failed: %s", address[0], exc)
            return
        try:
            self._exchange(tls, address)
        except (OSError, ssl.SSLError) as exc:  # the client went away: one line
            log.info("connection from %s ended: %s", address[0], exc)
        finally:
            with contextlib.suppress(OSError):
                tls.close()

    def _exchange(self, sock: ssl.SSLSocket, address: Any) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        deadline = _Deadline(self.idle_timeout_s, self.request_timeout_s)
        while True:
            deadline.begin()
            try:
                event = self._next(conn, sock, deadline)
                if not isinstance(event, h11.Request):
                    return  # closed (or idle past the timeout) between requests
                status, reply = self._request(conn, sock, event, address, deadline)
            except _Refusal as refusal:
                sock.settimeout(self.idle_timeout_s)  # for the reply, not the request
                self._send(conn, sock, refusal.status, refusal.body, close=True)
                _drain(sock)
                return
            except h11.RemoteProtocolError as exc:
                sock.settimeout(self.idle_timeout_s)
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    self._send(
                        conn,
                        sock,
                        exc.error_status_hint,
                        error(AgentCode.INVALID_REQUEST, f"malformed HTTP request: {exc}"),
                        close=True,
                    )
                _drain(sock)
                return
            sock.settimeout(self.idle_timeout_s)
            self._send(conn, sock, status, reply, close=False)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    @staticmethod
    def _next(conn: h11.Connection, sock: ssl.SSLSocket, deadline: _Deadline) -> Any:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                sock.settimeout(deadline.timeout())
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    deadline.timeout()  # 408 if that was the request's deadline
                    return None  # idle (or half sent) past the idle timeout
                if data:
                    deadline.started()
                conn.receive_data(data)
                continue
            return event

    def _request(
        self,
        conn: h11.Connection,
        sock: ssl.SSLSocket,
        request: h11.Request,
        address: Any,
        deadline: _Deadline,
    ) -> tuple[int, dict[str, Any]]:
        """Everything is checked before the body is read; a refusal closes."""
        if not self.allowed(address):  # the allow-list changed since accept
            raise _Refusal(
                403, error(AgentCode.FORBIDDEN, f"{address[0]} is not in the proxy's allow-list")
            )
        path = request.target.decode("ascii", "replace")
        routes = {"/healthz": b"GET", "/v1/agent": b"POST"}
        if path not in routes:
            raise _Refusal(404, error(AgentCode.NOT_FOUND, path))
        if request.method != routes[path]:
            raise _Refusal(405, error(AgentCode.METHOD_NOT_ALLOWED, path))
        headers = {name: value for name, value in request.headers}
        if b"content-length" in headers and b"transfer-encoding" in headers:
            raise _Refusal(
                400, error(AgentCode.INVALID_REQUEST, "both Content-Length and Transfer-Encoding")
            )
        declared = int(headers.get(b"content-length", b"0"))
        if declared > MAX_LINE_BYTES:
            raise _Refusal(
                413, error(AgentCode.INVALID_REQUEST, f"body over {MAX_LINE_BYTES} bytes")
            )
        body = self._body(conn, sock, deadline)
        if path == "/healthz":
            reply = forward(self.socket_path, {"op": "health"}, self.timeout_s)
            return (200 if reply.get("ok") else 503), reply
        try:
            valid = REQUEST_ADAPTER.validate_json(body, strict=True)
        except ValidationError as exc:
            detail = InvalidRequest.from_validation("invalid agent request", exc).errors
            return 400, error(AgentCode.INVALID_REQUEST, detail)
        reply = forward(self.socket_path, valid.model_dump(mode="json"), self.timeout_s)
        return (200 if reply.get("ok") else _status(reply)), reply

    def _body(self, conn: h11.Connection, sock: ssl.SSLSocket, deadline: _Deadline) -> bytes:
        body = b""
        while True:
            event = self._next(conn, sock, deadline)
            if event is None or isinstance(event, h11.ConnectionClosed):
                raise _Refusal(
                    400, error(AgentCode.INVALID_REQUEST, "the request body was not sent")
                )
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_LINE_BYTES:
                    raise _Refusal(
                        413, error(AgentCode.INVALID_REQUEST, f"body over {MAX_LINE_BYTES} bytes")
                    )
            elif isinstance(event, h11.EndOfMessage):
                return body

    @staticmethod
    def _send(
        conn: h11.Connection, sock: ssl.SSLSocket, status: int, body: dict[str, Any], *, close: bool
    ) -> None:
        data = json.dumps(body).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        if status == 405:
            headers.append(("Allow", "GET" if body.get("detail") == "/healthz" else "POST"))
        if close:
            headers.append(("Connection", "close"))
        try:
            reason = http.HTTPStatus(status).phrase.encode()
            sock.sendall(
                conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
                + conn.send(h11.Data(data=data))
                + conn.send(h11.EndOfMessage())
            )
        except h11.LocalProtocolError as exc:
            log.info("could not reply %d: %s", status, exc)


def _drain(sock: ssl.SSLSocket, within_s: float = 1.0, most: int = 1 << 20) -> None:
    """Read and drop what the client still sends (for ``within_s`` in all)
    before closing, so that it reads our reply rather than a reset."""
    until = time.monotonic() + within_s
    with contextlib.suppress(OSError, ssl.SSLError):
        drained = 0
        while drained < most and (left := until - time.monotonic()) > 0:
            sock.settimeout(left)
            if not (chunk := sock.recv(65536)):
                return
            drained += len(chunk)


def parse_allow(cidrs: Sequence[str]) -> list[Network]:
    try:
        return [ipaddress.ip_network(c, strict=False) for c in cidrs]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--allow") from exc


@click.command()
@click.version_option(package_name="warmcache", prog_name="warmcache-proxy")
@click.option("--listen", required=True, help="HOST:PORT to serve HTTPS on.")
@click.option("--socket", "socket_path", required=True, help="The agent's Unix socket.")
@click.option(
    "--cert",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Server certificate (PEM).",
)
@click.option(
    "--key",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Server private key (PEM).",
)
@click.option(
    "--client-ca",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="CA that signs the service instances' client certificates.",
)
@click.option(
    "--allow",
    "allow",
    multiple=True,
    required=True,
    help="CIDR allowed to call (repeatable), e.g. --allow 10.1.0.0/16.",
)
@click.option(
    "--workers",
    default=16,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="Connections served at once.",
)
@click.option(
    "--queue",
    "queue_size",
    default=64,
    show_default=True,
    type=click.IntRange(0, 100_000),
    help="Connections that may wait for a worker; beyond them: closed at once.",
)
@click.option(
    "--idle-timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0.1, 3600),
    help="Seconds a connection may send nothing (idle, or half a request).",
)
@click.option(
    "--request-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.1, 3600),
    help="Seconds a TLS handshake, or a request (headers and body), may take to arrive "
    "whole from its first byte: a client that trickles is cut (408).",
)
@log_options
def main(
    listen: str,
    socket_path: str,
    cert: str,
    key: str,
    client_ca: str,
    allow: tuple[str, ...],
    workers: int,
    queue_size: int,
    idle_timeout: float,
    request_timeout: float,
    log_level: str,
    log_format: str,
) -> None:
    """Serve the host agent over mTLS HTTPS with an IP allow-list."""
    setup_logging(log_level, log_format)
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        click.echo(f"warmcache-proxy: --listen wants HOST:PORT, got {listen!r}", err=True)
        sys.exit(2)
    try:
        context = server_context(cert, key, client_ca)
    except (ssl.SSLError, OSError) as exc:
        click.echo(f"warmcache-proxy: cannot load certificates: {exc}", err=True)
        sys.exit(2)
    server = ProxyServer(
        (host.strip("[]"), int(port)),
        socket_path,
        context,
        parse_allow(allow),
        limits=ServerLimits(
            workers=workers,
            queue=queue_size,
            idle_timeout_s=idle_timeout,
            request_timeout_s=request_timeout,
        ),
    )

    @once
    def _stop() -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("proxy on https://%s for %s, allowing %s", listen, socket_path, ", ".join(allow))
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


if __name__ == "__main__":  # python -m warmcache_agent.proxy, as warmcache-proxy
    main()
