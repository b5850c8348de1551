"""Images through the service: every build carries its flavor's image and
records it, hosts get the image before their builds (once, bounded), a pool
whose image changes rolls over to the new bytes, and images are read over
the API and changed only by maker-checker (never one still in use)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.fakes import FakeAgent
from warmcache.adapters.file_catalog import FileFlavorCatalog
from warmcache.images import Image
from warmcache.model import InstanceState, PoolInstance
from warmcache.service import WarmCache
from warmcache.web import create_app

NEW_SHA = "f" * 64


def pool(service: WarmCache, az: str = "az1") -> list[PoolInstance]:
    kvs, _ = service.store.range(service.keys.pool_dir(az))
    return [PoolInstance.model_validate_json(kv.value) for kv in kvs]


@pytest.fixture
def svc(make_service: Callable[..., WarmCache], own_catalog: FileFlavorCatalog) -> WarmCache:
    service = make_service(catalog=own_catalog, image_prefetch_parallel=2)
    service.rules.put(
        "az1", "small", {"max_instance_per_cycle": 6, "total_instances": 6, "replace_per_cycle": 6}
    )
    return service


def approve(service: WarmCache, action: str, params: dict[str, Any]) -> dict[str, Any]:
    asked = service.approvals.ask(action, params, by="alice")
    done = service.approvals.approve(asked.id, by="bob")
    assert done.result is not None
    return {"state": done.state, **done.result}


def test_builds_carry_and_record_their_image_and_hosts_get_it_first(
    svc: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    image = svc.catalog.image("demo-blank")
    assert image is not None
    seen: list[tuple[str, Image | None]] = []
    for agent in agents.values():
        agent.before_create = lambda spec: seen.append((spec.name, spec.image))
    report = svc.run_cycle()
    assert report is not None and sum(report.built.values()) == 6
    assert {img for _, img in seen} == {image}
    records = [r for r in pool(svc) if r.flavor == "small"]
    assert {r.image for r in records} == {"demo-blank"} and len(records) == 6
    az1 = [a for a in agents.values() if a.current_facts().az == "az1"]
    for agent in az1:
        prefetched = [c for c in agent.calls if c.startswith("prefetch")]
        assert prefetched == (["prefetch demo-blank"] if agent.vms else [])
        if agent.vms:  # before its builds
            assert agent.calls.index("prefetch demo-blank") < min(
                i for i, c in enumerate(agent.calls) if c.startswith("create")
            )
        assert (image.sha256 in agent.current_facts().images) == bool(agent.vms)
    svc.acquire("small", "az1", 2, "best-effort")
    for agent in az1:
        agent.calls.clear()
    svc.run_cycle()  # refill: the hosts hold the image now, no prefetch
    assert not any(c.startswith("prefetch") for a in az1 for c in a.calls)


def test_prefetches_run_at_most_the_configured_number_at_once(
    svc: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    running, peak, lock = [0], [0], threading.Lock()
    all_in = threading.Barrier(2, timeout=5)  # two must overlap: the limit is reachable

    def watch(inner: Callable[[Image], None]) -> Callable[[Image], None]:
        def prefetch(image: Image) -> None:
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            with contextlib.suppress(threading.BrokenBarrierError):
                all_in.wait()
            inner(image)
            with lock:
                running[0] -= 1

        return prefetch

    for agent in agents.values():
        agent.prefetch = watch(agent.prefetch)  # type: ignore[method-assign, assignment]
    svc.run_cycle()
    assert peak[0] == 2  # image_prefetch_parallel


def test_a_host_whose_prefetch_fails_builds_nothing_the_others_build(
    svc: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    image = svc.catalog.image("demo-blank")
    assert image is not None
    bad = next(a for a in agents.values() if a.current_facts().az == "az1")
    bad.bad_images.add(image.sha256)
    report = svc.run_cycle()
    assert report is not None
    assert not bad.vms and not any(c.startswith("create") for c in bad.calls)
    assert any("not fetched" in p and bad.current_facts().hypervisor in p for p in report.problems)
    assert len([r for r in pool(svc) if r.flavor == "small"]) == 6 - len(report.failed)
    events = svc.events.recent(type_prefix="image.prefetch_failed")
    assert events and events[0].fields["code"] == "image_invalid"


def test_a_new_image_rolls_the_pool_over_to_the_new_bytes(
    svc: WarmCache, agents: dict[str, FakeAgent]
) -> None:
    svc.run_cycle()
    old = {r.name: r.generation for r in pool(svc) if r.flavor == "small"}
    image = svc.catalog.image("demo-blank")
    assert image is not None
    moved = image.model_copy(update={"sha256": NEW_SHA})
    assert approve(svc, "set_image", {"image": moved.model_dump(mode="json")})["changed"]
    assert svc.catalog.image("demo-blank") == moved
    created: list[str] = []
    for agent in agents.values():
        agent.before_create = lambda spec: created.append(spec.image.sha256 if spec.image else "")
    for _ in range(3):
        svc.run_cycle()
    now = [r for r in pool(svc) if r.flavor == "small" and r.state is InstanceState.READY]
    assert len(now) == 6 and not set(old) & {r.name for r in now}  # every VM replaced
    assert set(created) == {NEW_SHA}
    assert {r.generation for r in now}.isdisjoint(old.values())
    assert not any(r.stale for r in now)


def test_images_over_the_api_and_maker_checker(svc: WarmCache) -> None:
    client: FlaskClient = create_app(svc).test_client()
    listed = client.get("/v1/images").get_json()
    assert [e["image"]["id"] for e in listed["images"]] == ["demo-blank"]
    assert listed["images"][0]["flavors"] == ["large", "medium", "small"]
    one = client.get("/v1/images/demo-blank").get_json()
    assert one["image"]["sha256"] == svc.catalog.image("demo-blank").sha256  # type: ignore[union-attr]
    missing = client.get("/v1/images/nope")
    assert missing.status_code == 404 and missing.get_json()["error"] == "unknown_image"
    # a change is asked for, then approved by someone else
    fresh = Image(
        id="debian-13",
        source="https://images.example.com/debian-13.qcow2",
        sha256="1" * 64,
        format="qcow2",
        size_bytes=123,
        min_disk_gib=2,
    )
    asked = client.post(
        "/v1/requests",
        json={"action": "set_image", "params": {"image": fresh.model_dump(mode="json")}},
    )
    assert asked.status_code == 202 and svc.catalog.image("debian-13") is None
    bad = client.post(
        "/v1/requests",
        json={"action": "set_image", "params": {"image": {**fresh.model_dump(), "sha256": "x"}}},
    )
    assert bad.status_code == 400 and bad.get_json()["error"] == "invalid_request"
    assert approve(svc, "set_image", {"image": fresh.model_dump(mode="json")})["changed"]
    assert svc.catalog.image("debian-13") == fresh
    # in use: by flavors (the catalog), by VMs (the records)
    in_use = approve(svc, "delete_image", {"id": "demo-blank"})
    assert in_use["state"] == "failed" and "in use" in in_use["error"]
    assert approve(svc, "delete_image", {"id": "debian-13"}) == {
        "state": "executed",
        "deleted": True,
    }
    assert svc.catalog.image("debian-13") is None


def test_an_image_vms_still_boot_cannot_be_deleted(svc: WarmCache) -> None:
    from warmcache.actions import image_users

    svc.run_cycle()
    small = svc.catalog.get("small")
    assert small is not None
    for name in ("small", "medium", "large"):  # no flavor names it any more...
        flavor = svc.catalog.get(name)
        assert flavor is not None
        svc.catalog.put(flavor.model_copy(update={"image_id": ""}))
    assert image_users(svc.approvals._context, "demo-blank") == 6  # ...but six VMs boot it
    refused = approve(svc, "delete_image", {"id": "demo-blank"})
    assert refused["state"] == "failed" and "6 VM(s)" in refused["error"]
    assert svc.catalog.image("demo-blank") is not None
