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
from typing import Any

from flask import Blueprint, current_app, g, redirect, render_template, request, url_for

from warmcache.errors import Unauthorized
from warmcache.ports import Event
from warmcache.service import WarmCache
from warmcache.web.auth import Authenticator

dashboard = Blueprint("dashboard", __name__, template_folder="templates")
COOKIE = "warmcache_session"
MAX_TOKEN_CHARS = 4096


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
        return render_template("signin.html", error=None)
    token = request.form.get("token", "")[:MAX_TOKEN_CHARS].strip()
    try:
        auth.identify(f"Bearer {token}")
    except Unauthorized:
        return render_template("signin.html", error="unknown token"), 401
    reply = redirect(url_for("dashboard.index"), 303)
    reply.set_cookie(
        COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure, max_age=12 * 3600
    )
    return reply


@dashboard.post("/signout")
def signout() -> Any:
    reply = redirect(url_for("dashboard.signin"), 303)
    reply.delete_cookie(COOKIE, httponly=True, samesite="Strict", secure=request.is_secure)
    return reply


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
        signed_in=g.get("identity"),
    )
