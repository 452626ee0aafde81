"""The versioned journal: a 0.1.0 journal is upgraded in place and keeps its jobs; a
failed upgrade changes nothing; a newer journal is refused; a new journal and an
upgraded one have one schema, the models'."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from conftest import journal_rows, run_daemon_expecting_exit, wait_until

from gsup.journal.migrations import open_journal
from gsup.journal.schema import SCHEMA_VERSION, database

FIXTURE = Path(__file__).with_name("fixtures") / "journal-0.1.0.sql"


def _copy_of(path: Path) -> Path:
    return path.with_name(f"{path.name}.v1.bak")


def _journal_0_1_0(home: Path) -> Path:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = home / "journal.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(FIXTURE.read_text())
    return path


def _dump(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [*db.iterdump(), str(db.execute("PRAGMA user_version").fetchone())]


def _schema(path: Path) -> dict[str, object]:
    """Each table's columns and each index's columns and condition, order aside."""
    with sqlite3.connect(path) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        schema: dict[str, object] = {}
        for table in tables:
            columns = db.execute(f"PRAGMA table_info({table})").fetchall()
            schema[table] = sorted((c[1], c[2].upper(), c[3], c[4], c[5]) for c in columns)
            for index in db.execute(f"PRAGMA index_list({table})").fetchall():
                info = db.execute(f"PRAGMA index_info({index[1]})").fetchall()
                (sql,) = db.execute(
                    "SELECT sql FROM sqlite_master WHERE name = ?", (index[1],)
                ).fetchone()
                where = sql.split(" WHERE ")[1] if sql and " WHERE " in sql else None
                schema[f"{table}.{index[1]}"] = ([c[2] for c in info], index[2], where)
        return schema


def test_a_0_1_0_journal_is_upgraded_and_keeps_its_jobs(make_daemon, gsup, home):
    path = _journal_0_1_0(home)
    before = _dump(path)
    daemon = make_daemon()
    assert (
        f"journal upgraded from version 1 to {SCHEMA_VERSION}; the old one is at {_copy_of(path)}"
    ) in daemon.output
    assert _dump(_copy_of(path)) == before  # the copy is the journal as it was
    assert journal_rows(home, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    # Jobs and results are kept (results in a table of their own, with their sizes);
    # each earlier run became an attempt.
    assert json.loads(gsup.show(1)["result"]) == 42
    assert journal_rows(home, "SELECT job, size FROM results WHERE job < 5 ORDER BY job") == [
        (1, 2), (2, 12), (4, 51),
    ]  # fmt: skip
    assert gsup.show(2)["result"] == "[1, 2, 1, 2]"
    assert "result" not in journal_rows(home, "SELECT group_concat(name) FROM pragma_table_info"
                                        "('jobs')")[0][0].split(",")  # fmt: skip
    failed = gsup.show(3)
    assert failed["state"] == "failed" and "ValueError: bad value" in failed["traceback"]
    assert [a["outcome"] for a in failed["attempts_list"]] == ["failed", "failed"]
    assert gsup.show(4)["attempts_list"][0]["external_id"] == "Worker_4"
    # Recovery ran on the upgraded journal: the running ones, by their policy.
    assert "job 6 (user): ends lost: lost with the daemon; on_lost=fail" in daemon.output
    assert "job 7 (user): requeue: lost with the daemon" in daemon.output
    assert [a["outcome"] for a in gsup.show(6)["attempts_list"]] == ["lost"]
    # The queued jobs run: by reference, by value, a command, in either pool.
    gsup("cancel", "7")  # requeued: it would sleep 300 s
    gsup("unfreeze")
    assert gsup.wait(8, 9, 10, 11) == {8: "done", 9: "done", 10: "done", 11: "done"}
    results = {job: json.loads(gsup.show(job)["result"]) for job in (8, 9, 11)}
    assert results == {8: 42, 9: "BY VALUE", 11: 3}
    assert json.loads(gsup.show(10)["result"])["stdout"] == "queued\n"
    wait_until(lambda: gsup.show(7)["state"] == "cancelled", what="job 7 to be cancelled")


def test_an_upgrade_that_fails_changes_nothing(env, home):
    path = _journal_0_1_0(home)
    with sqlite3.connect(path) as db:  # a table in the way of the upgrade
        db.execute("CREATE TABLE attempts (x)")
    before = _dump(path)
    result = run_daemon_expecting_exit(env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0] == (
        f"gsup: error: cannot upgrade the journal from version 1 to {SCHEMA_VERSION}"
        f' (table "attempts" already exists); it is unchanged, and a copy is at'
        f" {_copy_of(path)}"
    )
    assert _dump(path) == before


def test_a_journal_from_a_newer_gsup_is_refused(env, home):
    path = _journal_0_1_0(home)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    result = run_daemon_expecting_exit(env)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"gsup: error: the journal {path} is version 99, written by a newer gsup;"
        f" this one reads up to version {SCHEMA_VERSION}"
    )


def test_a_new_journal_and_an_upgraded_one_have_the_same_schema(tmp_path):
    fresh, upgraded = tmp_path / "fresh.sqlite", _journal_0_1_0(tmp_path / "old")
    for path in (fresh, upgraded):
        open_journal(path)
        database.close()
    assert _schema(upgraded) == _schema(fresh)


def test_a_file_that_is_no_journal_is_one_line(env, home):
    home.mkdir(mode=0o700, parents=True)
    (home / "journal.sqlite").write_bytes(b"not a database at all" * 100)
    result = run_daemon_expecting_exit(env)
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"gsup: error: the journal {home / 'journal.sqlite'} is damaged (file is not a database)"
    )
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_earlier_copy_is_kept_and_a_journal_of_no_version_refused(make_daemon, env, home):
    path = _journal_0_1_0(home)
    _copy_of(path).write_text("an earlier copy")
    daemon = make_daemon()
    assert f"the old one is at {path}.v1.2.bak" in daemon.output
    assert _copy_of(path).read_text() == "an earlier copy"
    daemon.stop()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = -3")
    result = run_daemon_expecting_exit(env)
    assert result.stderr.strip() == (
        f"gsup: error: the journal {path} says it is version -3, which no gsup writes"
    )


def test_a_journal_missing_a_table_is_one_line(env, home):
    path = _journal_0_1_0(home)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE pools")
    result = run_daemon_expecting_exit(env)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"gsup: error: cannot use the journal {path}: no such table: pools"
    )


def test_the_cli_on_a_journal_not_yet_upgraded_says_so_in_one_line(gsup, home):
    path = _journal_0_1_0(home)
    for command in (["jobs"], ["queues"], ["show", "1"], ["recover", "--dry-run"]):
        result = gsup(*command, check=False)
        assert result.returncode == 1
        assert result.stderr.strip() == (
            f"gsup: error: the journal {path} is version 1; this gsup reads version"
            f" {SCHEMA_VERSION} (`gsup daemon` upgrades it when it starts)"
        )
