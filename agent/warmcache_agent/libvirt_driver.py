"""LibvirtDriver: the ``HypervisorDriver`` port on libvirt.

The only module in warmcache that imports ``libvirt``. ``test:///default``
(no daemon, state per process: each agent process is its own fake host) and
``qemu:///system`` both work. Every VM's disks come in as device XML, its
root disk first (``warmcache_agent.disks``). Real guests boot their image's
kernel and initrd with the root on that disk (``KernelBoot``), else the
agent's ``[guest]`` fallback kernel, else firmware boot from the disk; they
write their console to a file (the readiness marker is read from it) and
answer health PINGs on a virtio-serial channel with their image version and
addresses.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from warmcache.ports import GuestReport, KernelBoot, Pinning, VmSpec
from warmcache_agent.config import GuestBootConfig
from warmcache_agent.guest import HEALTH_CHANNEL, READY

try:
    import libvirt
except ImportError:  # pragma: no cover - exercised only without the extra
    libvirt = None


_STATES = {
    0: "nostate",
    1: "running",
    2: "blocked",
    3: "paused",
    4: "shutdown",
    5: "shutoff",
    6: "crashed",
    7: "pmsuspended",
}


MAX_SOCKET_PATH = 107  # sun_path's 108 bytes, less the terminating NUL
SOCKET_NAME_SAMPLE = "h-0123456789abcdef.sock"  # every health socket's name is this long


class HypervisorFailure(Exception):
    """libvirt failed; the message is libvirt's."""


def _ignore_libvirt_errors(_ctx: object, _err: object) -> None:
    # libvirt prints every error to stderr by default; we raise them instead.
    return None


