#!/usr/bin/env bash
# Makes the base images without an image registry, from Debian's packages only:
#   $BASE_DEBIAN_IMAGE  Debian bookworm, debootstrap --variant=minbase (PostgreSQL and Redis stand-ins)
#   $BASE_PYTHON_IMAGE  the same plus Debian's Python 3.11 and venv (every Python image)
# Both carry this machine's CA bundle as /etc/ssl/certs/ca-certificates.crt, so apt, pip and uv
# inside later builds trust the same certificates as the host.
#
# Usage: infra/docker/make-base-images.sh [--force]   (skips when both images exist, unless --force)
# Needs root (debootstrap, chroot) and a running Docker engine. About a minute on 2 cores.
set -euo pipefail

DOCKER=${DOCKER:-docker}
BASE_DEBIAN_IMAGE=${BASE_DEBIAN_IMAGE:-mlops-base/debian:bookworm}
BASE_PYTHON_IMAGE=${BASE_PYTHON_IMAGE:-mlops-base/python:3.11-bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

force=0
[ "${1:-}" = "--force" ] && force=1

if [ "$force" = 0 ] && "$DOCKER" image inspect "$BASE_DEBIAN_IMAGE" "$BASE_PYTHON_IMAGE" >/dev/null 2>&1; then
    echo "base images present: $BASE_DEBIAN_IMAGE $BASE_PYTHON_IMAGE (--force to remake)"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "make-base-images.sh: needs root (debootstrap and chroot)" >&2
    exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
fi
[ -s "$CA_BUNDLE" ] || { echo "no CA bundle at $CA_BUNDLE" >&2; exit 1; }

rootfs=$(mktemp -d /var/tmp/mlops-rootfs.XXXXXX)
cleanup() {
    umount "$rootfs/proc" 2>/dev/null || true
    rm -rf --one-file-system "$rootfs"
}
trap cleanup EXIT

in_root() { chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"; }

apt_clean() {
    in_root apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/apt/* \
        "$rootfs"/var/log/dpkg.log "$rootfs"/tmp/* "$rootfs"/root/.cache
}

import_rootfs() {  # NAME CMD
    # No /proc content and an empty resolv.conf in the image: the engine provides both at run time.
    umount "$rootfs/proc" 2>/dev/null || true
    : >"$rootfs/etc/resolv.conf"
    tar --numeric-owner -C "$rootfs" -c . | "$DOCKER" import \
        -c 'ENV LANG=C.UTF-8' \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c "CMD [\"$2\"]" \
        -m "debootstrap --variant=minbase bookworm ($(date -u +%Y-%m-%dT%H:%M:%SZ))" \
        - "$1" >/dev/null
    cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
    mount -t proc proc "$rootfs/proc"
    echo "imported $1"
}

echo "debootstrap --variant=minbase bookworm from $DEBIAN_MIRROR"
debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" >/dev/null
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
mount -t proc proc "$rootfs/proc"

cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb $DEBIAN_SECURITY_MIRROR bookworm-security main
EOF
# As in Debian's official images: no recommends, no caches left in layers, no service started
# by a package's postinst inside a build.
cat >"$rootfs/etc/apt/apt.conf.d/docker-no-recommends" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-no-docs" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 0755 "$rootfs/usr/sbin/policy-rc.d"

in_root apt-get update -q >/dev/null
in_root apt-get upgrade -y -q >/dev/null
apt_clean
# The host's CA bundle (which includes any certificate this network needs); no ca-certificates
# package, whose postinst would rebuild the bundle without it.
install -D -m 0644 "$CA_BUNDLE" "$rootfs/etc/ssl/certs/ca-certificates.crt"
import_rootfs "$BASE_DEBIAN_IMAGE" bash

in_root apt-get update -q >/dev/null
in_root apt-get install -y -q python3.11 python3.11-venv python3 >/dev/null
apt_clean
install -D -m 0644 "$CA_BUNDLE" "$rootfs/etc/ssl/certs/ca-certificates.crt"
import_rootfs "$BASE_PYTHON_IMAGE" python3
"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^mlops-base/'
