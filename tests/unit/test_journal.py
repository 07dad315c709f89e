"""The SQLite journal: submissions by idempotency key, numbered events, queries, and persistence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from milex_agent.journal import Journal, Watched
from milex_common.model import JobState, JobStatus
from milex_common.protocol import TrackedJob

PENDING, RUNNING, COMPLETED, FAILED = JobState.PENDING, JobState.RUNNING, JobState.COMPLETED, JobState.FAILED


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal(tmp_path / "agent" / "journal.sqlite")
    yield journal
    journal.close()


def tracked(key: str, bundle: str = "exp_20240101000000", name: str = "") -> TrackedJob:
    return TrackedJob(
        key=key, bundle=bundle, name=name or key.rsplit("/", 1)[-1], job_id="", state=JobState.SUBMITTED,
        script=f"/m/slurm/{key}.sh", stdout="/m/slurm/o-%j.out", stderr="/m/slurm/o-%j.err",
    )  # fmt: skip


def add(journal: Journal, key: str, job_id: str, bundle: str = "exp_20240101000000", **kw: str) -> None:
    """A job begun and accepted as `job_id`."""
    journal.begin(
        tracked(key, bundle), scheduler=kw.get("scheduler", "slurm"), machine_path=kw.get("path", "/m")
    )
    journal.submitted(key, job_id)


def status(job_id: str, state: JobState, exit_code: int | None = None, reason: str = "") -> JobStatus:
    return JobStatus(job_id=job_id, state=state, exit_code=exit_code, reason=reason)


# ---- submission ----------------------------------------------------------------------------------


def test_a_begun_job_is_in_doubt_until_submitted(journal):
    journal.begin(tracked("k/a"), scheduler="local", machine_path="/m")
    found = journal.find("k/a")
    assert found is not None
    assert (found.job_id, found.state, found.script) == ("", JobState.SUBMITTED, "/m/slurm/k/a.sh")
    [(doubtful, kind, path)] = journal.in_doubt()
    assert (doubtful.key, kind, path) == ("k/a", "local", "/m")
    assert list(journal.watched()) == []
    assert journal.jobs() == []  # not tracked until the scheduler gave it an id
    assert journal.last_seq == 0


def test_a_batch_commits_its_writes_together_or_not_at_all(journal):
    import sqlite3

    add(journal, "k/a", "1")
    reader = sqlite3.connect(journal.path)
    with journal.batch():
        assert journal.find("k/a") is not None
        assert not journal.db.in_transaction  # begun by the first write: a batch of reads costs nothing
        journal.begin(tracked("k/b"), scheduler="slurm", machine_path="/m")
        assert journal.db.in_transaction
        journal.submitted("k/b", "2")
        journal.begin(tracked("k/c"), scheduler="slurm", machine_path="/m")
        assert reader.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 1  # nothing committed yet
    assert reader.execute("SELECT key, job_id FROM jobs ORDER BY key").fetchall() == [
        ("k/a", "1"), ("k/b", "2"), ("k/c", ""),
    ]  # fmt: skip
    assert journal.last_seq == 2
    with pytest.raises(RuntimeError), journal.batch():
        journal.submitted("k/c", "3")
        raise RuntimeError("the agent failed in between")
    assert journal.find("k/c").job_id == ""  # type: ignore[union-attr]
    assert journal.last_seq == 2  # the event numbered inside went with it
    assert journal.submitted("k/c", "3").seq == 3
    reader.close()


def test_submitted_records_the_id_and_a_first_event(journal):
    journal.begin(tracked("k/a"), scheduler="slurm", machine_path="/m")
    event = journal.submitted("k/a", "1234")
    assert (event.seq, event.key, event.job_id, event.state, event.name) == (
        1,
        "k/a",
        "1234",
        JobState.SUBMITTED,
        "a",
    )
    assert event.bundle == "exp_20240101000000"
    assert journal.in_doubt() == []
    assert journal.find("k/a").job_id == "1234"
    [row] = journal.watched()
    assert (row.job_id, row.scheduler, row.machine_path) == ("1234", "slurm", "/m")
    assert journal.last_seq == 1
    assert journal.events_since(0) == [event]


def test_forget_removes_a_refused_job(journal):
    journal.begin(tracked("k/a"), scheduler="slurm", machine_path="/m")
    journal.forget("k/a")
    assert journal.find("k/a") is None
    assert journal.in_doubt() == []


def test_find_of_an_unknown_key_is_none(journal):
    assert journal.find("nope") is None


def test_unfinished_leaves_out_finished_and_in_doubt_jobs(journal):
    add(journal, "k/a", "1")
    add(journal, "k/b", "2")
    add(journal, "k/c", "3")
    journal.begin(tracked("k/d"), scheduler="slurm", machine_path="/m")
    journal.update([("k/a", status("1", COMPLETED, 0)), ("k/b", status("2", RUNNING))])
    assert sorted(row.key for row in journal.watched()) == ["k/b", "k/c"]


# ---- events --------------------------------------------------------------------------------------


def test_update_emits_an_event_only_when_state_or_exit_code_change(journal):
    add(journal, "k/a", "1")
    assert [e.state for e in journal.update([("k/a", status("1", PENDING, reason="Priority"))])] == [PENDING]
    assert journal.update([("k/a", status("1", PENDING, reason="Priority"))]) == []
    assert journal.update([("k/a", status("1", PENDING, reason="Resources"))]) == []  # reason only
    [running] = journal.update([("k/a", status("1", RUNNING))])
    assert (running.state, running.exit_code, running.job_id) == (RUNNING, None, "1")
    [failed] = journal.update([("k/a", status("1", FAILED, 1, "NonZeroExitCode"))])
    assert (failed.state, failed.exit_code, failed.reason) == (FAILED, 1, "NonZeroExitCode")
    [changed_code] = journal.update([("k/a", status("1", FAILED, 2))])
    assert changed_code.exit_code == 2
    assert journal.update([("k/a", status("1", FAILED, 2))]) == []
    job = journal.find("k/a")
    assert (job.state, job.exit_code) == (FAILED, 2)
    assert [e.seq for e in journal.events_since(0)] == [1, 2, 3, 4, 5]


def test_update_ignores_unknown_states_and_unknown_keys(journal):
    add(journal, "k/a", "1")
    assert journal.update([("k/a", status("1", JobState.UNKNOWN)), ("nope", status("9", RUNNING))]) == []
    assert journal.find("k/a").state is JobState.SUBMITTED
    assert journal.last_seq == 1


def test_update_of_several_jobs_emits_their_events_in_order(journal):
    for i in range(3):
        add(journal, f"k/{i}", str(i))
    events = journal.update([(f"k/{i}", status(str(i), RUNNING)) for i in (2, 0, 1)])
    assert [(e.key, e.seq) for e in events] == [("k/2", 4), ("k/0", 5), ("k/1", 6)]


def test_events_since_is_ordered_by_seq_and_limited(journal):
    for i in range(5):
        add(journal, f"k/{i}", str(100 + i))
    journal.update([(f"k/{i}", status(str(100 + i), RUNNING)) for i in range(5)])
    assert [e.seq for e in journal.events_since(0)] == list(range(1, 11))
    assert [e.seq for e in journal.events_since(3, limit=4)] == [4, 5, 6, 7]
    assert journal.events_since(10) == []
    assert journal.events_since(99) == []
    latest = journal.events_since(9)
    assert [(e.key, e.job_id, e.state) for e in latest] == [("k/4", "104", RUNNING)]
    assert journal.last_seq == 10


def test_last_seq_of_an_empty_journal_is_zero(journal):
    assert journal.last_seq == 0
    assert journal.events_since(0) == []


# ---- queries -------------------------------------------------------------------------------------


def test_jobs_by_ids_and_all(journal):
    add(journal, "k/a", "1")
    add(journal, "k/b", "2")
    add(journal, "k/c", "3")
    assert [job.key for job in journal.jobs()] == ["k/a", "k/b", "k/c"]
    assert [job.job_id for job in journal.jobs(["3", "1"])] == ["1", "3"]
    assert journal.jobs(["404"]) == []


def test_jobs_by_bundle_name_matches_every_date_of_that_name_only(journal):
    add(journal, "1", "1", bundle="exp_20240101000000")
    add(journal, "2", "2", bundle="exp_20240202000000")
    add(journal, "3", "3", bundle="expX_20240101000000")
    add(journal, "4", "4", bundle="ex_20240101000000")
    assert [job.job_id for job in journal.jobs(bundle="exp")] == ["1", "2"]
    assert [job.job_id for job in journal.jobs(bundle="exp_20240202000000")] == ["2"]
    assert [job.job_id for job in journal.jobs(["1", "3"], bundle="exp")] == ["1"]
    assert journal.jobs(bundle="e") == []


def test_jobs_by_bundle_name_does_not_match_a_longer_name_made_of_it_and_digits(journal):
    # `exp_1` is a valid bundle name: `milex cancel exp` must not cancel the jobs of bundle `exp_1`.
    add(journal, "1", "1", bundle="exp_20240101000000")
    add(journal, "2", "2", bundle="exp_1_20240101000000")
    add(journal, "3", "3", bundle="exp_2024_20240101000000")
    assert [job.job_id for job in journal.jobs(bundle="exp")] == ["1"]
    assert [job.job_id for job in journal.jobs(bundle="exp_1")] == ["2"]


def test_jobs_by_bundle_name_treats_glob_characters_literally(journal):
    add(journal, "1", "1", bundle="a[1]_20240101000000")
    add(journal, "2", "2", bundle="ab_20240101000000")
    add(journal, "3", "3", bundle="a*_20240101000000")
    assert [job.job_id for job in journal.jobs(bundle="a[1]")] == ["1"]
    assert [job.job_id for job in journal.jobs(bundle="a*")] == ["3"]
    assert [job.job_id for job in journal.jobs(bundle="a?")] == []


# ---- durability and scale ------------------------------------------------------------------------


def test_a_new_journal_on_the_same_file_sees_everything(tmp_path):
    path = tmp_path / "journal.sqlite"
    first = Journal(path)
    add(first, "k/a", "1")
    add(first, "k/b", "2", scheduler="local", path="/other")
    first.begin(tracked("k/c"), scheduler="slurm", machine_path="/m")
    first.update([("k/a", status("1", COMPLETED, 0))])
    events = first.events_since(0)
    first.close()

    second = Journal(path)
    try:
        assert second.last_seq == 3
        assert second.events_since(0) == events
        assert second.find("k/a").state is COMPLETED
        assert [(row.key, row.scheduler, row.machine_path) for row in second.watched()] == [
            ("k/b", "local", "/other")
        ]
        assert [job.key for job, _, _ in second.in_doubt()] == ["k/c"]
        add(second, "k/d", "4")
        assert second.last_seq == 4  # numbering goes on where it stopped
    finally:
        second.close()


def test_ten_thousand_jobs(journal):
    # Loaded in two transactions (10,000 separate commits take seconds on a slow disk): the rows
    # are what `begin` then `submitted` leave, less the 10,000 first events.
    journal.begin_many(
        [tracked(f"big/{i}", f"big_2024010100{i % 100:04d}") for i in range(10_000)],
        scheduler="slurm",
        machine_path="/m",
    )
    with journal.db:
        journal.db.executemany(
            "UPDATE jobs SET job_id = ? WHERE key = ?", [(str(i), f"big/{i}") for i in range(10_000)]
        )
    assert journal.in_doubt() == []
    watched = list(journal.watched())
    assert len(watched) == 10_000
    assert len({row.job_id for row in watched}) == 10_000
    events = journal.update([(f"big/{i}", status(str(i), COMPLETED, 0)) for i in range(0, 10_000, 2)])
    assert len(events) == 5_000
    assert [e.seq for e in events] == list(range(1, 5_001))
    assert len(list(journal.watched())) == 5_000
    assert len(journal.jobs(bundle="big")) == 10_000
    assert len(journal.jobs([str(i) for i in range(10_000)])) == 10_000


# ---- schema versions, damage, a full disk ----------------------------------------------------------

RELEASES = Path(__file__).parent / "journals"


def restore(dump: str, path: Path) -> Path:
    """A journal file with the content an earlier release wrote (its dump, loaded back)."""
    import sqlite3

    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.executescript((RELEASES / dump).read_text())
    db.close()
    return path


def test_a_journal_of_the_first_release_is_migrated_and_keeps_every_job(tmp_path):
    from milex_agent.journal import SCHEMA_VERSION

    journal = Journal(restore("release-0.1.sql", tmp_path / "journal.sqlite"))
    try:
        assert journal.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert journal.last_seq == 8
        jobs = {job.name: job for job in journal.jobs()}
        assert {name: (job.job_id, job.state, job.exit_code) for name, job in jobs.items()} == {
            "prep": ("101", COMPLETED, 0),
            "train": ("102", PENDING, None),
            "eval": ("103", JobState.SUBMITTED, None),
            "solo": ("7", FAILED, 137),
        }
        assert jobs["train"].reason == "Dependency"
        assert [(row.job.name, row.scheduler) for row in journal.in_doubt()] == [("report", "slurm")]
        assert sorted(row.key.split("/")[1] for row in journal.watched()) == ["eval", "train"]
        assert [event.seq for event in journal.events_since(0)] == list(range(1, 9))
        # and it goes on working: the next event is numbered after the release's last
        [event] = journal.update([(jobs["train"].key, status("102", RUNNING))])
        assert event.seq == 9
    finally:
        journal.close()
    reopened = Journal(tmp_path / "journal.sqlite")  # migrated once: opening again changes nothing
    assert len(reopened.jobs()) == 4
    reopened.close()


def test_a_journal_of_a_newer_agent_is_refused_untouched(tmp_path):
    import sqlite3

    from milex_agent.journal import SCHEMA_VERSION, JournalError

    path = restore("release-0.1.sql", tmp_path / "journal.sqlite")
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    before = path.read_bytes()
    with pytest.raises(JournalError, match="newer Milex agent"):
        Journal(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("damage", ["garbage", "torn"])
def test_a_damaged_journal_is_refused_and_kept_aside_never_replaced(tmp_path, damage):
    from milex_agent.journal import JournalError

    path = restore("release-0.1.sql", tmp_path / "journal.sqlite")
    data = bytearray(path.read_bytes())
    if damage == "garbage":
        data[:16] = b"not a database!!"
    else:  # a page in the middle overwritten, as a bad disk or a stray write would
        data[4096 : 4096 + 512] = b"\xff" * 512
    path.write_bytes(bytes(data))
    with pytest.raises(JournalError) as refused:
        Journal(path)
    kept = [p for p in tmp_path.iterdir() if ".damaged-" in p.name and p.suffix == ".sqlite"]
    assert len(kept) == 1 and kept[0].read_bytes() == bytes(data)
    assert str(kept[0]) in str(refused.value) and "damaged" in str(refused.value)
    assert not path.exists()


def test_a_full_disk_is_a_clear_error_and_loses_nothing_recorded(tmp_path):
    from milex_agent.journal import JournalError

    journal = Journal(tmp_path / "journal.sqlite")
    add(journal, "k/a", "1")
    pages = journal.db.execute("PRAGMA page_count").fetchone()[0]
    journal.db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "database or disk is full"
    with pytest.raises(JournalError, match=r"could not write its journal .*full.*free space"):
        journal.begin_many(
            [tracked(f"k/b{i:04d}") for i in range(2000)], scheduler="slurm", machine_path="/m"
        )
    assert journal.in_doubt() == []  # the failed transaction left nothing half-written
    assert [job.key for job in journal.jobs()] == ["k/a"]
    journal.db.execute("PRAGMA max_page_count = 1073741823")  # space is back
    add(journal, "k/c", "2")
    assert [job.key for job in journal.jobs()] == ["k/a", "k/c"]
    journal.close()


def test_watched_reads_the_unfinished_jobs_with_an_id_as_plain_rows(tmp_path):
    journal = Journal(tmp_path / "journal.sqlite")
    for name in ("running", "done", "doubt"):
        job = TrackedJob(key=f"b/{name}", bundle="b", name=name, job_id="", state=JobState.SUBMITTED)
        journal.begin(job, scheduler="slurm", machine_path="/m")
    assert not journal.has_unfinished()  # in doubt (no id yet): not watched
    journal.submitted("b/running", "11")
    journal.submitted("b/done", "12")
    journal.update([("b/running", JobStatus(job_id="11", state=JobState.RUNNING, reason="r")),
                    ("b/done", JobStatus(job_id="12", state=JobState.COMPLETED, exit_code=0))])  # fmt: skip
    [row] = journal.watched()
    assert row == Watched(key="b/running", job_id="11", state="RUNNING", exit_code=None, reason="r",
                          submitted_at=row.submitted_at, scheduler="slurm", machine_path="/m")  # fmt: skip
    assert row.submitted_at > 0
    assert [(r.key, r.job_id) for r in journal.watched()] == [(row.key, row.job_id)]
    assert journal.has_unfinished()
    journal.close()
