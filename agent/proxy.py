"""``warmcache-proxy``: the only door from the network to a host agent.

HTTPS with client certificates required (mTLS: no certificate, or one from
another CA, fails the TLS handshake), an IP allow-list (a good certificate
from an address outside it gets 403), and strict validation of every
request against the agent wire schema (wrong types, out-of-range values and
unknown fields get 400 before anything reaches the agent). Valid requests
are forwarded to the agent's Unix socket; its reply comes back as the body,
with an HTTP status mapped from its error code.

    POST /v1/agent   body: one agent request (warmcache.wire), reply: the agent's
    GET  /healthz    the proxy is up and the agent answers
"""

from __future__ import annotations

import ipaddress
import json
import logging
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import click
from pydantic import ValidationError

from warmcache.errors import InvalidRequest
from warmcache.wire import MAX_LINE_BYTES, REQUEST_ADAPTER, error

log = logging.getLogger("warmcache.proxy")

# Agent error code -> HTTP status. The body is always the agent's reply.
STATUS_FOR = {
    "invalid_request": 400,
    "not_found": 404,
    "already_exists": 409,
    "insufficient_capacity": 409,
    "hypervisor_error": 502,
    "agent_unavailable": 503,
    "internal_error": 500,
}

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
        return error("agent_unavailable", f"agent socket {socket_path}: {exc}")


class _Handler(BaseHTTPRequestHandler):
    server: ProxyServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.info("%s %s", self.client_address[0], fmt % args)

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _allowed(self) -> bool:
        address = ipaddress.ip_address(self.client_address[0])
        if any(address in net for net in self.server.allow):
            return True
        self._reply(403, {"error": "forbidden",
                          "detail": f"{address} is not in the proxy's allow-list"})
        return False

    def do_GET(self) -> None:
        if not self._allowed():
            return
        if self.path != "/healthz":
            self._reply(404, {"error": "not_found", "detail": self.path})
            return
        reply = forward(self.server.socket_path, {"op": "health"}, self.server.timeout_s)
        self._reply(200 if reply.get("ok") else 503, reply)

    def do_POST(self) -> None:
        if not self._allowed():
            return
        if self.path != "/v1/agent":
            self._reply(404, {"error": "not_found", "detail": self.path})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_LINE_BYTES:
            self._reply(400, error("invalid_request", f"body of {length} bytes"))
            return
        body = self.rfile.read(length)
        try:
            request = REQUEST_ADAPTER.validate_json(body, strict=True)
        except ValidationError as exc:
            detail = InvalidRequest.from_validation("invalid agent request", exc).errors
            self._reply(400, error("invalid_request", detail))
            return
        reply = forward(self.server.socket_path, request.model_dump(mode="json"),
                        self.server.timeout_s)
        status = 200 if reply.get("ok") else STATUS_FOR.get(str(reply.get("error")), 502)
        self._reply(status, reply)


class ProxyServer(ThreadingHTTPServer):
    """TLS is set up per connection in the handler thread, so a slow or
    hostile handshake never blocks accepting the next connection."""

    daemon_threads = True

    def __init__(self, listen: tuple[str, int], socket_path: str, context: ssl.SSLContext,
                 allow: Sequence[Network], timeout_s: float = 120.0) -> None:
        self.socket_path = socket_path
        self.context = context
        self.allow = list(allow)
        self.timeout_s = timeout_s
        super().__init__(listen, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(30)
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.warning("TLS handshake with %s failed: %s", client_address[0], exc)
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()


def parse_allow(cidrs: Sequence[str]) -> list[Network]:
    try:
        return [ipaddress.ip_network(c, strict=False) for c in cidrs]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--allow") from exc


@click.command()
@click.option("--listen", required=True, help="HOST:PORT to serve HTTPS on.")
@click.option("--socket", "socket_path", required=True, help="The agent's Unix socket.")
@click.option("--cert", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Server certificate (PEM).")
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Server private key (PEM).")
@click.option("--client-ca", required=True, type=click.Path(exists=True, dir_okay=False),
              help="CA that signs the service instances' client certificates.")
@click.option("--allow", "allow", multiple=True, required=True,
              help="CIDR allowed to call (repeatable), e.g. --allow 10.1.0.0/16.")
def main(listen: str, socket_path: str, cert: str, key: str, client_ca: str,
         allow: tuple[str, ...]) -> None:
    """Serve the host agent over mTLS HTTPS with an IP allow-list."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        click.echo(f"warmcache-proxy: --listen wants HOST:PORT, got {listen!r}", err=True)
        sys.exit(2)
    try:
        context = server_context(cert, key, client_ca)
    except (ssl.SSLError, OSError) as exc:
        click.echo(f"warmcache-proxy: cannot load certificates: {exc}", err=True)
        sys.exit(2)
    server = ProxyServer((host.strip("[]"), int(port)), socket_path, context,
                         parse_allow(allow))

    def _stop(_sig: int, _frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("proxy on https://%s for %s, allowing %s", listen, socket_path, ", ".join(allow))
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()

