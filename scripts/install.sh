#!/usr/bin/env bash
# Installs everything the harness, its lab and its tests need on a fresh Debian 12
# machine, as root: apt packages, the real Kubernetes binaries built from the Go
# module proxy (scripts/build-kube.sh: ~8-9 min and ~5 GB of Go caches the first
# time, seconds after), the project venv (.venv) with the project and its test
# tools, and the lab's images (busybox rootfs, guest kernel+initramfs).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (the lab creates namespaces, cgroups, mounts)" >&2
    exit 1
fi

APT_PACKAGES=(
    python3 python3-venv python3-dev gcc libc6-dev pkg-config
    prometheus-pushgateway
    runc busybox-static iproute2 iptables nftables e2fsprogs util-linux procps psmisc
    cpio zstd xz-utils openssl containernetworking-plugins
    qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev
    linux-image-amd64
    systemd
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install.sh: apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's postinst enables and starts a Pushgateway on :9091 of every address;
# the harness only needs the binary (tests start their own on loopback), so a
# fresh install leaves none running or enabled. Only when installed just now:
# a service someone enabled later on purpose stays as they set it.
if printf '%s\n' "${missing[@]}" | grep -qx prometheus-pushgateway; then
    if [ -d /run/systemd/system ]; then
        systemctl disable --now prometheus-pushgateway.service >/dev/null 2>&1 || true
    fi
    /etc/init.d/prometheus-pushgateway stop >/dev/null 2>&1 || true
    update-rc.d prometheus-pushgateway disable >/dev/null 2>&1 || true
fi

# Real Kubernetes components (etcd, kube-apiserver, controller-manager, scheduler,
# kubelet, containerd), cached under /var/cache/rto-harness/kube/<pin>.
bash scripts/build-kube.sh
bash scripts/build-tools.sh  # actionlint, the CI example's checker (/var/cache/rto-harness/tools)

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install -q -e '.[test,vm]' 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c 'import chaos, cluster, healers, reports, libvirt' \
    || { echo "install.sh: the project venv is incomplete (see pip output above)" >&2; exit 1; }

# Lab images are built once and cached under /var/lib/rto-lab/images; the
# builders only rebuild when their inputs change.
.venv/bin/rto lab images
echo "install.sh: ready"
