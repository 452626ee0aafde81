"""Opening the journal for the daemon: create it from the models, or upgrade it in place.

A journal's version is `PRAGMA user_version` (0.1.0 left it at 0: a file with a `jobs`
table and version 0 is version 1). An older journal is copied aside first (SQLite's
backup API: a consistent copy, WAL included), then upgraded by the steps below in one
transaction that also sets the new version: a step that fails leaves the journal as
it was. Each step is frozen: it says what that version's change was, in its own
terms, never through today's models (which later versions will change again).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import peewee as pw
from playhouse.migrate import SqliteMigrator, migrate

from gsup.durable import fsync_path
from gsup.journal.health import damage_line
from gsup.journal.queries import is_damage, journal_version
from gsup.journal.schema import MODELS, SCHEMA_VERSION, database
from gsup.retention import WAL_LIMIT


class JournalError(Exception):
    """The journal cannot be used; the message says why and what to do."""


PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": "full",  # an acknowledged job survives a power cut
    "busy_timeout": 5000,
    "foreign_keys": 0,
    "journal_size_limit": WAL_LIMIT,  # the WAL policy: see gsup/retention.py
}


def backup_path(journal: Path, version: int) -> Path:
    """Where the copy of a version-`version` journal goes: a name not taken yet."""
    path, n = journal.with_name(f"{journal.name}.v{version}.bak"), 1
    while path.exists() or path.is_symlink():
        n += 1
        path = journal.with_name(f"{journal.name}.v{version}.{n}.bak")
    return path


def open_journal(path: Path) -> tuple[sqlite3.Connection, str | None]:
    """The daemon's connection to the journal at `path`, created or upgraded to
    SCHEMA_VERSION; and a line saying what was upgraded, if anything was."""
    database.init(str(path), pragmas=PRAGMAS)
    try:
        database.connect(reuse_if_open=True)
        version = journal_version(database.connection())  # a damaged header fails here
    except (sqlite3.Error, pw.PeeweeException) as exc:
        database.close()
        if is_damage(exc):
            raise JournalError(damage_line(path, [str(exc)])) from None
        raise JournalError(f"cannot open the journal {path}: {exc}") from None
    if version < 0:
        database.close()
        raise JournalError(f"the journal {path} says it is version {version}, which no gsup writes")
    if version > SCHEMA_VERSION:
        database.close()
        raise JournalError(
            f"the journal {path} is version {version}, written by a newer gsup; this one"
            f" reads up to version {SCHEMA_VERSION}"
        )
    if version == 0:
        with database.atomic():
            database.create_tables(MODELS)
            database.pragma("user_version", SCHEMA_VERSION)
        return database.connection(), None
    if version < SCHEMA_VERSION:
        return database.connection(), _upgrade(path, version)
    return database.connection(), None


def _upgrade(path: Path, version: int) -> str:
    backup = backup_path(path, version)
    try:
        _copy(database.connection(), backup)
    except (OSError, sqlite3.Error) as exc:
        database.close()
        raise JournalError(
            f"cannot copy the journal aside before upgrading it ({exc}); it is unchanged"
        ) from None
    try:
        with database.atomic():
            for step in STEPS[version - 1 :]:
                step(SqliteMigrator(database))
            database.pragma("user_version", SCHEMA_VERSION)
    except (pw.PeeweeException, sqlite3.Error) as exc:
        database.close()
        cause = exc.__context__ if "cannot rollback" in str(exc) and exc.__context__ else exc
        raise JournalError(
            f"cannot upgrade the journal from version {version} to {SCHEMA_VERSION} ({cause});"
            f" it is unchanged, and a copy is at {backup}"
        ) from None
    return (
        f"journal upgraded from version {version} to {SCHEMA_VERSION}; the old one is at {backup}"
    )


def _copy(conn: sqlite3.Connection, destination: Path) -> None:
    """A consistent copy of the journal, on disk before the upgrade begins."""
    partial = destination.with_name(destination.name + ".partial")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # private, as the journal
    os.close(fd)
    try:
        copy = sqlite3.connect(partial)
        try:
            conn.backup(copy)
            copy.execute("PRAGMA journal_mode = DELETE")  # one file, as a copy should be
        finally:
            copy.close()
        fsync_path(partial)
        partial.replace(destination)
    except BaseException:
        partial.unlink(missing_ok=True)  # on a full disk, give the room back
        raise


# --- the steps: STEPS[n - 1] takes a journal from version n to n + 1 ------------------


class _AttemptV2(pw.Model):
    """The attempts table as version 2 made it."""

    id = pw.AutoField()
    job = pw.IntegerField()
    executor = pw.TextField()
    backend = pw.TextField()
    external_id = pw.TextField(null=True)
    dispatched = pw.FloatField()
    started = pw.FloatField(null=True)
    ended = pw.FloatField(null=True)
    outcome = pw.TextField(null=True)
    reason = pw.TextField(null=True)
    charged = pw.BooleanField(default=True)
    exit_status = pw.IntegerField(null=True)
    cpu_seconds = pw.FloatField(null=True)
    peak_rss_kb = pw.IntegerField(null=True)

    class Meta:
        database = database
        table_name = "attempts"


_AttemptV2.add_index(_AttemptV2.index(_AttemptV2.job, name="attempts_job"))


def _v1_to_v2(migrator: SqliteMigrator) -> None:
    """Attempts become rows of their own. 0.1.0 kept only the latest run's worker and
    start on the job; each earlier run is rebuilt from the events (from `running` to
    what followed), and the job points at its latest. The index on every state gives
    way to one on running jobs."""
    migrate(migrator.drop_index("jobs", "jobs_state"))
    database.execute_sql(
        'CREATE INDEX "jobs_running" ON "jobs" ("pool", "id") WHERE ("state" = \'running\')'
    )
    _AttemptV2.create_table(safe=False)
    database.execute_sql(
        "INSERT INTO attempts (id, job, executor, backend, external_id, dispatched, started,"
        " ended, outcome, reason, charged)"
        " SELECT s.seq, s.job, j.pool, 'local', NULL, s.at, s.at, e.at, e.after, e.why,"
        "  coalesce(e.after, '') != 'queued'"
        " FROM events s JOIN jobs j ON j.id = s.job"
        " LEFT JOIN events e ON e.seq = (SELECT min(seq) FROM events"
        "  WHERE job = s.job AND seq > s.seq AND before = 'running')"
        " WHERE s.after = 'running'"
    )
    migrate(migrator.add_column("jobs", "attempt", pw.IntegerField(null=True)))
    database.execute_sql(
        "UPDATE jobs SET attempt = (SELECT max(id) FROM attempts WHERE job = jobs.id)"
    )
    database.execute_sql(  # each correlated by a primary key: linear in the jobs
        "UPDATE attempts SET external_id = (SELECT worker FROM jobs WHERE id = attempts.job),"
        " started = coalesce((SELECT started FROM jobs WHERE id = attempts.job), started)"
        " WHERE id = (SELECT attempt FROM jobs WHERE id = attempts.job)"
    )
    migrate(migrator.drop_column("jobs", "worker"), migrator.drop_column("jobs", "started"))


def _v2_to_v3(migrator: SqliteMigrator) -> None:
    """Results leave the job rows for a table of their own (whole, with their size),
    so that listing jobs never reads them; marks keep the highest ids ever given, so
    that pruning the newest jobs does not give their ids again."""
    database.execute_sql(
        'CREATE TABLE "results" ("job" INTEGER NOT NULL PRIMARY KEY, "size" INTEGER NOT NULL,'
        ' "result" TEXT NOT NULL)'
    )
    database.execute_sql(
        "INSERT INTO results (job, size, result)"
        " SELECT id, length(CAST(result AS BLOB)), result FROM jobs WHERE result IS NOT NULL"
    )
    migrate(migrator.drop_column("jobs", "result"))
    database.execute_sql(
        'CREATE TABLE "marks" ("name" TEXT NOT NULL PRIMARY KEY, "value" INTEGER NOT NULL)'
    )


def _v3_to_v4(migrator: SqliteMigrator) -> None:
    """Keyed batches: the ids each part of a batch add was given."""
    database.execute_sql(
        'CREATE TABLE "batches" ("uid" INTEGER NOT NULL, "key" TEXT NOT NULL,'
        ' "part" INTEGER NOT NULL, "digest" TEXT NOT NULL, "first" INTEGER NOT NULL,'
        ' "count" INTEGER NOT NULL, "created" REAL NOT NULL, PRIMARY KEY ("uid", "key", "part"))'
    )


def _v4_to_v5(migrator: SqliteMigrator) -> None:
    """Tasks: campaigns of units over transforms (stages), each run of a unit a job."""
    for sql in (
        'CREATE TABLE "tasks" ("id" INTEGER NOT NULL PRIMARY KEY, "name" TEXT NOT NULL,'
        ' "spec" TEXT NOT NULL, "context" TEXT NOT NULL, "state" TEXT NOT NULL,'
        ' "float" INTEGER NOT NULL, "created" REAL NOT NULL, "ended" REAL, "reason" TEXT)',
        'CREATE TABLE "transforms" ("id" INTEGER NOT NULL PRIMARY KEY, "task" INTEGER NOT NULL,'
        ' "position" INTEGER NOT NULL, "name" TEXT NOT NULL, "state" TEXT NOT NULL,'
        ' "ended" REAL, "reason" TEXT)',
        'CREATE UNIQUE INDEX "transform_task_position" ON "transforms" ("task", "position")',
        'CREATE TABLE "units" ("id" INTEGER NOT NULL PRIMARY KEY, "task" INTEGER NOT NULL,'
        ' "transform" INTEGER NOT NULL, "idx" INTEGER NOT NULL, "state" TEXT NOT NULL,'
        ' "call" TEXT NOT NULL, "upstream" INTEGER, "job" INTEGER, "jobs" INTEGER NOT NULL,'
        ' "reason" TEXT)',
        'CREATE UNIQUE INDEX "unit_transform_idx" ON "units" ("transform", "idx")',
        'CREATE INDEX "units_waiting" ON "units" ("task", "transform", "idx")'
        " WHERE (\"state\" = 'waiting')",
        'CREATE INDEX "units_submitted" ON "units" ("job") WHERE ("state" = \'submitted\')',
    ):
        database.execute_sql(sql)


def _v5_to_v6(migrator: SqliteMigrator) -> None:
    """Merges: each run of a transform's merger, and which units it holds."""
    for sql in (
        'ALTER TABLE "units" ADD COLUMN "merged" INTEGER',
        'ALTER TABLE "units" ADD COLUMN "landed" REAL',
        'CREATE TABLE "merges" ("id" INTEGER NOT NULL PRIMARY KEY, "task" INTEGER NOT NULL,'
        ' "transform" INTEGER NOT NULL, "job" INTEGER NOT NULL, "out" TEXT NOT NULL,'
        ' "full" INTEGER NOT NULL,'
        ' "state" TEXT NOT NULL, "units" INTEGER NOT NULL, "size" INTEGER, "error" TEXT,'
        ' "created" REAL NOT NULL, "ended" REAL)',
        'CREATE INDEX "merge_transform" ON "merges" ("transform")',
        'CREATE INDEX "merge_job" ON "merges" ("job")',
        'CREATE INDEX "units_state" ON "units" ("transform", "state")',
    ):
        database.execute_sql(sql)


def _v6_to_v7(migrator: SqliteMigrator) -> None:
    """A job knows the task it runs a unit or a merge of (a unit's earlier jobs, made
    before a reset, are not known any more: they get none)."""
    for sql in (
        'ALTER TABLE "jobs" ADD COLUMN "task" INTEGER',
        'CREATE INDEX "jobs_task" ON "jobs" ("task", "id") WHERE ("task" IS NOT NULL)',
        "UPDATE jobs SET task = (SELECT task FROM units WHERE units.job = jobs.id)"
        " WHERE id IN (SELECT job FROM units)",
        "UPDATE jobs SET task = (SELECT task FROM merges WHERE merges.job = jobs.id)"
        " WHERE id IN (SELECT job FROM merges)",
    ):
        database.execute_sql(sql)


STEPS: list[Callable[[SqliteMigrator], None]] = [
    _v1_to_v2, _v2_to_v3, _v3_to_v4, _v4_to_v5, _v5_to_v6, _v6_to_v7,
]  # fmt: skip
assert len(STEPS) == SCHEMA_VERSION - 1, "a migration step per version"
