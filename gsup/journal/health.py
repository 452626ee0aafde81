"""A damaged journal: finding the damage (SQLite's own checks) and salvaging what can
still be read into a new journal (`gsup journal check`, `gsup journal salvage`).

Salvage reads the damaged file through SQLite, table by table in rowid order; where a
page cannot be read, it seeks past it (a seek descends the b-tree to the next readable
leaf) and goes on, so only the rows of damaged pages are lost. Indexes are never read:
the new journal rebuilds them. A header that is not a database header any more (its
first 100 bytes) is replaced, in a scratch copy, by one SQLite writes for an empty
database of the same page size.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gsup.config import Paths
from gsup.journal.queries import Unreadable, check_journal_file, is_damage

PROBLEMS_SHOWN = 20  # lines of a check's findings printed
PROBLEMS_LISTED = 1000  # findings `gsup journal check` asks SQLite for
FOUND = 3  # the exit status of the check at start when it found damage
HEADER = 100  # bytes of the database header
PAGE_SIZES = (4096, 1024, 2048, 8192, 16384, 32768, 65536, 512)
BY_JOB = {"attempts": "job", "results": "job", "events": "job"}  # rows that belong to a job
FIRST_ROWID = -(2**63)
LAST_ROWID = 2**63 - 1
CHUNK = 10_000  # rows per insert


class SalvageError(Exception):
    """Salvage cannot be done; the message says why."""


def problems(path: Path, full: bool = False) -> list[str]:
    """What SQLite finds wrong with the journal at `path` (read-only): none if it is
    healthy. `full`: integrity_check (indexes against their tables too), else
    quick_check."""
    try:
        return findings(path, "integrity_check" if full else "quick_check", PROBLEMS_LISTED)
    except sqlite3.Error as exc:
        return [str(exc)]


def findings(path: Path, check: str, limit: int) -> list[str]:
    """The findings of one of SQLite's checks (none: healthy); sqlite3.Error if the
    journal cannot be opened or read at all."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        found = [row[0] for row in conn.execute(f"PRAGMA {check}({limit})")]
    finally:
        conn.close()
    return [] if found == ["ok"] else found


def _check_at_start(journal: Path) -> int:
    """`python -m gsup.journal.health JOURNAL`, the daemon's check at start (see
    supervisor/checkup.py): the findings on stdout, a line each, and exit FOUND; exit
    2 if the journal could not be checked for another reason than damage."""
    try:
        found = findings(journal, "quick_check", PROBLEMS_SHOWN)
    except sqlite3.Error as exc:
        if not is_damage(exc):
            print(f"cannot check the journal: {exc}", file=sys.stderr)
            return 2
        found = [str(exc)]
    sys.stdout.write("".join(f"{line}\n" for line in found))
    return FOUND if found else 0


def damage_line(path: Path, found: list[str], checked: bool = False) -> str:
    """One line: the journal is damaged, and the ways out (`checked`: the findings
    have been shown)."""
    ways = [] if checked else ["see `gsup journal check`"]
    copies = sorted(path.parent.glob(f"{path.name}.v*.bak"), key=lambda p: p.stat().st_mtime)
    if copies:
        ways.append(f"restore the copy an upgrade left ({copies[-1].name})")
    ways.append("run `gsup journal salvage` to copy what is readable into a new journal")
    return f"the journal {path} is damaged ({found[0]}); " + ", or ".join(ways)


# --- salvage -------------------------------------------------------------------------


@dataclass
class Salvaged:
    kept: int  # jobs
    lost: int  # jobs known to have been there (by id) that could not be read
    aside: Path  # where the damaged journal now is
    rows_lost: dict[str, int] = field(default_factory=dict)  # other tables' skipped rows

    def line(self) -> str:
        others = ", ".join(f"{n} {table} rows" for table, n in self.rows_lost.items() if n)
        also = f" (also lost: {others})" if others else ""
        return (
            f"salvaged the journal: {self.kept} jobs kept, {self.lost} lost{also};"
            f" the damaged journal is at {self.aside}"
        )


