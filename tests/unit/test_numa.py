"""Property tests of NUMA pinning over random host topologies and VM mixes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warmcache_agent.numa import NumaRejected, Pin, Topology, free_per_node, place, plan

topologies = st.builds(
    lambda sizes, reserve: Topology(
        tuple(tuple(range(sum(sizes[:i]), sum(sizes[: i + 1]))) for i in range(len(sizes))),
        min(reserve, sum(sizes)),
    ),
    st.lists(st.integers(1, 16), min_size=1, max_size=4),
    st.integers(0, 6),
)
mixes = st.dictionaries(
    st.from_regex(r"vm[0-9]{1,3}", fullmatch=True), st.integers(1, 20), max_size=12
)


def assert_valid(topology: Topology, pins: dict[str, Pin], vms: dict[str, int]) -> None:
    every = [c for p in pins.values() for c in p.cpus]
    assert len(every) == len(set(every)), "a CPU pinned twice"
    assert not set(every) & topology.reserved_cpus(), "a reserved CPU was pinned"
    assert len(every) <= topology.usable()
    for name, pin in pins.items():
        assert len(pin.cpus) == vms[name] and vms[name] % 2 == 0
        assert vms[name] <= topology.largest_node
        assert set(pin.cpus) <= set(topology.nodes[pin.node]), "a VM spans NUMA nodes"


@settings(max_examples=300)
@given(topologies, mixes)
def test_a_plan_never_breaks_a_rule(topology: Topology, vms: dict[str, int]) -> None:
    try:
        pins = plan(topology, vms)
    except NumaRejected:
        return
    assert set(pins) == set(vms)
    assert_valid(topology, pins, vms)


@settings(max_examples=300)
@given(topologies, st.lists(st.integers(1, 20), max_size=15))
def test_vms_added_one_by_one_never_break_a_rule(topology: Topology, sizes: list[int]) -> None:
    pins: dict[str, Pin] = {}
    vms: dict[str, int] = {}
    for i, vcpus in enumerate(sizes):
        try:
            pins[f"vm{i}"] = place(topology, list(pins.values()), vcpus)
            vms[f"vm{i}"] = vcpus
        except NumaRejected as exc:
            assert exc.code in ("invalid_request", "insufficient_capacity")
    assert_valid(topology, pins, vms)
    assert sum(free_per_node(topology, pins.values())) == (
        topology.usable() - sum(len(p.cpus) for p in pins.values())
    )


def test_the_three_rules_and_their_codes() -> None:
    host = Topology.uniform(2, 8, reserved=2)  # CPUs 0,1 kept for the host
    with pytest.raises(NumaRejected) as err:
        place(host, [], 3)
    assert err.value.code == "invalid_request" and "odd" in str(err.value)
    with pytest.raises(NumaRejected) as err:
        place(host, [], 10)
    assert err.value.code == "invalid_request" and "largest NUMA node" in str(err.value)
    pins = plan(host, {"a": 8, "b": 6})
    assert pins["a"] == Pin(0, tuple(range(8, 16))) or pins["a"].node == 1
    assert pins["b"].cpus == (2, 3, 4, 5, 6, 7)  # the buffer CPUs 0, 1 stay free
    with pytest.raises(NumaRejected) as err:
        place(host, list(pins.values()), 2)
    assert err.value.code == "insufficient_capacity"


def test_descending_order_packs_what_first_come_would_not() -> None:
    host = Topology.uniform(2, 4)
    assert plan(host, {"small1": 2, "small2": 2, "big": 4}) == {
        "big": Pin(0, (0, 1, 2, 3)),
        "small1": Pin(1, (4, 5)),
        "small2": Pin(1, (6, 7)),
    }
