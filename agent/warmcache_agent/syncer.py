"""The agent's half of the syncer: act on the update slot the leader grants.

Every ``update_check_s`` the agent reads its slot key
(``<prefix>/agents/updating/<hv>``; one small read, absent on almost every
host almost always). Holding a slot for a build it does not run, it
fetches the desired artifact (only from ``[inventory] update_sources``),
verifies its sha256, installs it beside the running build, checks that the
installed code hashes to the desired ``sha256`` before it takes a name,
tells the launcher to try it at the next start, and asks for a
restart (``restart``: the daemon stops serving, hands its heartbeat session
over and exits ``RESTART``). VMs are libvirtd's and the lockfile is on
disk: neither is touched by any of it.

What can go wrong is reported at ``<prefix>/agents/status/<hv>`` (an
``UpdateStatus`` the leader turns into an event, freeing the slot):
``failed`` when the build was refused before any restart (unreadable,
checksum mismatch, pip refused it, code not the desired one, no launcher to
restart into it), ``rolled_back`` when the launcher started it and it did
not come up in time, so the previous build runs again (this process).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from warmcache.agent_versions import DesiredAgent, Slot, UpdateStatus
from warmcache.errors import StoreError
from warmcache.layout import Keys
from warmcache.ports import CoordinationStore
from warmcache_agent.identity import code_sha256
from warmcache_agent.launcher import Builds
from warmcache_agent.updater import UpdateRefused, fetch, install

log = logging.getLogger(__name__)


class AgentSyncer:
    def __init__(
        self,
        store: CoordinationStore,
        keys: Keys,
        hypervisor: str,
        running_sha256: str,
        builds: Builds | None,
        restart: Callable[[], None],
        now: Callable[[], float] = time.time,
        sources: Sequence[str] = (),
    ) -> None:
        self._store = store
        self._keys = keys
        self._hv = hypervisor
        self._running = running_sha256
        self._builds = builds  # None: not run by the launcher
        self._restart = restart
        self._now = now
        self._sources = tuple(sources)  # [inventory] update_sources
        self._told: set[str] = set()  # builds reported as failed by this process

    def check(self) -> bool:
        """One periodic check; True when a restart into a new build was asked for."""
        self._report_rollback()
        found = self._store.get(self._keys.agents_updating(self._hv))
        if found is None:
            return False
        slot = Slot.model_validate_json(found.value)
        if slot.sha256 == self._running or slot.sha256 in self._told:
            return False  # done (the leader frees the slot) or reported
        raw = self._store.get(self._keys.agents_desired())
        desired = DesiredAgent.model_validate_json(raw.value) if raw else None
        if desired is None or desired.sha256 != slot.sha256:
            return False  # a slot for a build no longer desired: the leader frees it
        if self._builds is None:
            self._report(
                desired.sha256,
                "failed",
                "not run by warmcache_agent.launcher: it cannot restart into a new build",
            )
            return False
        log.info("updating to %s (%s)", desired.version, desired.sha256[:12])
        try:
            target = self._install(desired, self._builds)
        except UpdateRefused as exc:
            log.warning("update to %s refused: %s", desired.version, exc)
            self._report(desired.sha256, "failed", str(exc))
            return False
        except Exception as exc:  # never a dead update thread: say what broke
            log.exception("update to %s failed", desired.version)
            self._report(desired.sha256, "failed", f"unexpected: {exc!r}")
            return False
        self._builds.try_next(target)
        self._builds.prune(keep={str(target)})
        log.info("build %s installed at %s: restarting into it", desired.version, target)
        self._restart()
        return True

    def _install(self, desired: DesiredAgent, builds: Builds) -> Path:
        downloads = builds.dir / ".downloads"
        try:
            wheel = fetch(
                desired.artifact, desired.artifact_sha256, downloads, sources=self._sources
            )
            target, _code = install(wheel, builds.dir, expect=desired.sha256)
        finally:
            shutil.rmtree(downloads, ignore_errors=True)
        return target

    def _report_rollback(self) -> None:
        """The launcher went back from a build that did not come up: say so, once."""
        if self._builds is None or (failed := self._builds.failed) is None:
            return
        build = Path(str(failed.get("build") or ""))
        package = build / "warmcache_agent"
        sha = code_sha256(package) if package.is_dir() else ""
        if self._report(sha, "rolled_back", str(failed.get("why", ""))):
            self._builds.reported()

    def _report(self, sha256: str, state: Literal["failed", "rolled_back"], why: str) -> bool:
        status = UpdateStatus(sha256=sha256, state=state, at=self._now(), why=why[:2000])
        try:
            self._store.put(self._keys.agents_status(self._hv), status.model_dump_json())
        except StoreError as exc:
            log.warning("could not report the update's %s: %s", state, exc)
            return False
        self._told.add(sha256)
        return True

    def run(self, stop: threading.Event, every_s: float) -> None:
        while not stop.is_set():
            try:
                if self.check():
                    return
            except StoreError as exc:
                log.warning("update check failed: %s", exc)
            except Exception:  # supervised: a bad record must not end the checks
                log.exception("update check failed")
            stop.wait(every_s)