def salvage(paths: Paths) -> Salvaged:
    """Copy what is readable of the journal into a new one that takes its place; the
    damaged one is kept aside. Holds the daemon's lock: SalvageError if a daemon runs."""
    from gsup.supervisor.lifetime import DaemonError, DaemonRunning, take_lock

    try:
        check_journal_file(paths.journal)
    except Unreadable as exc:
        raise SalvageError(str(exc)) from None
    try:
        lock = take_lock(paths)
    except DaemonRunning as exc:
        raise SalvageError(f"{exc}; stop it first (gsup stop)") from None
    except DaemonError as exc:
        raise SalvageError(str(exc)) from None
    try:
        return _salvage(paths)
    finally:
        os.close(lock)


def _salvage(paths: Paths) -> Salvaged:
    new = paths.home / "journal.sqlite.salvage"
    scratch = paths.home / "journal.sqlite.scratch"
    _remove_journal(new)
    _remove_journal(scratch)
    try:
        source = _readable_source(paths.journal, scratch)
        try:
            _create(new)
            salvaged = _copy_rows(source, new)
        finally:
            source.close()
        aside = _unused(paths.home / "journal.sqlite.damaged")
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{paths.journal}{suffix}", f"{aside}{suffix}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{paths.journal}-shm")
        os.replace(new, paths.journal)
        salvaged.aside = aside
        return salvaged
    except sqlite3.Error as exc:
        raise SalvageError(f"cannot salvage the journal {paths.journal}: {exc}") from None
    finally:
        _remove_journal(new)
        _remove_journal(scratch)


