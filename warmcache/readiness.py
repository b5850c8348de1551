"""Readiness checks (``GET /readyz``): each dependency asked with its own
timeout, in parallel, on a small pool of threads of its own, so the answer
comes within about ``timeout_s`` whatever is down. A check still running
past its timeout is reported as such and left to finish on its thread (the
store's ends by the deadline it runs under; the pool is small, so a flood
of readiness probes cannot pile up threads)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from warmcache import deadline
from warmcache.context import ServiceContext

Check = Callable[[], object]


class Readiness:
    @classmethod
    def of_service(cls, ctx: ServiceContext) -> Readiness:
        """The service's dependencies: the store, the flavor catalog and the
        event sink, each asked with ``service.readiness_timeout_s``."""
        return cls(
            {
                "store": lambda: ctx.store.get(ctx.keys.leader()),
                "catalog": lambda: ctx.catalog.get("readiness-probe"),
                "events": lambda: ctx.events.recent(1),
            },
            ctx.config.readiness_timeout_s,
        )

    def __init__(self, checks: dict[str, Check], timeout_s: float) -> None:
        self._checks = checks
        self._timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=len(checks) * 2, thread_name_prefix="readyz")

    def check(self) -> dict[str, dict[str, Any]]:
        started = time.monotonic()
        futures = {
            name: self._pool.submit(self._timed, check) for name, check in self._checks.items()
        }
        out: dict[str, dict[str, Any]] = {}
        for name, future in futures.items():
            left = max(0.0, self._timeout_s - (time.monotonic() - started))
            try:
                out[name] = future.result(timeout=left)
            except FutureTimeout:
                out[name] = {"ok": False, "detail": f"no answer within {self._timeout_s} s"}
        return out

    def _timed(self, check: Check) -> dict[str, Any]:
        began = time.perf_counter()
        try:
            with deadline.within(self._timeout_s):
                check()
        except Exception as exc:  # any failure is "not ready", said plainly
            return {"ok": False, "detail": f"{type(exc).__name__}: {str(exc)[:200]}"}
        return {"ok": True, "ms": round((time.perf_counter() - began) * 1000, 2)}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
