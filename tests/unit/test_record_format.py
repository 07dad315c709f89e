"""The job record on disk: encoding, versioning, and reading the reference implementation's records."""

from __future__ import annotations

import json

import msgspec
import pytest

from milex_common.errors import BundleError
from milex_common.model import Bundle, Job, MachineSettings, SlurmOptions
from milex_common.record_format import METADATA_KEY, SCHEMA_VERSION, decode_bundle, encode_bundle
from milex_common.render import render_script

SOURCE = "/home/alice/milex/jobs/train_20240102030405.json"


def decode(document: object) -> Bundle:
    data = json.dumps(document).encode()
    return decode_bundle(data, name="train", created="20240102030405", source=SOURCE)


def sample_bundle() -> Bundle:
    prepare = Job(name="prepare", script="prepare", script_args={"out": "data.h5"})
    train = Job(
        name="train",
        script="train",
        script_args={
            "lr": 0.001,
            "epochs": 10,
            "layers": [64, 64],
            "fast": True,
            "resume": False,
            "checkpoint": None,
            "options": {"a": [1, 2]},
            "text": 'it\'s "quoted"\n$HOME',
        },
        dependencies=["prepare"],
        pre_commands=["module load cuda"],
        slurm=SlurmOptions(
            time="00-01:00",
            cpus_per_task=4,
            mem="16G",
            array="1-10:2",
            dependency_type="afterany",
            extra={"constraint": "v100", "exclusive": True, "requeue": False},
        ),
    )
    return Bundle(name="train", created="20240102030405", jobs={"prepare": prepare, "train": train})


def test_round_trip() -> None:
    original = sample_bundle()
    assert (
        decode_bundle(encode_bundle(original), name="train", created="20240102030405", source="x") == original
    )


def test_round_trip_keeps_job_order() -> None:
    decoded = decode_bundle(encode_bundle(sample_bundle()), name="train", created="1", source="x")
    assert list(decoded.jobs) == ["prepare", "train"]


def test_encoded_record_carries_schema_version_under_metadata_key() -> None:
    document = json.loads(encode_bundle(sample_bundle()))
    assert METADATA_KEY == "_milex"
    assert document["_milex"] == {"schema_version": SCHEMA_VERSION}
    assert list(document) == ["_milex", "prepare", "train"]


def test_encoded_record_is_indented_and_ends_with_newline() -> None:
    text = encode_bundle(sample_bundle()).decode()
    assert text.endswith("}\n")
    assert '\n    "train": {' in text


def test_encoded_record_leaves_out_unset_fields() -> None:
    document = json.loads(encode_bundle(sample_bundle()))
    prepare = document["prepare"]
    assert prepare.pop("slurm", {}) == {}
    assert prepare == {"name": "prepare", "script": "prepare", "script_args": {"out": "data.h5"}}
    assert "gres" not in document["train"]["slurm"]


def test_encoded_record_names_no_user_or_machine() -> None:
    text = encode_bundle(sample_bundle()).decode()
    for word in ("account", "env_command", "path", "hostname", "username"):
        assert word not in text


# --- Records of the reference implementation --------------------------------------------------------------

REFERENCE_RECORD = {
    "train": {
        "args": {"lr": 0.1, "data": "/data/x"},
        "name": "train",
        "script": "train",
        "dependencies": None,
        "pre-commands": ["module load python"],
        "slurm": {
            "array": None,
            "tasks": 1,
            "cpus_per_task": None,
            "gres": "gpu:1",
            "mem": None,
            "time": "00-01:00",
            "account_x": "foo",
        },
    }
}


def test_reference_record_loads() -> None:
    job = decode(REFERENCE_RECORD).jobs["train"]
    assert job.script == "train"
    assert job.script_args == {"lr": 0.1, "data": "/data/x"}
    assert job.pre_commands == ["module load python"]
    assert job.dependencies == []
    assert job.slurm.time == "00-01:00"
    assert job.slurm.tasks == 1
    assert job.slurm.gres == "gpu:1"
    assert job.slurm.cpus_per_task is None
    assert job.slurm.mem is None


