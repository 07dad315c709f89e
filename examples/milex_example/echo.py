"""`milex-example`: prints (and optionally saves) the arguments it was run with, as JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Report the arguments received, as JSON.")
    parser.add_argument("--message", type=str, default="hello", help="any text")
    parser.add_argument("--values", nargs="*", default=[], help="a list of words")
    parser.add_argument("--count", type=int, default=1, help="a number")
    parser.add_argument("--flag", action="store_true", help="a boolean switch")
    parser.add_argument("--output", type=str, default=None, help="also write the report here")
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds to wait before ending")
    parser.add_argument("--then", type=str, default=None, help="a line to print after the sleep")
    parser.add_argument("--exit_code", type=int, default=0, help="exit with this status")
    parser.add_argument(
        "--fail_tasks",
        type=str,
        default="",
        help="array task indices (`3,7`) that exit with status 2 (SLURM_ARRAY_TASK_ID)",
    )
    parser.add_argument(
        "--allocate_mb", type=int, default=0, help="take this many MiB of memory, touched, through the sleep"
    )
    return parser.parse_args()


def cli() -> None:
    """The seed's contract: parse the arguments, print them as JSON, exit 0."""
    args = parse_args()
    print(json.dumps(vars(args), indent=4))
    sys.exit(0)


def main() -> None:
    args = parse_args()
    report = {
        "arguments": vars(args),
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "milex": os.environ.get("MILEX"),
        "started_at": time.time(),
        "user": os.environ.get("USER") or os.environ.get("SLURM_JOB_USER"),
    }
    text = json.dumps(report, sort_keys=True)
    print(text, flush=True)  # in the log at once, not when the job ends
    if args.output:
        suffix = f".{report['array_task_id']}" if report["array_task_id"] is not None else ""
        Path(args.output + suffix).write_text(text + "\n")
    held = allocate(args.allocate_mb)
    time.sleep(args.sleep)
    del held
    if args.then is not None:
        print(args.then)
    failing = {int(index) for index in args.fail_tasks.split(",") if index.strip()}
    task = report["array_task_id"]
    sys.exit(2 if task is not None and int(task) in failing else args.exit_code)


def allocate(megabytes: int) -> bytearray:
    """`megabytes` MiB, every page written once: resident memory, not only reserved."""
    memory = bytearray(megabytes * 2**20)
    for page in range(0, len(memory), 4096):
        memory[page] = 1
    return memory
