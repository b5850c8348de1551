"""``/v1/hosts`` and ``/v1/capacity``: the fleet's hypervisors, what they
hold and what is free, per host, per rack and per AZ (``warmcache.fleet``).
Reads: the ``user`` role."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request
from pydantic import BaseModel, ValidationError

from warmcache.errors import InvalidRequest, UnknownHypervisor
from warmcache.fleet import Capacity, FleetView, HostState
from warmcache.schemas import (
    AzCapacity,
    CapacityQuery,
    CapacityReply,
    Heartbeat,
    HostDrain,
    HostEntry,
    HostsQuery,
    HostsReply,
    RackCapacity,
    Resources,
)
from warmcache.web.api import _reply, _service

fleet_api = Blueprint("fleet", __name__)


def _query(model: type[BaseModel]) -> Any:
    try:
        return model.model_validate(dict(request.args), strict=False)
    except ValidationError as exc:
        raise InvalidRequest.from_validation("invalid query", exc) from exc


def resources(capacity: Capacity) -> Resources:
    return Resources.model_validate(capacity.shown())


def host_entry(state: HostState) -> HostEntry:
    f = state.facts
    drain = state.drain
    shown_drain = None
    if drain is not None and state.drained_by is not None:
        shown_drain = HostDrain(
            scope=state.drained_by, evacuate=drain.evacuate, at=drain.at, by=drain.by
        )
    return HostEntry(
        hypervisor=f.hypervisor,
        rack=f.rack,
        az=f.az,
        status=state.status,
        capacity=resources(Capacity.of_host(f)),
        vms=state.vms,
        heartbeat=Heartbeat(
            alive=state.alive,
            ttl_s=f.ttl_s,
            facts_age_s=state.seen_for_s,
            gone_for_s=state.gone_for_s,
        ),
        drain=shown_drain,
        agent_version=f.agent_version,
        images=list(f.images),
        numa_free=list(f.numa_free),
    )


@fleet_api.get("/v1/hosts")
def hosts() -> Any:
    """A page of hosts in (AZ, name) order; next page: ``after=<next>``."""
    query: HostsQuery = _query(HostsQuery)
    states, after = _service().fleet.page(
        az=query.az, rack=query.rack, after=query.after, limit=query.limit
    )
    return _reply(HostsReply(hosts=[host_entry(s) for s in states], next=after))


@fleet_api.get("/v1/hosts/<hypervisor>")
def host(hypervisor: str) -> Any:
    state = _service().fleet.host(hypervisor)
    if state is None:
        raise UnknownHypervisor(hypervisor)
    return _reply(host_entry(state))


def capacity_reply(fleet: FleetView, az: str | None = None) -> CapacityReply:
    """The capacity of ``az`` (None: every AZ), rack by rack."""
    racks = fleet.racks(az)
    drained = fleet.drained_per_rack(racks)
    per_az: dict[str, list[RackCapacity]] = {}
    for r in racks:
        per_az.setdefault(r.az, []).append(
            RackCapacity(
                rack=r.rack,
                hosts=r.capacity.hosts,
                drained=drained.get((r.az, r.rack), 0),
                unreachable=r.unreachable,
                capacity=resources(r.capacity),
            )
        )
    totals = fleet.azs()
    return CapacityReply(
        azs=[
            AzCapacity(
                az=name,
                hosts=sum(r.hosts for r in rows),
                drained=sum(r.drained for r in rows),
                unreachable=sum(r.unreachable for r in rows),
                capacity=resources(totals.get(name, Capacity())),
                racks=rows,
            )
            for name, rows in per_az.items()
        ]
    )


@fleet_api.get("/v1/capacity")
def capacity() -> Any:
    """Free and booked capacity per AZ and rack: O(racks), not O(hosts)."""
    query: CapacityQuery = _query(CapacityQuery)
    return _reply(capacity_reply(_service().fleet, query.az))
