"""The agent's launcher keeps a new build only when it says it is up in
time, and goes back to the build it had otherwise (fake builds: a
``warmcache_agent`` package of a few lines in a directory of its own)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from warmcache.testing.polling import wait_for
from warmcache_agent.launcher import RESTART, Builds, Launcher

# A build's agent: appends its name to the log; says it is ready unless told
# not to; then exits with the code it was built with.
FAKE = """import os, signal, sys
name, ready, code, hold = {name!r}, {ready!r}, {code!r}, {hold!r}
with open({log!r}, "a") as f:
    f.write(name + "\\n")
fd = os.environ.get("WARMCACHE_READY_FD")
if ready is True and fd:
    os.write(int(fd), b"ready\\n")
if ready == "hang":
    signal.pause()  # the fake build that never comes up (the launcher stops it)
if hold:
    open(hold).read()  # up until the test writes to this FIFO
sys.exit(code() if callable(code) else code)
"""


def build(
    root: Path, name: str, log: Path, *, ready: object = True, code: int = 0, hold: str = ""
) -> Path:
    package = root / name / "warmcache_agent"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        FAKE.format(name=name, ready=ready, code=code, hold=hold, log=str(log))
    )
    return root / name


def ran(log: Path) -> list[str]:
    return log.read_text().split()


def test_a_new_build_that_comes_up_is_kept(tmp_path: Path) -> None:
    log = tmp_path / "ran"
    launcher = Launcher(tmp_path / "state", ["--socket", "x"], ready_timeout_s=30)
    old, new = build(tmp_path, "old", log), build(tmp_path, "new", log)
    launcher.builds._write("current", str(old))
    launcher.builds.try_next(new)
    assert launcher.run() == 0
    assert ran(log) == ["new"] and launcher.builds.current == str(new)
    assert launcher.builds.trying is None and launcher.builds.failed is None


def test_a_new_build_that_exits_or_hangs_is_refused_and_the_old_one_runs(
    tmp_path: Path,
) -> None:
    log = tmp_path / "ran"
    # A build that exits is refused however long it was given (a slow
    # machine must not turn its exit into a timeout); a hung one, after its time.
    launcher = Launcher(tmp_path / "state", [], ready_timeout_s=60)
    old = build(tmp_path, "old", log)
    launcher.builds._write("current", str(old))
    launcher.builds.try_next(build(tmp_path, "crashes", log, ready=False, code=3))
    assert launcher.run() == 0
    assert ran(log) == ["crashes", "old"] and launcher.builds.current == str(old)
    failed = launcher.builds.failed
    assert failed is not None and "exited with 3 before it was ready" in str(failed["why"])
    launcher = Launcher(tmp_path / "state", [], ready_timeout_s=0.5)
    launcher.builds.try_next(build(tmp_path, "hangs", log, ready="hang"))
    assert launcher.run() == 0
    assert ran(log)[-2:] == ["hangs", "old"] and launcher.builds.current == str(old)
    assert "not ready within" in str(
        json.loads((launcher.builds.dir / "failed").read_text())["why"]
    )


def test_a_child_asking_for_a_restart_is_started_again(tmp_path: Path) -> None:
    log = tmp_path / "ran"
    launcher = Launcher(tmp_path / "state", [], ready_timeout_s=30)
    first = build(tmp_path, "first", log, code=RESTART)
    launcher.builds._write("current", str(first))
    second = build(tmp_path, "second", log)
    # the first run asks for a restart after its update put 'second' to try
    (first / "warmcache_agent" / "__main__.py").write_text(
        (first / "warmcache_agent" / "__main__.py")
        .read_text()
        .replace(
            "sys.exit(",
            f"open({str(launcher.builds.dir / 'trying')!r}, 'w').write({str(second)!r}); sys.exit(",
            1,
        )
    )
    assert launcher.run() == 0
    assert ran(log) == ["first", "second"] and launcher.builds.current == str(second)


def test_a_stop_while_a_new_build_starts_is_not_held_against_it(tmp_path: Path) -> None:
    """SIGTERM (systemd stopping the unit) while the launcher waits for a new
    build to come up: the launcher stops its child and exits, and neither
    refuses the build nor starts the previous one."""
    log = tmp_path / "ran"
    state = tmp_path / "state"
    builds = Builds(state)
    builds._write("current", str(build(tmp_path, "old", log)))
    builds.try_next(build(tmp_path, "slow", log, ready="hang"))
    command = ["-m", "warmcache_agent.launcher", "--state-dir", str(state), "--ready-timeout", "60"]
    launcher = subprocess.Popen([sys.executable, *command, "--"])
    try:
        wait_for("the new build to start", lambda: log.exists() and ran(log) == ["slow"], 30)
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=30) == -signal.SIGTERM  # the child's end, passed on
    finally:
        launcher.kill()
        launcher.wait()
    assert ran(log) == ["slow"]  # the old build was not started on the way out
    assert builds.failed is None and builds.trying is not None  # tried again next start


def test_a_build_that_crashes_soon_after_ready_is_rolled_back_not_crash_looped(
    tmp_path: Path,
) -> None:
    """Ready, then exit 3 a moment later: it was kept, the launcher exited
    3, and every restart ran it again (issue 28, item 3b)."""
    log = tmp_path / "ran"
    launcher = Launcher(tmp_path / "state", [], ready_timeout_s=30, probation_s=30)
    old = build(tmp_path, "old", log)
    launcher.builds._write("current", str(old))
    launcher.builds.try_next(build(tmp_path, "flaky", log, code=3))
    assert launcher.run() == 0  # the old build ran again (and exited 0 here)
    assert ran(log) == ["flaky", "old"] and launcher.builds.current == str(old)
    failed = launcher.builds.failed
    assert failed is not None and failed["build"] == str(tmp_path / "flaky")
    assert "exited with 3 within its probation" in str(failed["why"])
    assert launcher.builds.probation is None


def test_a_crash_after_the_probation_is_the_builds_own(tmp_path: Path) -> None:
    log = tmp_path / "ran"
    hold = tmp_path / "hold"
    os.mkfifo(hold)
    launcher = Launcher(tmp_path / "state", [], ready_timeout_s=30, probation_s=0.2)
    launcher.builds._write("current", str(build(tmp_path, "old", log)))
    new = build(tmp_path, "new", log, code=3, hold=str(hold))
    launcher.builds.try_next(new)

    def crash_once_settled() -> None:  # beside the launcher (it wants the main thread)
        wait_for(
            "the build to pass its probation",
            lambda: launcher.builds.current == str(new) and launcher.builds.probation is None,
            30,
        )
        hold.write_text("exit now\n")  # then it crashes

    helper = threading.Thread(target=crash_once_settled)
    helper.start()
    assert launcher.run() == 3  # systemd restarts it: the build passed its probation
    helper.join()
    assert launcher.builds.current == str(new) and launcher.builds.failed is None


def test_a_launcher_that_died_during_a_probation_rolls_back_at_its_next_start(
    tmp_path: Path,
) -> None:
    log = tmp_path / "ran"
    launcher = Launcher(tmp_path / "state", [], ready_timeout_s=30, probation_s=30)
    old, new = build(tmp_path, "old", log), build(tmp_path, "new", log)
    launcher.builds._write("current", str(old))
    launcher.builds.try_next(new)
    launcher.builds.keep(probation_s=30)  # as a launcher killed right after "ready" left it
    assert launcher.builds.current == str(new)
    assert Launcher(tmp_path / "state", [], probation_s=30).run() == 0
    assert ran(log) == ["old"] and launcher.builds.current == str(old)
    failed = launcher.builds.failed
    assert failed is not None and "probation" in str(failed["why"])


def test_the_probation_comes_from_the_agents_config(tmp_path: Path) -> None:
    from warmcache_agent.launcher import _probation_s

    config = tmp_path / "agent.toml"
    config.write_text(
        'hypervisor = "h1"\nrack = "r1"\naz = "az1"\n'
        f'[inventory]\nkind = "sqlite"\npath = "{tmp_path / "s.db"}"\nupdate_probation_s = 7\n'
    )
    assert _probation_s(["--socket", "x", "--config", str(config)]) == 7.0
    assert _probation_s(["--config", str(tmp_path / "missing.toml")]) == 60.0
