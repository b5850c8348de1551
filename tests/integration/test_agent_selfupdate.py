"""An agent updating itself, end to end: the real launcher runs the real
agent (the units' command), the agent heartbeats into a SQLite store, the
leader's slot and the desired build are in the store, and the builds are
real wheels of this tree (one with a new version, one that cannot start).

* test:///default: a build that comes up is kept (the launcher stays, its
  child is replaced, the facts say the new version); a corrupt artifact is
  refused with no restart; a build that does not start is rolled back and
  reported.
* real guests (qemu:///system): a VM running before the update is running,
  healthy, the same domain and in the same lockfile after it, and after a
  rolled-back one.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.wheels import build_wheel
from warmcache.adapters.agent_client import AgentClient
from warmcache.adapters.sqlite_store import SqliteStore
from warmcache.agent_versions import DesiredAgent, Slot, UpdateStatus
from warmcache.clock import SystemClock
from warmcache.layout import Keys
from warmcache.model import Flavor, HostFacts
from warmcache.ports import VmSpec
from warmcache.testing.polling import wait_for
from warmcache_agent.identity import installed_sha256
from warmcache_agent.updater import describe

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEYS = Keys("wc")
HV, RACK, AZ = "up1", "r1", "az1"
TINY = Flavor(name="tiny", vcpus=1, memory_mib=128, disk_gib=1)


def _new_version(source: Path) -> None:
    cfg = source / "setup.cfg"
    cfg.write_text(cfg.read_text().replace("version = 0.1.0", "version = 0.1.0+update1", 1))
    init = source / "agent" / "warmcache_agent" / "__init__.py"
    init.write_text(init.read_text() + "# build update1\n")


def _cannot_start(source: Path) -> None:
    _new_version(source)
    cfg = source / "setup.cfg"
    cfg.write_text(cfg.read_text().replace("0.1.0+update1", "0.1.0+broken1", 1))
    main = source / "agent" / "warmcache_agent" / "__main__.py"
    main.write_text("raise SystemExit('this build cannot start')\n")


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        "new": build_wheel(tmp_path_factory.mktemp("new-build"), _new_version),
        "broken": build_wheel(tmp_path_factory.mktemp("broken-build"), _cannot_start),
    }


def desired(wheel: Path, artifact_sha256: str | None = None) -> DesiredAgent:
    version, code, file_sha = describe(wheel)
    return DesiredAgent(
        version=version,
        sha256=code,
        artifact=f"file://{wheel}",
        artifact_sha256=artifact_sha256 or file_sha,
    )


class Launched:
    """``python -m warmcache_agent.launcher ... -- <agent args>``, as the unit runs it."""

    def __init__(self, root: Path, config: str, sources: Path) -> None:
        self.root = root
        self.socket = root / "agent.sock"
        self.config = root / "agent.toml"
        self.store_path = root / "store.db"
        self.config.write_text(
            config + f'[inventory]\nkind = "sqlite"\npath = "{self.store_path}"\nprefix = "wc"\n'
            f'ttl_s = 5\nupdate_check_s = 0.2\nupdate_sources = ["{sources}"]\n'
        )
        self.store = SqliteStore(self.store_path, clock=SystemClock(), poll_interval_s=0.01)
        log = open(root / "launcher.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "warmcache_agent.launcher",
                "--state-dir",
                str(root),
                "--ready-timeout",
                "30",
                "--",
                "--socket",
                str(self.socket),
                "--config",
                str(self.config),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.facts()  # up: its facts are out

    def facts(self, sha256: str | None = None, timeout_s: float = 60) -> HostFacts:
        def published() -> HostFacts | None:
            found = self.store.get(KEYS.host(AZ, HV))
            facts = HostFacts.model_validate_json(found.value) if found else None
            return facts if facts and (sha256 is None or facts.agent_sha256 == sha256) else None

        return wait_for(f"the agent's facts (sha256 {sha256})", published, timeout_s)

    def client(self) -> AgentClient:
        return AgentClient(f"unix:{self.socket}", timeout_s=180)

    def agent_pid(self) -> int:
        """The launcher's child: the agent process."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        [pid] = children.split()
        return int(pid)

    def update_to(self, build: DesiredAgent) -> None:
        """What the operator and the leader do: desire the build, grant a slot."""
        self.store.delete(KEYS.agents_status(HV))
        self.store.put(KEYS.agents_desired(), build.model_dump_json())
        slot = Slot(sha256=build.sha256, rack=RACK, granted_at=0)
        self.store.put(KEYS.agents_updating(HV), slot.model_dump_json())

    def status(self) -> UpdateStatus | None:
        found = self.store.get(KEYS.agents_status(HV))
        return UpdateStatus.model_validate_json(found.value) if found else None

    def log(self) -> str:
        return (self.root / "launcher.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.store.close()


TEST_CONFIG = (
    f'hypervisor = "{HV}"\nrack = "{RACK}"\naz = "{AZ}"\n'
    'libvirt_uri = "test:///default"\nstate_dir = "."\npin_cpus = false\n'
)


@pytest.fixture
def launched(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, libvirt_available: None
) -> Iterator[Launched]:
    agent = Launched(tmp_path, TEST_CONFIG, tmp_path_factory.getbasetemp())
    yield agent
    agent.stop()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_build_that_comes_up_is_kept_by_the_launcher(
    launched: Launched, builds: dict[str, Path]
) -> None:
    before = launched.facts(installed_sha256())
    old_pid = launched.agent_pid()
    host_key = launched.store.get(KEYS.host(AZ, HV))
    build = desired(builds["new"])
    assert build.version == "0.1.0+update1" and build.sha256 != before.agent_sha256
    launched.update_to(build)
    after = launched.facts(build.sha256)
    assert after.agent_version == "0.1.0+update1"
    # the session was handed over: the host's key was never gone meanwhile
    kept = launched.store.get(KEYS.host(AZ, HV))
    assert host_key is not None and kept is not None
    assert (kept.create_revision, kept.session) == (host_key.create_revision, host_key.session)
    assert launched.proc.poll() is None  # the launcher stayed; its child was replaced
    assert launched.agent_pid() != old_pid
    current = (launched.root / "versions" / "current").read_text().strip()
    assert Path(current).name == f"{build.version}.{build.sha256}"  # named by its content
    assert launched.client().list() == []  # the new build answers on the same socket
    assert launched.status() is None
    assert not (launched.root / "versions" / ".downloads").exists()
    # stopped as systemd stops the unit (SIGTERM to launcher and agent alike,
    # and the launcher forwards it): the agent stops cleanly, so does the launcher
    os.killpg(launched.proc.pid, signal.SIGTERM)
    assert launched.proc.wait(timeout=20) == 0


def test_a_corrupt_artifact_is_refused_and_nothing_restarts(
    launched: Launched, builds: dict[str, Path], tmp_path: Path
) -> None:
    launched.facts(installed_sha256())
    old_pid = launched.agent_pid()
    corrupt = tmp_path / builds["new"].name
    data = bytearray(builds["new"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    build = desired(builds["new"]).model_copy(update={"artifact": f"file://{corrupt}"})
    launched.update_to(build)
    told = wait_for("the refusal", launched.status, 30)
    assert told.state == "failed" and "checksum mismatch" in told.why
    assert told.sha256 == build.sha256
    assert launched.agent_pid() == old_pid
    assert launched.facts().agent_sha256 == installed_sha256()
    assert not (launched.root / "versions" / "trying").exists()


def test_a_build_that_cannot_start_is_rolled_back_and_reported(
    launched: Launched, builds: dict[str, Path]
) -> None:
    launched.facts(installed_sha256())
    build = desired(builds["broken"])
    launched.update_to(build)
    told = wait_for("the rollback report", launched.status, 60)
    assert told.state == "rolled_back" and told.sha256 == build.sha256, told
    assert "exited with 1 before it was ready" in told.why
    assert launched.facts().agent_sha256 == installed_sha256()  # the previous build runs
    assert "this build cannot start" in launched.log()
    failed = json.loads((launched.root / "versions" / "failed.reported").read_text())
    assert failed["build"].endswith(f"{build.version}.{build.sha256}")
    assert launched.client().list() == []


# --- real guests -----------------------------------------------------------------------


@pytest.mark.realvm
def test_vms_keep_running_and_the_lockfile_is_intact_across_updates(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    real_host: Any,
    builds: dict[str, Path],
) -> None:
    import libvirt

    from warmcache_agent.guest import agent_config_toml, build_image

    image = build_image(real_host, "v1")
    config = agent_config_toml(hypervisor=HV, rack=RACK, az=AZ, image_dirs=[real_host])
    agent = Launched(tmp_path, config, tmp_path_factory.getbasetemp())
    vm = f"rv-{uuid.uuid4().hex[:8]}"
    conn = libvirt.open("qemu:///system")
    try:
        agent.facts(installed_sha256())
        tiny = TINY.model_copy(update={"image_id": image.id})
        assert agent.client().create(VmSpec(vm, tiny, image=image)).healthy
        dom_id = conn.lookupByName(vm).ID()
        lockfile = json.loads((tmp_path / "lockfile.json").read_text())
        new = desired(builds["new"])
        agent.update_to(new)
        agent.facts(new.sha256)
        assert conn.lookupByName(vm).ID() == dom_id  # the same domain, never restarted
        assert json.loads((tmp_path / "lockfile.json").read_text()) == lockfile
        assert agent.client().status(vm).healthy
        found = agent.client().call({"op": "reconcile"})
        # lockfile and libvirt agree (no leader here: no pool record names it)
        assert [f["kind"] for f in found if f["vm"] == vm] == ["vm_without_record"], found
        agent.update_to(desired(builds["broken"]))
        told = wait_for("the rollback report", agent.status, 90)
        assert told.state == "rolled_back"
        assert agent.facts().agent_sha256 == new.sha256  # back on the build it had
        assert conn.lookupByName(vm).ID() == dom_id
        assert json.loads((tmp_path / "lockfile.json").read_text()) == lockfile
        assert agent.client().status(vm).healthy
    finally:
        try:
            agent.client().delete(vm)
        except Exception:
            for dom in conn.listAllDomains():
                if dom.name() == vm:
                    if dom.isActive():
                        dom.destroy()
                    dom.undefine()
        conn.close()
        agent.stop()


def test_build_id_prints_the_desired_command_for_a_wheel(builds: dict[str, Path]) -> None:
    from click.testing import CliRunner

    from warmcache_agent.daemon import main

    build = desired(builds["new"])
    done = CliRunner().invoke(
        main, ["build-id", str(builds["new"]), "--artifact", "https://x/a.whl"]
    )
    assert done.exit_code == 0, done.output
    assert done.output.splitlines()[-1] == (
        f"warmcache agents desired {build.version} {build.sha256} https://x/a.whl "
        f"{build.artifact_sha256}"
    )
    not_agent = CliRunner().invoke(main, ["build-id", str(Path(__file__))])
    assert not_agent.exit_code == 2 and "build-id" in not_agent.output
