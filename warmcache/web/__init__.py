"""Flask app factory: receives the assembled ``WarmCache``, one blueprint per surface."""

from __future__ import annotations

import math
from typing import Any

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

from warmcache import deadline
from warmcache.config import AuthConfig
from warmcache.errors import (
    BodyTooLarge,
    HeadersTooLarge,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    QuotaExceeded,
    UnsupportedMediaType,
    WarmCacheError,
)
from warmcache.service import WarmCache
from warmcache.web.api import api
from warmcache.web.auth import Authenticator
from warmcache.web.dashboard import dashboard
from warmcache.web.fleet import fleet_api
from warmcache.web.quotas import quotas_api
from warmcache.web.vms import vms_api

# Refusals of the HTTP layer (werkzeug's, waitress's) -> the registry's
# classes, so they carry the same stable codes (DESIGN §12.6: a typed 4xx).
HTTP_ERRORS: dict[int, type[WarmCacheError]] = {
    cls.http_status: cls
    for cls in (
        InvalidRequest,
        NotFound,
        MethodNotAllowed,
        BodyTooLarge,
        UnsupportedMediaType,
        HeadersTooLarge,
        InternalError,
        Overloaded,
    )
}
HTTP_CODES = {status: cls.code for status, cls in HTTP_ERRORS.items()}


def error_body(code: str, detail: Any) -> dict[str, Any]:
    return {"error": code, "detail": detail}


def create_app(service: WarmCache, auth: Authenticator | None = None) -> Flask:
    """The API app. ``auth``: bearer tokens (none given: the API is open)."""
    app = Flask("warmcache")
    app.extensions["warmcache"] = service
    app.extensions["warmcache.auth"] = auth or Authenticator(AuthConfig())
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # The HTTP server refuses a declared Content-Length over the limit; this
    # bounds what the app reads of a chunked body too (413 either way).
    app.config["MAX_CONTENT_LENGTH"] = service.config.http_max_body_bytes
    app.register_blueprint(api)
    app.register_blueprint(vms_api)
    app.register_blueprint(fleet_api)
    app.register_blueprint(quotas_api)
    app.register_blueprint(dashboard)

    @app.before_request
    def _deadline() -> None:
        # Every store call of this request ends by its deadline (503 then);
        # not an approved change, which runs through agents and must not be
        # cut off half way (a pool purge).
        if request.endpoint != "api.approve_change":
            # From the request's arrival (waitress stamps it): time spent
            # queued for a worker counts, so the reply comes within the
            # deadline (+0.5 s) of the request, not of its handler's start.
            arrived = request.environ.get(deadline.RECEIVED_AT)
            g.deadline_token = deadline.enter(
                service.config.request_deadline_s,
                since=arrived if isinstance(arrived, float) else None,
            )

    @app.teardown_request
    def _end_deadline(_exc: BaseException | None) -> None:
        token = g.pop("deadline_token", None)
        if token is not None:
            deadline.leave(token)

    @app.errorhandler(WarmCacheError)
    def _domain_error(exc: WarmCacheError) -> Any:
        response = jsonify(error_body(exc.code, exc.detail()))
        response.status_code = exc.http_status
        if isinstance(exc, QuotaExceeded) and exc.retry_after_s > 0:
            response.headers["Retry-After"] = str(math.ceil(exc.retry_after_s))
        return response

    @app.after_request
    def _challenge(response: Any) -> Any:
        if response.status_code == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="warmcache"'
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        # Refusals below the API (routing, methods, body limits) get the same
        # shape and stable codes; werkzeug's headers (Allow on a 405) stay.
        status = exc.code or 500
        known = HTTP_ERRORS.get(status)
        code = known.code if known else (exc.name or "error").lower().replace(" ", "_")
        response = jsonify(error_body(code, exc.description))
        response.status_code = status
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    return app