class LibvirtDriver:
    def __init__(
        self, uri: str, *, guest: GuestBootConfig | None = None, run_dir: Path | None = None
    ) -> None:
        if libvirt is None:
            raise HypervisorFailure(
                "libvirt-python is not installed: pip install 'warmcache[libvirt]'"
            )
        libvirt.registerErrorHandler(_ignore_libvirt_errors, None)
        self.uri = uri
        self._guest = guest
        self._run_dir = run_dir or Path("/run/warmcache-agent")
        if uri.startswith("test:"):
            self._domain_type = "test"
        else:
            self._guest = guest or GuestBootConfig()
            self._domain_type = self._guest.domain_type
            self._run_dir.mkdir(parents=True, exist_ok=True)
        # libvirt connections are thread-safe, but the test driver's define+start
        # pair is not atomic per name; one lock keeps each VM operation whole.
        self._lock = threading.Lock()
        self._answers: dict[str, tuple[float, str]] = {}  # the last PONG of each guest
        try:
            self._conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise HypervisorFailure(f"cannot open {uri}: {exc}") from exc

    def domain_xml(
        self,
        spec: VmSpec,
        pinning: Pinning | None = None,
        devices: Sequence[str] = (),
        boot: KernelBoot | None = None,
    ) -> str:
        f = spec.flavor
        tuning = ""
        if pinning:
            pins = "".join(
                f"<vcpupin vcpu='{v}' cpuset='{c}'/>" for v, c in enumerate(pinning.cpus)
            )
            cpuset = ",".join(map(str, pinning.cpus))
            # The emulator threads share the VM's CPUs, and memory comes from
            # the same node: nothing of the VM crosses the interconnect.
            tuning = (
                f"<cputune>{pins}<emulatorpin cpuset='{cpuset}'/></cputune>"
                f"<numatune><memory mode='strict' nodeset='{pinning.node}'/></numatune>"
            )
        os_xml, extra = "<os><type arch='x86_64'>hvm</type></os>", ""
        if self._guest is not None and self._domain_type != "test":
            os_xml = _os_xml(boot, self._guest) + (
                # ACPI: PCI hot-plug (disks) needs it
                "<features><acpi/><apic/></features>"
                "<on_poweroff>destroy</on_poweroff><on_crash>destroy</on_crash>"
            )
            log = escape(str(self.console_log(spec.name)))
            if len(str(self.health_socket(spec.name)).encode()) > MAX_SOCKET_PATH:
                raise HypervisorFailure(
                    f"{self.health_socket(spec.name)}: longer than a Unix socket path may be "
                    f"({MAX_SOCKET_PATH} bytes): give the agent a shorter state_dir"
                )
            # A VM with an address gets a NIC (user-mode: it needs no host
            # network; the guest configures the address the seed gives it).
            nic = (
                "<interface type='user'><model type='virtio'/></interface>" if spec.network else ""
            )
            extra = nic + (
                f"<serial type='file'><source path='{log}'/><target port='0'/></serial>"
                f"<channel type='unix'><source mode='bind' "
                f"path='{escape(str(self.health_socket(spec.name)))}'/>"
                f"<target type='virtio' name='{HEALTH_CHANNEL}'/></channel>"
                "<controller type='usb' model='none'/><memballoon model='none'/>"
            )
        return (
            f"<domain type='{self._domain_type}'>"
            f"<name>{escape(spec.name)}</name>"
            f"<memory unit='MiB'>{f.memory_mib}</memory>"
            f"<vcpu placement='static'>{f.vcpus}</vcpu>{tuning}{os_xml}"
            f"<description>warmcache flavor={escape(f.name)}</description>"
            f"<devices>{''.join(devices)}{extra}</devices>"
            "</domain>"
        )

    def console_log(self, name: str) -> Path:
        return self._run_dir / f"{name}.console.log"

    def health_socket(self, name: str) -> Path:
        """The guest's health channel: a short name (a Unix socket path has
        at most 107 bytes, and state folders can be deep), or the older
        ``<name>.health`` of a guest defined before."""
        legacy = self._run_dir / f"{name}.health"
        if legacy.exists():
            return legacy
        return self._socket_dir() / f"h-{hashlib.sha256(name.encode()).hexdigest()[:16]}.sock"

    def _socket_dir(self) -> Path:
        """``run_dir``, or when its sockets' paths would be too long, a short
        folder of the system's temporary one named for ``run_dir`` (made
        private to root on first use)."""
        if len(str(self._run_dir / SOCKET_NAME_SAMPLE).encode()) <= MAX_SOCKET_PATH:
            return self._run_dir
        digest = hashlib.sha256(str(self._run_dir).encode()).hexdigest()[:12]
        short = Path(tempfile.gettempdir()) / f"warmcache-{digest}"
        short.mkdir(mode=0o700, exist_ok=True)
        return short

    @property
    def real_guests(self) -> bool:
        return self._domain_type != "test"

    def wait_ready(self, name: str, timeout_s: float) -> None:
        """Real guests: until the readiness marker is on their console."""
        if not self.real_guests:
            return
        deadline = time.monotonic() + timeout_s
        log = self.console_log(name)
        while time.monotonic() < deadline:
            if log.exists() and READY.encode() in log.read_bytes():
                return
            if self.state(name) not in ("running", "blocked"):
                raise HypervisorFailure(f"{name} stopped while booting ({self.state(name)})")
            time.sleep(0.05)
        raise HypervisorFailure(f"{name} not ready after {timeout_s:.0f} s")

    def guest_report(self, name: str) -> GuestReport:
        """What the guest says of itself in its health answer (``PONG
        image=<version> <address/prefix>...``); test domains have no guest."""
        if not self.real_guests:
            return GuestReport()
        fresh = self._answers.pop(name, None)  # the probe just before asked already
        reply = fresh[1] if fresh and time.monotonic() - fresh[0] < 1.0 else self._ping(name)
        return parse_pong(reply or "")

    def probe(self, name: str, attempts: int = 3, timeout_s: float = 1.0) -> bool:
        """Real guests answer PING on their health channel; test domains
        have no guest, so their running state is all there is.

        A guest re-opens its end of the channel after each host disconnect,
        and a PING sent in that gap is lost: a few attempts, a fresh
        connection each, tell a busy moment from a dead guest."""
        if not self.real_guests:
            return self.state(name) == "running"
        reply = self._ping(name, attempts, timeout_s)
        if reply is not None:
            self._answers[name] = (time.monotonic(), reply)
        return reply is not None

    def _ping(self, name: str, attempts: int = 3, timeout_s: float = 1.0) -> str | None:
        """The guest's ``PONG ...`` line, or None if it does not answer."""
        for attempt in range(attempts):
            if attempt:
                time.sleep(0.2)
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(timeout_s)
                    sock.connect(str(self.health_socket(name)))
                    sock.sendall(b"PING\n")
                    reply = b""
                    while not reply.endswith(b"\n") and len(reply) < 4096:
                        chunk = sock.recv(4096)
                        if not chunk:
                            break
                        reply += chunk
                    if reply.startswith(b"PONG"):
                        return reply.decode(errors="replace").strip()
            except OSError:
                continue
        return None

    def define_and_start(
        self,
        spec: VmSpec,
        pinning: Pinning | None = None,
        devices: Sequence[str] = (),
        boot: KernelBoot | None = None,
    ) -> str:
        with self._lock:
            try:
                dom = self._conn.defineXML(self.domain_xml(spec, pinning, devices, boot))
                dom.create()
                return str(dom.UUIDString())
            except libvirt.libvirtError as exc:
                raise HypervisorFailure(str(exc)) from exc

    def destroy(self, name: str) -> None:
        with self._lock:
            try:
                dom = self._conn.lookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return
                raise HypervisorFailure(str(exc)) from exc
            try:
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
            except libvirt.libvirtError as exc:
                raise HypervisorFailure(str(exc)) from exc
            if self.real_guests:
                self.console_log(name).unlink(missing_ok=True)
                self.health_socket(name).unlink(missing_ok=True)

    def standby(self, name: str, state: str) -> None:
        """suspend / managedSave (restored running) / resume or restore."""
        with self._lock:
            try:
                dom = self._conn.lookupByName(name)
                current = _STATES.get(dom.state()[0], "unknown")
                if state == "paused" and current == "running":
                    dom.suspend()
                elif state == "saved" and current in ("running", "paused"):
                    dom.managedSave(libvirt.VIR_DOMAIN_SAVE_RUNNING)
                elif state == "running" and current == "paused":
                    dom.resume()
                elif state == "running" and current == "shutoff":
                    if not dom.hasManagedSaveImage(0):
                        raise HypervisorFailure(f"{name} is stopped and has no saved image")
                    dom.create()  # restores the managed save image
                elif state != current and not (state == "saved" and current == "shutoff"):
                    raise HypervisorFailure(f"{name} is {current}: cannot go {state}")
            except libvirt.libvirtError as exc:
                raise HypervisorFailure(str(exc)) from exc

    def has_saved_image(self, name: str) -> bool:
        try:
            return bool(self._conn.lookupByName(name).hasManagedSaveImage(0))
        except libvirt.libvirtError as exc:
            raise HypervisorFailure(str(exc)) from exc

    def attach(self, name: str, device_xml: str) -> None:
        """Hot-plug a device into the running VM and its persistent config."""
        self._device(name, device_xml, attach=True)

    def detach(self, name: str, device_xml: str) -> None:
        self._device(name, device_xml, attach=False)

    def _device(self, name: str, device_xml: str, *, attach: bool) -> None:
        flags = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG
        try:
            dom = self._conn.lookupByName(name)
            if attach:
                dom.attachDeviceFlags(device_xml, flags)
            else:
                dom.detachDeviceFlags(device_xml, flags)
        except libvirt.libvirtError as exc:
            raise HypervisorFailure(str(exc)) from exc

    def state(self, name: str) -> str:
        try:
            dom = self._conn.lookupByName(name)
            return _STATES.get(dom.state()[0], "unknown")
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return "missing"
            raise HypervisorFailure(str(exc)) from exc

    def domains(self) -> list[str]:
        try:
            return sorted(d.name() for d in self._conn.listAllDomains())
        except libvirt.libvirtError as exc:
            raise HypervisorFailure(str(exc)) from exc

    def close(self) -> None:
        self._conn.close()
        short = self._socket_dir()
        if short != self._run_dir:
            with contextlib.suppress(OSError):  # guests still running keep it
                short.rmdir()


def _os_xml(boot: KernelBoot | None, fallback: GuestBootConfig) -> str:
    """The image's kernel, else the agent's fallback kernel, else firmware
    boot from the first disk (the VM's root)."""
    head = "<os><type arch='x86_64' machine='pc'>hvm</type>"
    if boot is None and fallback.kernel:
        boot = KernelBoot(fallback.kernel, fallback.initrd or None, fallback.cmdline)
    if boot is None:
        return head + "<boot dev='hd'/></os>"
    initrd = f"<initrd>{escape(boot.initrd)}</initrd>" if boot.initrd else ""
    return (
        f"{head}<kernel>{escape(boot.kernel)}</kernel>{initrd}"
        f"<cmdline>{escape(boot.cmdline)}</cmdline></os>"
    )


def parse_pong(reply: str) -> GuestReport:
    """``PONG image=v2 10.0.0.5/24`` -> image version and addresses (an
    older guest's ``PONG <addresses>`` too)."""
    words = reply.split()[1:] if reply.startswith("PONG") else []
    version = next((w.removeprefix("image=") for w in words if w.startswith("image=")), "")
    return GuestReport(tuple(w for w in words if "/" in w and "=" not in w), version)
