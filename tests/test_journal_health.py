"""A damaged journal: the daemon refuses to start with one line that gives the ways out;
`gsup journal check` finds the damage (the daemon up or down); `gsup journal salvage`
copies what is readable into a new journal that a daemon starts on; the read-only
commands say one line, never a traceback."""

from __future__ import annotations

import contextlib
import json
import os
import random
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import journal_rows, run_daemon_expecting_exit

from gsup.client import Client
from gsup.errors import GsupError

BULK = 3000  # queued command jobs, in the frozen monitoring pool: a journal of ~1,500 pages
PAGE = 4096
HEADER_DAMAGE = b"\xa5" * 100
PAGE_DAMAGE = b"\xa5" * (8 * PAGE)


def _journal_with_jobs(make_daemon, gsup, home: Path) -> None:
    """Two done jobs (ids 1 and 2), then BULK queued ones; the daemon stopped and the
    WAL checkpointed into the journal file, as a long-lived journal is."""
    make_daemon()
    assert gsup.run("jobs:add", "2", "3") == "done"
    assert gsup.run("jobs:add", "4", "5") == "done"
    gsup("freeze", "--queue", "monitoring")
    lines = "".join(f"echo {n}\n" for n in range(BULK))
    gsup("add", "--cmd", "--queue", "monitoring", "--from", "-", input=lines)
    gsup("stop")
    with sqlite3.connect(home / "journal.sqlite") as db:
        assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0


def _damage_header(home: Path) -> None:
    with open(home / "journal.sqlite", "r+b") as file:
        file.write(HEADER_DAMAGE)


