"""Bearer-token authentication for the HTTP API.

Tokens come from config (``[[auth.tokens]]``: name, role, and the token's
SHA-256 or the token itself). With no token configured the API is open (the
embedded quickstart); with any, every ``/v1`` route but the OpenAPI document
needs ``Authorization: Bearer <token>`` (401 ``unauthorized`` otherwise) and
the route's role (403 ``forbidden``). Comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from warmcache.config import AuthConfig
from warmcache.errors import Forbidden, Unauthorized

ROLES = {"user": 0, "admin": 1}


@dataclass(frozen=True)
class Identity:
    name: str
    role: str

    def require(self, role: str) -> None:
        if ROLES[self.role] < ROLES[role]:
            raise Forbidden(self.name, role)


ANONYMOUS = Identity("anonymous", "admin")  # only when authentication is off


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self._tokens = [
            (
                t.token_sha256 or hashlib.sha256(t.token.get_secret_value().encode()).hexdigest(),
                Identity(t.name, t.role),
            )
            for t in config.tokens
            if t.token_sha256 or t.token
        ]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def identify(self, authorization: str | None) -> Identity:
        if not self.enabled:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("a bearer token is required (Authorization: Bearer <token>)")
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        found = None
        for known, identity in self._tokens:  # no early exit: constant time over tokens
            if hmac.compare_digest(known, digest):
                found = identity
        if found is None:
            raise Unauthorized("unknown bearer token")
        return found