def test_reference_record_unknown_slurm_key_kept_in_extra() -> None:
    extra = decode(REFERENCE_RECORD).jobs["train"].slurm.extra
    # The reference implementation wrote `--account-x` for it; either spelling keeps the value.
    assert {key.replace("_", "-"): value for key, value in extra.items()} == {"account-x": "foo"}


def test_reference_record_without_name_takes_its_key() -> None:
    assert decode({"train": {"script": "train"}}).jobs["train"].name == "train"


def test_reference_record_with_null_slurm_loads() -> None:
    assert decode({"train": {"script": "train", "slurm": None}}).jobs["train"].slurm == SlurmOptions()


def test_reference_record_underscored_slurm_key_renders_as_sbatch_option() -> None:
    # The reference implementation rendered `--{key.replace('_', '-')}`; sbatch knows no `--account_x`.
    job = decode(REFERENCE_RECORD).jobs["train"]
    job.slurm.validate()
    script = render_script(job, MachineSettings(name="m", path="/m"), "stem")
    assert "#SBATCH --account-x=foo" in script


def test_reference_record_numeric_unknown_slurm_key_loads() -> None:
    # The reference implementation wrote any slurm key it was given, numbers included.
    record = {"train": {"script": "train", "slurm": {"time": "10", "ntasks_per_node": 4}}}
    job = decode(record).jobs["train"]
    script = render_script(job, MachineSettings(name="m", path="/m"), "stem")
    assert "#SBATCH --ntasks-per-node=4" in script


# --- Refusals -----------------------------------------------------------------------------------------


def test_newer_schema_version_refused() -> None:
    with pytest.raises(BundleError) as error:
        decode({"_milex": {"schema_version": SCHEMA_VERSION + 1}, "train": {"script": "train"}})
    message = str(error.value)
    assert SOURCE in message
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert "Upgrade milex-scheduler" in message


@pytest.mark.parametrize("metadata", ["1", {"schema_version": "1"}, {}])
def test_malformed_metadata_refused(metadata: object) -> None:
    with pytest.raises(BundleError, match="schema version"):
        decode({"_milex": metadata, "train": {"script": "train"}})


def test_invalid_json_names_the_source() -> None:
    with pytest.raises(BundleError) as error:
        decode_bundle(b'{"train": {', name="train", created="1", source=SOURCE)
    assert str(error.value).startswith(f"{SOURCE} is not valid JSON")


def test_non_object_record_refused() -> None:
    with pytest.raises(BundleError, match="must hold a JSON object"):
        decode(["train"])


def test_non_object_job_refused() -> None:
    with pytest.raises(BundleError, match="job 'train': a job must be a JSON object, not str"):
        decode({"train": "train --lr 0.1"})


def test_job_name_differing_from_key_refused() -> None:
    with pytest.raises(BundleError) as error:
        decode({"train": {"name": "evaluate", "script": "train"}})
    message = str(error.value)
    assert "job 'train'" in message
    assert "'evaluate'" in message
    assert SOURCE in message


def test_unknown_job_field_refused() -> None:
    with pytest.raises(BundleError) as error:
        decode({"train": {"script": "train", "scirpt_args": {}}})
    message = str(error.value)
    assert "job 'train'" in message
    assert "unknown key 'scirpt_args' (did you mean 'script_args'?)" in message
    assert SOURCE in message


def test_unknown_job_field_refused_though_the_wire_drops_it() -> None:
    # Job itself is tolerant (a newer client's field must not break an older agent): the record is not.
    assert msgspec.convert({"name": "a", "script": "a", "retries": 3}, Job) == Job(name="a", script="a")
    with pytest.raises(BundleError, match=r"job 'train': unknown key 'retries'; known keys: name, script"):
        decode({"train": {"script": "train", "retries": 3}})


def test_missing_script_refused() -> None:
    with pytest.raises(BundleError, match="script"):
        decode({"train": {"script_args": {}}})


def test_wrongly_typed_field_refused() -> None:
    with pytest.raises(BundleError, match="cpus_per_task"):
        decode({"train": {"script": "train", "slurm": {"cpus_per_task": "four"}}})
