"""Mergers: combine the output files of a transform's units into one merged file.

Pure functions over files, no daemon. The engine gives parts in the order they should
appear and journals which units each merge holds; a merger only writes bytes.

    merger = merger_for("csv")                   # text, csv, jsonl, tar or pkg.mod:func
    merger.merge([Part("u1", (a,)), Part("u2", (b,))], out)     # out from scratch
    merger.append([Part("u3", (c,))], out)       # incremental kinds only: add to out

Every write replaces `out` atomically (`_replace_atomically`): the new content goes to
a temporary file beside `out`, is fsynced, then renamed over it, and the folder is
fsynced, so that once a call returns its parts survive a crash, and after a crash
`out` holds all of a call's parts or none of them. On an error the temporary file is
removed and `out` is left as it was.

Both calls return the size of `out` afterwards. An append only adds bytes (a tar
member at least 512), so an engine that journals the size before and after a batch can
tell after a crash whether the batch's append landed: if the two sizes are equal, so
are the contents. Or it can merge everything again with overwrite=True: merge never
depends on what `out` held. A crash can leave a temporary file `.<out's name>.<16 hex
digits>.merging` beside `out`; the engine may remove those when no merge is running.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import secrets
import stat
import tarfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gsup.durable import fsync_path
from gsup.errors import GsupError
from gsup.targets import TargetError, resolve

_CHUNK = 1 << 20
_TAR_BLOCK = tarfile.BLOCKSIZE
_TAR_END = bytes(2 * _TAR_BLOCK)  # two zero blocks end a tar archive


class MergeError(GsupError):
    """A merge that could not be done, as one line: which unit and file, what is wrong.

    `traceback` holds the full traceback text when a custom merger raised (None otherwise),
    for the engine to store; control characters in the line are escaped to keep it one.
    """

    def __init__(self, message: str, traceback: str | None = None) -> None:
        super().__init__(_one_line(message))
        self.traceback = traceback


@dataclass(frozen=True, slots=True)
class Part:
    """One unit's output files, in the order to merge them.

    `root` is the unit's folder: the tar merger names a member `<unit>/<file relative to
    root>`, so it keeps subfolders; without a root a member is `<unit>/<file's name>`.
    The other mergers read the files as given and ignore `root`.
    """

    unit: str
    files: tuple[Path, ...]
    root: Path | None = None


class Merger:
    """Writes one merged file from parts. `overwrite`: whether merge() may replace an
    existing `out` (else it refuses with "<out> exists; set overwrite"); append() extends
    `out`, so the option does not apply to it unless `out` is missing.

    `incremental`: whether append() is available (else the engine merges all parts at once).
    """

    kind: str
    incremental = False

    def __init__(self, overwrite: bool = False) -> None:
        self.overwrite = overwrite

    def merge(self, parts: Sequence[Part], out: Path) -> int:
        """Write `out` from scratch from all parts; return its size in bytes."""
        out = Path(out)
        if not self.overwrite and os.path.lexists(out):
            raise _exists(out)  # early, before any work
        return _replace_atomically(
            out, lambda temporary: self._produce(parts, temporary), self.overwrite
        )

    def append(self, parts: Sequence[Part], out: Path) -> int:
        """Add parts to an `out` made by merge() or append(); return its size in bytes."""
        raise NotImplementedError(f"merger {self.kind} is not incremental: merge all parts")

    def _produce(self, parts: Sequence[Part], temporary: Path) -> None:
        """Create `temporary` (it does not exist yet) holding the merge of `parts`."""
        raise NotImplementedError


class _IncrementalMerger(Merger):
    """A merger whose output is a prefix kept from `out` plus pieces written per file.

    Cost of append: `out`'s kept bytes are copied into the temporary file with
    os.copy_file_range, which on a copy-on-write filesystem (btrfs, XFS with reflink,
    ZFS 2.2+ block cloning, bcachefs) shares the extents instead of copying them: then
    an append costs the size of the new parts plus metadata, and its fsync writes only
    the new bytes. Elsewhere (ext4, tmpfs) it is an in-kernel copy and an fsync of the
    whole file: O(size of out) per call (about 30 ms for 30 MB on an ext4 SSD), so
    10,000 single-unit appends to a file growing to 30 MB would copy ~150 GB. The
    engine should therefore batch: appending once the landed bytes waiting reach a
    fixed fraction 1/k of `out`'s size keeps the total copying under (k + 1) times the
    final size (plus one copy of `out` per append that a time limit forces). Append
    never rereads the parts already merged: csv reads `out`'s header, tar its last two
    blocks.
    """

    incremental = True

    def append(self, parts: Sequence[Part], out: Path) -> int:
        out = Path(out)
        try:
            existing = out.open("rb")
        except FileNotFoundError:
            return self.merge(parts, out)
        with existing:
            state, keep = self._resume(existing, out)
            if not any(part.files for part in parts):
                return os.fstat(existing.fileno()).st_size  # nothing to add: no copy
            return _replace_atomically(
                out, lambda temporary: self._produce(parts, temporary, (existing, keep), state)
            )

    def _produce(
        self,
        parts: Sequence[Part],
        temporary: Path,
        prefix: tuple[BinaryIO, int] | None = None,
        state: bytes | None = None,
    ) -> None:
        with temporary.open("xb") as sink:  # x: never truncate a file someone else made
            if prefix is not None:
                _copy_prefix(*prefix, sink)
            self._write(parts, sink, state)

    def _resume(self, existing: BinaryIO, out: Path) -> tuple[bytes | None, int]:
        """What _write needs to know of `out` (csv: its header), and how many of its
        bytes to keep (tar: all but its end blocks)."""
        return None, os.fstat(existing.fileno()).st_size

    def _write(self, parts: Sequence[Part], sink: BinaryIO, state: bytes | None) -> None:
        raise NotImplementedError


class TextMerger(_IncrementalMerger):
    """The files' bytes in order; a file that does not end with a newline gets one, so
    that units never share a line; an empty file adds nothing."""

    kind = "text"

    def _write(self, parts: Sequence[Part], sink: BinaryIO, state: bytes | None) -> None:
        for part, file in _files(parts):
            with _open_input(part, file) as source:
                _end_line(sink, _copy(source, sink))


class CsvMerger(_IncrementalMerger):
    """The header (first record) once, then every file's data rows, byte-exact.

    The header's end is found with the csv module's parser (comma-separated, double
    quotes: its excel dialect) on the first record only, so a quoted field holding a
    newline stays in it; the rows after it are copied, not parsed. Headers are compared
    without their line ending; a file that does not end with a newline gets one.
    """

    kind = "csv"

    def _resume(self, existing: BinaryIO, out: Path) -> tuple[bytes | None, int]:
        size = os.fstat(existing.fileno()).st_size
        return (_checked_header(str(out), existing) if size else None), size

    def _write(self, parts: Sequence[Part], sink: BinaryIO, state: bytes | None) -> None:
        header = state  # the first file's header, once there is one
        for part, file in _files(parts):
            with _open_input(part, file) as source:
                found = _checked_header(_where(part, file), source)
                if header is None:
                    header = found
                    _end_line(sink, _write_bytes(sink, found))
                elif _header_key(found) != _header_key(header):
                    raise MergeError(
                        f"{_where(part, file)}: header {_shown(found)} differs from the"
                        f" first file's {_shown(header)}"
                    )
                _end_line(sink, _copy(source, sink))


class JsonlMerger(_IncrementalMerger):
    """Every non-blank line, checked to parse as JSON, ending with a newline ("\\r\\n"
    becomes "\\n"); blank lines are dropped."""

    kind = "jsonl"

    def _write(self, parts: Sequence[Part], sink: BinaryIO, state: bytes | None) -> None:
        for part, file in _files(parts):
            with _open_input(part, file) as source:
                for number, line in enumerate(source, 1):
                    record = line.removesuffix(b"\n").removesuffix(b"\r")
                    if record.strip(b" \t\r\n"):  # JSON's whitespace
                        _check_json(part, file, number, record)
                        sink.write(record + b"\n")


class TarMerger(_IncrementalMerger):
    """An uncompressed tar (pax format) of regular-file members `<unit>/<relative name>`
    (see Part.root), each file's content and mode as read (symlinks are refused),
    owned by 0:0, and exactly two zero blocks at the end, unpadded: append() overwrites
    those two blocks with the new members, so it reads two blocks of `out`, not its
    members. It checks that `out` ends so, and trusts (as its contract says) that
    `out` was made by this merger. A unit name or file that would make a member name
    absolute, or hold "." or ".." or an empty component, is refused.
    """

    kind = "tar"

    def _resume(self, existing: BinaryIO, out: Path) -> tuple[bytes | None, int]:
        size = os.fstat(existing.fileno()).st_size
        keep = size - len(_TAR_END)
        if keep >= 0:
            existing.seek(keep)
        if keep < 0 or size % _TAR_BLOCK or existing.read() != _TAR_END:
            raise MergeError(f"{out} does not end as a tar made by this merger (two zero blocks)")
        return None, keep

    def _write(self, parts: Sequence[Part], sink: BinaryIO, state: bytes | None) -> None:
        for part, file in _files(parts):
            name = _member_name(part, file)
            with _open_input(part, file) as source:
                _write_member(part, file, name, source, sink)
        sink.write(_TAR_END)


class CustomMerger(Merger):
    """`func(files: list[str], out: str)` from "pkg.mod:func", called with every file of
    every part in order and the temporary name it must create (renamed over `out`
    afterwards). Not incremental. What it raises becomes a MergeError holding the
    traceback; not creating the file is a MergeError too."""

    def __init__(self, kind: str, overwrite: bool = False) -> None:
        super().__init__(overwrite)
        self.kind = kind
        try:  # resolve parses the name with parse_target, then imports it
            self.func: Callable[[list[str], str], object] = resolve(kind)
        except TargetError as exc:
            raise MergeError(f"merger {kind}: {exc}") from None

    def _produce(self, parts: Sequence[Part], temporary: Path) -> None:
        files = [str(file) for _, file in _files(parts)]
        try:
            self.func(files, str(temporary))
        except Exception as exc:
            said = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise MergeError(f"merger {self.kind} raised {said}", traceback.format_exc()) from exc
        if not temporary.is_file():
            raise MergeError(f"merger {self.kind} did not write its output file")


_BUILT_IN: dict[str, type[_IncrementalMerger]] = {
    "text": TextMerger,
    "csv": CsvMerger,
    "jsonl": JsonlMerger,
    "tar": TarMerger,
}
KINDS = (*_BUILT_IN, "pkg.mod:func")


def merger_for(kind: str, *, overwrite: bool = False) -> Merger:
    """The merger of `kind`: text, csv, jsonl, tar, or pkg.mod:func (imported now, so
    that a task that names one which cannot be imported fails before it runs)."""
    if kind in _BUILT_IN:
        return _BUILT_IN[kind](overwrite)
    if ":" in kind:
        return CustomMerger(kind, overwrite)
    raise MergeError(f"unknown merger {kind!r}: choose {', '.join(KINDS[:-1])} or {KINDS[-1]}")


# --- the atomic replacement (every merger writes through it) ---------------------------


def _replace_atomically(out: Path, produce: Callable[[Path], None], overwrite: bool = True) -> int:
    """Have `produce` create a temporary file beside `out`, fsync it, rename it over `out`
    (or, without overwrite, link it as `out` only if `out` is still absent) and fsync
    the folder; return `out`'s size. On any error the temporary file is removed and
    `out` is as it was; only the folder's fsync comes after the rename, and an OSError
    from it (the disk failing) is raised as it is."""
    temporary = _temporary_name(out)
    try:
        produce(temporary)
        size = fsync_path(temporary)
        _publish(temporary, out, overwrite)
    except BaseException as exc:
        _remove_quietly(temporary)
        if isinstance(exc, OSError):
            raise MergeError(f"merging into {out} failed: {exc}") from exc
        raise
    fsync_path(out.parent)  # the rename itself survives a crash once this returns
    return size


def _temporary_name(out: Path) -> Path:
    """A hidden name beside `out` that no other merge in the folder picks: 64 random bits,
    and the built-in mergers create it exclusively."""
    return out.with_name(f".{out.name[:200]}.{secrets.token_hex(8)}.merging")


def _publish(temporary: Path, out: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(temporary, out)
        return
    try:
        os.link(temporary, out)  # unlike a check then a rename, fails if out appeared since
    except FileExistsError:
        raise _exists(out) from None
    except OSError:  # a filesystem without hard links (vfat, some FUSE): check, then rename
        if os.path.lexists(out):
            raise _exists(out) from None
        os.replace(temporary, out)
        return
    _remove_quietly(temporary)  # out is in place: failing to tidy up is no failed merge


def _exists(out: Path) -> MergeError:
    return MergeError(f"{out} exists; set overwrite")


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):  # a custom merger made a folder there: the error
        path.unlink(missing_ok=True)  # being raised matters more


# --- copying -----------------------------------------------------------------------------


def _copy_prefix(source: BinaryIO, length: int, sink: BinaryIO) -> None:
    """The first `length` bytes of `source` into the empty `sink`: shared extents where
    the filesystem can clone (copy_file_range), an in-kernel copy where it cannot, and a
    copy through Python where copy_file_range is missing or refused (not Linux, EXDEV)."""
    done = 0
    copy_file_range = getattr(os, "copy_file_range", None)
    try:
        while copy_file_range and done < length:  # explicit offsets: file positions stay
            copied = copy_file_range(source.fileno(), sink.fileno(), length - done, done, done)
            if not copied:
                break
            done += copied
    except OSError:
        pass  # the copy below does the rest, and raises if the error was a real one
    source.seek(done)
    sink.seek(done)
    _copy(source, sink, length - done)
    if sink.tell() != length:
        raise MergeError(f"{source.name} shrank while being appended to")


def _copy(source: BinaryIO, sink: BinaryIO, limit: int | None = None) -> bytes:
    """Copy `source` from its position to its end (or `limit` bytes); return the last
    byte copied, b"" if none."""
    last = b""
    while limit is None or limit > 0:
        chunk = source.read(_CHUNK if limit is None else min(_CHUNK, limit))
        if not chunk:
            break
        sink.write(chunk)
        last = chunk[-1:]
        if limit is not None:
            limit -= len(chunk)
    return last


def _write_bytes(sink: BinaryIO, data: bytes) -> bytes:
    """Write `data`; return its last byte, as _copy does."""
    sink.write(data)
    return data[-1:]


def _end_line(sink: BinaryIO, last: bytes) -> None:
    """A newline after a piece that does not end with one (not after an empty one)."""
    if last not in (b"", b"\n"):
        sink.write(b"\n")


# --- reading the parts ------------------------------------------------------------------


def _files(parts: Sequence[Part]) -> Iterator[tuple[Part, Path]]:
    for part in parts:
        for file in part.files:
            yield part, Path(file)


def _where(part: Part, file: Path) -> str:
    return f"unit {part.unit}, {file}"


def _open_input(part: Part, file: Path) -> BinaryIO:
    """A unit's file, if it is a regular file: not a symlink (to a file outside its
    folder, or to the merged file itself), a FIFO (whose open would block the merge
    until a writer came) or a device."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        why = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror
        raise MergeError(f"{_where(part, file)}: cannot read: {why}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise MergeError(f"{_where(part, file)}: not a regular file")
    return os.fdopen(fd, "rb")


def _read_header(source: BinaryIO) -> bytes:
    """The bytes of the first CSV record, line ending included; `source` is left just
    after it. The csv parser pulls lines until a record ends, so a quoted newline in
    the header takes it to the next line. Latin-1 maps bytes one to one and keeps the
    ASCII quotes and newlines where UTF-8 has them."""
    consumed: list[bytes] = []

    def lines() -> Iterator[str]:
        while line := source.readline():
            consumed.append(line)
            yield line.decode("latin-1")

    next(csv.reader(lines()), None)
    return b"".join(consumed)


def _checked_header(where: str, source: BinaryIO) -> bytes:
    """The header of a part's file, or of `out` when appending; `where` names it."""
    try:
        header = _read_header(source)
    except csv.Error as exc:  # e.g. a field over csv.field_size_limit()
        raise MergeError(f"{where}: cannot read the header: {exc}") from None
    if not header:
        raise MergeError(f"{where}: empty: no header")
    if not _header_key(header):
        raise MergeError(f"{where}: no header (the first line is blank)")
    return header


def _header_key(header: bytes) -> bytes:
    """The header without its line ending: "a,b\\r\\n" and "a,b\\n" are the same header."""
    return header.removesuffix(b"\n").removesuffix(b"\r")


def _shown(header: bytes, limit: int = 60) -> str:
    text = repr(_header_key(header).decode("utf-8", "replace"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_json(part: Part, file: Path, number: int, record: bytes) -> None:
    try:
        json.loads(record)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        why = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else exc
        raise MergeError(f"{_where(part, file)}: line {number} is not JSON: {why}") from None


def _member_name(part: Part, file: Path) -> str:
    """`<unit>/<file relative to the unit's folder>`, refused unless every component is
    a plain name: extracting the tar can then only write inside `<unit>/`."""
    if part.root is None:
        relative = file.name
    else:
        try:
            relative = file.relative_to(part.root).as_posix()
        except ValueError:
            raise MergeError(
                f"{_where(part, file)}: not in the unit's folder {part.root}"
            ) from None
    name = f"{part.unit}/{relative}"
    components = name.split("/")
    if components[0] != part.unit or "\0" in name or {"", ".", ".."} & set(components):
        raise MergeError(f"{_where(part, file)}: unsafe tar member name {name!r}")
    return name


def _write_member(part: Part, file: Path, name: str, source: BinaryIO, sink: BinaryIO) -> None:
    """One regular-file member: header, exactly the size read at the start, padding."""
    status = os.fstat(source.fileno())
    if not stat.S_ISREG(status.st_mode):
        raise MergeError(f"{_where(part, file)}: not a regular file")
    member = tarfile.TarInfo(name)
    member.size = status.st_size
    member.mtime = int(status.st_mtime)
    member.mode = stat.S_IMODE(status.st_mode)
    try:
        sink.write(member.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
    except ValueError as exc:  # a field tar cannot hold
        raise MergeError(f"{_where(part, file)}: cannot be a tar member: {exc}") from None
    _copy(source, sink, member.size)
    if source.tell() != member.size:
        raise MergeError(f"{_where(part, file)}: shrank while being merged")
    sink.write(bytes(-member.size % _TAR_BLOCK))


def _one_line(text: str) -> str:
    """Control characters (a newline in a unit name or an exception) escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
