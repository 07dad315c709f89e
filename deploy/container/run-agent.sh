#!/usr/bin/env bash
# run-agent.sh - start, stop, or print the run line of, this user's Milex agent container on a login
# node with podman or docker. Needs only python3 (3.9+) and the image; Milex itself is in the image.
#
#   deploy/container/run-agent.sh [start] [--path ~/milex] [--image milex-agent:latest] [--replace]
#   deploy/container/run-agent.sh stop
#   deploy/container/run-agent.sh command --path ~/milex     # the documented run line, filled in
#
# The path defaults to $MILEX (what milex-configuration exports). See deploy/container/README.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case ${1:-} in
    start | stop | command) ;;
    *) set -- start "$@" ;;
esac
exec python3 "$HERE/../../client/milex/machine/container.py" "$@"
