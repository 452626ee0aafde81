"""A damaged journal: finding the damage (SQLite's own checks) and salvaging what can
still be read into a new journal (`gsup journal check`, `gsup journal salvage`).

Salvage reads the damaged file through SQLite, table by table in rowid order. A table
whose scan meets a page it cannot read (or rows out of order: a damaged page that still
parses) is read again span by span, a span starting at the first rowid of each leaf
page in the file, so a damaged leaf loses its own rows only. Rows of a leaf that only a
damaged interior page leads to are lost with it (as SQLite's .recover would file them
under lost_and_found, not their table). Indexes are never read:
the new journal rebuilds them. A header that is not a database header any more (its
first 100 bytes) is replaced, in a scratch copy, by one SQLite writes for an empty
database of the same page size.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import re
import shutil
import sqlite3
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gsup.config import Paths
from gsup.durable import fsync_path
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
TRUNCATED = "it is 0 bytes long: it was truncated"  # the finding for a journal of 0 bytes
BANNER = re.compile(r"\*\*\* in database \S+ \*\*\*")  # heads a check's findings


class SalvageError(Exception):
    """Salvage cannot be done; the message says why."""


def problems(path: Path, full: bool = False) -> list[str]:
    """What SQLite finds wrong with the journal at `path` (read-only): none if it is
    healthy. `full`: integrity_check (indexes against their tables too), else
    quick_check."""
    if truncated(path):
        return [TRUNCATED]  # SQLite takes an empty file for a new database, and healthy
    try:
        return findings(path, "integrity_check" if full else "quick_check", PROBLEMS_LISTED)
    except sqlite3.Error as exc:
        return [str(exc)]


def findings(path: Path, check: str, limit: int) -> list[str]:
    """The findings of one of SQLite's checks, a line each (none: healthy); then the
    error that ended them, if one did. sqlite3.Error if the journal cannot be opened or
    read at all."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    found: list[str] = []
    try:
        for (finding,) in conn.execute(f"PRAGMA {check}({limit})"):
            found.append(finding)
    except sqlite3.DatabaseError as exc:
        if not found:
            raise
        found.append(str(exc))
    finally:
        conn.close()
    return [] if found == ["ok"] else _lines(found)


def _lines(found: list[str]) -> list[str]:
    """SQLite's findings a line each: one of them may hold several lines, the first
    naming the database ("*** in database main ***"), which says nothing here."""
    lines = (line.strip() for finding in found for line in finding.splitlines())
    return [line for line in lines if line and not BANNER.fullmatch(line)]


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
    cause = " ".join(found[0].split())  # one line, whatever the finding holds
    return f"the journal {path} is damaged ({cause}); " + ", or ".join(ways)


# --- a journal of 0 bytes --------------------------------------------------------------


def truncated(path: Path) -> bool:
    """Whether the journal at `path` is a file of 0 bytes: gsup never leaves one (see
    make_journal), so it was truncated, and all it held is lost."""
    try:
        info = path.stat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size == 0


def make_journal(path: Path) -> None:
    """A new, empty journal at `path` if there is none (a first start; open_journal
    then makes its tables). SQLite creates its file empty and writes the first page
    later: a daemon killed in between would leave a journal of 0 bytes, so the file is
    made beside and renamed in once it has its first page."""
    if os.path.lexists(path):
        return
    partial = path.with_name(f"{path.name}.new")
    _remove_journal(partial)  # a first start killed before its rename
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    conn = sqlite3.connect(partial)
    try:
        conn.execute("PRAGMA journal_mode = wal")  # writes the first page, header and all
    finally:
        conn.close()
    fsync_path(partial)
    os.replace(partial, path)
    fsync_path(path.parent)  # the rename too


# --- salvage -------------------------------------------------------------------------


@dataclass
class Salvaged:
    kept: int  # jobs
    lost: int  # jobs known to have been there (by id) that could not be read
    aside: Path  # where the damaged journal now is
    rows_lost: dict[str, int] = field(default_factory=dict)  # other tables' skipped rows
    empty: bool = False  # the journal was 0 bytes: nothing to read, nothing known lost

    def line(self) -> str:
        if self.empty:
            return (
                "salvaged the journal: it was empty (0 bytes), so nothing was kept;"
                f" the damaged journal is at {self.aside}"
            )
        others = ", ".join(f"{n} {table} rows" for table, n in self.rows_lost.items() if n)
        also = f" (also lost: {others})" if others else ""
        return (
            f"salvaged the journal: {self.kept} jobs kept, {self.lost} lost{also};"
            f" the damaged journal is at {self.aside}"
        )


