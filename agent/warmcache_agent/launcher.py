"""The agent's launcher: a process that runs the agent as its child from the
build it should run, and goes back to the previous build when a new one
does not come up.

Builds live under ``<state_dir>/versions/`` (``warmcache_agent.updater``
installs them there, beside the base environment, which is build zero).
``current`` names the build in use (none: the base environment);
``trying`` a new one to start. A child started from ``trying`` must say it
is up within ``ready_timeout_s`` (``notify_ready()``, through a pipe the
launcher hands it: no polling); then ``trying`` becomes ``current``.
Otherwise (not ready in time, or it exits first) it is stopped, the reason
is written to ``failed`` and the child is started from ``current`` again.
A build kept is on probation for ``update_probation_s`` (the agent config's
``[inventory]``, or ``--probation``): if it exits with an error within that
time of saying it was ready, it is refused the same way and the previous
build runs again; the probation is written down
(``probation``), so a launcher that died with it (the whole unit crashed)
rolls back at its next start. A crash loop so always ends on the last good
build.
A child that exits with ``RESTART`` (75) asks to be started again (after an
update was installed); any other exit ends the launcher with the child's
code. VMs are libvirtd's: none stops when the agent does, and the lockfile
is on disk.

The agent knows it runs under a launcher (and so may update itself) by
``WARMCACHE_LAUNCHER_STATE``, the state directory the launcher hands it;
``warmcache_agent.syncer`` does the updating.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

RESTART = 75  # the child's "start me again" (EX_TEMPFAIL)
READY_FD = "WARMCACHE_READY_FD"
STATE_ENV = "WARMCACHE_LAUNCHER_STATE"


def notify_ready() -> None:
    """Called by the agent once it is up (its host facts published): tells
    a launcher waiting on a new build to keep it (nothing without one)."""
    fd = os.environ.pop(READY_FD, None)
    if fd is not None:
        try:
            os.write(int(fd), b"ready\n")
            os.close(int(fd))
        except OSError:
            pass  # the launcher gave up on us already


class Builds:
    """The ``versions/`` directory's pointers: ``current``, ``trying``, ``failed``."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir.resolve() / "versions"
        self.dir.mkdir(parents=True, exist_ok=True)

    def _read(self, name: str) -> str | None:
        path = self.dir / name
        return path.read_text().strip() or None if path.exists() else None

    def _write(self, name: str, value: str) -> None:
        tmp = self.dir / f".{name}.tmp"
        tmp.write_text(value + "\n")
        tmp.replace(self.dir / name)

    @property
    def current(self) -> str | None:
        return self._read("current")

    @property
    def trying(self) -> str | None:
        return self._read("trying")

    @property
    def failed(self) -> dict[str, object] | None:
        text = self._read("failed")
        return json.loads(text) if text else None

    def try_next(self, build: Path) -> None:
        """The updater's last step: start ``build`` at the next restart."""
        self._write("trying", str(build))

    def keep(self, probation_s: float = 0.0) -> None:
        """``trying`` became ``current``; on probation for ``probation_s``."""
        if probation_s > 0:
            self._write(
                "probation",
                json.dumps(
                    {
                        "build": self.trying or "",
                        "previous": self.current or "",
                        "until": time.time() + probation_s,
                    }
                ),
            )
        self._write("current", self.trying or "")
        (self.dir / "trying").unlink(missing_ok=True)

    @property
    def probation(self) -> dict[str, object] | None:
        text = self._read("probation")
        try:
            found = json.loads(text) if text else None
        except ValueError:
            return None
        return found if isinstance(found, dict) else None

    def settle(self) -> None:
        """The build on probation passed it."""
        (self.dir / "probation").unlink(missing_ok=True)

    def roll_back(self, why: str) -> None:
        """The build on probation failed it: the previous build is current
        again, and ``failed`` says why."""
        probation = self.probation or {}
        self._write(
            "failed",
            json.dumps(
                {"build": probation.get("build") or self.current, "why": why, "at": time.time()}
            ),
        )
        self._write("current", str(probation.get("previous") or ""))
        self.settle()

    def refuse(self, why: str) -> None:
        self._write("failed", json.dumps({"build": self.trying, "why": why, "at": time.time()}))
        (self.dir / "trying").unlink(missing_ok=True)

    def reported(self) -> None:
        """The agent told the store about ``failed``: keep it as the last
        one reported, so it is told once."""
        path = self.dir / "failed"
        if path.exists():
            path.replace(self.dir / "failed.reported")

    def prune(self, keep: set[str]) -> None:
        """Remove installed builds other than ``keep`` and the pointers' own."""
        wanted = {
            str(Path(p).resolve()) for p in keep | {self.current or "", self.trying or ""} if p
        }
        probation = self.probation or {}
        wanted |= {
            str(Path(str(p)).resolve()) for p in probation.values() if isinstance(p, str) and p
        }
        for build in self.dir.iterdir():
            leftover = build.name.startswith(".") and build.name.endswith((".staging", ".trash"))
            if build.is_dir() and (
                leftover or (not build.name.startswith(".") and str(build.resolve()) not in wanted)
            ):
                shutil.rmtree(build, ignore_errors=True)


