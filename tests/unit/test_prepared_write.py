"""A record file's replacement begun ahead (milex.prepared_write): the file made first, the content
moved into place in one step, nothing left behind when it is not used or cannot be written."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from milex import prepared_write
from milex.prepared_write import PreparedWrite
from milex_common.files import temporary_beside


def temporaries(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.startswith(".")]


def test_the_file_is_made_ahead_and_the_content_moved_into_place_at_once(tmp_path: Path) -> None:
    path = tmp_path / "exp.runs.json"
    path.write_bytes(b"old")
    write = PreparedWrite(path)
    old = os.umask(0o077)  # the mode is 0644 whatever the umask, as atomic_write makes it
    try:
        write.prepare()
    finally:
        os.umask(old)
    assert write.ready and len(temporaries(tmp_path)) == 1 and path.read_bytes() == b"old"
    write.commit(b"new")
    assert path.read_bytes() == b"new" and temporaries(tmp_path) == []
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and not write.ready


def test_a_write_that_fails_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(file: object, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    path = tmp_path / "exp.runs.json"
    path.write_bytes(b"old")
    write = PreparedWrite(path)
    write.prepare()
    monkeypatch.setattr(prepared_write, "_fill", no_space)
    with pytest.raises(OSError, match="No space"):
        write.commit(b"new")
    assert path.read_bytes() == b"old" and temporaries(tmp_path) == []


def test_an_unused_write_is_discarded_and_one_not_made_is_not_ready(tmp_path: Path) -> None:
    write = PreparedWrite(tmp_path / "exp.runs.json")
    write.discard()  # nothing made yet: nothing to do
    write.prepare()
    write.discard()
    assert temporaries(tmp_path) == [] and not write.ready
    gone = PreparedWrite(tmp_path / "missing" / "exp.runs.json")
    gone.prepare()  # the directory is not there: the record is then written the usual way
    assert not gone.ready


def test_a_temporary_file_is_new_private_and_named_after_its_target(tmp_path: Path) -> None:
    """What tempfile.mkstemp made (milex_common.files.temporary_beside stands in for it, unimported):
    a new file beside the target, `.NAME.` and a random part, mode 0600, never one that existed."""
    path = tmp_path / "exp.runs.json"
    made = [temporary_beside(path) for _ in range(2)]
    for fd, temporary in made:
        os.close(fd)
        assert Path(temporary).parent == tmp_path
        assert Path(temporary).name.startswith(".exp.runs.json.") and len(Path(temporary).name) > 16
        assert stat.S_IMODE(os.stat(temporary).st_mode) == 0o600
    assert made[0][1] != made[1][1]
    assert sorted(temporaries(tmp_path)) == sorted(Path(temporary).name for _, temporary in made)
