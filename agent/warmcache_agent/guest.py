"""A small real guest to boot under QEMU, made here from Debian packages
(ENVIRONMENT.md: stock kernels boot here only under software emulation,
type='qemu'), as an image of the catalog: a root disk and the kernel and
initrd that boot it (the image's ``boot`` block).

* **The kernel** is Debian's cloud kernel (downloaded as a package, never
  installed), as the ELF ``vmlinux`` inside its bzImage when ``unlz4`` can
  take it out (QEMU boots that through PVH, ~0.5 s faster under software
  emulation than the bzImage's own decompressor), else the bzImage.
* **The initrd** (``BOOT_INIT``) is a busybox initramfs that loads the
  virtio modules the cloud kernel ships as modules, mounts the VM's own
  root disk (ext4 on a virtio disk, the one holding ``/etc/image-version``)
  and switches to it.
* **The root disk** (``build_image``) is an ext4 filesystem made from a
  folder without mounting anything (``mke2fs -d``) and turned into a qcow2:
  busybox, ``/etc/image-version`` and an ``/init`` (``ROOT_INIT``) that

  - mounts the NoCloud seed (ISO 9660, label ``cidata``) and runs its
    ``user-data`` (cloud-init's job on a full image), echoing it between
    markers on the console;
  - configures the static address of the seed's ``network-config`` (the
    first address, its default route) on ``eth0`` (virtio-net), as
    cloud-init would, and prints ``WARMCACHE-ADDRESS <address/prefix>``;
  - prints ``WARMCACHE-IMAGE <version>`` and ``WARMCACHE-BLOCK <disks>``
    (the disks it has at boot), then ``WARMCACHE-READY`` on the serial
    console (the agent's readiness signal, read from the console log);
  - answers ``PING`` with ``PONG image=<version> <its addresses>`` on the
    virtio-serial port named ``org.warmcache.health`` (the agent's health
    probe, which so learns which image the guest booted and the addresses
    it really has), from shell builtins only: the addresses are read into
    a file at start and every 2 s, not per PING;
  - prints ``WARMCACHE-DISK <dev>`` when a disk is hot-plugged.

Writes inside a guest land in its own root disk (a qcow2 overlay of the
image on its host): never in the image, never in another guest.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from warmcache.images import BootFiles, Image, ImageFile

READY = "WARMCACHE-READY"
HEALTH_CHANNEL = "org.warmcache.health"
CMDLINE = "console=ttyS0 quiet panic=-1"
# What the initramfs loads; their dependencies are read from each module's
# own modinfo (``depends=``) and loaded first. ext4 is built in.
WANTED = ("virtio_pci", "virtio_console", "virtio_blk", "isofs", "virtio_net")

BOOT_INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/order); do
  insmod /lib/modules/$m.ko || echo "WARMCACHE-NOMODULE $m"
done
mkdir -p /newroot
for i in $(seq 1 100); do
  for d in /dev/vd?; do
    if mount -t ext4 -o rw "$d" /newroot 2>/dev/null; then
      [ -f /newroot/etc/image-version ] && [ -x /newroot/init ] && break 2
      umount /newroot
    fi
  done
  sleep 0.05
done
if ! [ -f /newroot/etc/image-version ]; then
  echo WARMCACHE-NO-ROOT; ls /dev | tr '\n' ' '; poweroff -f
fi
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /init
"""

