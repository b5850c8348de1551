"""Run real etcd members on loopback (Debian ``etcd-server``), for tests,
benchmarks and local trials. Each member gets free ports and its own data
directory, and is stopped by the PID this module started."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from warmcache.testing.ports import free_port


class EtcdUnavailable(Exception):
    pass


def etcd_binary() -> str:
    path = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else "")
    if not path:
        raise EtcdUnavailable("no etcd binary (apt-get install etcd-server)")
    return path


@dataclass(frozen=True)
class ClientTls:
    """TLS on the client URLs: the member's certificate, the CA it trusts for
    client certificates (``--client-cert-auth``), and a client certificate the
    launcher's own health probes present."""

    cert: str
    key: str
    ca: str
    probe_cert: str
    probe_key: str


@dataclass
class EtcdMember:
    name: str
    data_dir: Path
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    tls: ClientTls | None = None
    extra_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    def _tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        return [
            "--cert-file",
            self.tls.cert,
            "--key-file",
            self.tls.key,
            "--trusted-ca-file",
            self.tls.ca,
            "--client-cert-auth",
        ]

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, initial_cluster: str, state: str = "new") -> None:
        log = open(self.data_dir.parent / f"{self.name}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                etcd_binary(),
                "--name",
                self.name,
                "--data-dir",
                str(self.data_dir),
                "--listen-client-urls",
                self.url,
                "--advertise-client-urls",
                self.url,
                "--listen-peer-urls",
                self.peer_url,
                "--initial-advertise-peer-urls",
                self.peer_url,
                "--initial-cluster",
                initial_cluster,
                "--initial-cluster-state",
                state,
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
                *self._tls_args(),
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def healthy(self) -> bool:
        try:
            if self.tls is None:
                reply = httpx.get(f"{self.url}/health", timeout=1)
            else:
                context = ssl.create_default_context(cafile=self.tls.ca)
                context.load_cert_chain(self.tls.probe_cert, self.tls.probe_key)
                reply = httpx.get(f"{self.url}/health", timeout=1, verify=context)
            return bool(reply.json().get("health") == "true")
        except (httpx.HTTPError, ValueError):
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


class EtcdCluster:
    """``size`` members on loopback; ``urls`` lists their client URLs."""

    def __init__(
        self,
        base_dir: Path,
        size: int = 1,
        *,
        tls: ClientTls | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        base_dir.mkdir(parents=True, exist_ok=True)
        self.members = [
            EtcdMember(f"m{i}", base_dir / f"m{i}.data", tls=tls, extra_args=extra_args)
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.members]

    def start(self, timeout_s: float = 30.0) -> EtcdCluster:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.start(initial)
        deadline = time.monotonic() + timeout_s
        while not all(m.healthy() for m in self.members):
            for m in self.members:
                if m.proc and m.proc.poll() is not None:
                    raise EtcdUnavailable(f"etcd member {m.name} exited with {m.proc.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise EtcdUnavailable(f"etcd not healthy after {timeout_s:.0f} s")
            time.sleep(0.05)
        return self

    def leader(self) -> EtcdMember:
        """The member that is raft leader now."""
        for m in self.members:
            try:
                status = httpx.post(f"{m.url}/v3/maintenance/status", json={}, timeout=1).json()
            except httpx.HTTPError:
                continue
            if status.get("leader") == status.get("header", {}).get("member_id"):
                return m
        raise EtcdUnavailable("no raft leader")

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
