"""Setting up Milex: the configuration template, the edit-validate loop, directories, `$MILEX`."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from milex.config.file import (
    CONFIG_ENV,
    DEFAULT_MACHINE,
    Config,
    Machine,
    dump_config,
    not_a_file,
    parse_config,
    read_config_text,
)
from milex_common.errors import ConfigError
from milex_common.files import atomic_write, file_in_the_way
from milex_common.model import MACHINE_DIRS

RC_BEGIN = "# >>> milex >>>"
RC_END = "# <<< milex <<<"


def template() -> str:
    """A starting configuration: one `local` machine filled in from this environment."""
    in_venv = sys.prefix != sys.base_prefix
    local = Machine(
        name=DEFAULT_MACHINE,
        path=str(Path.home() / "milex"),
        env_command=f"source {sys.prefix}/bin/activate" if in_venv else "",
        slurm_account="",
        scheduler="slurm" if shutil.which("sbatch") else "local",
    )
    return dump_config({DEFAULT_MACHINE: local})


FALLBACK_EDITOR = "nano"
EDITOR_SETTINGS = "$VISUAL, $EDITOR or git's core.editor"


def configured_editor() -> str | None:
    """The editor the user chose: `$VISUAL`, `$EDITOR`, then git's `core.editor`; None if none is set."""
    for variable in ("VISUAL", "EDITOR"):
        if os.environ.get(variable):
            return os.environ[variable]
    if shutil.which("git"):
        git = subprocess.run(["git", "config", "core.editor"], capture_output=True, text=True, check=False)
        if git.returncode == 0 and git.stdout.strip():
            return git.stdout.strip()
    return None


def find_editor() -> str:
    """The editor the user chose, else `nano` (a terminal editor)."""
    return configured_editor() or FALLBACK_EDITOR


def open_in_editor(path: Path, editor: str) -> None:
    """Let the user edit `path`; the editor string may carry arguments, as git allows."""
    status = subprocess.run(["sh", "-c", f'{editor} "$1"', editor, str(path)], check=False)
    if status.returncode != 0:
        raise ConfigError(
            f"the editor {editor!r} exited with status {status.returncode}; your text is kept in "
            f"{path}. Set $EDITOR to an editor that works here."
        )


def edit_config(
    path: Path, confirm: Callable[[str], bool], report: Callable[[str], None], editor: str | None = None
) -> Config:
    """Open the configuration in the editor until it validates, then save it and set machines up.

    The text being edited lives in a draft beside the configuration, so nothing the user typed is
    lost: an invalid draft is offered for re-editing, and kept if the user declines.
    """
    if path.is_dir():
        raise not_a_file(path)
    draft = path.with_name(f"{path.name}.draft.json")
    if not draft.exists():
        atomic_write(draft, (read_config_text(path) if path.exists() else template()).encode(), mode=0o600)
    editor = editor or find_editor()
    while True:
        open_in_editor(draft, editor)
        try:
            text = read_config_text(draft)
            return install_config(parse_config(text, path), text, path, draft=draft, report=report)
        except ConfigError as error:
            report(f"error: {error}")
            if not confirm("Edit the configuration again?"):
                raise ConfigError(
                    f"the configuration was not saved; your edits are kept in {draft} and "
                    "reopen the next time you run `milex-configuration`."
                ) from None


def install_config(
    config: Config,
    text: str,
    path: Path,
    *,
    draft: Path | None = None,
    report: Callable[[str], None] = print,
) -> Config:
    """Create the local machines' directories, save validated configuration `text` to `path`, and
    set `$MILEX`. A directory that cannot be made is a ConfigError, and nothing is saved."""
    if path.is_dir():
        raise not_a_file(path)
    created = [
        directory
        for machine in config.machines.values()
        if not machine.is_remote
        for directory in create_machine_dirs(machine, source=config.source)
    ]
    try:
        atomic_write(path, text.encode(), mode=0o600)
    except OSError as error:
        raise ConfigError(
            f"cannot write the configuration {path}: {error.strerror or error}; set {CONFIG_ENV} to a "
            "file you can write."
        ) from None
    if draft is not None:
        draft.unlink(missing_ok=True)
    report(f"Saved the configuration to {path}.")
    if created:
        report(f"Created {', '.join(str(p) for p in created)}.")
    local = config.machines.get(DEFAULT_MACHINE)
    if local is None or local.is_remote:
        return config
    if path.expanduser() != (Path.home() / ".milexconfig"):
        # A configuration of its own ($MILEX_CONFIG: a demo, a test): the user's shell keeps its MILEX.
        report(f"Not setting MILEX in your shell files for {path}; export MILEX={local.path} to use it.")
        return config
    for rc_file in set_milex_variable(local.path):
        report(f"Set MILEX in {rc_file} (open a new shell to use it).")
    return config


def create_machine_dirs(machine: Machine, source: Path | None = None) -> list[Path]:
    """Create `jobs/`, `slurm/`, `models/`, `results/`, `data/` under a local machine's path; a
    ConfigError naming the machine (of the configuration `source`) if one cannot be made."""
    created = []
    for name in MACHINE_DIRS:
        directory = Path(machine.path) / name
        if directory.is_dir():
            continue
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            where = f"{source}, machine {machine.name!r}" if source else f"machine {machine.name!r}"
            blocker = file_in_the_way(directory)
            problem = (
                f"{blocker} is a file, not a directory; move the file aside or choose another path"
                if blocker
                else f"cannot create {directory} ({error.strerror or error}); choose a path you can write"
            )
            raise ConfigError(f"{where}: key 'path' is {machine.path!r}, but {problem}.") from None
        created.append(directory)
    return created


def set_milex_variable(path: str, home: Path | None = None) -> list[Path]:
    """Export `MILEX=path` from the user's shell start-up files, in one marked block per file.

    The block is replaced in place, so running this again changes nothing; returns the files changed.
    """
    home = home or Path.home()
    block = f"{RC_BEGIN}\nexport MILEX={shlex.quote(path)}\n{RC_END}\n"
    changed = []
    for rc_file in (home / ".bashrc", home / ".zshrc"):
        if rc_file.name == ".zshrc" and not rc_file.exists():
            continue
        text = rc_file.read_text() if rc_file.exists() else ""
        if RC_BEGIN in text and RC_END in text:
            before, _, rest = text.partition(RC_BEGIN)
            _, _, after = rest.partition(RC_END + "\n") if RC_END + "\n" in rest else rest.partition(RC_END)
            updated = before + block + after
        else:
            updated = text + ("" if not text or text.endswith("\n") else "\n") + block
        if updated != text:
            atomic_write(rc_file, updated.encode())
            changed.append(rc_file)
    return changed
