#!/usr/bin/env bash
# Set up everything `make run` / `make test` need on a fresh Debian machine
# (root, Python 3.11): system packages when missing, .venv/, the package.
#   scripts/setup.sh run   # quickstart: libvirt (test driver) + the package
#   scripts/setup.sh test  # + etcd-server and the test/lint tools
set -euo pipefail
mode=${1:-run}
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
need=(libvirt-dev libvirt-daemon pkg-config gcc qemu-utils)
# tests also boot real QEMU guests under libvirtd (software emulation here),
# render the dashboard in a real headless browser, put hosts in network
# namespaces with nftables for partition tests, check the systemd units with
# systemd-analyze and the Prometheus alert rules with promtool (prometheus)
[ "$mode" = test ] && need+=(etcd-server etcd-client libvirt-clients libvirt-daemon-driver-qemu
                             qemu-system-x86 busybox-static chromium chromium-driver iproute2
                             nftables systemd prometheus lz4)

py_include=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
[ -f "$py_include/Python.h" ] || need+=(python3-dev)
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)

missing=()
for pkg in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing system packages: ${missing[*]}"
    sudo_=""
    [ "$(id -u)" -ne 0 ] && sudo_="sudo"
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
fi

extras=libvirt
[ "$mode" = test ] && extras=libvirt,etcd,consul,mongodb,elasticsearch,dev
echo "setup: installing warmcache[$extras] into .venv"
.venv/bin/python -m pip install -q -e ".[$extras]" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c 'import warmcache, libvirt' \
    || { echo "setup: the package did not install" >&2; exit 1; }