def _remove_journal(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


def _unused(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def _create(path: Path) -> None:
    """An empty journal of this version, from the models (as a first start makes it)."""
    from gsup.journal.schema import MODELS, SCHEMA_VERSION, database

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # private, as the journal
    os.close(fd)
    database.init(str(path))
    try:
        with database.atomic():
            database.create_tables(MODELS)
            database.pragma("user_version", SCHEMA_VERSION)
    finally:
        database.close()


# --- reading the damaged journal -------------------------------------------------------


def _readable_source(journal: Path, scratch: Path) -> sqlite3.Connection:
    """A read-only connection that can read the journal's schema: to the journal, or to
    a scratch copy whose header SQLite rewrote, if its own is damaged."""
    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5)
    if _schema_readable(conn):
        return conn
    conn.close()
    for page_size in PAGE_SIZES:
        _copy_with_new_header(journal, scratch, page_size)
        conn = sqlite3.connect(scratch)  # ours: it may make its WAL index
        if _schema_readable(conn):
            return conn
        conn.close()
    raise SalvageError(f"nothing in {journal} can be read as a journal (no jobs table found)")


def _schema_readable(conn: sqlite3.Connection) -> bool:
    try:
        return bool(conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'jobs'").fetchone())
    except sqlite3.DatabaseError:
        return False


def _copy_with_new_header(journal: Path, scratch: Path, page_size: int) -> None:
    """The journal, and its WAL, with the header of an empty database that SQLite made
    with `page_size` (the damaged header's fields cannot be trusted)."""
    _remove_journal(scratch)
    wal = Path(f"{journal}-wal")
    empty = sqlite3.connect(scratch)
    empty.execute(f"PRAGMA page_size = {page_size}")
    if wal.exists():
        empty.execute("PRAGMA journal_mode = wal")
    empty.execute("CREATE TABLE t (x)")  # writes page 1, header and all
    empty.close()
    header = bytearray(scratch.read_bytes()[:HEADER])
    header[28:32] = bytes(4)  # no size in the header: SQLite takes the file's
    shutil.copyfile(journal, scratch)
    with open(scratch, "r+b") as file:
        file.write(header)
    if wal.exists():
        shutil.copyfile(wal, f"{scratch}-wal")


def _rows(conn: sqlite3.Connection, table: str, columns: list[str]) -> Iterator[tuple]:
    """(rowid, *columns) of each readable row, in rowid order, skipping damaged pages."""
    scan = f"SELECT rowid, {', '.join(columns)} FROM {table} WHERE rowid > ? ORDER BY rowid"
    after, failed_from = FIRST_ROWID, None
    while True:
        try:
            for row in conn.execute(scan, (after,)):
                after = row[0]
                yield row
            return
        except sqlite3.DatabaseError:
            if after >= LAST_ROWID:
                return
            following = _first_readable(conn, table, after + 1)
            if following is None:
                return
            # Try from just before the next row a seek reaches; failing from there again,
            # that row is found but cannot be read: go past it. Each failure moves on.
            start = following - 1 if failed_from != after else following
            after, failed_from = max(start, after + (failed_from == after)), after


def _first_readable(conn: sqlite3.Connection, table: str, start: int) -> int | None:
    """The first rowid at or after `start` that a seek reaches; None if none does: seeks
    from ever farther ahead until one succeeds, then back to the nearest that does."""
    if start > LAST_ROWID:
        return None
    bad, step, probe = start - 1, 1, start
    while _seek(conn, table, probe) is False:
        bad = probe
        if probe >= LAST_ROWID:
            return None
        probe, step = min(start + step, LAST_ROWID), step * 2
    good = probe
    while good - bad > 1:
        middle = (bad + good) // 2
        if _seek(conn, table, middle) is False:
            bad = middle
        else:
            good = middle
    result = _seek(conn, table, good)
    return None if result is False else result


def _seek(conn: sqlite3.Connection, table: str, start: int) -> int | bool | None:
    """The first rowid at or after `start`; None if there is none, False if the pages
    on the way cannot be read."""
    try:
        row = conn.execute(
            f"SELECT rowid FROM {table} WHERE rowid >= ? ORDER BY rowid LIMIT 1", (start,)
        ).fetchone()
    except sqlite3.DatabaseError:
        return False
    return None if row is None else row[0]


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


# --- writing the new journal ------------------------------------------------------------


def _copy_rows(source: sqlite3.Connection, path: Path) -> Salvaged:
    """Every readable row of the source's tables into the new journal at `path`; rows
    of jobs that were lost are left out, and the ids given stay given."""
    from gsup.journal.schema import MODELS
    from gsup.retention import MARK, highest_ids

    new = sqlite3.connect(path, isolation_level=None)
    try:
        new.execute("BEGIN")
        lost_rows: dict[str, int] = {}
        referenced: set[int] = set()
        for table in (model._meta.table_name for model in MODELS):  # jobs first
            lost_rows[table] = _copy_table(source, new, table, referenced)
        kept = {job for (job,) in new.execute("SELECT id FROM jobs")}
        for table, column in BY_JOB.items():
            new.execute(f"DELETE FROM {table} WHERE {column} NOT IN (SELECT id FROM jobs)")
        marks = highest_ids(new)
        marks["last_job_id"] = max([marks["last_job_id"], *referenced])
        new.executemany(MARK, marks.items())
        new.execute("COMMIT")
        (ok,) = new.execute("PRAGMA quick_check").fetchone()
        if ok != "ok":
            raise SalvageError(f"the salvaged journal fails its own check ({ok})")
    finally:
        new.close()
    lost = len(referenced - kept)
    lost_rows.pop("jobs")
    return Salvaged(len(kept), lost, path, lost_rows)


def _copy_table(
    source: sqlite3.Connection, new: sqlite3.Connection, table: str, referenced: set[int]
) -> int:
    """Copy one table's readable rows; how many rows were read but could not be kept.
    Adds to `referenced` every job id the rows name."""
    columns = _columns(new, table)
    with contextlib.suppress(sqlite3.DatabaseError):  # its schema unreadable: try the models'
        columns = [name for name in columns if name in set(_columns(source, table))]
    if not columns:
        return 0
    insert = (
        f"INSERT OR IGNORE INTO {table} ({', '.join(columns)})"  # a NOT NULL broken: row lost
        f" VALUES ({', '.join('?' * len(columns))})"
    )
    job_at = columns.index(BY_JOB.get(table, "id")) + 1 if table in (*BY_JOB, "jobs") else None
    rejected, chunk = 0, []
    for row in _rows(source, table, columns):
        if job_at is not None and isinstance(row[job_at], int):
            referenced.add(row[job_at])
        chunk.append(row[1:])
        if len(chunk) >= CHUNK:
            rejected += len(chunk) - new.executemany(insert, chunk).rowcount
            chunk = []
    if chunk:
        rejected += len(chunk) - new.executemany(insert, chunk).rowcount
    return rejected


if __name__ == "__main__":
    sys.exit(_check_at_start(Path(sys.argv[1])))
