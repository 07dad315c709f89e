"""The same record runs unchanged for a second, unprivileged user with their own account."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import MilexHome
from tests.e2e.other_user import OtherUser, ensure_user


@pytest.fixture(scope="session")
def colleague(slurm_cluster: None) -> Iterator[OtherUser]:
    user = ensure_user("milex-colleague")
    yield user
    user.run("milex-agent", "stop", "--path", str(user.home / "milex"), check=False)


@pytest.mark.timeout(600)
def test_a_colleague_runs_the_same_record_as_themselves(milex_home: MilexHome, colleague: OtherUser) -> None:
    milex_home.milex("milex-schedule", "milex-example", "--name", "shared", "--message", "from root")
    milex_home.milex("milex-schedule", "milex-example", "--name", "shared", "--append",
                     "--job_name", "then", "--dependencies", "milex-example")  # fmt: skip
    [record] = milex_home.jobs.glob("shared_*[0-9].json")

    their_path = colleague.configure(account="biology")
    shutil.copy(record, their_path / "jobs" / record.name)
    os.chown(their_path / "jobs" / record.name, *colleague.ids)
    result = colleague.run("milex-run", "shared", "--wait", "--timeout", "90")

    assert result.stdout.count("COMPLETED") == 2, result.stdout
    assert (their_path / "jobs" / record.name).read_bytes() == record.read_bytes()
    [script] = (their_path / "slurm").glob("shared_*_milex-example.sh")
    assert "#SBATCH --account=biology" in script.read_text()
    [output] = (their_path / "slurm").glob("shared_*_milex-example-*.out")
    assert output.stat().st_uid == colleague.ids[0]
    report = json.loads(output.read_text())
    assert report["arguments"]["message"] == "from root"
    assert report["milex"] == str(their_path)
