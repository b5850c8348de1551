"""The agent's half of the syncer, without pip: an agent acts only on a slot
for the desired build it does not run; what it refuses (a corrupt artifact,
no launcher to restart into) or the launcher rolled back is reported once,
and the leader frees the slot and does not try that agent again.
(Installing a real wheel and restarting into it: tests/integration/
test_agent_update.py and test_agent_selfupdate.py.)"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from tests.fakes import FakeAgent
from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.agent_versions import DesiredAgent, Slot, UpdateStatus
from warmcache.clock import ManualClock
from warmcache.layout import Keys
from warmcache.testing.polling import wait_for
from warmcache_agent.identity import code_sha256
from warmcache_agent.launcher import Builds
from warmcache_agent.syncer import AgentSyncer

KEYS = Keys("wc")
RUNNING = "11" * 32
WANTED = "22" * 32


def desired(artifact: Path, artifact_sha256: str) -> DesiredAgent:
    return DesiredAgent(
        version="0.2.0", sha256=WANTED, artifact=str(artifact), artifact_sha256=artifact_sha256
    )


def grant(store: SqliteStore, hv: str, sha: str = WANTED) -> None:
    store.put(KEYS.agents_updating(hv), Slot(sha256=sha, rack="r1", granted_at=0).model_dump_json())


def status(store: SqliteStore, hv: str) -> UpdateStatus | None:
    found = store.get(KEYS.agents_status(hv))
    return UpdateStatus.model_validate_json(found.value) if found else None


def offer(store: SqliteStore, tmp_path: Path, content: bytes) -> None:
    """An artifact of ``content`` desired (with a sha256 it does not have)
    and a slot for it granted to h1."""
    artifact = tmp_path / "warmcache-0.2.0-py3-none-any.whl"
    artifact.write_bytes(content)
    store.put(KEYS.agents_desired(), desired(artifact, "55" * 32).model_dump_json())
    grant(store, "h1")


def syncer(
    store: SqliteStore,
    builds: Builds | None,
    restarts: list[int],
    sources: tuple[str, ...] = ("/",),
) -> AgentSyncer:
    return AgentSyncer(
        store,
        KEYS,
        "h1",
        RUNNING,
        builds,
        lambda: restarts.append(1),
        lambda: 5.0,
        sources=sources,
    )


def test_an_agent_acts_only_on_a_slot_for_the_desired_build_it_does_not_run(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    restarts: list[int] = []
    agent = syncer(sqlite_store, Builds(tmp_path / "state"), restarts)
    missing = tmp_path / "never-read.whl"  # reading it would be reported
    sqlite_store.put(KEYS.agents_desired(), desired(missing, "33" * 32).model_dump_json())
    assert agent.check() is False  # no slot
    # the build it runs is the desired one and holds a slot: done already
    # (the leader frees the slot), nothing fetched or reported
    runs = desired(missing, "33" * 32).model_copy(update={"sha256": RUNNING})
    sqlite_store.put(KEYS.agents_desired(), runs.model_dump_json())
    grant(sqlite_store, "h1", sha=RUNNING)
    assert agent.check() is False
    assert status(sqlite_store, "h1") is None
    sqlite_store.put(KEYS.agents_desired(), desired(missing, "33" * 32).model_dump_json())
    grant(sqlite_store, "h1", sha="44" * 32)  # a slot for a build no longer desired
    assert agent.check() is False
    assert status(sqlite_store, "h1") is None and restarts == []


def test_a_corrupt_artifact_is_refused_reported_once_and_nothing_restarts(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    offer(sqlite_store, tmp_path, b"not the wheel the operator vouched for")
    restarts: list[int] = []
    builds = Builds(tmp_path / "state")
    agent = syncer(sqlite_store, builds, restarts)
    assert agent.check() is False
    told = status(sqlite_store, "h1")
    assert told is not None and told.state == "failed" and told.sha256 == WANTED
    assert "checksum mismatch" in told.why
    assert restarts == [] and builds.trying is None
    assert [p.name for p in builds.dir.iterdir()] == []  # nothing installed or left
    sqlite_store.delete(KEYS.agents_status("h1"))
    assert agent.check() is False and status(sqlite_store, "h1") is None  # told once


def test_an_agent_without_a_launcher_says_it_cannot_update(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    artifact = tmp_path / "a.whl"
    sqlite_store.put(
        KEYS.agents_desired(),
        desired(artifact, "66" * 32).model_dump_json(),
    )
    grant(sqlite_store, "h1")
    restarts: list[int] = []
    assert syncer(sqlite_store, None, restarts).check() is False
    told = status(sqlite_store, "h1")
    assert told is not None and told.state == "failed" and "launcher" in told.why
    assert restarts == []


def test_a_build_the_launcher_rolled_back_is_reported_once(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    builds = Builds(tmp_path / "state")
    build = builds.dir / "warmcache-0.2.0-py3-none-any"
    (build / "warmcache_agent").mkdir(parents=True)
    (build / "warmcache_agent" / "daemon.py").write_text("raise SystemExit(3)\n")
    builds.try_next(build)
    builds.refuse("exited with 3 before it was ready")  # what the launcher did
    agent = syncer(sqlite_store, builds, [])
    agent.check()
    told = status(sqlite_store, "h1")
    assert told is not None and told.state == "rolled_back"
    assert told.sha256 == code_sha256(build / "warmcache_agent")
    assert "exited with 3" in told.why and builds.failed is None
    sqlite_store.delete(KEYS.agents_status("h1"))
    agent.check()
    assert status(sqlite_store, "h1") is None


def test_the_leader_frees_a_refused_slot_says_why_and_moves_on(
    make_service: Any, agents: dict[str, FakeAgent], clock: ManualClock
) -> None:
    service = make_service(agent_update_parallel=1)
    sha = "77" * 32
    service.agent_versions.set_desired(
        DesiredAgent(version="0.2.0", sha256=sha, artifact="/a.whl", artifact_sha256="88" * 32)
    )
    service.run_cycle()
    [first] = (Keys.name(kv.key) for kv in service.store.range(service.keys.agents_updating())[0])
    refusal = UpdateStatus(sha256=sha, state="rolled_back", at=clock.now(), why="not ready in 60 s")
    service.store.put(service.keys.agents_status(first), refusal.model_dump_json())
    service.run_cycle()  # no timeout passed: the report alone frees the slot
    granted = [Keys.name(kv.key) for kv in service.store.range(service.keys.agents_updating())[0]]
    assert granted and first not in granted
    kinds = Counter(e.type for e in service.events.recent(100, "agent.update_"))
    assert kinds["agent.update_rolled_back"] == 1 and kinds["agent.update_timed_out"] == 0
    [event] = service.events.recent(100, "agent.update_rolled_back")
    assert event.fields["hypervisor"] == first and event.fields["why"] == "not ready in 60 s"
    fleet = {a.hypervisor: a for a in service.agent_versions.fleet()}
    assert fleet[first].last_update == "rolled_back" and not fleet[first].updating


def test_an_artifact_from_outside_the_allowed_sources_is_refused_and_reported(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    offer(sqlite_store, tmp_path, b"never read")
    restarts: list[int] = []
    agent = syncer(sqlite_store, Builds(tmp_path / "state"), restarts, sources=("/srv/builds",))
    assert agent.check() is False
    told = status(sqlite_store, "h1")
    assert told is not None and told.state == "failed" and "not under an allowed" in told.why
    assert restarts == []


def test_an_artifact_string_that_breaks_a_parser_is_a_refusal_not_a_dead_thread(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    import threading

    sqlite_store.put(
        KEYS.agents_desired(),
        DesiredAgent(
            version="0.2.0",
            sha256=WANTED,
            artifact="https://[fe80::1/x.whl",
            artifact_sha256="5" * 64,
        ).model_dump_json(),
    )
    grant(sqlite_store, "h1")
    agent = syncer(sqlite_store, Builds(tmp_path / "state"), [], sources=("https://[fe80::1]/",))
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop, 0.01))
    thread.start()
    try:
        wait_for("the refusal to be reported", lambda: status(sqlite_store, "h1") is not None, 10)
        assert thread.is_alive()  # still checking
    finally:
        stop.set()
        thread.join()
    told = status(sqlite_store, "h1")
    assert told is not None and told.state == "failed" and "fe80" in told.why
