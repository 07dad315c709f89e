# The Milex agent for a login node, with the SLURM client of the cluster it serves.
# Build: deploy/container/build-image.sh (which passes SLURM_VERSION = the host's slurm-client).
# Run:   deploy/README.md, "The agent in a container": as the user, with the user's Milex path,
#        /etc/slurm and the munge socket mounted, in the host's network, UTS and PID namespaces.

# The cluster's slurm-client package version: the client must speak the controller's protocol.
ARG SLURM_VERSION=22.05.8-4+deb12u3

# Builder: a venv in /opt/milex, copied whole into the final stage (same Python, same path).
FROM docker.io/library/debian:bookworm-slim AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
# Dependencies first, from pyproject.toml alone: their layer survives edits of the source. Only
# those the agent imports (the client's SSH and terminal libraries would double the image), with
# pyproject.toml's version bounds.
ARG AGENT_DEPENDENCIES="click msgspec pyzmq"
# The optional secret `pip-ca` is a CA bundle for pip behind a TLS-intercepting proxy; secrets
# stay out of the image's layers.
COPY pyproject.toml /src/
RUN --mount=type=secret,id=pip-ca,required=false \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && python3 -m venv /opt/milex \
    && python3 -c 'import re, sys, tomllib; wanted = set(sys.argv[1:]); \
        found = [d for d in tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"] \
                 if re.match(r"[\w.-]+", d)[0] in wanted]; \
        assert len(found) == len(wanted), f"not all of {wanted} in pyproject.toml"; \
        print("\n".join(found))' $AGENT_DEPENDENCIES >/tmp/requirements.txt \
    && /opt/milex/bin/pip install --no-cache-dir -r /tmp/requirements.txt
COPY README.md /src/
COPY agent /src/agent
COPY client /src/client
COPY common /src/common
# The agent needs no installer at run time.
RUN --mount=type=secret,id=pip-ca,required=false \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && /opt/milex/bin/pip install --no-cache-dir --no-deps /src \
    && /opt/milex/bin/pip uninstall -y -q pip setuptools

FROM docker.io/library/debian:bookworm-slim
ARG SLURM_VERSION
# build-image.sh prunes the untagged images that carry this label (earlier builds).
LABEL org.milex.image=agent
# python3 and munge (its client library; the host's munged answers through the mounted socket)
# follow the release's updates; only SLURM is pinned. The package's generated munge key is
# removed: nothing in the image may sign credentials.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 munge \
        "slurm-client=${SLURM_VERSION}" "slurm-wlm-basic-plugins=${SLURM_VERSION}" \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log /etc/munge/munge.key \
    && useradd --uid 1000 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin milex
COPY --from=builder /opt/milex /opt/milex
# MILEX_AGENT_CONTAINER: the agent runs apart from the environment its jobs run in (the host's),
# so it cannot read the apps' versions there (agent/milex_agent/app_versions.py).
ENV PATH=/opt/milex/bin:$PATH LANG=C.UTF-8 PYTHONUNBUFFERED=1 MILEX_AGENT_CONTAINER=1
# The `milex` user, as a default only: the run line gives the user's own uid (--user, and
# --userns=keep-id with rootless podman).
USER 1000:1000
# The health check asks the agent of $MILEX (the user's Milex path, set by the run line) for its
# version over the agent's own socket.
HEALTHCHECK --interval=60s --timeout=20s --start-period=30s --retries=3 CMD ["milex-agent", "ping"]
ENTRYPOINT ["milex-agent"]
CMD ["--help"]
