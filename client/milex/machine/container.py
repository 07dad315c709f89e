"""The agent in its container image on a login node with podman or docker: the run line, and an
idempotent start (`milex agent deploy --container`).

Standard library only, so this file also runs by itself where only the image has Milex:
`python3 container.py start --path ~/milex` (deploy/container/run-agent.sh), or uploaded over SSH
to PATH/agent/container.py, where its presence tells the client that this machine's agent runs in
a container (see milex.machine.commands.remote_agent_command).
"""

from __future__ import annotations

import argparse
import getpass
import grp
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

try:
    from milex_common.errors import MilexError
except ImportError:  # run as a script on a login node without Milex

    class MilexError(Exception):  # type: ignore[no-redef]
        """A failure to show to the user, with what to do next."""


DEFAULT_IMAGE = "milex-agent:latest"
ENGINES = ("podman", "docker")
SLURM_DIR = "/etc/slurm"
MUNGE_DIR = "/run/munge"
READY_TIMEOUT = 60.0
POLL_INTERVAL, MAX_POLL_INTERVAL = 2.0, 10.0  # milex_common.intervals' (this file also runs alone)

Run = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=300)


def find_engine(which: Callable[[str], str | None] = shutil.which) -> str:
    """`podman`, else `docker`, from PATH; MilexError when neither is installed."""
    for engine in ENGINES:
        if which(engine):
            return engine
    raise MilexError(
        f"neither podman nor docker is on PATH on {short_hostname()}: install one (e.g. `apt-get install "
        "podman`), or where the site has a module for one, load it in the machine's env_command; or run "
        "the agent without a container (`milex agent start`)."
    )


def container_name(user: str) -> str:
    return f"milex-agent-{user}"


def script_path(milex_path: str) -> str:
    """Where `milex agent deploy --container` puts this file on the machine: its marker."""
    return f"{milex_path}/agent/container.py"


def record_path(milex_path: str) -> str:
    """The image the last start used, which a start naming none uses again."""
    return f"{milex_path}/agent/container.json"


