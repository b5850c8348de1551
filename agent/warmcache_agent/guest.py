"""A small real guest to boot under QEMU: Debian's cloud kernel and a busybox
initramfs, prepared from Debian packages (ENVIRONMENT.md: stock kernels boot
here only under software emulation, type='qemu').

The initramfs ``/init``:

* loads the virtio modules the cloud kernel ships as modules;
* mounts the NoCloud seed (ISO 9660, label ``cidata``) and runs its
  ``user-data`` (cloud-init's job on a full image), echoing it between
  markers on the console;
* prints ``WARMCACHE-READY`` on the serial console (the agent's readiness
  signal, read from the console log file);
* configures the static address of the seed's ``network-config`` (the
  first address, its default route) on ``eth0`` (virtio-net), as
  cloud-init would, and prints ``WARMCACHE-ADDRESS <address/prefix>``;
* answers ``PING`` with ``PONG <its addresses>`` on the virtio-serial port
  named ``org.warmcache.health`` (the agent's health probe, which so learns
  the addresses the guest really has), from shell builtins only: the
  addresses are read into a file at start and every 2 s, not per PING;
* prints ``WARMCACHE-DISK <dev>`` when a disk is hot-plugged.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

READY = "WARMCACHE-READY"
HEALTH_CHANNEL = "org.warmcache.health"
# What the guest needs; their dependencies are read from each module's
# own modinfo (``depends=``) and loaded first.
WANTED = ("virtio_pci", "virtio_console", "virtio_blk", "isofs", "virtio_net")

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/order); do
  insmod /lib/modules/$m.ko || echo "WARMCACHE-NOMODULE $m"
done
mkdir -p /seed
for d in /dev/vd?; do
  if mount -t iso9660 -o ro "$d" /seed 2>/dev/null; then
    if [ -f /seed/network-config ]; then
      addr=$(grep -o '[0-9a-fA-F.:]*[0-9a-fA-F]/[0-9]*' /seed/network-config | head -n 1)
      gw=$(sed -n 's/.*"via": "\\([^"]*\\)".*/\\1/p' /seed/network-config | head -n 1)
      # static, as the config says: no address from router advertisements
      echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_ra 2>/dev/null
      echo 0 > /proc/sys/net/ipv6/conf/eth0/autoconf 2>/dev/null
      ip link set eth0 up && ip addr add "$addr" dev eth0 && echo "WARMCACHE-ADDRESS $addr"
      [ -n "$gw" ] && ip route add default via "$gw" dev eth0
    fi
    if [ -f /seed/user-data ]; then
      echo WARMCACHE-USERDATA-BEGIN; cat /seed/user-data; echo WARMCACHE-USERDATA-END
      sh /seed/user-data
    fi
    break
  fi
done
addresses() {  # this guest's addresses, address/prefix, link-local ones left out
  ip addr show dev eth0 2>/dev/null | sed -n 's/.*inet6* \\([0-9a-fA-F.:]*\\/[0-9]*\\).*/\\1/p' \\
    | grep -v '^fe80' | tr '\\n' ' '
}
seen="$(ls /sys/block)"
echo WARMCACHE-READY
port=""
for i in 1 2 3 4 5 6 7 8 9 10; do
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat $p/name 2>/dev/null)" = "org.warmcache.health" ] && port=/dev/$(basename $p)
  done
  [ -n "$port" ] && break
  sleep 0.2
done
mkdir -p /run
addresses > /run/addresses
if [ -n "$port" ]; then
  echo "WARMCACHE-HEALTH-PORT $port"
  # Shell builtins only: a PONG starts no process, so a guest just resumed
  # answers as soon as it runs (the addresses are refreshed below).
  (while true; do
     exec 3<>"$port"
     while read -r line <&3; do
       read -r addrs < /run/addresses
       echo "PONG $addrs" >&3
     done
     exec 3<&-
     sleep 0.1
   done) &
else
  echo WARMCACHE-NO-HEALTH-PORT; ls /sys/class/virtio-ports /dev | tr '\n' ' '
fi
tick=0
while true; do
  for b in $(ls /sys/block); do
    case " $seen " in *" $b "*) ;; *) echo "WARMCACHE-DISK $b"; seen="$seen $b";; esac
  done
  tick=$((tick + 1))
  if [ $tick -ge 20 ]; then
    tick=0
    addresses > /run/addresses.new && mv /run/addresses.new /run/addresses
  fi
  sleep 0.1
done
"""


class GuestImageError(Exception):
    pass


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path