def salvage(paths: Paths) -> Salvaged | None:
    """Copy what is readable of the journal into a new one that takes its place; the
    damaged one is kept aside. None, and nothing changed, if the journal passes SQLite's
    full check. Holds the daemon's lock: SalvageError if a daemon runs."""
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
        if not problems(paths.journal, full=True):
            return None  # healthy: a copy would only lose what the check cannot see
        return _salvage(paths)
    finally:
        os.close(lock)


def healthy_line(path: Path) -> str:
    return f"the journal {path} is healthy (it passed SQLite's integrity_check): nothing to salvage"


def _salvage(paths: Paths) -> Salvaged:
    new = paths.home / "journal.sqlite.salvage"
    scratch = paths.home / "journal.sqlite.scratch"
    _remove_journal(new)
    _remove_journal(scratch)
    try:
        salvaged = _copy_readable(paths.journal, scratch, new)
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


def _copy_readable(journal: Path, scratch: Path, new: Path) -> Salvaged:
    """A new journal at `new` holding what can be read of `journal`."""
    if truncated(journal):
        _create(new)
        return Salvaged(0, 0, new, empty=True)
    source = _readable_source(journal, scratch)
    try:
        _create(new)
        return _copy_rows(source, new)
    finally:
        source.conn.close()


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


@dataclass
class Source:
    """The damaged journal as salvage reads it: a connection, and the file it reads."""

    conn: sqlite3.Connection
    path: Path

    @functools.cached_property
    def leaf_starts(self) -> list[int]:
        """Where scans may go on past damage (read from the file when first needed)."""
        (page_size,) = self.conn.execute("PRAGMA page_size").fetchone()
        return _leaf_starts(self.path, page_size)


def _readable_source(journal: Path, scratch: Path) -> Source:
    """A read-only connection that can read the journal's schema: to the journal, or to
    a scratch copy whose header SQLite rewrote, if its own is damaged."""
    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5)
    if _schema_readable(conn):
        return Source(conn, journal)
    conn.close()
    for page_size in PAGE_SIZES:
        _copy_with_new_header(journal, scratch, page_size)
        conn = sqlite3.connect(scratch)  # ours: it may make its WAL index
        if _schema_readable(conn):
            return Source(conn, scratch)
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


class _Disorder(Exception):
    """A scan met a page it cannot read, or rows out of order (a damaged page that
    still reads as rows, whose rowids are noise)."""


def _scan(conn: sqlite3.Connection, table: str, columns: list[str]) -> Iterator[tuple]:
    """(rowid, *columns) of every row in rowid order, as long as nothing is amiss."""
    last = None
    try:
        for row in conn.execute(f"SELECT rowid, {', '.join(columns)} FROM {table} ORDER BY rowid"):
            if last is not None and row[0] <= last:
                raise _Disorder
            last = row[0]
            yield row
    except sqlite3.DatabaseError:
        raise _Disorder from None


def _rows_by_leaf(source: Source, table: str, columns: list[str]) -> Iterator[tuple]:
    """(rowid, *columns) of each readable row, read between one leaf's first rowid and
    the next's (every table's leaves: which table a page belongs to is written in the
    b-tree that is damaged). A damaged leaf loses the rest of its span only: every leaf
    that can be read starts a span of its own, so its rows are read first in it."""
    starts = [FIRST_ROWID, *(start for start in source.leaf_starts if start > FIRST_ROWID)]
    for start, following in itertools.zip_longest(starts, starts[1:]):
        last = LAST_ROWID if following is None else following - 1
        yield from _span(source.conn, table, columns, start, last)


def _span(
    conn: sqlite3.Connection, table: str, columns: list[str], start: int, last: int
) -> Iterator[tuple]:
    """The readable rows from `start` to `last`, until a page on the way cannot be
    read; a row that cannot be read (an overflow page) is skipped."""
    select = f"SELECT rowid, {', '.join(columns)} FROM {table}"
    scan = f"{select} WHERE rowid >= ? AND rowid <= ? ORDER BY rowid"
    at = start
    while at <= last:
        try:
            for row in conn.execute(scan, (at, last)):
                if at <= row[0] <= last:  # a damaged page's noise may be out of the span
                    yield row
                    at = row[0] + 1
            return
        except sqlite3.DatabaseError:
            found = _seek(conn, table, at)
            if found is None or found is False or not at <= found <= last:
                return  # the rest of the span is on a page that cannot be read
            with contextlib.suppress(sqlite3.DatabaseError):  # its leaf reads: may its row?
                yield from conn.execute(f"{select} WHERE rowid = ?", (found,))  # no step past
            at = found + 1


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


