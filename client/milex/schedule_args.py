"""The command line of `milex-schedule`: Milex's own options, and everything else for the app."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from milex_common.errors import InvalidValue
from milex_common.model import MachineOverrides, SlurmOptions, machine_overrides

USAGE = "milex-schedule NAME [options] [app arguments] [-- app arguments]"
EPILOG = (
    "Options Milex does not know go to the app's NAME-cli, as do all arguments after `--` "
    "(use it when an app option has the same name as a Milex option). "
    "Every option may be spelled with dashes or underscores."
)


@dataclass
class ScheduleRequest:
    """What the user asked `milex-schedule` for."""

    app: str
    app_arguments: list[str]
    bundle: str | None = None
    job_name: str | None = None
    append: bool = False
    dependencies: list[str] = field(default_factory=list)
    pre_commands: list[str] = field(default_factory=list)
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    run_now: bool = False
    wait: bool = False
    machine: str | None = None
    like: str | None = None  # a bundle whose usage suggests the SLURM options not given here
    any_version: bool = False
    overrides: MachineOverrides = field(default_factory=lambda: MachineOverrides())


def _spellings(name: str) -> list[str]:
    """`--cpus-per-task` and `--cpus_per_task` for the option `cpus_per_task`."""
    dashed, underscored = name.replace("_", "-"), name.replace("-", "_")
    return sorted({f"--{dashed}", f"--{underscored}"}, key=lambda s: "_" in s)


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: an app option such as --me must not be taken for Milex's --mem.
    parser = argparse.ArgumentParser(prog="milex-schedule", usage=USAGE, epilog=EPILOG, allow_abbrev=False)
    add = parser.add_argument
    parser.add_argument("app", metavar="NAME", help="the app, registered as NAME and NAME-cli")
    add(*_spellings("name"), dest="bundle", help="bundle (record) name; default: NAME")
    add(*_spellings("job_name"), help="job name within the bundle; default: NAME")
    add("--append", action="store_true", help="add the job to the newest bundle of that name")
    add(
        "--dependencies",
        nargs="+",
        default=[],
        metavar="JOB",
        help="jobs of the bundle to wait for",
    )
    add(*_spellings("dependency_type"), default="afterok", help="afterok (default), afterany, ...")
    add(
        *_spellings("pre_commands"),
        nargs="+",
        default=[],
        metavar="CMD",
        help="shell lines run first",
    )
    slurm = parser.add_argument_group("SLURM options")
    slurm.add_argument("--time", help="time limit, e.g. 00-01:00 (D-HH:MM) or 30 (minutes)")
    slurm.add_argument(*_spellings("cpus_per_task"), type=int, help="CPUs per task")
    slurm.add_argument("--gres", help="generic resources, e.g. gpu:1")
    slurm.add_argument("--mem", help="memory per node, e.g. 16G")
    slurm.add_argument("--array", help="array indices, e.g. 1-10:2 or 0,4,8%%2")
    slurm.add_argument("--tasks", type=int, help="number of tasks")
    slurm.add_argument("--nodes", type=int, help="number of nodes")
    slurm.add_argument("--partition", help="partition to submit to")
    slurm.add_argument("--qos", help="quality of service")
    slurm.add_argument(
        "--like",
        metavar="BUNDLE",
        help="start from the options BUNDLE's usage suggests (see `milex status BUNDLE --usage`, on "
        "--machine); options given here win",
    )
    slurm.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="OPTION[=VALUE]",
        help="any other sbatch option, e.g. --sbatch constraint=v100 --sbatch exclusive",
    )
    run = parser.add_argument_group("running now")
    run.add_argument(*_spellings("run_now"), action="store_true", help="run right away")
    run.add_argument("--wait", action="store_true", help="with --run-now: wait for the jobs to end")
    run.add_argument("--machine", help="machine of the configuration; default: local")
    run.add_argument(
        *_spellings("any_version"),
        action="store_true",
        help="run even if the machine has another app version",
    )
    for override in ("slurm_account", "env_command", "path"):
        run.add_argument(*_spellings(override), help=f"use this {override} instead of the machine's")
    for removed, name in _REMOVED.items():
        add(removed, action=_Removed, use=name)
    return parser


# Second names an option had once: one name each now. They stay known, so that they are an error
# naming the option to use, not an argument handed to the app unnoticed.
_REMOVED = {"--submit": "--run-now", "--ntasks": "--tasks"}


class _Removed(argparse.Action):
    """A removed name of an option: argparse's error, naming the option's one name."""

    def __init__(self, option_strings: list[str], dest: str, *, use: str) -> None:
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        self.use = use

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        parser.error(
            f"{self.option_strings[0]} is not an option of milex-schedule: use {self.use} (an app option "
            "of that name goes after `--`)."
        )


def parse_schedule_args(argv: Sequence[str]) -> ScheduleRequest:
    """Split `argv` into Milex's options and the app's; argparse exits on malformed options."""
    argv = list(argv)
    app_tail: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, app_tail = argv[:split], argv[split + 1 :]
    options, app_arguments = build_parser().parse_known_args(_join_sbatch_values(argv))
    slurm = SlurmOptions(
        time=options.time,
        cpus_per_task=options.cpus_per_task,
        gres=options.gres,
        mem=options.mem,
        array=options.array,
        tasks=options.tasks,
        nodes=options.nodes,
        partition=options.partition,
        qos=options.qos,
        dependency_type=options.dependency_type,
        extra=parse_sbatch_options(options.sbatch),
    )
    overrides = machine_overrides(
        slurm_account=options.slurm_account, env_command=options.env_command, path=options.path
    )
    return ScheduleRequest(
        app=options.app,
        app_arguments=app_arguments + app_tail,
        bundle=options.bundle,
        job_name=options.job_name,
        append=options.append,
        dependencies=options.dependencies,
        pre_commands=options.pre_commands,
        slurm=slurm,
        run_now=options.run_now,
        wait=options.wait,
        machine=options.machine,
        like=options.like,
        any_version=options.any_version,
        overrides=overrides,
    )


def _join_sbatch_values(argv: list[str]) -> list[str]:
    """`--sbatch --exclusive` -> `--sbatch=--exclusive`: argparse takes no dash-led word as a value."""
    joined: list[str] = []
    words = iter(argv)
    for word in words:
        if word == "--sbatch":
            value = next(words, None)
            joined.append(word if value is None else f"--sbatch={value}")
        else:
            joined.append(word)
    return joined


def parse_sbatch_options(items: Sequence[str]) -> dict[str, Any]:
    """`["constraint=v100", "--exclusive"]` -> `{"constraint": "v100", "exclusive": True}`."""
    parsed: dict[str, Any] = {}
    for item in items:
        name, has_value, value = item.lstrip("-").partition("=")
        if not name:
            raise InvalidValue(f"--sbatch {item!r}: give an sbatch option such as constraint=v100.")
        parsed[name] = value if has_value else True
    return parsed