def recorded_image(milex_path: str) -> str | None:
    try:
        with open(record_path(milex_path)) as file:
            return str(json.load(file)["image"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record_image(milex_path: str, image: str) -> None:
    os.makedirs(os.path.dirname(record_path(milex_path)), exist_ok=True)
    with open(record_path(milex_path), "w") as file:
        json.dump({"image": image}, file)


def container_run_command(
    engine: str,
    image: str,
    milex_path: str,
    uid: int,
    gid: int,
    *,
    user: str,
    home: str,
    rootless: bool = False,
    identity_dir: str | None = None,
    poll_interval: float = POLL_INTERVAL,
    max_interval: float = MAX_POLL_INTERVAL,
) -> list[str]:
    """The `ENGINE run` argv that serves `milex_path`'s agent as the user `uid:gid`.

    The user's Milex path is mounted at the same absolute path: slurmd on the host reads the
    scripts and writes the logs there. The host's network reaches slurmctld; its UTS name and
    /etc/slurm keep the agent's node and cluster (its directory) the host's; its PID space makes the pid in
    agent.json one that `milex-agent stop` on the host can signal. `rootless`: podman run by the
    user, whose uid keep-id maps to itself; otherwise (root podman, docker) only --user sets it.
    `identity_dir`: passwd and group files naming the user (`write_identity`), for docker, which
    adds no entry for --user's uid as podman does; without one, `squeue --me` fails.
    """
    if not os.path.isabs(milex_path):
        raise MilexError(f"the Milex path must be absolute, not {milex_path!r}.")
    volumes = [f"{SLURM_DIR}:{SLURM_DIR}:ro", f"{MUNGE_DIR}:{MUNGE_DIR}", f"{milex_path}:{milex_path}"]
    fallback = socket_fallback_dir(uid)
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


def socket_fallback_dir(uid: int) -> str:
    """The /tmp directory the agent's socket moves to when its directory's path is too long for a
    unix socket (milex_common.agent_layout.socket_path). Always mounted: whether it is used depends on the
    directory's name, the cluster's (milex_agent.handover), which this script does not compute."""
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
    image: str | None = None,
    engine: str | None = None,
    replace: bool = False,
    archive: str | None = None,
    poll_interval: float = POLL_INTERVAL,
    max_interval: float = MAX_POLL_INTERVAL,
    run: Run = _run,
) -> str:
    """Start this user's agent container unless it already runs from `image` (`replace`: restart
    it anyway); say what was done once the agent answers its health check. `image` defaults to the
    one the last start used; `archive`, an image archive (`podman save`), is loaded first."""
    engine = engine or find_engine()
    name = container_name(getpass.getuser())
    milex_path = os.path.abspath(os.path.expanduser(milex_path))
    image = image or recorded_image(milex_path) or DEFAULT_IMAGE
    loaded = _load(engine, archive, run) if archive else ""
    state = container_state(engine, name, run)
    if state == "running" and not replace and _runs_image(engine, name, image, run):
        return f"the agent container {name} already runs: agent {_wait_ready(engine, name, run)}"
    if state is not None:
        _check(run([engine, "rm", "--force", name]))
    _require_image(engine, image, run, loaded)
    _require_host_setup()
    _check(run(_prepared_run_command(engine, image, milex_path, poll_interval, max_interval)))
    version = _wait_ready(engine, name, run)
    record_image(milex_path, image)
    return f"agent {version} running in container {name} ({image}) for {milex_path}"


def _prepared_run_command(
    engine: str, image: str, milex_path: str, poll_interval: float, max_interval: float
) -> list[str]:
    """The run line, once what it mounts from the user's side exists and is the user's."""
    os.makedirs(milex_path, exist_ok=True)
    uid, gid, host = os.getuid(), os.getgid(), short_hostname()
    os.makedirs(socket_fallback_dir(uid), mode=0o700, exist_ok=True)
    if engine == "docker":
        write_identity(identity_dir(milex_path, host), uid, gid, getpass.getuser(), os.path.expanduser("~"))
    return _command_line(engine, image, milex_path, poll_interval, max_interval)


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


def image_id(engine: str, image: str, run: Run = _run) -> str | None:
    """The local image's ID (hex, no `sha256:`), None when the engine has no such image."""
    result = run([engine, "image", "inspect", "--format", "{{.Id}}", image])
    if result.returncode != 0:
        return None
    return result.stdout.strip().removeprefix("sha256:") or None


def archive_image_id(archive: str) -> str | None:
    """The ID of the image in a `podman save` / `docker save` archive (its config's digest, from
    manifest.json), None when the archive is not of that format."""
    import tarfile

    try:
        with tarfile.open(archive) as tar:
            member = tar.extractfile("manifest.json")
            manifest = json.load(member) if member else None
    except (OSError, KeyError, ValueError, tarfile.TarError):
        return None
    if not isinstance(manifest, list) or len(manifest) != 1 or not isinstance(manifest[0], dict):
        return None
    config = os.path.basename(str(manifest[0].get("Config", "")))
    return config.removesuffix(".json") or None


def _runs_image(engine: str, name: str, image: str, run: Run) -> bool:
    """Whether the container runs the image now named `image` (not an older build of that name)."""
    result = run([engine, "container", "inspect", "--format", "{{.Image}}", name])
    running = result.stdout.strip().removeprefix("sha256:") if result.returncode == 0 else None
    return running is not None and running == image_id(engine, image, run)


def _load(engine: str, archive: str, run: Run) -> str:
    """Load an image archive; what the engine said it loaded."""
    result = run([engine, "load", "--input", archive])
    _check(result)
    return result.stdout.strip()


def _require_image(engine: str, image: str, run: Run, loaded: str = "") -> None:
    """A local image must exist; one named with a registry is left to `run` to pull."""
    first = image.split("/")[0]
    if "/" in image and ("." in first or ":" in first) and first != "localhost":
        return
    if image_id(engine, image, run) is not None:
        return
    if loaded:
        raise MilexError(
            f"the image archive holds another image than {image} ({loaded}); name that one with --image."
        )
    raise MilexError(
        f"{engine} on {short_hostname()} has no image {image}. From the laptop, "
        f"`milex agent deploy --container --image-archive FILE` uploads and loads one (`{engine} save "
        f"-o FILE {image}` where it was built); or build it there with deploy/container/build-image.sh; "
        "or give --image REGISTRY/NAME:TAG, an image that machine can pull."
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


def agent_info(engine: str, name: str, milex_path: str, run: Run = _run) -> str:
    """The container's agent's info as `milex-agent start` prints it (JSON, one line): what the
    tunnel reads the agent's socket from."""
    result = run([engine, "exec", name, "milex-agent", "status", "--path", milex_path])
    _check(result)
    return result.stdout.strip().splitlines()[-1]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Run this login node's Milex agent in a container.")
    actions = ["start", "stop", "command", "image-id", "bridge"]
    parser.add_argument(
        "action", choices=actions, help="command: print the run line; image-id: the image's ID"
    )
    parser.add_argument("--path", default=os.environ.get("MILEX"), help="the Milex path (default: $MILEX)")
    parser.add_argument("--image", help=f"default: the last start's, else {DEFAULT_IMAGE}")
    parser.add_argument("--engine", choices=ENGINES, help="default: podman if installed, else docker")
    parser.add_argument("--replace", action="store_true", help="restart a running agent container")
    parser.add_argument("--archive", help="start: load this image archive (`podman save`) first")
    parser.add_argument("--info", action="store_true", help="start: then print the agent's info (JSON)")
    parser.add_argument("--socket", help="bridge: relay stdin/stdout to this agent socket")
    parser.add_argument(
        "--poll-interval", type=float, default=POLL_INTERVAL, help="seconds between SLURM polls"
    )
    parser.add_argument(
        "--max-interval", type=float, default=MAX_POLL_INTERVAL, help="their back-off ceiling"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.action in ("start", "command") and not args.path:
        parser.error("give --path (this machine's Milex path) or set MILEX")
    try:
        print(_act(args))
    except MilexError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _act(args: argparse.Namespace) -> str:
    """What the action does, and what to print."""
    engine = args.engine or find_engine()
    if args.action == "stop":
        return stop_container_agent(engine)
    if args.action == "image-id":
        return image_id(engine, args.image or DEFAULT_IMAGE) or ""
    if args.action == "bridge":  # for SSH servers that forbid socket forwarding, with no Milex here
        bridge = ["exec", "--interactive", container_name(getpass.getuser()), "milex-agent", "bridge"]
        os.execvp(engine, [engine, *bridge, "--socket", args.socket])
    path = os.path.abspath(os.path.expanduser(args.path))
    if args.action == "start":
        said = start_container_agent(
            path, image=args.image, engine=engine, replace=args.replace, archive=args.archive,
            poll_interval=args.poll_interval, max_interval=args.max_interval,
        )  # fmt: skip
        return f"{said}\n{agent_info(engine, container_name(getpass.getuser()), path)}" if args.info else said
    image = args.image or recorded_image(path) or DEFAULT_IMAGE
    return shlex.join(_command_line(engine, image, path, args.poll_interval, args.max_interval))


def _command_line(engine: str, image: str, path: str, poll_interval: float, max_interval: float) -> list[str]:
    return container_run_command(
        engine, image, path, os.getuid(), os.getgid(), user=getpass.getuser(),
        home=os.path.expanduser("~"), rootless=engine == "podman" and os.getuid() != 0,
        identity_dir=identity_dir(path, short_hostname()) if engine == "docker" else None,
        poll_interval=poll_interval, max_interval=max_interval,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
