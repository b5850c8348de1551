"""The agent's protocol against arbitrary requests (hypothesis), on
test:///default: every reply is a stable error code with the books
unchanged, or a valid operation whose books stay within the host's
capacity; libvirt's own domain is never touched. And negative sizes, the
reported case, through every door that reads a size."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from warmcache.adapters.file_catalog import FileFlavorCatalog
from warmcache.errors import ConfigError
from warmcache.model import BuildRule, Flavor
from warmcache.wire import AGENT_ERROR_CODES, REQUEST_ADAPTER
from warmcache_agent.config import AgentConfig, DiskConfig, Resources
from warmcache_agent.daemon import handle_line
from warmcache_agent.operations import HostAgentService

pytestmark = [pytest.mark.libvirt, pytest.mark.usefixtures("libvirt_available")]

CAPACITY = Resources(vcpus=16, memory_mib=65536, disk_gib=1950)
RESERVED = Resources(vcpus=2, memory_mib=4096, disk_gib=50)


def agent_in(state_dir: Path, pin: bool = True) -> HostAgentService:
    from warmcache_agent.libvirt_driver import LibvirtDriver

    cfg = AgentConfig(
        # a pretend host, larger than this machine's disk: no filesystem check
        disks=DiskConfig(check_filesystem=False),
        hypervisor="h1",
        rack="r1",
        az="az1",
        state_dir=str(state_dir),
        capacity=CAPACITY,
        reserved=RESERVED,
        pin_cpus=pin,
    )
    return HostAgentService(cfg, LibvirtDriver("test:///default"))


def books(agent: HostAgentService) -> list[tuple[Any, ...]]:
    return sorted(
        (a.name, a.vcpus, a.memory_mib, a.disk_gib, a.disks, a.cpus) for a in agent.lockfile.all()
    )


def create(name: str, **flavor: Any) -> dict[str, Any]:
    shape = {"name": "f", "vcpus": 2, "memory_mib": 1024, "disk_gib": 10, **flavor}
    return {"op": "create", "vm": {"name": name, "flavor": shape}}


def test_negative_sizes_are_refused_at_every_door(tmp_path: Path) -> None:
    """`extra_disks_gib: [-100000]` was accepted by the agent, the proxy's
    schema and the catalog, and gave the host 101,871 GiB free of 1,950."""
    agent = agent_in(tmp_path)
    before, free = books(agent), agent.facts().disk_gib_free
    for bad in (
        {"extra_disks_gib": [-100000]},
        {"disk_gib": -5},
        {"vcpus": -2},
        {"memory_mib": 0},
        {"extra_disks_gib": [1] * 25},
        {"disk_gib": 10**9},
        {"vcpus": "2"},
        {"vcpus": True},
        {"disk_gib": 2.0},
    ):
        request = json.dumps(create("vm-bad", **bad)).encode()
        reply = handle_line(agent, request)
        assert reply["ok"] is False and reply["error"] == "invalid_request", bad
        assert any("flavor" in e["loc"] for e in reply["detail"]), reply
        with pytest.raises(ValidationError):  # the proxy validates with the same schema
            REQUEST_ADAPTER.validate_json(request, strict=True)
    assert books(agent) == before and agent.facts().disk_gib_free == free
    attach = {"op": "attach_disk", "name": "vm-bad", "target": "vdb", "size_gib": -1}
    assert handle_line(agent, json.dumps(attach).encode())["error"] == "invalid_request"
    catalog = tmp_path / "flavors.toml"
    catalog.write_text(
        "[flavors.big]\nvcpus = 2\nmemory_mib = 1024\ndisk_gib = 10\nextra_disks_gib = [-100000]\n"
    )
    with pytest.raises(ConfigError, match="extra_disks_gib"):
        FileFlavorCatalog(catalog)
    with pytest.raises(ValidationError):
        Flavor(name="x", vcpus=2, memory_mib=1024, disk_gib=1, extra_disks_gib=(-1,))
    with pytest.raises(ValidationError):
        BuildRule(max_instance_per_cycle=1, total_instances=1, user_data="QQ==" * 20_000)


# --- the protocol, fuzzed -----------------------------------------------------------

names = st.one_of(
    st.sampled_from(["vm-a", "vm-b", "vm-c"]), st.sampled_from(["test", "../etc", ""])
)  # weighted to names that exist
sizes = st.one_of(
    st.integers(-(10**6), -1),
    st.integers(0, 64),
    st.just(10**30),
    st.floats(allow_nan=False),
    st.text(max_size=3),
    st.booleans(),
    st.none(),
)


def mostly(valid: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid four times in five: so that shapes valid in every field but
    one (the way a single bad size reaches the books) are common."""
    return st.one_of(valid, valid, valid, valid, bad)


