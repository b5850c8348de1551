"""The operators' web dashboard (Flask + Jinja2), on every instance: pools
with their per-rack spread, build history, leadership timeline, recent
acquisitions and purges. Server-rendered and self-refreshing: it works on
the embedded stack with no JavaScript and no external assets.

With tokens configured, a browser signs in with one (``/signin``, a form):
the token is then held in an HttpOnly, SameSite=Strict cookie (Secure over
HTTPS), never in a URL, and checked like a bearer token on every page. The
cookie is honoured by the dashboard only, never by the API, so a cross-site
page cannot use it to call ``/v1``. Any instance accepts it (no server-side
session to share)."""

from __future__ import annotations

import datetime
import hmac
import secrets
from collections import Counter
from typing import Any

from flask import Blueprint, current_app, g, redirect, render_template, request, url_for

from warmcache.errors import Unauthorized
from warmcache.ports import Event
from warmcache.service import WarmCache
from warmcache.web import charts
from warmcache.web.auth import Authenticator

dashboard = Blueprint("dashboard", __name__, template_folder="templates")
COOKIE = "warmcache_session"
CSRF_COOKIE = "warmcache_csrf"
MAX_TOKEN_CHARS = 4096


def csrf_token() -> str:
    """This browser's anti-forgery token (double submit): a random value
    in a SameSite=Strict, HttpOnly cookie that every form also carries;
    another site can neither read the cookie nor guess the value."""
    found = request.cookies.get(CSRF_COOKIE, "")
    if len(found) == 32 and all(c in "0123456789abcdef" for c in found):
        return found
    made: str = g.get("new_csrf") or secrets.token_hex(16)
    g.new_csrf = made
    return made


