"""``warmcache-agent``: the host agent daemon on a Unix domain socket.

One JSON request line and one JSON reply line per connection (see
``warmcache.wire``). The socket is created mode 0660 (owner and group only).
SIGTERM and SIGINT stop the daemon cleanly and remove the socket.

Run by ``warmcache_agent.launcher`` (as the units do), the agent updates
itself when the leader grants it a slot (``warmcache_agent.syncer``): it
stops serving, lets requests in flight finish, hands its heartbeat session
to its next self and exits ``RESTART``; the launcher starts the new build
and keeps it once it has published its host facts (``notify_ready``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from warmcache.agent_codes import AgentCode
from warmcache.errors import ConfigError, InvalidRequest, StoreError
from warmcache.layout import Keys, PoolRecords
from warmcache.logs import log_options, setup_logging
from warmcache.ports import CoordinationStore
from warmcache.wire import MAX_LINE_BYTES, REQUEST_ADAPTER, error, ok
from warmcache_agent.bounded import BoundedServer, once
from warmcache_agent.config import AgentConfig, load_agent_config
from warmcache_agent.faults import AgentFault
from warmcache_agent.identity import installed_sha256
from warmcache_agent.inventory import InventoryPublisher
from warmcache_agent.launcher import RESTART, STATE_ENV, Builds, notify_ready
from warmcache_agent.libvirt_driver import HypervisorFailure, LibvirtDriver
from warmcache_agent.operations import HostAgentService
from warmcache_agent.reconcile import Finding
from warmcache_agent.syncer import AgentSyncer

log = logging.getLogger("warmcache.agent")


def handle_line(service: HostAgentService, line: bytes) -> dict[str, Any]:
    """One request line to one reply object; never raises."""
    if len(line) > MAX_LINE_BYTES:
        return error(AgentCode.INVALID_REQUEST, f"request larger than {MAX_LINE_BYTES} bytes")
    try:
        request = REQUEST_ADAPTER.validate_json(line, strict=True)
    except ValidationError as exc:
        return error(
            AgentCode.INVALID_REQUEST, InvalidRequest.from_validation("invalid request", exc).errors
        )
    try:
        return ok(service.handle(request))
    except AgentFault as exc:
        return error(exc.code, exc.detail)
    except Exception as exc:  # a bug must not kill the daemon; say so instead
        log.exception("internal error on %s", request)
        return error(AgentCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")


def _read_line(conn: socket.socket, within_s: float) -> bytes:
    """One request line, at most MAX_LINE_BYTES, arriving within ``within_s``
    in all (a client trickling a byte at a time gets no more); b"" if the
    client went away or ran out of time."""
    deadline = time.monotonic() + within_s
    data = b""
    while b"\n" not in data and len(data) <= MAX_LINE_BYTES:
        left = deadline - time.monotonic()
        if left <= 0:
            return b""
        try:
            conn.settimeout(left)
            chunk = conn.recv(65536)
        except (TimeoutError, OSError):
            return b""
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0] if b"\n" in data else data


def _send(conn: socket.socket, reply: dict[str, Any]) -> None:
    try:
        conn.sendall(json.dumps(reply).encode() + b"\n")
    except OSError as exc:  # the client left: one line, not a traceback
        log.info("client left before the reply: %s", exc)


class AgentServer(BoundedServer):
    """The agent's socket (mode 0660): one request line and one reply line
    per connection, ``workers`` served at once (config ``[server]``); a
    connection beyond them and the queue gets ``busy`` at once."""

    def __init__(self, path: str, service: HostAgentService) -> None:
        self.service = service
        if os.path.exists(path):
            os.unlink(path)  # a stale socket from a killed agent
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o117)  # socket file 0660
        try:
            listener.bind(path)
        finally:
            os.umask(old)
        listener.listen(128)
        limits = service.config.server
        super().__init__(
            listener,
            self._serve_one,
            self._busy,
            workers=limits.workers,
            queue_size=limits.queue,
            idle_timeout_s=limits.idle_timeout_s,
            name="agent",
        )

    def _serve_one(self, conn: socket.socket, _address: Any) -> None:
        line = _read_line(conn, self.idle_timeout_s)
        if not line.strip():
            return
        _send(conn, handle_line(self.service, line))

    def _busy(self, conn: socket.socket, _address: Any) -> None:
        _send(conn, error(AgentCode.BUSY, "every worker of this agent is busy: retry"))


@click.group(invoke_without_command=True)
@click.version_option(package_name="warmcache", prog_name="warmcache-agent")
@click.option("--socket", "socket_path", help="Unix socket to listen on.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Agent TOML: hypervisor, rack, az, capacity, reserved, state_dir, inventory.",
)
@click.option("--libvirt-uri", default=None, help="Overrides libvirt_uri from the config.")
@log_options
@click.pass_context
def main(
    ctx: click.Context,
    socket_path: str | None,
    config_path: str | None,
    libvirt_uri: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Run the warmcache host agent (or one of its commands)."""
    if ctx.invoked_subcommand is not None:
        return
    if not socket_path or not config_path:
        raise click.UsageError("the agent needs --socket and --config")
    setup_logging(log_level, log_format)
    run_daemon(socket_path, config_path, libvirt_uri)


