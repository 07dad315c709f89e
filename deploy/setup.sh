#!/usr/bin/env bash
# setup.sh - everything a fresh Debian machine needs to run Milex and its tests, from nothing:
# Debian packages, the project's virtual environment (.venv, with the example app), the
# single-node SLURM test cluster and an OpenSSH server, both on 127.0.0.1, and the two namespaced
# test clusters with accounting, each with a login node of its own (deploy/cluster/), and the bastions
# in front of cluster1's (deploy/bastion/). Safe to run again:
# each step skips what is done.
#
# Usage: setup.sh [--local-only]   (--local-only: not the namespaced clusters, which only tests use)
# Environment: MILEX_VENV (default: <repo>/.venv), MILEX_PYTHON (default: python3).
set -euo pipefail
LOCAL_ONLY=0
[[ ${1:-} == --local-only ]] && LOCAL_ONLY=1

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MILEX_VENV:-$REPO/.venv}
PYTHON=${MILEX_PYTHON:-python3}
# python3-venv: a non-root test user builds its venv from the system Python (root's is unreadable).
# podman, runc, uidmap, debootstrap: the agent's container image (deploy/container/) and its test,
# which runs it rootless as an unprivileged user (runc named: podman would otherwise pick crun).
# fuse3: tests/e2e/lockfs.py, a filesystem whose locks fail, for the agent's lock check (with mfusepy,
# of the `test` extra). libpam-google-authenticator: the TOTP second factor of the bastions (deploy/bastion/).
PACKAGES=(slurmctld slurmd slurm-client munge python3-venv openssh-server podman buildah runc uidmap
          debootstrap fuse3 libpam-google-authenticator)

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$package")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -q
    apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
fi

# lockfs needs /dev/fuse: Debian's kernels have the fuse module built in or loadable.
[[ -e /dev/fuse ]] || modprobe fuse || log "no /dev/fuse: tests/e2e/test_unreliable_locks.py will fail"

if [[ ! -x $VENV/bin/python ]]; then
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
log "installing milex-scheduler and the example app into $VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check --config-settings editable_mode=strict -e "${REPO}[test]" -e "$REPO/examples"

"$REPO/deploy/slurm-up.sh"
# The test "login node": a real sshd on 127.0.0.1 (and variants without stream-local forwarding
# and with a second factor, for the tunnel's fallbacks).
"$REPO/deploy/sshd-up.sh"
MILEX_SSHD_PORT=2223 "$REPO/deploy/sshd-up.sh" --no-streamlocal
MILEX_SSHD_PORT=2224 "$REPO/deploy/sshd-up.sh" --kbd-interactive
# The namespaced test clusters with accounting (deploy/README.md): SLURM 22.05 and 24.11, each with
# a login node of its own; the remote end-to-end tests run on both. A fresh machine builds their
# root file systems first (about a minute each).
if ((!LOCAL_ONLY)); then
    for cluster in cluster1 cluster2; do
        "$REPO/deploy/cluster/up.sh" "$cluster"
    done
    # Two bastions in front of cluster1's login node, each asking a TOTP code (deploy/bastion/).
    "$REPO/deploy/bastion/up.sh"
    # cluster1's second login node, on the node's /home: the other end of a round-robin name.
    "$REPO/deploy/cluster/second-login.sh" up cluster1
fi
log "ready: activate with 'source $VENV/bin/activate'"