# SQLite offers no page reader here (no sqlite_dbpage, no recover extension in the
# sqlite3 module's library), so the first rowid of each table leaf page is read from
# the file itself: a page type, a cell pointer and two varints of the file format.
TABLE_LEAF = 0x0D  # the first byte of a table b-tree leaf page
WAL_HEADER, FRAME_HEADER = 32, 24


def _leaf_starts(path: Path, page_size: int) -> list[int]:
    """The first rowid of each page of the file, and of its WAL's frames, that reads as
    a table leaf: a seek to each reaches every leaf a b-tree can still reach."""
    starts: set[int | None] = set()
    with open(path, "rb") as file:
        for number, page in enumerate(iter(lambda: file.read(page_size), b""), 1):
            starts.add(_first_rowid(page, HEADER if number == 1 else 0))
    with contextlib.suppress(FileNotFoundError), open(f"{path}-wal", "rb") as wal:
        wal.seek(WAL_HEADER)
        while frame := wal.read(FRAME_HEADER + page_size):
            number = int.from_bytes(frame[:4], "big")
            starts.add(_first_rowid(frame[FRAME_HEADER:], HEADER if number == 1 else 0))
    starts.discard(None)
    return sorted(starts)  # type: ignore[arg-type]


def _first_rowid(page: bytes, header: int) -> int | None:
    """The rowid of the first cell of a table leaf page (its b-tree header at `header`);
    None if the page is not one."""
    try:
        if page[header] != TABLE_LEAF or not int.from_bytes(page[header + 3 : header + 5], "big"):
            return None
        cell = int.from_bytes(page[header + 8 : header + 10], "big")
        _, rowid_at = _varint(page, cell)  # the payload's size, then the rowid
        return _varint(page, rowid_at)[0]
    except IndexError:  # a cut page, or a pointer past its end
        return None


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """The file format's variable-length integer at `at` (7 bits a byte, 8 in a ninth),
    as a signed 64-bit value; and where the next field starts."""
    value = 0
    for length in range(1, 9):
        byte = data[at + length - 1]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            break
    else:
        value, length = (value << 8) | data[at + 8], 9
    return value - (1 << 64) if value >> 63 else value, at + length


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


# --- writing the new journal ------------------------------------------------------------


def _copy_rows(source: Source, path: Path) -> Salvaged:
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


def _copy_table(source: Source, new: sqlite3.Connection, table: str, referenced: set[int]) -> int:
    """Copy one table's readable rows; how many rows were read but could not be kept.
    Adds to `referenced` every job id the rows name. One scan copies a table whose
    pages all read; a damaged one is copied again, leaf by leaf, from a clean slate."""
    columns = _columns(new, table)
    with contextlib.suppress(sqlite3.DatabaseError):  # its schema unreadable: try the models'
        columns = [name for name in columns if name in set(_columns(source.conn, table))]
    if not columns:
        return 0
    insert = (
        f"INSERT OR IGNORE INTO {table} ({', '.join(columns)})"  # a NOT NULL broken: row lost
        f" VALUES ({', '.join('?' * len(columns))})"
    )
    job_at = columns.index(BY_JOB.get(table, "id")) + 1 if table in (*BY_JOB, "jobs") else None
    new.execute("SAVEPOINT copy_table")
    try:
        rejected, named = _insert(new, insert, _scan(source.conn, table, columns), job_at)
    except _Disorder:
        new.execute("ROLLBACK TO copy_table")
        rows = _rows_by_leaf(source, table, columns)
        rejected, named = _insert(new, insert, rows, job_at)
    new.execute("RELEASE copy_table")
    referenced |= named
    return rejected


def _insert(
    new: sqlite3.Connection, insert: str, rows: Iterator[tuple], job_at: int | None
) -> tuple[int, set[int]]:
    """Insert (rowid, *columns) rows by chunks: how many were refused, and the job ids
    the column at `job_at` names."""
    rejected, named, chunk = 0, set(), []
    for row in rows:
        if job_at is not None and isinstance(row[job_at], int):
            named.add(row[job_at])
        chunk.append(row[1:])
        if len(chunk) >= CHUNK:
            rejected += len(chunk) - new.executemany(insert, chunk).rowcount
            chunk = []
    if chunk:
        rejected += len(chunk) - new.executemany(insert, chunk).rowcount
    return rejected, named


if __name__ == "__main__":
    sys.exit(_check_at_start(Path(sys.argv[1])))
