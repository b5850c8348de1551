"""The operators' web dashboard (Flask + Jinja2), on every instance: pools
with their per-rack spread, build history, leadership timeline, recent
acquisitions and purges. Server-rendered and self-refreshing: it works on
the embedded stack with no JavaScript and no external assets."""

from __future__ import annotations

import datetime
from typing import Any

from flask import Blueprint, current_app, render_template

from warmcache.ports import Event
from warmcache.service import WarmCache

dashboard = Blueprint("dashboard", __name__, template_folder="templates")


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _rows(events: list[Event]) -> list[dict[str, Any]]:
    return [{"at": _when(e.at), "type": e.type, **e.fields} for e in events]


@dashboard.get("/")
def index() -> str:
    service: WarmCache = current_app.extensions["warmcache"]
    pools = service.pools()
    widest = max((n for p in pools for n in p.ready_by_rack.values()), default=1)
    return render_template(
        "dashboard.html",
        node=service.config.node,
        leader=service.leader(),
        pools=pools,
        widest=widest,
        hosts=len(service.hosts.hosts()) if service.hosts.loaded else None,
        builds=_rows(service.events.recent(20, "vm.build_")),
        leadership=_rows(service.events.recent(20, "leader.")),
        acquisitions=_rows(service.events.recent(20, "acquisition")),
        purges=_rows(service.events.recent(20, "vm.purged")),
    )
