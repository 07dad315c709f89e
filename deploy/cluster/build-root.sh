#!/usr/bin/env bash
# build-root.sh - build (or reuse) the root file system of the second test cluster: Debian 13 (trixie)
# with SLURM 24.11 (slurmctld, slurmd, slurmdbd, client), munge, MariaDB, sshd and python3.
#
# The root is cached in $MILEX_CLUSTER2_CACHE/root with a stamp naming this script's hash: an
# unchanged script reuses it (well under a second), a changed one rebuilds it from nothing (a few
# minutes, once per machine). The cached root is never written to at run time: up.sh runs the
# cluster on an overlay of it. Needs root. Prints the root's path on stdout.
#
# Environment: MILEX_CLUSTER2_CACHE (default /var/cache/milex-test-cluster2),
# MILEX_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

CACHE=${MILEX_CLUSTER2_CACHE:-/var/cache/milex-test-cluster2}
MIRROR=${MILEX_DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOT=$CACHE/root
STAMP_NAME=.milex-cluster2-build
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
# The cluster's daemons and clients, and what a login node offers a Milex agent (python3 -m venv).
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server openssh-server
    python3 python3-venv procps iproute2)
LOGIN_USER=milex-login

log() { printf '[cluster2 build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

[[ $(id -u) -eq 0 ]] || { log "ERROR: run as root (debootstrap, chroot)"; exit 1; }
hash=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)
if [[ -f $ROOT/$STAMP_NAME && $(<"$ROOT/$STAMP_NAME") == "$hash" ]]; then
    log "cached root $ROOT is current (script hash ${hash:0:12})"
    printf '%s\n' "$ROOT"
    exit 0
fi

command -v debootstrap >/dev/null ||
    apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends debootstrap
[[ -s $KEYRING ]] || { log "ERROR: $KEYRING missing: apt-get install debian-archive-keyring"; exit 1; }

install -d -m 0755 "$CACHE"
exec {lock}>"$CACHE/.build.lock"
flock "$lock"
new=$(mktemp -d "$CACHE/root.new.XXXXXX")
trap 'rm -rf --one-file-system "$new"' EXIT
chmod 0755 "$new" # the root's / (mktemp made it 0700; package scripts run as other users)
start=$SECONDS

# Run a command inside the new root, in a private mount namespace so that its /proc mount can
# never be left behind on the host, whatever happens to this script.
in_root() {
    # shellcheck disable=SC2016  # expanded by the inner sh
    unshare --mount --propagation private --fork \
        sh -c 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"' "$new" \
        env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"
}

log "debootstrap --variant=minbase trixie from $MIRROR"
debootstrap --variant=minbase --keyring="$KEYRING" trixie "$new" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
    { tail -n 30 "$CACHE/debootstrap.log" >&2; exit 1; }
log "debootstrap done after $((SECONDS - start)) s"

# Package scripts must not start daemons in the build: the cluster's init starts them.
printf '#!/bin/sh\nexit 101\n' >"$new/usr/sbin/policy-rc.d"
chmod 0755 "$new/usr/sbin/policy-rc.d"
cat >"$new/etc/dpkg/dpkg.cfg.d/milex-slim" <<'SLIM'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
SLIM
in_root apt-get -q update >>"$CACHE/debootstrap.log" 2>&1
in_root apt-get -q install -y --no-install-recommends "${PACKAGES[@]}" >>"$CACHE/debootstrap.log" 2>&1 ||
    { tail -n 30 "$CACHE/debootstrap.log" >&2; exit 1; }
log "packages installed after $((SECONDS - start)) s"

# slurmdbd 24.11 fails its start-up sanity check against trixie's libmariadb3 (11.8); bookworm's
# (10.11) works. Fetch it with a sources list of its own, unpack it beside the system's, and let
# up.sh's init load it for slurmdbd alone (LD_LIBRARY_PATH). The root's apt never sees bookworm.
cat >"$new/etc/apt/milex-bookworm.list" <<LIST
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bookworm main
LIST
bookworm_apt=(-o Dir::Etc::SourceList=/etc/apt/milex-bookworm.list -o Dir::Etc::SourceParts=/nonexistent
    -o Dir::State::Lists=/var/lib/apt/milex-bookworm-lists)
mkdir -p "$new/var/lib/apt/milex-bookworm-lists/partial"
in_root apt-get -q "${bookworm_apt[@]}" update >>"$CACHE/debootstrap.log" 2>&1
in_root sh -c 'cd /tmp && apt-get -q "$@" download libmariadb3/bookworm' sh "${bookworm_apt[@]}" \
    >>"$CACHE/debootstrap.log" 2>&1
in_root sh -c 'dpkg-deb -x /tmp/libmariadb3_*.deb /opt/bookworm-libmariadb && rm /tmp/libmariadb3_*.deb'
rm -rf "$new/var/lib/apt/milex-bookworm-lists" "$new/etc/apt/milex-bookworm.list"
ls "$new"/opt/bookworm-libmariadb/usr/lib/*/libmariadb.so.3 >/dev/null

# The login user (its home, and so its files and its jobs' output, live in this root alone).
in_root useradd --create-home --shell /bin/bash "$LOGIN_USER"
in_root apt-get clean
rm -rf "$new"/var/lib/apt/lists/* "$new/etc/resolv.conf"

printf '%s\n' "$hash" >"$new/$STAMP_NAME"
if [[ -d $ROOT ]]; then
    rm -rf --one-file-system "$ROOT"
fi
mv "$new" "$ROOT"
trap - EXIT
log "built $ROOT in $((SECONDS - start)) s ($(du -sh --one-file-system "$ROOT" | cut -f1))"
printf '%s\n' "$ROOT"