@main.command("reconcile")
@click.option("--socket", "socket_path", required=True, help="The running agent's socket.")
def reconcile_command(socket_path: str) -> None:
    """Ask the running agent to reconcile now; print findings (exit 1 if any)."""
    from warmcache.adapters.agent_client import AgentClient
    from warmcache.errors import AgentError

    try:
        findings = AgentClient(f"unix:{socket_path}").call({"op": "reconcile"})
    except AgentError as exc:
        click.echo(f"warmcache-agent reconcile: {exc}", err=True)
        sys.exit(2)
    click.echo(json.dumps(findings, indent=2))
    sys.exit(1 if findings else 0)


@main.command("build-id")
@click.argument("wheel", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--artifact", default="", help="Where agents will fetch it (default: WHEEL).")
def build_id_command(wheel: Path, artifact: str) -> None:
    """Print what identifies an agent build: its version, the sha256 of its
    agent code (what agents running it report) and of the wheel itself, as
    the `warmcache agents desired` command that asks for it."""
    from warmcache_agent.updater import UpdateRefused, describe

    try:
        version, code, file_sha = describe(wheel)
    except UpdateRefused as exc:
        click.echo(f"warmcache-agent build-id: {exc}", err=True)
        sys.exit(2)
    click.echo(f"version          {version}\ncode sha256      {code}\nartifact sha256  {file_sha}")
    where = artifact or str(wheel.resolve())
    click.echo(f"warmcache agents desired {version} {code} {where} {file_sha}")


def run_daemon(socket_path: str, config_path: str, libvirt_uri: str | None) -> None:
    try:
        config = load_agent_config(config_path)
        if libvirt_uri:
            config = config.model_copy(update={"libvirt_uri": libvirt_uri})
        driver = LibvirtDriver(
            config.libvirt_uri, guest=config.guest, run_dir=Path(config.state_dir) / "run"
        )
    except (ConfigError, HypervisorFailure) as exc:
        click.echo(f"warmcache-agent: {exc}", err=True)
        sys.exit(2)
    service = HostAgentService(config, driver, endpoint=_advertise(config, socket_path))
    store = _inventory_store(config)
    publisher = None
    stop = threading.Event()
    restarting = threading.Event()
    server = AgentServer(socket_path, service)

    @once
    def _stop() -> None:
        stop.set()
        if publisher is not None:
            publisher.changed()  # wake the heartbeat loop so it sees stop
        threading.Thread(target=server.shutdown, daemon=True).start()

    def _restart() -> None:
        restarting.set()
        _stop()

    handover = Path(config.state_dir) / "run" / "inventory-session"
    if store is not None and config.inventory is not None:
        publisher = InventoryPublisher(
            store, config.inventory.prefix, service.facts, config.inventory.ttl_s
        )
        publisher.on_published = notify_ready  # up once its facts are out
        if handover.exists():
            publisher.adopt(handover.read_text().strip())
            handover.unlink()
        service.on_change = publisher.changed
        service.records = lambda: records_on_host(store, config)
        service.on_findings = lambda found: publish_findings(store, config, found)
        threading.Thread(target=publisher.run, args=(stop,), name="inventory", daemon=True).start()
        launched = os.environ.get(STATE_ENV)
        syncer = AgentSyncer(
            store,
            Keys(config.inventory.prefix),
            config.hypervisor,
            installed_sha256(),
            Builds(Path(launched)) if launched else None,
            _restart,
            sources=config.inventory.update_sources,
        )
        threading.Thread(
            target=syncer.run,
            args=(stop, config.inventory.update_check_s),
            name="syncer",
            daemon=True,
        ).start()
    else:
        notify_ready()  # no heartbeat to wait for: up once it listens
    threading.Thread(
        target=_reconcile_loop, args=(service, stop), name="reconcile", daemon=True
    ).start()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info(
        "agent %s (%s, %s) listening on %s", config.hypervisor, config.rack, config.az, socket_path
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close(wait=restarting.is_set())  # an update lets requests finish
        if publisher is not None:
            if restarting.is_set() and (session := publisher.handover()):
                handover.parent.mkdir(parents=True, exist_ok=True)
                handover.write_text(session + "\n")
            else:
                publisher.withdraw()
        Path(socket_path).unlink(missing_ok=True)
        driver.close()
    if restarting.is_set():
        log.info("agent %s restarting into its new build", config.hypervisor)
        sys.exit(RESTART)


def _reconcile_loop(service: HostAgentService, stop: threading.Event) -> None:
    """At start (a restarted agent checks itself at once), then every period."""
    while not stop.is_set():
        try:
            service.reconcile()
        except AgentFault as exc:
            log.warning("reconcile failed: %s", exc)
        stop.wait(service.config.reconcile_every_s)


def records_on_host(store: CoordinationStore, config: AgentConfig) -> dict[str, str]:
    """The store's pool and acquired records that name this hypervisor."""
    assert config.inventory is not None
    records = PoolRecords(store, Keys(config.inventory.prefix))
    return records.on_host(config.az, config.hypervisor)


def publish_findings(
    store: CoordinationStore, config: AgentConfig, findings: list[Finding]
) -> None:
    """Findings go to the store, where the leader turns new ones into events
    and alerts; an empty list is published too (the host is clean again)."""
    assert config.inventory is not None
    key = Keys(config.inventory.prefix).findings(config.az, config.hypervisor)
    try:
        store.put(
            key,
            json.dumps(
                {
                    "hypervisor": config.hypervisor,
                    "at": time.time(),
                    "findings": [f.as_dict() for f in findings],
                }
            ),
        )
    except StoreError as exc:
        log.warning("could not publish reconcile findings: %s", exc)


def _advertise(config: AgentConfig, socket_path: str) -> str:
    if config.inventory and config.inventory.advertise:
        return config.inventory.advertise
    return f"unix:{Path(socket_path).resolve()}"


def _inventory_store(config: AgentConfig) -> CoordinationStore | None:
    """The agent's own small composition root for its heartbeat store."""
    inv = config.inventory
    if inv is None:
        log.warning("no [inventory] in the config: this host will not be placed on")
        return None
    from warmcache.adapters.stores import STORES
    from warmcache.clock import SystemClock
    from warmcache.config import StoreConfig, StoreConnection

    # The secrets were read already: the *_file options are not passed again.
    shared = {o for o in StoreConnection.model_fields if not o.endswith("_file")}
    store = StoreConfig(**inv.model_dump(include=shared))
    if store.kind not in STORES:
        raise ConfigError([f"inventory.kind: unknown {store.kind!r} (valid: {', '.join(STORES)})"])
    return STORES[store.kind](store, SystemClock())
