"""etcd with TLS, client certificates and authentication, reached the way
the service is configured: a TOML config, parsed (secrets from files),
built by the composition root, and tried by ``warmcache config check``.

Two real etcd servers of their own: one with ``--cert-file --key-file
--trusted-ca-file --client-cert-auth`` (TLS, a client certificate required),
one with authentication enabled by etcdctl, restarted under the store so
that the token it holds is no longer known and it has to sign in again."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.conftest import unavailable
from warmcache.bootstrap import build_store
from warmcache.cli import main
from warmcache.config import load_config
from warmcache.errors import StoreError
from warmcache.ports import Compare, Put
from warmcache.testing.certs import Issued, TestCA
from warmcache.testing.localetcd import ClientTls, EtcdCluster, EtcdUnavailable
from warmcache.testing.polling import wait_for

pytestmark = pytest.mark.etcd
PASSWORD = "9041-not-json"


def _start(cluster: EtcdCluster) -> EtcdCluster:
    try:
        return cluster.start()
    except EtcdUnavailable as exc:
        unavailable("etcd", str(exc))


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("etcd-ca"), "etcd")


@pytest.fixture(scope="module")
def client_cert(ca: TestCA) -> Issued:
    return ca.issue("warmcache", server=False)


@pytest.fixture(scope="module")
def tls_etcd(
    tmp_path_factory: pytest.TempPathFactory, ca: TestCA, client_cert: Issued
) -> Iterator[EtcdCluster]:
    # serverAuth and clientAuth: etcd's JSON gateway dials its own gRPC
    # server with this certificate, and --client-cert-auth checks it.
    server = ca.issue("etcd-server", server=True, also_client=True)
    tls = ClientTls(
        str(server.cert), str(server.key), str(ca.cert), str(client_cert.cert), str(client_cert.key)
    )
    cluster = _start(EtcdCluster(tmp_path_factory.mktemp("etcd-tls"), tls=tls))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def auth_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = _start(EtcdCluster(tmp_path_factory.mktemp("etcd-auth")))
    url = cluster.urls[0]

    def etcdctl(*args: str) -> None:
        subprocess.run(
            ["etcdctl", "--endpoints", url, *args],
            check=True,
            capture_output=True,
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
            timeout=30,
        )

    try:
        etcdctl("user", "add", "root", f"--new-user-password={PASSWORD}")
        etcdctl("user", "grant-role", "root", "root")
        etcdctl("auth", "enable")
    except FileNotFoundError:
        cluster.stop()
        unavailable("etcd", "no etcdctl (apt-get install etcd-client)")
    yield cluster
    cluster.stop()


def write_config(tmp_path: Path, store: dict[str, Any]) -> Path:
    """A whole service config: the store under test, the rest local."""
    lines = ["[store]"] + [f"{k} = {json.dumps(v)}" for k, v in store.items()]
    lines += [
        "[catalog]",
        f'path = "{Path(__file__).parents[2] / "config" / "flavors.toml"}"',
        "[events]",
        f'path = "{tmp_path / "events.db"}"',
    ]
    path = tmp_path / "service.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def check(path: Path) -> tuple[int, list[str]]:
    result = CliRunner().invoke(
        main, ["config", "check", str(path), "--timeout", "5"], env={"COLUMNS": "300"}
    )
    return result.exit_code, result.output.splitlines()


def exercise(store: Any) -> None:
    """What the service does with a store: CAS transactions, a session that
    owns a key, and a change feed."""
    stream = store.watch("sec/", store.range("sec/")[1])
    try:
        assert store.txn([Compare.absent("sec/lock")], [Put("sec/lock", "a")]).succeeded
        assert not store.txn([Compare.absent("sec/lock")], [Put("sec/lock", "b")]).succeeded
        session = store.create_session(10, "n1")
        store.put("sec/owned", "x", session=session)
        store.destroy_session(session)
        assert store.get("sec/owned") is None and store.get("sec/lock").value == "a"
        seen: list[str] = []

        def followed() -> bool:
            seen.extend(c.key for c in stream.get(0.2))
            return "sec/owned" in seen

        wait_for("the change feed", followed, 10)
        assert seen[0] == "sec/lock"
    finally:
        stream.close()


def test_tls_with_a_client_certificate(
    tmp_path: Path, tls_etcd: EtcdCluster, ca: TestCA, client_cert: Issued
) -> None:
    url = tls_etcd.urls[0]
    assert url.startswith("https://")
    path = write_config(
        tmp_path,
        {
            "kind": "etcd",
            "url": url,
            "ca": str(ca.cert),
            "cert": str(client_cert.cert),
            "key": str(client_cert.key),
        },
    )
    store = build_store(load_config(path, environ={}))
    try:
        exercise(store)
    finally:
        store.close()
    code, lines = check(path)
    assert code == 0, lines
    assert any(
        line.startswith("ok") and "store etcd" in line and "TLS with a client certificate" in line
        for line in lines
    ), lines


def test_tls_without_the_client_certificate_or_the_ca_is_refused(
    tmp_path: Path, tls_etcd: EtcdCluster, ca: TestCA
) -> None:
    url = tls_etcd.urls[0]
    no_cert = write_config(tmp_path, {"kind": "etcd", "url": url, "ca": str(ca.cert)})
    store = build_store(load_config(no_cert, environ={}))
    try:
        with pytest.raises(StoreError):
            store.get("sec/x")
    finally:
        store.close()
    code, lines = check(no_cert)
    assert code == 1 and any(line.startswith("FAIL") and "store etcd" in line for line in lines)
    other = TestCA(tmp_path, "other")  # the server's certificate does not verify
    wrong_ca = write_config(tmp_path, {"kind": "etcd", "url": url, "ca": str(other.cert)})
    code, lines = check(wrong_ca)
    assert code == 1 and any("CERTIFICATE_VERIFY_FAILED" in line for line in lines), lines


def test_password_sign_in_from_a_secret_file_and_tokens_renewed(
    tmp_path: Path, auth_etcd: EtcdCluster
) -> None:
    secret = tmp_path / "etcd-password"
    secret.write_text(PASSWORD + "\n")
    path = write_config(
        tmp_path,
        {
            "kind": "etcd",
            "url": auth_etcd.urls[0],
            "username": "root",
            "password_file": str(secret),
        },
    )
    config = load_config(path, environ={})
    assert PASSWORD not in repr(config) and PASSWORD not in str(config)
    store: Any = build_store(config)
    try:
        exercise(store)
        assert store.sign_ins == 1
        # etcd's tokens live in its memory: after a restart the store's token
        # is refused ("invalid auth token") and it signs in again, once.
        member = auth_etcd.members[0]
        member.stop()
        member.start(f"{member.name}={member.peer_url}")
        wait_for("etcd back", member.healthy, 30)
        assert store.get("sec/lock").value == "a"
        assert store.sign_ins == 2
        errors: list[BaseException] = []

        def reader() -> None:
            try:
                for _ in range(20):
                    store.get("sec/lock")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
    finally:
        store.close()
    code, lines = check(path)
    assert code == 0 and any("signed in as 'root'" in line for line in lines), lines
    assert not any(PASSWORD in line for line in lines)


def test_a_wrong_password_is_reported_without_the_password(
    tmp_path: Path, auth_etcd: EtcdCluster
) -> None:
    path = write_config(
        tmp_path,
        {"kind": "etcd", "url": auth_etcd.urls[0], "username": "root", "password": "wrong-7731"},
    )
    code, lines = check(path)
    assert code == 1, lines
    [line] = [line for line in lines if "store etcd" in line]
    assert line.startswith("FAIL") and "sign-in as 'root'" in line and "wrong-7731" not in line
    no_user = write_config(tmp_path, {"kind": "etcd", "url": auth_etcd.urls[0]})
    code, lines = check(no_user)
    assert code == 1, lines  # authentication is on: an anonymous store is refused
