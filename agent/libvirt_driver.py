"""LibvirtDriver: the ``HypervisorDriver`` port on libvirt.

The only module in warmcache that imports ``libvirt``. ``test:///default``
(no daemon, state per process: each agent process is its own fake host) and
``qemu:///system`` both work; the domain type follows the URI.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from xml.sax.saxutils import escape

from warmcache.ports import Pinning, VmSpec

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


class HypervisorFailure(Exception):
    """libvirt failed; the message is libvirt's."""


def _ignore_libvirt_errors(_ctx: object, _err: object) -> None:
    # libvirt prints every error to stderr by default; we raise them instead.
    return None


class LibvirtDriver:
    def __init__(self, uri: str) -> None:
        if libvirt is None:
            raise HypervisorFailure(
                "libvirt-python is not installed: pip install 'warmcache[libvirt]'"
            )
        libvirt.registerErrorHandler(_ignore_libvirt_errors, None)
        self.uri = uri
        self._domain_type = "test" if uri.startswith("test:") else "qemu"
        # libvirt connections are thread-safe, but the test driver's define+start
        # pair is not atomic per name; one lock keeps each VM operation whole.
        self._lock = threading.Lock()
        try:
            self._conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise HypervisorFailure(f"cannot open {uri}: {exc}") from exc

    def domain_xml(self, spec: VmSpec, pinning: Pinning | None = None,
                   devices: Sequence[str] = ()) -> str:
        f = spec.flavor
        tuning = ""
        if pinning:
            pins = "".join(f"<vcpupin vcpu='{v}' cpuset='{c}'/>"
                           for v, c in enumerate(pinning.cpus))
            cpuset = ",".join(map(str, pinning.cpus))
            # The emulator threads share the VM's CPUs, and memory comes from
            # the same node: nothing of the VM crosses the interconnect.
            tuning = (f"<cputune>{pins}<emulatorpin cpuset='{cpuset}'/></cputune>"
                      f"<numatune><memory mode='strict' nodeset='{pinning.node}'/></numatune>")
        return (
            f"<domain type='{self._domain_type}'>"
            f"<name>{escape(spec.name)}</name>"
            f"<memory unit='MiB'>{f.memory_mib}</memory>"
            f"<vcpu placement='static'>{f.vcpus}</vcpu>{tuning}"
            "<os><type arch='x86_64'>hvm</type></os>"
            f"<description>warmcache flavor={escape(f.name)}</description>"
            f"<devices>{''.join(devices)}</devices>"
            "</domain>"
        )

    def define_and_start(self, spec: VmSpec, pinning: Pinning | None = None,
                         devices: Sequence[str] = ()) -> str:
        with self._lock:
            try:
                dom = self._conn.defineXML(self.domain_xml(spec, pinning, devices))
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
                dom.undefine()
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