ROOT_INIT = """#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs run /run
version=$(cat /etc/image-version)
echo "WARMCACHE-IMAGE $version"
echo "WARMCACHE-BLOCK $(ls /sys/block | tr '\n' ' ')"
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
seen=" $(ls /sys/block | tr '\\n' ' ') "  # one line: the disks at boot are not "new"
port=""
for i in 1 2 3 4 5 6 7 8 9 10; do
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat $p/name 2>/dev/null)" = "org.warmcache.health" ] && port=/dev/$(basename $p)
  done
  [ -n "$port" ] && break
  sleep 0.2
done
# with an address from the seed, the first answer carries it (none: nothing to ask)
if [ -n "$addr" ]; then addresses > /run/addresses; else : > /run/addresses; fi
if [ -n "$port" ]; then
  echo "WARMCACHE-HEALTH-PORT $port"
  # Shell builtins only: a PONG starts no process, so a guest just resumed
  # answers as soon as it runs (the addresses are refreshed below).
  (while true; do
     exec 3<>"$port"
     while read -r line <&3; do
       read -r addrs < /run/addresses
       echo "PONG image=$version $addrs" >&3
     done
     exec 3<&-
     sleep 0.1
   done) &
else
  echo WARMCACHE-NO-HEALTH-PORT; ls /sys/class/virtio-ports /dev | tr '\\n' ' '
fi
# ready once it answers: the agent's first probe follows the marker at once
echo WARMCACHE-READY
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
class GuestKernel:
    """The kernel and the initramfs that boot a root disk made by ``build_image``."""

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


def boot_version() -> str:
    """What the kernel's initramfs is made of: a cached one of another version is rebuilt."""
    return hashlib.sha256((BOOT_INIT + " ".join(WANTED)).encode()).hexdigest()[:16]


def root_version() -> str:
    """What a root disk is made of (besides its image version)."""
    return hashlib.sha256(ROOT_INIT.encode()).hexdigest()[:12]


