"""The machine configuration file: reading, validation errors that say where and what, and writing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from milex.config.file import Machine, config_path, dump_config, load_config, parse_config
from milex_common.errors import ConfigError

SOURCE = Path("/home/alice/.milexconfig")
LOCAL = {"path": "/home/alice/milex", "env_command": "", "slurm_account": ""}
REMOTE = {
    "hostname": "cluster.example.org",
    "username": "alice",
    "key_path": "~/.ssh/id_ed25519",
    "path": "/scratch/alice/milex",
    "env_command": "module load python",
    "slurm_account": "def-alice",
    "port": 2222,
}


def parse(document: object):
    return parse_config(json.dumps(document), SOURCE)


def config_error(document: object) -> str:
    with pytest.raises(ConfigError) as error:
        parse(document)
    return str(error.value)


def test_local_and_remote_machines_load() -> None:
    config = parse({"local": LOCAL, "cluster": REMOTE})
    local, cluster = config.machine("local"), config.machine("cluster")
    assert not local.is_remote
    assert local.scheduler == "slurm"
    assert cluster.is_remote
    assert (cluster.hostname, cluster.username, cluster.port) == ("cluster.example.org", "alice", 2222)
    # A remote path is the cluster's: `~` there is not this laptop's home.
    assert cluster.key_path == "~/.ssh/id_ed25519"


def test_settings_carry_no_ssh_details() -> None:
    settings = parse({"cluster": REMOTE}).machine("cluster").settings
    assert settings.name == "cluster"
    assert settings.slurm_account == "def-alice"
    assert not hasattr(settings, "hostname")


def test_local_path_with_tilde_is_expanded(home: Path) -> None:
    machine = parse({"local": {**LOCAL, "path": "~/milex"}}).machine("local")
    assert machine.path == str(home / "milex")


def test_load_config_reads_milex_config(milex_config) -> None:
    config = load_config()
    assert config.source == milex_config.config_path
    assert config.machine().path == str(milex_config.milex_path)
    assert config.machine().slurm_account == milex_config.account
    assert config.machine().env_command == milex_config.env_command
    assert config.jobs_dir == milex_config.jobs_dir


def test_a_changed_configuration_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "milexconfig"
    path.write_text(
        json.dumps({"local": {"path": str(tmp_path / "a"), "env_command": "", "slurm_account": ""}})
    )
    assert load_config(path) is load_config(path)  # unchanged: not parsed again
    path.write_text(
        json.dumps({"local": {"path": str(tmp_path / "bb"), "env_command": "", "slurm_account": ""}})
    )
    assert load_config(path).machine("local").path == str(tmp_path / "bb")
    path.write_text("{")
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_config(path)


def test_config_path_defaults_to_home(home: Path) -> None:
    assert config_path() == home / ".milexconfig"


def test_config_path_from_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MILEX_CONFIG", "~/configs/milex.json")
    assert config_path() == home / "configs" / "milex.json"


def test_missing_file_says_how_to_create_it(home: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config()
    message = str(error.value)
    assert str(home / ".milexconfig") in message
    assert "milex-configuration" in message


def test_invalid_json_names_file_line_and_column() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config('{\n    "local": {\n        "path": "/x",\n    }\n}', SOURCE)
    assert str(error.value).startswith(f"{SOURCE}, line 4, column 5: invalid JSON")


def test_top_level_must_be_an_object() -> None:
    assert "JSON object of machines" in config_error([LOCAL])


def test_machine_must_be_an_object() -> None:
    assert "machine 'local': must be a JSON object" in config_error({"local": "/home/alice/milex"})


def test_unknown_key_names_file_machine_key_and_close_match() -> None:
    message = config_error({"local": {**LOCAL, "slurm_acount": "x"}})
    assert str(SOURCE) in message
    assert "machine 'local'" in message
    assert "unknown key 'slurm_acount'" in message
    assert "did you mean 'slurm_account'?" in message


def test_unknown_key_without_close_match_lists_known_keys() -> None:
    message = config_error({"local": {**LOCAL, "colour": "blue"}})
    assert "did you mean" not in message
    assert "known keys: path, env_command, slurm_account" in message


@pytest.mark.parametrize("key", ["path", "env_command", "slurm_account"])
def test_missing_required_key_named(key: str) -> None:
    local = {k: v for k, v in LOCAL.items() if k != key}
    message = config_error({"local": local})
    assert f"machine 'local': missing required key {key!r}" in message


def test_remote_without_username_refused(home: Path) -> None:
    remote = {k: v for k, v in REMOTE.items() if k != "username"}
    assert "missing required key 'username'" in config_error({"cluster": remote})


def test_remote_without_user_and_key_accepted_with_ssh_config_alias(home: Path) -> None:
    (home / ".ssh").mkdir()
    (home / ".ssh" / "config").write_text("Host login cluster\n    User alice\n    IdentityFile ~/.ssh/k\n")
    remote = {k: v for k, v in REMOTE.items() if k not in ("username", "key_path")}
    remote["hostname"] = "cluster"
    machine = parse({"cluster": remote}).machine("cluster")
    assert machine.username is None
    assert machine.key_path is None


def test_ssh_config_for_another_host_does_not_excuse_missing_username(home: Path) -> None:
    (home / ".ssh").mkdir()
    (home / ".ssh" / "config").write_text("Host other\n    User alice\n")
    remote = {k: v for k, v in REMOTE.items() if k != "username"}
    remote["hostname"] = "cluster"
    assert "missing required key 'username'" in config_error({"cluster": remote})


def test_unknown_machine_lists_known_ones() -> None:
    config = parse({"local": LOCAL, "cluster": REMOTE})
    with pytest.raises(ConfigError) as error:
        config.machine("narval")
    message = str(error.value)
    assert "no machine named 'narval'" in message
    assert "configured machines: cluster, local" in message
    assert str(SOURCE) in message


def test_machine_defaults_to_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MILEX_MACHINE", raising=False)
    assert parse({"local": LOCAL, "cluster": REMOTE}).machine().name == "local"


def test_milex_machine_environment_chooses_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MILEX_MACHINE", "cluster")
    assert parse({"local": LOCAL, "cluster": REMOTE}).machine().name == "cluster"


@pytest.mark.parametrize("path", ["milex", "./milex", "", "$HOME/milex"])
def test_relative_path_refused(path: str) -> None:
    message = config_error({"local": {**LOCAL, "path": path}})
    assert "key 'path' must be an absolute path" in message
    assert repr(path) in message


@pytest.mark.parametrize("scheduler", ["slurm", "local"])
def test_scheduler_accepted(scheduler: str) -> None:
    machine = parse({"local": {**LOCAL, "scheduler": scheduler}}).machine("local")
    assert machine.settings.scheduler == scheduler


def test_other_scheduler_refused() -> None:
    message = config_error({"local": {**LOCAL, "scheduler": "pbs"}})
    assert "key 'scheduler' is 'pbs'; use one of slurm, local" in message


def test_wrongly_typed_value_refused() -> None:
    message = config_error({"cluster": {**REMOTE, "port": "22"}})
    assert "machine 'cluster'" in message
    assert "port" in message


def test_dump_config_round_trip() -> None:
    config = parse({"local": {**LOCAL, "scheduler": "local"}, "cluster": REMOTE})
    text = dump_config(config.machines)
    assert parse_config(text, SOURCE).machines == config.machines


def test_dump_config_does_not_repeat_the_name_and_leaves_out_unset_keys() -> None:
    machine = Machine(name="local", path="/x", env_command="", slurm_account="")
    assert json.loads(dump_config({"local": machine})) == {
        "local": {"path": "/x", "env_command": "", "slurm_account": ""}
    }


def test_state_dir_is_optional_absolute_and_expanded_on_a_local_machine(home: Path) -> None:
    assert parse({"local": LOCAL}).machine("local").state_dir is None
    local = parse({"local": {**LOCAL, "state_dir": "~/state"}}).machine("local")
    assert local.state_dir == str(home / "state")
    # A remote machine's `~` is the login node's home.
    cluster = parse({"cluster": {**REMOTE, "state_dir": "~/state"}}).machine("cluster")
    assert cluster.state_dir == "~/state"
    assert not hasattr(cluster.settings, "state_dir")  # the agent's own business, not the jobs'
    message = config_error({"cluster": {**REMOTE, "state_dir": "state"}})
    assert "key 'state_dir' must be an absolute path, not 'state'" in message


def test_notify_reaches_the_agent_in_the_settings_and_an_older_agent_drops_it() -> None:
    import msgspec

    command = "mail -s 'milex: $MILEX_BUNDLE' alice@example.org"
    machine = parse({"cluster": {**REMOTE, "notify": command}}).machine("cluster")
    assert machine.settings.notify == command
    older = msgspec.defstruct("MachineSettings", [("name", str), ("path", str)], kw_only=True)
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(machine.settings), type=older)
    assert decoded.name == "cluster"  # type: ignore[attr-defined]
    assert "notify" not in msgspec.to_builtins(parse({"local": LOCAL}).machine("local").settings)


@pytest.mark.parametrize("notify", ["   ", "mail\u0000x", 3])
def test_a_notify_that_is_no_command_is_refused(notify: object) -> None:
    message = config_error({"local": {**LOCAL, "notify": notify}})
    assert "machine 'local'" in message and "notify" in message
