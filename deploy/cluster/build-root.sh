#!/usr/bin/env bash
# build-root.sh - build (or reuse) the root file system of a test cluster (clusters/NAME.env): its Debian
# suite (SUITE) with that suite's SLURM (slurmctld, slurmd, slurmdbd, client), munge, MariaDB, sshd,
# cron, python3, and the login node's users.
#
# Usage: build-root.sh NAME
#
# A root is cached per suite in $MILEX_TEST_CLUSTER_CACHE/SUITE/root with a stamp naming this script's
# hash and the cluster's build settings: an unchanged script reuses it (well under a second), a changed
# one rebuilds it from nothing (about a minute, once per machine). The cached root is never written to
# at run time: up.sh runs the cluster on an overlay of it. Needs root. Prints the root's path on stdout.
#
# Environment: MILEX_TEST_CLUSTER_CACHE (default /var/cache/milex-test-roots),
# MILEX_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh source-path=SCRIPTDIR
. "$HERE/common.sh"
cluster_settings "${1:?usage: build-root.sh NAME}"
CACHE=${MILEX_TEST_CLUSTER_CACHE:-/var/cache/milex-test-roots}/$SUITE
MIRROR=${MILEX_DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOT=$CACHE/root
STAMP_NAME=.milex-cluster-build
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
# The cluster's daemons and clients, and what a login node offers a Milex agent (python3 -m venv, and
# cron for the agent's watchdog: a user crontab line that starts a killed agent again).
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server openssh-server cron
    python3 python3-venv procps iproute2)

[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap, chroot)"
hash=$( (cat "${BASH_SOURCE[0]}" && echo "$SUITE $LIBMARIADB_FROM $LOGIN_USER $OTHER_USER") | sha256sum | cut -d' ' -f1)
if [[ -f $ROOT/$STAMP_NAME && $(<"$ROOT/$STAMP_NAME") == "$hash" ]]; then
    log "cached root $ROOT is current (script hash ${hash:0:12})"
    printf '%s\n' "$ROOT"
    exit 0
fi

command -v debootstrap >/dev/null ||
    apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends debootstrap
[[ -s $KEYRING ]] || die "$KEYRING missing: apt-get install debian-archive-keyring"

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

log "debootstrap --variant=minbase $SUITE from $MIRROR"
debootstrap --variant=minbase --keyring="$KEYRING" "$SUITE" "$new" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
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

# A suite whose libmariadb3 slurmdbd cannot use (LIBMARIADB_FROM, see clusters/*.env): fetch that of
# suite LIBMARIADB_FROM with a sources list of its own, unpack it beside the system's, and let init.sh
# load it for slurmdbd alone (LD_LIBRARY_PATH). The root's apt never sees the other suite.
libmariadb_from() {
    local from=$1
    local -a other_apt=(-o Dir::Etc::SourceList="/etc/apt/milex-$from.list" -o Dir::Etc::SourceParts=/nonexistent
        -o Dir::State::Lists="/var/lib/apt/milex-$from-lists")
    printf 'deb [signed-by=%s] %s %s main\n' "$KEYRING" "$MIRROR" "$from" >"$new/etc/apt/milex-$from.list"
    mkdir -p "$new/var/lib/apt/milex-$from-lists/partial"
    in_root apt-get -q "${other_apt[@]}" update >>"$CACHE/debootstrap.log" 2>&1
    in_root sh -c 'cd /tmp && apt-get -q "$@"' sh "${other_apt[@]}" download "libmariadb3/$from" \
        >>"$CACHE/debootstrap.log" 2>&1
    # shellcheck disable=SC2016  # expanded by the inner sh
    in_root sh -c 'dpkg-deb -x /tmp/libmariadb3_*.deb "$0" && rm /tmp/libmariadb3_*.deb' "/opt/$from-libmariadb"
    rm -rf "$new/var/lib/apt/milex-$from-lists" "$new/etc/apt/milex-$from.list"
    ls "$new/opt/$from-libmariadb"/usr/lib/*/libmariadb.so.3 >/dev/null
}
if [[ -n $LIBMARIADB_FROM ]]; then
    libmariadb_from "$LIBMARIADB_FROM"
fi

# The login node's users (their homes, and so their files and their jobs' output, live in this root
# alone): uid 1000 and 1001 there. Their homes are 0755 on every suite (bookworm's default; trixie's
# is 0700), so that what keeps one user out of another's Milex files is Milex's own modes.
for user in "$LOGIN_USER" "$OTHER_USER"; do
    in_root useradd --create-home --shell /bin/bash -K HOME_MODE=0755 "$user"
done
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