def _run(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise GuestImageError(f"{' '.join(args)}: {result.stderr.strip()[-500:]}")
    return result.stdout


def _cloud_kernel_package() -> str:
    """The versioned kernel package behind linux-image-cloud-amd64 (refreshing
    apt's package lists once if they do not know it: a fresh machine may
    have its packages installed and no lists)."""
    for attempt in range(2):
        try:
            out = _run("apt-cache", "depends", "linux-image-cloud-amd64")
        except GuestImageError:
            out = ""
        for line in out.splitlines():
            line = line.strip()
            if line.startswith("Depends:") and "linux-image-" in line:
                return line.split()[-1]
        if attempt == 0:
            _run("apt-get", "update", "-qq")
    raise GuestImageError("cannot resolve linux-image-cloud-amd64 from apt")


def _depends(ko: Path) -> list[str]:
    data = ko.read_bytes()
    at = data.find(b"\0depends=")
    if at < 0:
        return []
    raw = data[at + len(b"\0depends=") : data.index(b"\0", at + 1)].decode()
    return [d for d in raw.split(",") if d]


def load_order(modules_dir: Path, wanted: tuple[str, ...]) -> list[tuple[str, Path]]:
    """``wanted`` and their dependencies, dependencies first."""
    index = {ko.stem: ko for ko in modules_dir.glob("*/kernel/**/*.ko")}
    order: list[tuple[str, Path]] = []

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if any(n == name for n, _ in order):
            return
        if name in trail:
            raise GuestImageError(f"module dependency cycle: {' -> '.join(trail)}")
        if name not in index:
            raise GuestImageError(f"kernel module {name}.ko is missing")
        for dep in _depends(index[name]):
            visit(dep, (*trail, name))
        order.append((name, index[name]))

    for name in wanted:
        visit(name, ())
    return order


def image_version() -> str:
    """What the initramfs is made of: a cached one of another version is rebuilt."""
    return hashlib.sha256((INIT + " ".join(WANTED)).encode()).hexdigest()[:16]


def prepare(cache: Path) -> GuestImage:
    """Kernel and initramfs in ``cache`` (made once per ``image_version``, then reused)."""
    kernel, initrd, version = cache / "vmlinuz", cache / "initrd.gz", cache / "version"
    if (
        kernel.exists()
        and initrd.exists()
        and version.exists()
        and version.read_text().strip() == image_version()
    ):
        return GuestImage(kernel, initrd)
    busybox = shutil.which("busybox")
    if busybox is None:
        raise GuestImageError("busybox is missing (apt-get install busybox-static)")
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    package = _cloud_kernel_package()
    _run("apt-get", "download", package, cwd=work)
    deb = next(work.glob("linux-image-*.deb"))
    _run("dpkg-deb", "-x", str(deb), str(work / "x"))
    root = work / "root"
    for d in ("bin", "dev", "proc", "sys", "lib/modules", "seed"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(busybox, root / "bin" / "busybox")
    order = load_order(work / "x" / "lib" / "modules", WANTED)
    for module, path in order:
        shutil.copy(path, root / "lib" / "modules" / f"{module}.ko")
    (root / "lib" / "modules" / "order").write_text(" ".join(m for m, _ in order) + "\n")
    (root / "init").write_text(INIT)
    os.chmod(root / "init", 0o755)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    archive = subprocess.run(
        [busybox, "cpio", "-o", "-H", "newc"],
        cwd=root,
        input="\n".join(files).encode(),
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise GuestImageError(f"cpio: {archive.stderr.decode()[-300:]}")
    initrd.with_suffix(".tmp").write_bytes(gzip.compress(archive.stdout))
    initrd.with_suffix(".tmp").replace(initrd)
    shutil.copy(next((work / "x" / "boot").glob("vmlinuz-*")), kernel)
    version.write_text(image_version() + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return GuestImage(kernel, initrd)


def agent_config_toml(
    image: GuestImage,
    *,
    hypervisor: str,
    rack: str,
    az: str,
    memory_mib: int = 4096,
    vcpus: int = 32,
) -> str:
    """An agent config that boots real guests from ``image`` on qemu:///system.

    CPUs are not pinned: these guests share a small machine, so ``vcpus`` is
    a capacity to hand out, not the host's CPU count."""
    return (
        f'hypervisor = "{hypervisor}"\nrack = "{rack}"\naz = "{az}"\n'
        'libvirt_uri = "qemu:///system"\nstate_dir = "."\npin_cpus = false\n'
        "ready_timeout_s = 120\n"
        f'[guest]\nkernel = "{image.kernel}"\ninitrd = "{image.initrd}"\n'
        f"[capacity]\nvcpus = {vcpus}\nmemory_mib = {memory_mib}\ndisk_gib = 200\n"
        "[reserved]\nvcpus = 0\nmemory_mib = 0\ndisk_gib = 0\n"
    )


def default_cache() -> Path:
    import os

    from platformdirs import user_cache_dir

    return Path(
        os.environ.get("WARMCACHE_GUEST_CACHE", Path(user_cache_dir("warmcache")) / "guest")
    )