class Launcher:
    def __init__(
        self,
        state_dir: Path,
        args: list[str],
        ready_timeout_s: float = 60.0,
        probation_s: float = 60.0,
    ) -> None:
        self.builds = Builds(state_dir)
        self._args = args
        self._ready_timeout_s = ready_timeout_s
        self._probation_s = probation_s
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False  # SIGTERM or SIGINT came: no new start

    def _start(self, build: str | None, ready_fd: int | None = None) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.pop(READY_FD, None)
        env[STATE_ENV] = str(self.builds.dir.parent)
        if build:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (build, env.get("PYTHONPATH")) if p)
        fds: tuple[int, ...] = ()
        if ready_fd is not None:
            env[READY_FD] = str(ready_fd)
            fds = (ready_fd,)
        return subprocess.Popen(
            # -P: the working directory is not on the path (a checkout there
            # would shadow the build's own warmcache package)
            [sys.executable, "-P", "-m", "warmcache_agent", *self._args],
            env=env,
            pass_fds=fds,
        )

    def _try(self, build: str) -> subprocess.Popen[bytes]:
        """Start ``build``; keep it if it says it is up in time, else go back."""
        read, write = os.pipe()
        child = self.child = self._start(build, write)
        os.close(write)  # the child holds the only write end: EOF when it exits
        try:
            ready, _, _ = select.select([read], [], [], self._ready_timeout_s)
            said = os.read(read, 64) if ready else b""
        finally:
            os.close(read)
        if said.startswith(b"ready"):
            self.builds.keep(self._probation_s)
            return child
        if self.stopping:  # told to stop while it was starting: not the build's fault
            return child
        code = child.poll()
        if ready and code is None:
            # The pipe ended without "ready": the child is exiting. Its exit
            # may not be reaped yet (a loaded machine showed it): wait for it,
            # or a crash would be recorded as a timeout.
            try:
                code = child.wait(EXIT_WAIT_S)
            except subprocess.TimeoutExpired:
                code = None
        why = (
            f"exited with {code} before it was ready"
            if code is not None
            else "closed its ready pipe without saying it was ready"
            if ready
            else f"not ready within {self._ready_timeout_s:.0f} s"
        )
        _stop(child)
        self.builds.refuse(why)
        self.child = self._start(self.builds.current)
        return self.child

    def run(self) -> int:
        def forward(signum: int, _frame: FrameType | None) -> None:
            if signum != signal.SIGHUP:
                self.stopping = True
            if self.child is not None and self.child.poll() is None:
                self.child.send_signal(signum)

        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {signum: signal.signal(signum, forward) for signum in signals}
        try:
            if self.builds.probation is not None:  # a launcher died with a build on probation
                self.builds.roll_back("stopped with its launcher while on probation")
            while True:
                trying = self.builds.trying
                self.child = self._try(trying) if trying else self._start(self.builds.current)
                code = self._wait(self.child)
                if self.builds.probation is not None:
                    if code in (0, RESTART) or self.stopping:
                        self.builds.settle()  # asked to restart, or stopped: not a crash
                    else:
                        self.builds.roll_back(
                            f"exited with {code} within its probation "
                            f"({self._probation_s:.0f} s after it was ready)"
                        )
                        continue  # the previous build again
                if code != RESTART or self.stopping:
                    return code
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _wait(self, child: subprocess.Popen[bytes]) -> int:
        """The child's exit code; a build on probation that outlives it is
        settled on the way."""
        probation = self.builds.probation
        if probation is not None:
            until = probation.get("until")
            left = float(until) - time.time() if isinstance(until, int | float) else 0.0
            try:
                return child.wait(max(0.0, left))
            except subprocess.TimeoutExpired:
                self.builds.settle()
        return child.wait()


EXIT_WAIT_S = 10.0  # how long a child whose ready pipe ended may take to exit


def _stop(child: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(grace_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _probation_s(agent_args: list[str], default: float = 60.0) -> float:
    """``[inventory] update_probation_s`` of the agent's ``--config`` (a
    config that does not load is the agent's to refuse, not the launcher's:
    the default then)."""
    from warmcache.errors import ConfigError
    from warmcache_agent.config import load_agent_config

    try:
        path = agent_args[agent_args.index("--config") + 1]
        inventory = load_agent_config(path).inventory
    except (ConfigError, ValueError, IndexError, OSError):
        return default
    return inventory.update_probation_s if inventory is not None else default


def main() -> None:
    argv = sys.argv[1:]
    if "--" not in argv:
        sys.exit(
            "usage: python -m warmcache_agent.launcher --state-dir DIR "
            "[--ready-timeout S] [--probation S] -- AGENT ARGS"
        )
    split = argv.index("--")
    own = dict(zip(argv[:split:2], argv[1:split:2], strict=False))
    if "--state-dir" not in own:
        sys.exit("warmcache_agent.launcher: --state-dir is required")
    agent_args = argv[split + 1 :]
    launcher = Launcher(
        Path(own["--state-dir"]),
        agent_args,
        float(own.get("--ready-timeout", "60")),
        float(own.get("--probation", _probation_s(agent_args))),
    )
    code = launcher.run()
    if code < 0:  # the child died of a signal: so does the launcher (systemd sees a clean stop)
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


if __name__ == "__main__":
    main()
