#!/usr/bin/env bash
# base-image.sh - make the Dockerfile's base image, docker.io/library/debian:bookworm-slim, locally,
# for machines that reach the Debian mirror but no container registry (the CI runners). Skipped when
# the image exists. The debootstrap'ed root file system is cached as a tarball, so a machine pays for
# debootstrap once. Needs root (debootstrap) and podman.
#
# Environment: MILEX_BASE_IMAGE (default docker.io/library/debian:bookworm-slim),
# MILEX_CACHE (default /var/cache/milex), MILEX_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

IMAGE=${MILEX_BASE_IMAGE:-docker.io/library/debian:bookworm-slim}
CACHE=${MILEX_CACHE:-/var/cache/milex}
MIRROR=${MILEX_DEBIAN_MIRROR:-http://deb.debian.org/debian}
TARBALL=$CACHE/debian-bookworm-minbase.tar

log() { printf '[base-image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if podman image exists "$IMAGE"; then
    log "$IMAGE exists; nothing to do"
    exit 0
fi
[[ $(id -u) -eq 0 ]] || { log "ERROR: debootstrap needs root; or pull $IMAGE from a registry"; exit 1; }

if [[ ! -s $TARBALL ]]; then
    if ! command -v debootstrap >/dev/null; then
        apt-get -o DPkg::Lock::Timeout=600 update -q
        apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends debootstrap
    fi
    install -d -m 0755 "$CACHE"
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs"' EXIT
    log "debootstrap --variant=minbase bookworm from $MIRROR (a minute or two, once per machine)"
    debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
        { tail -n 30 "$CACHE/debootstrap.log" >&2; exit 1; }

    # What makes the official image "slim", so apt-get in the Dockerfile behaves the same with
    # either base: no documentation or translations installed, no package cache kept.
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
EOF
    # The official image's sources: the release, its updates and its security archive.
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/usr/share/locale/*
    chmod 0755 "$rootfs"  # mktemp made it 0700, and the tarball keeps it as the image's /
    tar -C "$rootfs" --numeric-owner -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
    log "cached the root file system in $TARBALL"
fi

# The official image's configuration: a PATH for commands run without a shell, bash by default.
podman import --quiet --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' "$TARBALL" "$IMAGE" >/dev/null
log "imported $IMAGE"
