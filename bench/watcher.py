"""A watching client for the load section: follows a machine's events until killed.

`python -m bench.watcher MACHINE` prints `ready` once the agent has answered its watch, then one
line per event it receives (`SEQ JOB_ID STATE TIME`).
"""

from __future__ import annotations

import sys
import time


def main(machine_name: str) -> None:
    from milex.config.file import load_config
    from milex.machine.endpoint import connect
    from milex.machine.settings import client_version
    from milex.watch import follow_events

    machine = load_config().machine(machine_name)
    with connect(machine) as connection:
        since = connection.hello(client_version()).last_seq
    ready = False
    for event in follow_events(machine, since, heartbeat=1.0):
        if not ready:
            print("ready", flush=True)
            ready = True
        if event is not None:
            print(event.seq, event.job_id, event.state.value, time.time(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
