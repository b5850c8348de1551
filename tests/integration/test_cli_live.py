"""The CLI against a live API: one exit code per error family (a contract
scripts rely on), errors on stderr, tables or JSON on stdout, the global
--url/--token and their variables."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from tests.live import served
from warmcache.adapters.file_catalog import FileFlavorCatalog
from warmcache.cli import main
from warmcache.config import AuthConfig, TokenConfig
from warmcache.service import WarmCache
from warmcache.web import create_app
from warmcache.web.auth import Authenticator

ADMIN, ADMIN2, USER = "cli-admin-token", "cli-checker-token", "cli-user-token"


@pytest.fixture
def url(service: WarmCache) -> Iterator[str]:
    service.rules.put(
        "az1", "small", {"max_instance_per_cycle": 6, "total_instances": 6, "min_fault_domain": 3}
    )
    service.run_cycle()
    auth = Authenticator(
        AuthConfig(
            tokens=(
                TokenConfig(name="ops", role="admin", token=SecretStr(ADMIN)),
                TokenConfig(name="ops2", role="admin", token=SecretStr(ADMIN2)),
                TokenConfig(name="app", role="user", token=SecretStr(USER)),
            )
        )
    )
    with served(create_app(service, auth)) as url:
        yield url


def run(url: str, *args: str, token: str | None = ADMIN) -> tuple[int, str, str]:
    env = {"WARMCACHE_URL": url, **({"WARMCACHE_TOKEN": token} if token else {})}
    result = CliRunner().invoke(main, list(args), env=env)
    assert "Traceback" not in result.output
    return result.exit_code, result.stdout, result.stderr


def test_exit_codes_per_error_family(url: str) -> None:
    code, out, err = run(url, "acquire", "small", "az1", "3", "--claim-id", "cli-1")
    assert code == 0 and len(json.loads(out)["vms"]) == 3 and err == ""
    code, out, err = run(url, "acquire", "small", "az1", "4")
    assert code == 3 and out == "" and "error: no_capacity" in err
    code, _, err = run(url, "acquire", "xxl", "az1", "1")
    assert code == 4 and "unknown_flavor" in err
    code, _, err = run(url, "claims", "get", "never-made")
    assert code == 4 and "unknown_claim" in err
    code, _, err = run(url, "acquire", "small", "az1", "1", "--claim-id", "bad id")
    assert code == 2 and "invalid_request" in err
    code, _, err = run(url, "acquire", "small", "az1", "2", "--claim-id", "cli-1")
    assert code == 1 and "claim_mismatch" in err  # any other error
    code, _, err = run(url, "pools", token=None)
    assert code == 6 and "unauthorized" in err
    code, _, err = run(url, "requests", "ask", "delete_rule", "az=az1", "flavor=small", token=USER)
    assert code == 6 and "forbidden" in err
    code, _, err = run("http://127.0.0.1:9", "pools")
    assert code == 5 and "server_unreachable" in err
    code, _, err = run(url, "pools", "--bogus")
    assert code == 2


def test_read_commands_print_tables_or_json(url: str) -> None:
    code, out, _ = run(url, "pools", "-o", "json")
    [pool] = json.loads(out)
    assert code == 0 and pool["flavor"] == "small" and pool["ready"] == 6
    code, out, _ = run(url, "pools")
    assert code == 0 and "small" in out and "ready by rack" in out
    run(url, "acquire", "small", "az1", "2", "--claim-id", "cli-2")
    code, out, _ = run(url, "claims", "get", "cli-2", "-o", "json")
    assert code == 0 and json.loads(out)["state"] == "acquired"
    assert len(json.loads(out)["vms"]) == 2
    for args in (["rules", "list"], ["leader"], ["requests", "list"], ["explain", "az1", "small"]):
        code, out, _ = run(url, *args, "-o", "json")
        assert code == 0, args
        json.loads(out)
    code, out, _ = run(url, "rules", "get", "az1", "small")
    assert json.loads(out)["total_instances"] == 6


def test_networks_created_listed_and_changed_by_maker_checker(url: str, tmp_path: Path) -> None:
    pool = {"cidrs": ["10.20.0.0/26"], "gateway": "10.20.0.1", "dns": ["10.0.0.53"]}
    source = tmp_path / "vrf-a.json"
    source.write_text(json.dumps(pool))
    code, out, _ = run(url, "networks", "set", "az1", "vrf-a", str(source))
    assert code == 0 and json.loads(out)["size"] == 61
    code, out, _ = run(url, "networks", "list")
    assert code == 0 and "vrf-a" in out and "10.20.0.0/26" in out
    source.write_text(json.dumps({**pool, "dns": ["10.0.0.54"]}))
    code, out, _ = run(url, "networks", "set", "az1", "vrf-a", str(source))
    assert code == 0 and "change asked for as request" in out
    request_id = out.split("request ")[1].split(";")[0].strip()
    code, out, _ = run(url, "networks", "get", "az1", "vrf-a")
    assert json.loads(out)["dns"] == ["10.0.0.53"]  # not before the approval
    code, _, err = run(url, "requests", "approve", request_id)  # the maker cannot
    assert code == 6 and "approval_refused" in err
    code, _, _ = run(url, "requests", "approve", request_id, token=ADMIN2)
    assert code == 0
    code, out, _ = run(url, "networks", "get", "az1", "vrf-a")
    assert json.loads(out)["dns"] == ["10.0.0.54"]
    source.write_text(json.dumps({**pool, "gateway": "10.99.0.1"}))
    code, _, err = run(url, "networks", "set", "az1", "vrf-b", str(source))
    assert code == 2 and "invalid_request" in err and "in none of the cidrs" in err


def test_images_listed_described_and_changed_by_maker_checker(
    make_service: Any, own_catalog: FileFlavorCatalog, tmp_path: Path
) -> None:
    service = make_service(catalog=own_catalog)
    auth = Authenticator(
        AuthConfig(
            tokens=(
                TokenConfig(name="ops", role="admin", token=SecretStr(ADMIN)),
                TokenConfig(name="ops2", role="admin", token=SecretStr(ADMIN2)),
            )
        )
    )
    with served(create_app(service, auth)) as url:
        code, out, _ = run(url, "images", "list")
        assert code == 0 and "demo-blank" in out and "medium" in out
        code, out, _ = run(url, "images", "list", "-o", "json")
        assert json.loads(out)["images"][0]["image"]["format"] == "raw"
        code, out, _ = run(url, "images", "get", "demo-blank")
        assert code == 0 and json.loads(out)["size_bytes"] == 1 << 20
        code, _, err = run(url, "images", "get", "nope")
        assert code == 4 and "unknown_image" in err
        disk = tmp_path / "new.raw"
        disk.write_bytes(b"\1" * 4096)
        code, out, _ = run(
            url, "images", "describe", str(disk), "--id", "demo-blank", "--min-disk-gib", "2"
        )
        described = json.loads(out)
        assert code == 0 and described["format"] == "raw" and described["size_bytes"] == 4096
        record = tmp_path / "image.json"
        record.write_text(out)
        code, out, _ = run(url, "images", "set", str(record))
        assert code == 0 and "asked as request" in out
        request_id = out.split("request ")[1].split(";")[0].strip()
        assert own_catalog.image("demo-blank").size_bytes == 1 << 20  # type: ignore[union-attr]
        code, _, _ = run(url, "requests", "approve", request_id, token=ADMIN2)
        assert code == 0
        changed = own_catalog.image("demo-blank")
        assert changed is not None and changed.sha256 == described["sha256"]
        code, out, _ = run(url, "images", "delete", "demo-blank")
        request_id = out.split("request ")[1].strip()
        code, out, _ = run(url, "requests", "approve", request_id, token=ADMIN2)
        assert "failed" in out and "in use" in out, out
        assert own_catalog.image("demo-blank") is not None  # flavors name it: refused


def test_agents_and_the_desired_build(url: str) -> None:
    code, out, _ = run(url, "agents", "-o", "json")
    reply = json.loads(out)
    assert code == 0 and reply["desired"] is None and reply["agents"]
    sha = "ab" * 32
    code, out, _ = run(url, "agents", "desired", "0.2.0", sha, "/srv/a.whl", "cd" * 32)
    assert code == 0 and "asked as request" in out
    request_id = out.split("request ")[1].strip()
    code, _, _ = run(url, "requests", "approve", request_id, token=ADMIN2)
    assert code == 0
    code, out, _ = run(url, "agents")
    assert code == 0 and "desired: 0.2.0 abababababab" in out and "NO" in out
    code, _, err = run(url, "agents", "desired", "0.2.0", "not-a-sha", "/srv/a.whl", sha)
    assert code == 2 and "invalid_request" in err


def test_a_server_that_is_not_warmcache_gets_a_clean_message() -> None:
    class NotJson:
        def __call__(self, environ: object, start: object) -> list[bytes]:
            start("502 Bad Gateway", [("Content-Type", "text/html")])  # type: ignore[operator]
            return [b"<html>bad gateway</html>"]

    with served(NotJson()) as url:
        code, _, err = run(url, "pools")
        assert code == 1 and "unexpected_reply" in err and "bad gateway" in err


def test_budgets_and_explain_of_a_demand_pool(url: str, service: WarmCache) -> None:
    code, _, err = run(url, "budgets", "get", "az1")
    assert code == 4 and "not_found" in err
    code, _, err = run(url, "budgets", "set", "az1", "--vms", "5", "--vcpus", "4")
    assert code == 2 and "exactly one" in err
    code, _, err = run(url, "budgets", "set", "az1", "--vms", "-1")
    assert code == 2 and "invalid_request" in err
    code, out, _ = run(url, "budgets", "set", "az1", "--vms", "8")
    assert code == 0 and json.loads(out) == {"vms": 8}
    code, _, err = run(url, "budgets", "set", "az1", "--vms", "8", token=USER)
    assert code == 6 and "forbidden" in err
    code, out, _ = run(url, "budgets", "list", "-o", "json")
    assert json.loads(out) == {"budgets": [{"az": "az1", "budget": {"vms": 8}}]}
    service.rules.put(
        "az1",
        "small",
        {"max_instance_per_cycle": 6, "total_instances": 6, "sizing": "demand", "min_instances": 2},
    )
    code, out, _ = run(url, "explain", "az1", "small")
    assert code == 0 and "sizing demand: target 2" in out and "budget: 2 of 8 vms" in out
    code, out, _ = run(url, "explain", "az1", "small", "-o", "json")
    assert json.loads(out)["sizing"]["floor"] == 2
    code, out, _ = run(url, "budgets", "delete", "az1")
    assert code == 0 and "budget 8 vms removed" in out
    code, _, err = run(url, "budgets", "delete", "az1")
    assert code == 4


def _request_id(out: str) -> str:
    return out.split("request ")[1].split(":")[0].strip()


def test_hosts_capacity_drains_purges_and_quotas(url: str, service: WarmCache) -> None:
    code, out, _ = run(url, "hosts", "list", "--az", "az1", "--limit", "4", "-o", "json")
    page = json.loads(out)
    assert code == 0 and len(page["hosts"]) == 4 and page["next"] == "az1/az1-r2-h2"
    code, out, _ = run(url, "hosts", "list", "--after", page["next"], "-o", "json")
    names = [h["hypervisor"] for h in json.loads(out)["hosts"]]
    assert names == [
        "az1-r3-h1",
        "az1-r3-h2",
        *(f"az2-r{r}-h{h}" for r in (1, 2, 3) for h in (1, 2)),
    ]
    code, out, _ = run(url, "hosts", "list")
    assert code == 0 and "hosts (free/total)" in out
    code, out, _ = run(url, "hosts", "get", "az1-r1-h1")
    assert code == 0 and json.loads(out)["status"] == "up"
    code, _, err = run(url, "hosts", "get", "nope")
    assert code == 4 and "unknown_hypervisor" in err
    code, out, _ = run(url, "capacity", "--az", "az1", "-o", "json")
    [az1] = json.loads(out)["azs"]
    assert code == 0 and az1["hosts"] == 6 and len(az1["racks"]) == 3
    code, out, _ = run(url, "capacity")
    assert code == 0 and "capacity (free/total)" in out

    # A rack drain, asked by one admin and approved by another, then undone.
    code, out, _ = run(url, "drain", "rack", "az1", "az1-r1", "--evacuate", "as_acquired")
    assert code == 0 and "asked as request" in out
    code, _, _ = run(url, "requests", "approve", _request_id(out), token=ADMIN2)
    assert code == 0
    code, out, _ = run(url, "hosts", "get", "az1-r1-h2")
    assert json.loads(out)["drain"]["scope"] == "rack"
    code, out, _ = run(url, "undrain", "rack", "az1", "az1-r1")
    run(url, "requests", "approve", _request_id(out), token=ADMIN2)
    code, out, _ = run(url, "hosts", "get", "az1-r1-h2")
    assert json.loads(out)["drain"] is None
    code, _, err = run(url, "drain", "hypervisor", "nope")
    assert code == 4 and "unknown_hypervisor" in err

    # One VM purged.
    code, out, _ = run(url, "vms", "list", "--state", "ready", "-o", "json")
    name = json.loads(out)["vms"][0]["name"]
    code, out, _ = run(url, "vms", "purge", name)
    code, _, _ = run(url, "requests", "approve", _request_id(out), token=ADMIN2)
    assert code == 0
    code, _, err = run(url, "vms", "get", name)
    assert code == 4 and "unknown_vm" in err

    # Quotas: set (maker-checker), read, delete.
    result = CliRunner().invoke(
        main,
        ["quotas", "set", "app", "-"],
        input='{"limits": [{"vms_per_window": 2}]}',
        env={"WARMCACHE_URL": url, "WARMCACHE_TOKEN": ADMIN},
    )
    assert result.exit_code == 0, result.output
    run(url, "requests", "approve", _request_id(result.stdout), token=ADMIN2)
    code, out, _ = run(url, "quotas", "list")
    assert code == 0 and "app" in out and "operat" in out
    code, out, _ = run(url, "quotas", "get", "app")
    assert json.loads(out)["limits"][0]["vms_per_window"] == 2
    code, _, err = run(url, "quotas", "delete", "nobody")
    assert code == 4 and "unknown_quota" in err
