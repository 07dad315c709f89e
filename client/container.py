"""The agent in its container image on a login node with podman or docker: the run line, and an
idempotent start (`milex agent deploy --container`).

Standard library only, so this file also runs by itself where only the image has Milex:
`python3 container.py start --path ~/milex` (deploy/container/run-agent.sh), or uploaded over SSH.
"""

from __future__ import annotations

import argparse
import getpass
import grp
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

try:
    from milex.common.errors import MilexError
except ImportError:  # run as a script on a login node without Milex

    class MilexError(Exception):  # type: ignore[no-redef]
        """A failure to show to the user, with what to do next."""


DEFAULT_IMAGE = "milex-agent:latest"
ENGINES = ("podman", "docker")
SLURM_DIR = "/etc/slurm"
MUNGE_DIR = "/run/munge"
SOCKET_PATH_LIMIT = 100  # milex.agent.daemon's: longer socket paths move to /tmp/milex-agent-UID
READY_TIMEOUT = 60.0
POLL_INTERVAL, MAX_POLL_INTERVAL = 2.0, 10.0  # milex.agent.intervals' (this file also runs alone)

Run = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=300)


def find_engine(which: Callable[[str], str | None] = shutil.which) -> str:
    """`podman`, else `docker`, from PATH; MilexError when neither is installed."""
    for engine in ENGINES:
        if which(engine):
            return engine
    raise MilexError(
        "neither podman nor docker is on PATH; install one (e.g. apt-get install podman), or run "
        "the agent without a container: `milex agent start`."
    )


def container_name(user: str) -> str:
    return f"milex-agent-{user}"


def container_run_command(
    engine: str,
    image: str,
    milex_path: str,
    uid: int,
    gid: int,
    *,
    user: str,
    home: str,
    host: str | None = None,
    rootless: bool = False,
    identity_dir: str | None = None,
    poll_interval: float = POLL_INTERVAL,
    max_interval: float = MAX_POLL_INTERVAL,
) -> list[str]:
    """The `ENGINE run` argv that serves `milex_path`'s agent as the user `uid:gid`.

    The user's Milex path is mounted at the same absolute path: slurmd on the host reads the
    scripts and writes the logs there. The host's network reaches slurmctld; its UTS name keeps the
    agent's directory PATH/agent/HOST the one the host computes; its PID space makes the pid in
    agent.json one that `milex-agent stop` on the host can signal. `rootless`: podman run by the
    user, whose uid keep-id maps to itself; otherwise (root podman, docker) only --user sets it.
    `identity_dir`: passwd and group files naming the user (`write_identity`), for docker, which
    adds no entry for --user's uid as podman does; without one, `squeue --me` fails.
    """
    if not os.path.isabs(milex_path):
        raise MilexError(f"the Milex path must be absolute, not {milex_path!r}.")
    volumes = [f"{SLURM_DIR}:{SLURM_DIR}:ro", f"{MUNGE_DIR}:{MUNGE_DIR}", f"{milex_path}:{milex_path}"]
    fallback = socket_fallback_dir(milex_path, host or short_hostname(), uid)
    if fallback:
        volumes.append(f"{fallback}:{fallback}")
    if identity_dir:
        volumes += [f"{identity_dir}/{name}:/etc/{name}:ro" for name in ("passwd", "group")]
    return [
        engine, "run", "--detach", "--name", container_name(user),
        *(["--userns=keep-id"] if rootless else []), f"--user={uid}:{gid}",
        "--network=host", "--uts=host", "--pid=host",
        # SELinux hosts: no relabelling of the user's files or of /etc/slurm.
        "--security-opt=label=disable",
        # A crash restarts the agent; a stop (exit 0) does not, and a refused start (another agent
        # holds the lock) is not retried for ever. The container is there to keep an agent up, so
        # it does not leave when idle (--idle-exit 0); a removed directory still ends it, cleanly.
        "--restart=on-failure:5", "--log-opt=max-size=10mb",
        *(f"--volume={volume}" for volume in volumes),
        f"--workdir={milex_path}",  # jobs start in sbatch's directory, which must exist on the host
        f"--env=MILEX={milex_path}", f"--env=HOME={home}", f"--env=USER={user}", f"--env=LOGNAME={user}",
        image, "run", "--path", milex_path,
        "--poll-interval", str(poll_interval), "--max-interval", str(max_interval), "--idle-exit", "0",
    ]  # fmt: skip