bad_disks = st.one_of(
    st.lists(st.integers(max_value=-1), min_size=1, max_size=3),
    st.lists(st.integers(-(10**6), 10**6), min_size=4, max_size=30),
    st.lists(sizes, max_size=5),
    sizes,
)
flavors = st.fixed_dictionaries(
    {
        "name": st.just("f"),
        "vcpus": mostly(st.sampled_from([2, 4, 8]), sizes),
        "memory_mib": mostly(st.sampled_from([64, 1024, 8192]), sizes),
        "disk_gib": mostly(st.sampled_from([1, 100, 900]), sizes),
        "extra_disks_gib": st.one_of(
            st.lists(st.sampled_from([1, 50, 600]), max_size=3), bad_disks
        ),
    },
    optional={"image_id": st.text(max_size=4), "surprise": st.integers()},
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=10,
)
creates = st.builds(lambda n, f: {"op": "create", "vm": {"name": n, "flavor": f}}, names, flavors)
requests = st.one_of(
    creates,
    creates,
    creates,
    st.builds(lambda op, n: {"op": op, "name": n}, st.sampled_from(["delete", "status"]), names),
    st.builds(
        lambda n, t, g: {"op": "attach_disk", "name": n, "target": t, "size_gib": g},
        names,
        st.sampled_from(["vdb", "vdc", "vdz", "sda"]),
        mostly(st.sampled_from([1, 500, 2000]), sizes),
    ),
    st.builds(
        lambda n, t: {"op": "detach_disk", "name": n, "target": t},
        names,
        st.sampled_from(["vdb", "vdc"]),
    ),
    st.sampled_from(
        [
            {"op": "list"},
            {"op": "facts"},
            {"op": "health"},
            {"op": "reboot"},
            {"op": "facts", "extra": 1},
            {},
        ]
    ),
    st.dictionaries(st.text(max_size=5), json_values, max_size=4),
)
encoded = requests.map(lambda r: json.dumps(r).encode())
lines = st.one_of(
    encoded,
    encoded,
    encoded,
    encoded,
    encoded,  # mostly well-formed JSON
    st.binary(max_size=40),
    st.just(b"[" * 5000 + b"]" * 5000),
    st.just(b'{"op": "status", "name": 1' + b"0" * 5000 + b"}"),
)


REPORTED = [
    json.dumps(create("vm-a", extra_disks_gib=[-100000])).encode(),
    json.dumps(create("vm-b", disk_gib=60_000)).encode(),
    b'{"op": "facts"}',
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(lines, min_size=5, max_size=25), st.booleans())
@example(REPORTED, True)  # the outside tester's sequence, always run
def test_any_request_is_a_stable_error_with_the_books_unchanged_or_fits_the_host(
    sequence: list[bytes], pin: bool
) -> None:
    import libvirt

    with tempfile.TemporaryDirectory() as tmp:
        agent = agent_in(Path(tmp), pin=pin)
        try:
            for line in sequence:
                before = books(agent)
                reply = handle_line(agent, line)
                assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool)
                if not reply["ok"]:
                    assert reply["error"] in AGENT_ERROR_CODES, reply
                    assert reply["error"] != "internal_error", (line, reply)
                    assert books(agent) == before, (line, reply)
                usable = agent.lockfile.usable
                free = agent.lockfile.free()
                assert 0 <= free.vcpus <= usable.vcpus
                assert 0 <= free.memory_mib <= usable.memory_mib
                assert 0 <= free.disk_gib <= usable.disk_gib
            conn = libvirt.open("test:///default")
            assert conn.lookupByName("test").isActive()  # never touched
            conn.close()
        finally:
            for alloc in agent.lockfile.all():
                agent.delete(alloc.name)
