"""End to end on the real cluster: schedule with the CLI, run, and read what the app received."""

from __future__ import annotations

import json

from tests.e2e.conftest import MilexHome

NASTY_MESSAGE = 'it\'s "quoted" $HOME `id` $(whoami) ; & | > < * ?\nsecond line\ttab \\ back'


def test_arguments_full_of_shell_metacharacters_reach_the_app_exactly(milex_home: MilexHome) -> None:
    milex_home.milex(
        "milex-schedule", "milex-example", "--time", "5", "--mem", "100M",
        "--message", NASTY_MESSAGE, "--values", "a b", "$PATH", "'", "--flag", "--count", "7",
    )  # fmt: skip
    # An app option that collides with Milex's own --time goes through `--`.
    milex_home.milex("milex-schedule", "milex-example", "--append", "--job_name", "dashes", "--",
                     "--message=--looks-like-a-flag", "--sleep", "0")  # fmt: skip

    result = milex_home.milex("milex-run", "milex-example", "--wait", "--timeout", "60")

    assert result.stdout.count("COMPLETED") == 2, result.stdout
    first = milex_home.reports("*_milex-example-*.out")[0]["arguments"]
    assert first["message"] == NASTY_MESSAGE
    assert first["values"] == ["a b", "$PATH", "'"]
    assert first["flag"] is True and first["count"] == 7
    second = milex_home.reports("*_dashes-*.out")[0]["arguments"]
    assert second["message"] == "--looks-like-a-flag"


def test_dependent_job_starts_after_its_dependency_ends(milex_home: MilexHome) -> None:
    milex_home.milex("milex-schedule", "milex-example", "--name", "chain", "--job_name", "first",
                     "--sleep", "2")  # fmt: skip
    milex_home.milex("milex-schedule", "milex-example", "--name", "chain", "--job_name", "second",
                     "--append", "--dependencies", "first")  # fmt: skip

    milex_home.milex("milex-run", "chain", "--wait", "--timeout", "60")

    first = milex_home.reports("chain_*_first-*.out")[0]
    second = milex_home.reports("chain_*_second-*.out")[0]
    assert second["started_at"] >= first["started_at"] + 2
    [submission] = milex_home.submissions()
    assert submission["machine"] == "local"
    assert {name: job["state"] for name, job in submission["jobs"].items()} == {
        "first": "COMPLETED",
        "second": "COMPLETED",
    }


def test_array_job_runs_every_index(milex_home: MilexHome) -> None:
    milex_home.milex("milex-schedule", "milex-example", "--array", "1-3", "--run-now", "--wait")

    reports = milex_home.reports("milex-example_*-*_*.out")
    assert sorted(int(r["array_task_id"]) for r in reports) == [1, 2, 3]
    assert len({r["job_id"] for r in reports}) == 3


def test_failed_job_is_reported_and_its_dependent_never_runs(milex_home: MilexHome) -> None:
    milex_home.milex("milex-schedule", "milex-example", "--name", "broken", "--job_name", "fails",
                     "--exit_code", "3")  # fmt: skip
    milex_home.milex("milex-schedule", "milex-example", "--name", "broken", "--job_name", "after",
                     "--append", "--dependencies", "fails")  # fmt: skip

    result = milex_home.milex("milex-run", "broken", "--wait", "--timeout", "60", check=False)

    assert result.returncode == 1
    [submission] = milex_home.submissions()
    fails, after = submission["jobs"]["fails"], submission["jobs"]["after"]
    assert (fails["state"], fails["exit_code"]) == ("FAILED", 3)
    assert after["state"] == "CANCELLED"
    assert not list(milex_home.slurm.glob("broken_*_after-*.out"))


def test_sbatch_refusal_shows_slurms_message_and_submits_no_dependent(
    milex_home: MilexHome,
) -> None:
    milex_home.milex("milex-schedule", "milex-example", "--name", "refused", "--job_name", "bad",
                     "--partition", "no-such-partition")  # fmt: skip
    milex_home.milex("milex-schedule", "milex-example", "--name", "refused", "--job_name", "next",
                     "--append", "--dependencies", "bad")  # fmt: skip

    result = milex_home.milex("milex-run", "refused", check=False)

    assert result.returncode == 1
    assert "invalid partition specified" in result.stderr.lower()
    assert "Not submitted: next" in result.stderr
    [submission] = milex_home.submissions()
    assert "jobs" not in submission and "no-such-partition" in submission["error"]


def test_invalid_slurm_value_is_refused_before_anything_is_written(milex_home: MilexHome) -> None:
    result = milex_home.milex("milex-schedule", "milex-example", "--time", "1h", check=False)

    assert result.returncode == 1
    assert "--time '1h'" in result.stderr
    assert list(milex_home.jobs.iterdir()) == []


def test_record_is_user_agnostic_and_machine_settings_apply_at_render(milex_home: MilexHome) -> None:
    milex_home.milex("milex-schedule", "milex-example", "--run-now", "--slurm_account", "chemistry")

    [record_file] = milex_home.jobs.glob("milex-example_*[0-9].json")
    record = record_file.read_text()
    for private in ("physics", "chemistry", "activate", str(milex_home.root)):
        assert private not in record
    [script] = milex_home.slurm.glob("*.sh")
    assert "#SBATCH --account=chemistry" in script.read_text()
    assert json.loads(record)["_milex"]["schema_version"] == 1