def short_hostname() -> str:
    return socket.gethostname().split(".")[0]


def socket_fallback_dir(milex_path: str, host: str, uid: int) -> str | None:
    """The /tmp directory the agent's socket moves to when PATH/agent/HOST/run/agent.sock is too
    long for a unix socket (as milex.agent.daemon.socket_path decides), or None."""
    if len(f"{milex_path}/agent/{host}/run/agent.sock") <= SOCKET_PATH_LIMIT:
        return None
    return f"/tmp/milex-agent-{uid}"


def identity_dir(milex_path: str, host: str) -> str:
    return f"{milex_path}/agent/{host}/identity"


def write_identity(directory: str, uid: int, gid: int, user: str, home: str) -> str:
    """passwd and group files in `directory` (created private) that name root and the user."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    group = _group_name(gid) or user
    files = {
        "passwd": f"root:x:0:0:root:/root:/bin/sh\n{user}:x:{uid}:{gid}::{home}:/bin/sh\n",
        "group": f"root:x:0:\n{group}:x:{gid}:\n",
    }
    for name, text in files.items():
        with open(os.path.join(directory, name), "w") as file:
            file.write(text)
        os.chmod(os.path.join(directory, name), 0o644)  # read by the container's processes
    return directory


def _group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def start_container_agent(
    milex_path: str,
    *,
    image: str = DEFAULT_IMAGE,
    engine: str | None = None,
    replace: bool = False,
    poll_interval: float = POLL_INTERVAL,
    max_interval: float = MAX_POLL_INTERVAL,
    run: Run = _run,
) -> str:
    """Start this user's agent container unless it runs (`replace`: restart it, e.g. on a new
    image); say what was done once the agent answers its health check."""
    engine = engine or find_engine()
    user = getpass.getuser()
    name = container_name(user)
    milex_path = os.path.abspath(os.path.expanduser(milex_path))
    state = container_state(engine, name, run)
    if state == "running" and not replace:
        return f"the agent container {name} already runs: {_ping(engine, name, run) or 'not answering yet'}"
    if state is not None:
        _check(run([engine, "rm", "--force", name]))
    _require_image(engine, image, run)
    _require_host_setup()
    # What the run line mounts from the user's side must exist, and be the user's.
    os.makedirs(milex_path, exist_ok=True)
    uid, gid, home, host = os.getuid(), os.getgid(), os.path.expanduser("~"), short_hostname()
    fallback = socket_fallback_dir(milex_path, host, uid)
    if fallback:
        os.makedirs(fallback, mode=0o700, exist_ok=True)
    identity = None
    if engine == "docker":
        identity = write_identity(identity_dir(milex_path, host), uid, gid, user, home)
    command = container_run_command(
        engine, image, milex_path, uid, gid, user=user, home=home, host=host,
        rootless=engine == "podman" and uid != 0, identity_dir=identity,
        poll_interval=poll_interval, max_interval=max_interval,
    )  # fmt: skip
    _check(run(command))
    version = _wait_ready(engine, name, run)
    return f"agent {version} running in container {name} ({image}) for {milex_path}"


def stop_container_agent(engine: str | None = None, run: Run = _run) -> str:
    """Stop and remove this user's agent container (the journal stays in the Milex path)."""
    engine = engine or find_engine()
    name = container_name(getpass.getuser())
    if container_state(engine, name, run) is None:
        return f"no agent container {name}"
    _check(run([engine, "stop", "-t", "15", name]))  # SIGTERM: the agent finishes its request
    _check(run([engine, "rm", "--force", name]))
    return f"stopped and removed {name}"


def container_state(engine: str, name: str, run: Run = _run) -> str | None:
    """The container's status (running, exited, created...), None when there is no such container."""
    result = run([engine, "container", "inspect", "--format", "{{.State.Status}}", name])
    return (result.stdout.strip() or "unknown") if result.returncode == 0 else None