def _same_site_post() -> bool:
    """A sign-in or sign-out form posted from this site: its Origin (when
    the browser sends one) is this server's, and it carries the token of
    the cookie (a cross-site page cannot read either)."""
    origin = request.headers.get("Origin")
    if origin is not None and origin.rstrip("/") != request.host_url.rstrip("/"):
        return False
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = request.form.get("csrf", "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), sent.encode())


@dashboard.after_request
def _set_csrf(response: Any) -> Any:
    made = g.get("new_csrf")
    if made is not None:
        response.set_cookie(
            CSRF_COOKIE, made, httponly=True, samesite="Strict", secure=request.is_secure
        )
    return response


def _auth() -> Authenticator:
    auth: Authenticator = current_app.extensions["warmcache.auth"]
    return auth


@dashboard.before_request
def _signed_in() -> Any:
    """Every page but the sign-in page needs a signed-in browser (or a bearer token)."""
    auth = _auth()
    if not auth.enabled or request.endpoint in ("dashboard.signin", "dashboard.signout"):
        return None
    header = request.headers.get("Authorization")
    cookie = request.cookies.get(COOKIE)
    try:
        g.identity = auth.identify(header if header else f"Bearer {cookie or ''}")
    except Unauthorized:
        return redirect(url_for("dashboard.signin"), 303)
    return None


@dashboard.route("/signin", methods=["GET", "POST"])
def signin() -> Any:
    auth = _auth()
    if not auth.enabled:
        return redirect(url_for("dashboard.index"), 303)
    if request.method == "GET":
        return render_template("signin.html", error=None, csrf=csrf_token())
    if not _same_site_post():  # login CSRF: another site signing you in as it
        return render_template(
            "signin.html", error="refused: not posted from this page", csrf=csrf_token()
        ), 403
    token = request.form.get("token", "")[:MAX_TOKEN_CHARS].strip()
    try:
        auth.identify(f"Bearer {token}")
    except Unauthorized:
        return render_template("signin.html", error="unknown token", csrf=csrf_token()), 401
    reply = redirect(url_for("dashboard.index"), 303)
    reply.set_cookie(
        COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure, max_age=12 * 3600
    )
    return reply


@dashboard.post("/signout")
def signout() -> Any:
    if not _same_site_post():
        return redirect(url_for("dashboard.index"), 303)  # nothing changes
    reply = redirect(url_for("dashboard.signin"), 303)
    reply.delete_cookie(COOKIE, httponly=True, samesite="Strict", secure=request.is_secure)
    return reply


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _rows(events: list[Event]) -> list[dict[str, Any]]:
    return [{"at": _when(e.at), "type": e.type, **e.fields} for e in events]


# What one page draws at most, whatever the fleet's size.
MAX_RACKS = 48
MAX_HOSTS = 800
MAX_REQUESTERS = 20


def _pool_rows(service: WarmCache) -> list[dict[str, Any]]:
    stats = service.metrics.acquisitions_seen
    rows = []
    for p in service.pools():
        label = f"{p.az}/{p.flavor}"
        seen = stats.of(p.az, p.flavor)
        rows.append(
            {
                "pool": p,
                "label": label,
                "levels": charts.levels(service.history.levels(p.az, p.flavor), f"{label} level"),
                "seen": seen,
                "mix": charts.bars(
                    [
                        charts.Bar(
                            "",
                            dict(sorted(p.standby.items())),
                            " ".join(f"{k} {n}" for k, n in sorted(p.standby.items())),
                        )
                    ],
                    f"{label} standby mix",
                    width=200,
                    label_w=0,
                    note_w=100,
                )
                if p.standby
                else None,
            }
        )
    return rows


def _capacity(service: WarmCache) -> dict[str, Any]:
    fleet = service.fleet
    racks = fleet.racks()
    drained = fleet.drained_per_rack(racks)
    shown = racks[:MAX_RACKS]
    rack_bars = [
        charts.Bar(
            f"{r.az}/{r.rack}",
            {"booked": r.capacity.of("vcpus")["booked"], "free": r.capacity.vcpus_free},
            f"{r.capacity.hosts} up"
            + (f", {drained[(r.az, r.rack)]} dr" if drained.get((r.az, r.rack)) else "")
            + (f", {r.unreachable} unr" if r.unreachable else ""),
        )
        for r in shown
    ]
    hosts, more = fleet.page(limit=MAX_HOSTS)
    cells = [
        charts.Cell(
            h.facts.hypervisor,
            1 - h.facts.vcpus_free / h.facts.vcpus_total if h.facts.vcpus_total else 0.0,
            h.status,
        )
        for h in hosts
    ]
    return {
        "racks": charts.bars(rack_bars, "vCPUs booked and free per rack"),
        "racks_hidden": max(0, len(racks) - len(shown)),
        "hosts": charts.grid(cells, "hypervisors"),
        "hosts_more": more is not None,
        "status": Counter(h.status for h in hosts),
    }


def _requesters(service: WarmCache) -> Any:
    held = sorted(service.history.held.by_requester.items(), key=lambda kv: (-kv[1], kv[0]))
    return charts.bars(
        [charts.Bar(name, {"held": n}, f"{n} VM(s)") for name, n in held[:MAX_REQUESTERS]],
        "handed-out VMs by requester",
    )


def _live_context() -> dict[str, Any]:
    service: WarmCache = current_app.extensions["warmcache"]
    return {
        "node": service.config.node,
        "leader": service.leader(),
        "pools": _pool_rows(service),
        "capacity": _capacity(service),
        "requesters": _requesters(service),
        "legend": charts.legend,
        "hosts": service.hosts.count() if service.hosts.loaded else None,
        "builds": _rows(service.events.recent(20, "vm.build_")),
        "leadership": _rows(service.events.recent(20, "leader.")),
        "acquisitions": _rows(service.events.recent(20, "acquisition")),
        "purges": _rows(service.events.recent(20, "vm.purged")),
        "signed_in": g.get("identity"),
        "csrf": csrf_token(),
    }


@dashboard.get("/")
def index() -> str:
    """The page; its script swaps in ``/live`` every 5 s (without a script:
    a plain reload every 30 s)."""
    return render_template("dashboard.html", **_live_context())


@dashboard.get("/live")
def live() -> str:
    """The page's changing part, as an HTML fragment."""
    return render_template("live.html", **_live_context())
