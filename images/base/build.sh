#!/usr/bin/env bash
# Build a trimmed Debian rootfs tarball with debootstrap (no registry needed).
#
#   SUITE=trixie MIRROR=http://deb.debian.org/debian PACKAGES=python3,tini build.sh OUT.tar
#
# Called by `python -m taskfleet.ops.images base`, which keys OUT.tar and the
# image tag by a hash of this script, the package list, the suite and the mirror.
# Runs as root (debootstrap needs it). Progress goes to stdout, one line per step.
set -euo pipefail

: "${SUITE:?SUITE is required}" "${MIRROR:?MIRROR is required}" "${PACKAGES:?PACKAGES is required}"
out=${1:?usage: build.sh OUT.tar}

rootfs=$(mktemp -d "${TMPDIR:-/tmp}/taskfleet-rootfs.XXXXXX")
trap 'rm -rf --one-file-system "$rootfs"' EXIT

echo "==> debootstrap --variant=minbase $SUITE from $MIRROR (+ $PACKAGES)"
debootstrap --variant=minbase --components=main --include="$PACKAGES" \
  "$SUITE" "$rootfs" "$MIRROR"

echo "==> configuring apt and dpkg for a container"
# Installs made later in images (apt-get in a Dockerfile) stay as small as this
# base: no docs, man pages or translations, no recommends, no package cache.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/taskfleet-excludes" <<'CFG'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/lintian/*
CFG
cat >"$rootfs/etc/apt/apt.conf.d/90taskfleet" <<'CFG'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
# Plain http on purpose: https from inside a container fails where the control node
# trusts an extra CA the image does not, and apt verifies the archive's signatures anyway.
cat >"$rootfs/etc/apt/sources.list" <<LIST
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
LIST

echo "==> trimming docs, man pages, locales and caches"
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$rootfs"/usr/share/{man,info,lintian,linda}/* "$rootfs"/usr/share/locale/*
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
  "$rootfs"/var/lib/dpkg/*-old "$rootfs"/var/cache/ldconfig/aux-cache "$rootfs"/tmp/* \
  "$rootfs"/var/tmp/* "$rootfs"/root/.cache
find "$rootfs/var/log" -type f -delete
# Docker provides these at run time; baking the build host's values in would leak them.
: >"$rootfs/etc/machine-id"
rm -f "$rootfs/etc/hostname" "$rootfs/etc/resolv.conf"
# C.utf8 ships with libc-bin and is the only locale kept.

echo "==> writing $out"
# /dev, /proc and /sys are provided by the engine; sorted names and numeric owners
# make the tarball reproducible from the same tree.
tmp="$out.partial"
tar --numeric-owner --sort=name --xattrs -C "$rootfs" \
  --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf "$tmp" .
mv "$tmp" "$out"
echo "==> rootfs: $(du -sh "$rootfs" | cut -f1), tarball: $(du -h "$out" | cut -f1)"