def remote_start_command(
    script: str, milex_path: str, *, image: str = DEFAULT_IMAGE, replace: bool = False
) -> str:
    """The shell command that runs this file, uploaded to `script` on a login node, to start the
    agent container there (a leading `~` in `milex_path` is the remote user's home)."""
    path = milex_path if milex_path.startswith("~/") and " " not in milex_path else shlex.quote(milex_path)
    command = f"python3 {shlex.quote(script)} start --path {path} --image {shlex.quote(image)}"
    return command + (" --replace" if replace else "")


def _require_image(engine: str, image: str, run: Run) -> None:
    """A local image must exist; one named with a registry is left to `run` to pull."""
    first = image.split("/")[0]
    if "/" in image and ("." in first or ":" in first) and first != "localhost":
        return
    if run([engine, "image", "inspect", image]).returncode != 0:
        raise MilexError(
            f"{engine} has no image {image}; build it here with deploy/container/build-image.sh, or "
            f"copy it from a machine that has it: `{engine} save {image} | ssh LOGIN-NODE {engine} load`."
        )


def _require_host_setup() -> None:
    for needed in (SLURM_DIR, MUNGE_DIR):
        if not os.path.isdir(needed):
            raise MilexError(
                f"{needed} does not exist on this host; the agent container uses the host's SLURM "
                "configuration and munge socket, so start it on a login node of the cluster."
            )


def _ping(engine: str, name: str, run: Run) -> str | None:
    """The agent's version, asked in the container as its health check does; None if no answer."""
    result = run([engine, "exec", name, "milex-agent", "ping"])
    return f"agent {result.stdout.strip()}" if result.returncode == 0 else None


def _wait_ready(engine: str, name: str, run: Run) -> str:
    """The agent's version once it answers; MilexError with the container's log if the container
    stops first or the agent stays silent."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        answer = _ping(engine, name, run)
        if answer:
            return answer.removeprefix("agent ")
        if container_state(engine, name, run) != "running":
            break
        time.sleep(0.5)
    logs = run([engine, "logs", "--tail", "30", name])
    raise MilexError(f"the agent container {name} is not serving; its log:\n{logs.stdout}{logs.stderr}")


def _check(result: subprocess.CompletedProcess[str]) -> None:
    if result.returncode != 0:
        raise MilexError(f"`{shlex.join(result.args)}` failed ({result.returncode}): {result.stderr.strip()}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run this login node's Milex agent in a container.")
    parser.add_argument("action", choices=["start", "stop", "command"], help="command: print the run line")
    parser.add_argument("--path", default=os.environ.get("MILEX"), help="the Milex path (default: $MILEX)")
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--engine", choices=ENGINES, help="default: podman if installed, else docker")
    parser.add_argument("--replace", action="store_true", help="restart a running agent container")
    parser.add_argument(
        "--poll-interval", type=float, default=POLL_INTERVAL, help="seconds between SLURM polls"
    )
    parser.add_argument(
        "--max-interval", type=float, default=MAX_POLL_INTERVAL, help="their back-off ceiling"
    )
    args = parser.parse_args(argv)
    if args.action != "stop" and not args.path:
        parser.error("give --path (this machine's Milex path) or set MILEX")
    try:
        if args.action == "start":
            print(start_container_agent(
                args.path, image=args.image, engine=args.engine, replace=args.replace,
                poll_interval=args.poll_interval, max_interval=args.max_interval,
            ))  # fmt: skip
        elif args.action == "stop":
            print(stop_container_agent(args.engine))
        else:
            engine = args.engine or find_engine()
            path = os.path.abspath(os.path.expanduser(args.path))
            command = container_run_command(
                engine, args.image, path, os.getuid(), os.getgid(), user=getpass.getuser(),
                home=os.path.expanduser("~"), rootless=engine == "podman" and os.getuid() != 0,
                identity_dir=identity_dir(path, short_hostname()) if engine == "docker" else None,
                poll_interval=args.poll_interval, max_interval=args.max_interval,
            )  # fmt: skip
            print(shlex.join(command))
    except MilexError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