def prepare(cache: Path) -> GuestKernel:
    """Kernel and boot initramfs in ``cache`` (made once per
    ``boot_version``, then reused)."""
    kernel, initrd, version = cache / "vmlinux", cache / "initrd.gz", cache / "version"
    if version.exists() and version.read_text().strip() == boot_version():
        for made in (kernel, cache / "vmlinuz"):
            if made.exists() and initrd.exists():
                return GuestKernel(made, initrd)
    busybox = _busybox()
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    package = _cloud_kernel_package()
    _run("apt-get", "download", package, cwd=work)
    deb = next(work.glob("linux-image-*.deb"))
    _run("dpkg-deb", "-x", str(deb), str(work / "x"))
    root = work / "root"
    for d in ("bin", "dev", "proc", "sys", "lib/modules", "newroot"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(busybox, root / "bin" / "busybox")
    order = load_order(work / "x" / "lib" / "modules", WANTED)
    for module, path in order:
        shutil.copy(path, root / "lib" / "modules" / f"{module}.ko")
    (root / "lib" / "modules" / "order").write_text(" ".join(m for m, _ in order) + "\n")
    (root / "init").write_text(BOOT_INIT)
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
    bzimage = next((work / "x" / "boot").glob("vmlinuz-*"))
    kernel.unlink(missing_ok=True)
    (cache / "vmlinuz").unlink(missing_ok=True)
    if not _extract_vmlinux(bzimage, kernel):
        kernel = cache / "vmlinuz"
        shutil.copy(bzimage, kernel)
    version.write_text(boot_version() + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return GuestKernel(kernel, initrd)


def _extract_vmlinux(bzimage: Path, into: Path) -> bool:
    """The ELF kernel inside an LZ4 bzImage (what the kernel's own
    scripts/extract-vmlinux does); False when it cannot be had here."""
    unlz4 = shutil.which("unlz4")
    data = bzimage.read_bytes()
    at = data.find(b"\x02\x21\x4c\x18")  # LZ4 legacy frame magic
    if unlz4 is None or at < 0:
        return False
    # unlz4 stops with an error at the bzImage's trailer: the ELF is whole by then
    out = subprocess.run([unlz4, "-c"], input=data[at:], capture_output=True, check=False)
    if not out.stdout.startswith(b"\x7fELF"):
        return False
    tmp = into.with_suffix(".tmp")
    tmp.write_bytes(out.stdout)
    tmp.replace(into)
    return True


def _busybox() -> str:
    busybox = shutil.which("busybox")
    if busybox is None:
        raise GuestImageError("busybox is missing (apt-get install busybox-static)")
    return busybox


def _file(path: Path) -> ImageFile:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return ImageFile(source=str(path), sha256=digest, size_bytes=path.stat().st_size)


def build_image(cache: Path, version: str, *, image_id: str | None = None) -> Image:
    """A bootable test image of version ``version`` (made once per version
    and ``root_version``, kept in ``cache/images``): a qcow2 root disk whose
    ``/etc/image-version`` says ``version``, booted by ``prepare``'s kernel
    and initrd. Returns its catalog record (local sources: an agent needs
    ``cache`` among its ``images.local_dirs``)."""
    kernel = prepare(cache)
    images = cache / "images"
    images.mkdir(parents=True, exist_ok=True)
    name = f"{version}-{root_version()}"
    disk, record = images / f"{name}.qcow2", images / f"{name}.json"
    boot = BootFiles(kernel=_file(kernel.kernel), initrd=_file(kernel.initrd), cmdline=CMDLINE)
    if disk.exists() and record.exists():
        image = Image.model_validate_json(record.read_text())
        if image.boot == boot:
            return image.model_copy(update={"id": image_id or image.id})
    busybox = _busybox()
    work = images / f".{name}.work"
    shutil.rmtree(work, ignore_errors=True)
    root = work / "root"
    for d in ("bin", "dev", "proc", "sys", "run", "tmp", "seed", "etc"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(busybox, root / "bin" / "busybox")
    applets = _run(busybox, "--list").split()
    for applet in applets:  # links made here: a booting guest writes nothing for them
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "image-version").write_text(version + "\n")
    (root / "init").write_text(ROOT_INIT)
    os.chmod(root / "init", 0o755)
    raw = work / "root.ext4"
    _run("mke2fs", "-q", "-t", "ext4", "-L", "wcroot", "-d", str(root), str(raw), "64M")
    _run("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(work / "d.qcow2"))
    (work / "d.qcow2").replace(disk)
    shutil.rmtree(work, ignore_errors=True)
    image = Image(
        id=image_id or f"warmcache-test-{version}",
        source=str(disk),
        sha256=hashlib.sha256(disk.read_bytes()).hexdigest(),
        format="qcow2",
        size_bytes=disk.stat().st_size,
        min_disk_gib=1,
        boot=boot,
    )
    record.write_text(image.model_dump_json())
    return image


def agent_config_toml(
    *,
    hypervisor: str,
    rack: str,
    az: str,
    image_dirs: Sequence[Path],
    memory_mib: int = 4096,
    vcpus: int = 32,
    cache_gib: float = 5.0,
    ca_file: str = "",
) -> str:
    """An agent config for real guests on qemu:///system, booting images
    whose sources are under ``image_dirs``.

    CPUs are not pinned: these guests share a small machine, so ``vcpus`` is
    a capacity to hand out, not the host's CPU count."""
    dirs = json.dumps([str(d) for d in image_dirs])
    return (
        f'hypervisor = "{hypervisor}"\nrack = "{rack}"\naz = "{az}"\n'
        'libvirt_uri = "qemu:///system"\nstate_dir = "."\npin_cpus = false\n'
        "ready_timeout_s = 120\n"
        '[guest]\ndomain_type = "qemu"\n'
        f"[images]\nlocal_dirs = {dirs}\ncache_gib = {cache_gib}\nca_file = {json.dumps(ca_file)}\n"
        f"[capacity]\nvcpus = {vcpus}\nmemory_mib = {memory_mib}\ndisk_gib = 200\n"
        "[reserved]\nvcpus = 0\nmemory_mib = 0\ndisk_gib = 0\n"
    )


def default_cache() -> Path:
    from platformdirs import user_cache_dir

    return Path(
        os.environ.get("WARMCACHE_GUEST_CACHE", Path(user_cache_dir("warmcache")) / "guest")
    )