def _damage_middle(home: Path) -> None:
    path = home / "journal.sqlite"
    with open(path, "r+b") as file:
        file.seek(path.stat().st_size // 2 // PAGE * PAGE)
        file.write(PAGE_DAMAGE)


def _refusal(home: Path, cause: str) -> str:
    return (
        f"gsup: error: the journal {home / 'journal.sqlite'} is damaged ({cause}); see `gsup"
        " journal check`, or run `gsup journal salvage` to copy what is readable into a new"
        " journal"
    )


DAMAGES = {
    "header": (_damage_header, "file is not a database"),
    "middle": (_damage_middle, "database disk image is malformed"),
}


def test_a_damaged_header_is_refused_at_start_with_one_line(make_daemon, gsup, home, env):
    _journal_with_jobs(make_daemon, gsup, home)
    _damage_header(home)
    result = run_daemon_expecting_exit(env)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == _refusal(home, "file is not a database") + "\n"


def test_a_damaged_page_stops_the_daemon_before_any_job_starts(make_daemon, gsup, home, env,
                                                               workdir):  # fmt: skip
    make_daemon()
    gsup("freeze")
    lines = "".join(f"touch ran-{n}\n" for n in range(BULK))
    gsup("add", "--cmd", "--from", "-", input=lines)
    gsup("stop")
    with sqlite3.connect(home / "journal.sqlite") as db:
        db.execute("UPDATE pools SET frozen = 0")  # they would all run at the next start
        db.commit()
        assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        [(page,)] = db.execute(  # a page that neither the start nor a dispatch reads
            "SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'leaf'"
            " ORDER BY pageno LIMIT 1 OFFSET 5"
        )
    with open(home / "journal.sqlite", "r+b") as file:
        file.seek((page - 1) * PAGE)
        file.write(b"\xa5" * PAGE)
    result = run_daemon_expecting_exit(env)
    said = [line.split(" gsup: ", 1)[1] for line in result.stdout.splitlines()]
    assert (result.returncode, said[-2:]) == (1, [said[-2], "stopped"])
    assert said[-2].startswith(f"stopping: the journal {home / 'journal.sqlite'} is damaged (")
    assert said[-2].endswith(
        "); see `gsup journal check`, or run `gsup journal salvage` to copy what is readable"
        " into a new journal"
    )
    assert sorted(workdir.glob("ran-*")) == []  # held back until the check had passed


def test_a_damaged_page_read_while_running_stops_the_daemon_with_one_line(make_daemon, gsup,
                                                                          home):  # fmt: skip
    _journal_with_jobs(make_daemon, gsup, home)
    daemon = make_daemon()
    daemon.said("the journal passed its check")
    _damage_middle(home)  # rows the daemon has not read since it started
    client = Client(home)
    with pytest.raises(GsupError) as lost:
        for job in range(BULK + 2, 0, -1):  # until a read meets the damage
            client.request("get", job=job)
    assert str(lost.value) == "the daemon closed the connection"
    assert daemon.process.wait(30) == 1
    said = [line.split(" gsup: ", 1)[1].rstrip("\n") for line in daemon.lines]
    assert said[-2:] == [
        f"stopping: the journal {home / 'journal.sqlite'} is damaged (database disk image is"
        " malformed); see `gsup journal check`, or run `gsup journal salvage` to copy what is"
        " readable into a new journal",
        "stopped",
    ]


def test_journal_check_finds_the_damage_and_exits_0_only_when_healthy(make_daemon, gsup, home):
    _journal_with_jobs(make_daemon, gsup, home)
    daemon = make_daemon()
    healthy = gsup("journal", "check")  # read-only, beside a running daemon
    assert (healthy.returncode, healthy.stdout) == (0, f"{home / 'journal.sqlite'}: ok\n")
    daemon.stop()
    _damage_middle(home)
    damaged = gsup("journal", "check", check=False)
    assert damaged.returncode == 1
    assert damaged.stdout == "database disk image is malformed\n"
    assert damaged.stderr == (
        f"gsup: error: the journal {home / 'journal.sqlite'} is damaged (database disk image is"
        " malformed); run `gsup journal salvage` to copy what is readable into a new journal\n"
    )


def test_salvage_refuses_while_a_daemon_runs(daemon, gsup, home):
    result = gsup("journal", "salvage", check=False)
    assert (result.returncode, result.stderr) == (
        1,
        f"gsup: error: a daemon is already running for {home} (pid {daemon.pid});"
        " stop it first (gsup stop)\n",
    )


@pytest.mark.parametrize("where", DAMAGES)
def test_salvage_keeps_what_is_readable_and_a_daemon_starts_on_it(make_daemon, gsup, home, where):
    _journal_with_jobs(make_daemon, gsup, home)
    DAMAGES[where][0](home)
    damaged = (home / "journal.sqlite").read_bytes()
    result = gsup("journal", "salvage")
    [(kept,)] = journal_rows(home, "SELECT count(*) FROM jobs")
    total = BULK + 2
    assert kept == total if where == "header" else 0 < kept < total
    aside = home / "journal.sqlite.damaged"
    assert result.stdout == (
        f"salvaged the journal: {kept} jobs kept, {total - kept} lost;"
        f" the damaged journal is at {aside}\n"
    )
    assert aside.read_bytes() == damaged
    assert gsup("journal", "check").returncode == 0
    make_daemon()
    listed = json.loads(gsup("jobs", "--limit", str(total), "--json").stdout)
    assert len(listed) == kept
    assert json.loads(gsup.show(1)["result"]) == 5
    new = gsup.add("jobs:add", "20", "22")
    assert new == total + 1  # the ids of lost jobs are not given again
    assert gsup.wait(new) == {new: "done"}
    assert json.loads(gsup.show(new)["result"]) == 42


@pytest.mark.parametrize("command", [["jobs"], ["show", "1"], ["queues"]])
def test_read_only_commands_on_a_damaged_header_say_one_line(make_daemon, gsup, home, command):
    _journal_with_jobs(make_daemon, gsup, home)
    _damage_header(home)
    result = gsup(*command, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (
        1,
        "",
        f"gsup: error: cannot read the journal {home / 'journal.sqlite'}: file is not a"
        " database (see: gsup journal check)\n",
    )


@pytest.mark.parametrize("command", [["status"], ["jobs", "--limit", "10000"]])
def test_read_only_commands_on_damaged_pages_say_one_line(make_daemon, gsup, home, command):
    _journal_with_jobs(make_daemon, gsup, home)
    daemon = make_daemon()  # it started healthy; its journal is damaged under it
    daemon.said("the journal passed its check")
    _damage_middle(home)
    os.sync()
    result = gsup(*command, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (
        1,
        "",
        "gsup: error: cannot read the journal: database disk image is malformed"
        " (see: gsup journal check)\n",
    )


@pytest.mark.parametrize("command", [["jobs"], ["journal", "check"], ["journal", "salvage"]])
def test_a_journal_that_is_a_fifo_is_refused_not_read(gsup, home, command):
    home.mkdir(mode=0o700)
    os.mkfifo(home / "journal.sqlite")
    result = gsup(*command, check=False, timeout=20)
    journal = home / "journal.sqlite"
    assert (result.returncode, result.stderr) == (
        1,
        f"gsup: error: {journal} is not a journal: not a regular file\n",
    )


def test_a_journal_that_cannot_be_changed_stops_the_start_with_one_line(make_daemon, gsup,
                                                                        home, env):  # fmt: skip
    make_daemon()
    gsup("stop")
    journal = home / "journal.sqlite"
    if subprocess.run(["chattr", "+i", str(journal)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here (root is refused nothing else)")
    try:
        result = run_daemon_expecting_exit(env)
    finally:
        subprocess.run(["chattr", "-i", str(journal)], check=True)
    assert (result.returncode, result.stderr) == (
        1,
        f"gsup: error: cannot set the mode of {journal}: Operation not permitted\n",
    )


RUN = 300  # command jobs run to their end: a journal of jobs, events, attempts, results
SCATTER = 3000  # random bytes written over the middle of the journal


def _journal_of_done_jobs(make_daemon, gsup, home: Path) -> list[int]:
    """RUN done command jobs; the daemon stopped and the WAL checkpointed. Their ids."""
    make_daemon()
    ids = [int(line) for line in gsup("add", "--cmd", "--from", "-",
                                      input="".join(f"echo {n}\n" for n in range(RUN))
                                      ).stdout.split()]  # fmt: skip
    assert set(gsup.wait(*ids).values()) == {"done"}
    gsup("stop")
    with sqlite3.connect(home / "journal.sqlite") as db:
        assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    return ids


def _jobs_on_pages(home: Path, pages: set[int]) -> set[int]:
    """The ids of the jobs whose row lies (in part) on one of `pages`, from the b-tree
    as dbstat walks it: leaves in key order hold the ids in order, `ncell` each, and an
    overflow page's path names its leaf and cell. None of `pages` is an interior page."""
    with sqlite3.connect(f"file:{home / 'journal.sqlite'}?mode=ro", uri=True) as db:
        ids = [job for (job,) in db.execute("SELECT id FROM jobs ORDER BY id")]
        tree = db.execute(
            "SELECT path, pageno, pagetype, ncell FROM dbstat WHERE name = 'jobs' ORDER BY path"
        ).fetchall()
    first: dict[str, int] = {}  # a leaf's path: the index of its first id
    on_pages: set[int] = set()
    for path, page, kind, cells in tree:
        assert kind != "internal" or page not in pages, "damage an interior page elsewhere"
        if kind == "leaf":
            first[path] = sum(n for p, _, k, n in tree if k == "leaf" and p < path)
            on_pages |= set(ids[first[path] : first[path] + cells]) if page in pages else set()
        elif kind == "overflow" and page in pages:
            leaf, cell = path.rsplit("/", 1)
            on_pages.add(ids[first[f"{leaf}/"] + int(cell.split("+")[0], 16)])
    return on_pages


def _scatter(journal: Path, start: int) -> None:
    """SCATTER random bytes (always the same) written over the journal at `start`."""
    with open(journal, "r+b") as file:
        file.seek(start)
        file.write(random.Random(7).randbytes(SCATTER))


def test_salvage_keeps_every_job_off_the_damaged_pages(make_daemon, gsup, home):
    ids = _journal_of_done_jobs(make_daemon, gsup, home)
    journal = home / "journal.sqlite"
    start = journal.stat().st_size // 2 // PAGE * PAGE  # a page in the middle: a leaf
    damaged = set(range(start // PAGE + 1, (start + SCATTER - 1) // PAGE + 2))
    lost = _jobs_on_pages(home, damaged)
    assert 0 < len(lost) < 5  # a few jobs: the page of a leaf or two
    _scatter(journal, start)
    result = gsup("journal", "salvage")
    kept = {job for (job,) in journal_rows(home, "SELECT id FROM jobs")}
    assert kept == set(ids) - lost
    assert result.stdout == (
        f"salvaged the journal: {len(kept)} jobs kept, {len(lost)} lost;"
        f" the damaged journal is at {home / 'journal.sqlite.damaged'}\n"
    )


@pytest.mark.parametrize("full", [False, True])
def test_journal_check_says_each_finding_on_a_line_of_its_own(make_daemon, gsup, home, full):
    _journal_of_done_jobs(make_daemon, gsup, home)
    journal = home / "journal.sqlite"
    [(page,)] = journal_rows(  # an index's page: SQLite's check says it in one finding
        home, "SELECT pageno FROM dbstat WHERE name = 'event_job' AND pagetype = 'leaf'"
        " ORDER BY path DESC LIMIT 1",
    )  # fmt: skip
    _scatter(journal, (page - 1) * PAGE)
    check = "integrity_check" if full else "quick_check"
    found = []  # SQLite's findings, then the error that ended them, if one did
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
        try:
            for (finding,) in db.execute(f"PRAGMA {check}"):
                found.append(finding)
        except sqlite3.DatabaseError as exc:
            found.append(str(exc))
    assert full or found[0].startswith("*** in database main ***\n")  # lines in one
    lines = [line for finding in found for line in finding.splitlines()
             if not line.startswith("*** in database ")]  # fmt: skip
    result = gsup("journal", "check", *(["--full"] if full else []), check=False)
    assert (result.returncode, result.stdout) == (1, "".join(f"{line}\n" for line in lines))
    assert result.stderr == (
        f"gsup: error: the journal {journal} is damaged ({lines[0]}); run `gsup journal"
        " salvage` to copy what is readable into a new journal\n"
    )


TRUNCATED = "it is 0 bytes long: it was truncated"


def test_a_journal_of_0_bytes_is_refused_at_start_with_one_line(make_daemon, gsup, home, env):
    make_daemon()
    gsup("stop")
    journal = home / "journal.sqlite"
    os.truncate(journal, 0)  # a state dir whose journal lost everything: not a new one
    result = run_daemon_expecting_exit(env)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == _refusal(home, TRUNCATED) + "\n"
    assert journal.stat().st_size == 0


def test_a_journal_of_0_bytes_is_damage_to_check_and_salvage_makes_a_new_one(make_daemon, gsup,
                                                                             home):  # fmt: skip
    make_daemon()
    gsup("stop")
    journal = home / "journal.sqlite"
    os.truncate(journal, 0)
    check = gsup("journal", "check", check=False)
    assert (check.returncode, check.stdout, check.stderr) == (
        1,
        f"{TRUNCATED}\n",
        f"gsup: error: the journal {journal} is damaged ({TRUNCATED}); run `gsup journal"
        " salvage` to copy what is readable into a new journal\n",
    )
    aside = home / "journal.sqlite.damaged"
    assert gsup("journal", "salvage").stdout == (
        "salvaged the journal: it was empty (0 bytes), so nothing was kept;"
        f" the damaged journal is at {aside}\n"
    )
    assert aside.stat().st_size == 0
    make_daemon()
    assert gsup.run("jobs:add", "20", "22") == "done"


def test_a_first_start_killed_before_its_journal_was_made_leaves_no_journal(make_daemon, gsup,
                                                                            home):  # fmt: skip
    make_daemon()
    gsup("stop")
    for suffix in ("", "-wal", "-shm"):  # a state dir whose first start was killed at once
        with contextlib.suppress(FileNotFoundError):
            (home / f"journal.sqlite{suffix}").unlink()
    (home / "journal.sqlite.new").write_bytes(b"")  # where it was making the journal
    make_daemon()
    assert gsup.run("jobs:add", "20", "22") == "done"
    assert not (home / "journal.sqlite.new").exists()


def test_salvage_of_a_healthy_journal_changes_nothing(make_daemon, gsup, home):
    make_daemon()
    assert gsup.run("jobs:add", "20", "22") == "done"
    gsup("stop")
    journal = home / "journal.sqlite"
    before = journal.read_bytes()
    result = gsup("journal", "salvage")
    assert result.stdout == (
        f"the journal {journal} is healthy (it passed SQLite's integrity_check):"
        " nothing to salvage\n"
    )
    assert journal.read_bytes() == before  # in place, untouched, and nothing set aside
    assert {path.name for path in home.glob("journal.sqlite*")} <= {
        "journal.sqlite",
        "journal.sqlite-wal",  # SQLite's, as any reader of the journal leaves them
        "journal.sqlite-shm",
    }
