"""Start the system libvirt daemons by hand (no systemd on these machines),
as ENVIRONMENT.md measured: a ``libvirt-qemu`` user and group must exist,
QEMU runs as root (``user``/``group`` in qemu.conf; as another user every
define takes ~45 s here), ``virtlogd`` first, then ``libvirtd``. Daemons
started here are stopped by their PIDs; ones already running are left be.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SOCKET = Path("/var/run/libvirt/libvirt-sock")
QEMU_CONF = Path("/etc/libvirt/qemu.conf")


class LibvirtdUnavailable(Exception):
    pass


@dataclass
class Libvirtd:
    run_dir: Path
    started: list[tuple[str, int]] = field(default_factory=list)

    def _prepare_host(self) -> None:
        if os.geteuid() != 0:
            raise LibvirtdUnavailable("starting libvirtd needs root")
        for binary in ("/usr/sbin/libvirtd", "/usr/sbin/virtlogd", "/usr/bin/qemu-system-x86_64"):
            if not Path(binary).exists():
                raise LibvirtdUnavailable(
                    f"{binary} is missing (apt-get install libvirt-daemon-driver-qemu "
                    "qemu-system-x86)"
                )
        try:
            grp.getgrnam("libvirt-qemu")
        except KeyError:
            subprocess.run(["groupadd", "-r", "libvirt-qemu"], check=True)
        try:
            pwd.getpwnam("libvirt-qemu")
        except KeyError:
            subprocess.run(
                [
                    "useradd",
                    "-r",
                    "-g",
                    "libvirt-qemu",
                    "-d",
                    "/var/lib/libvirt",
                    "-s",
                    "/usr/sbin/nologin",
                    "libvirt-qemu",
                ],
                check=True,
            )
        QEMU_CONF.parent.mkdir(parents=True, exist_ok=True)
        conf = QEMU_CONF.read_text() if QEMU_CONF.exists() else ""
        if 'user = "root"' not in conf:
            QEMU_CONF.write_text(conf + '\nuser = "root"\ngroup = "root"\n')
        for d in (
            "/var/run/libvirt",
            "/var/log/libvirt",
            "/var/lib/libvirt/qemu",
            "/var/cache/libvirt",
        ):
            Path(d).mkdir(parents=True, exist_ok=True)

    def ensure(self, timeout_s: float = 30.0) -> Libvirtd:
        if SOCKET.exists() and self._answers():
            return self
        self._prepare_host()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for daemon in ("virtlogd", "libvirtd"):
            pidfile = self.run_dir / f"{daemon}.pid"
            pidfile.unlink(missing_ok=True)
            subprocess.run([f"/usr/sbin/{daemon}", "-d", "-p", str(pidfile)], check=True)
            deadline = time.monotonic() + timeout_s
            while not (pidfile.exists() and pidfile.read_text().strip()):
                if time.monotonic() > deadline:
                    raise LibvirtdUnavailable(f"{daemon} wrote no pidfile")
                time.sleep(0.05)
            self.started.append((daemon, int(pidfile.read_text())))
        deadline = time.monotonic() + timeout_s
        while not (SOCKET.exists() and self._answers()):
            if time.monotonic() > deadline:
                self.stop()
                raise LibvirtdUnavailable(f"libvirtd did not answer within {timeout_s:.0f} s")
            time.sleep(0.1)
        return self

    @staticmethod
    def _answers() -> bool:
        result = subprocess.run(
            ["virsh", "-c", "qemu:///system", "version"],
            capture_output=True,
            check=False,
            timeout=60,
        )
        return result.returncode == 0

    def stop(self) -> None:
        """Stop what this object started (libvirtd first), by PID."""
        for _name, pid in reversed(self.started):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                os.kill(pid, signal.SIGKILL)
        self.started.clear()
