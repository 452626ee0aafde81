"""The daemon's place on the machine: its private state dir, the lock that makes it
the only daemon there, its journal files' modes, and the socket clients connect to."""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import socket
import stat
from pathlib import Path

from gsup.access import Access
from gsup.config import Paths


class DaemonError(Exception):
    """The daemon cannot start; the message says why."""


class DaemonRunning(DaemonError):
    """Another daemon holds the state dir's lock."""


def trusted_home(home: Path) -> Path:
    """The state dir with its links resolved, once: a link on the way to it that
    another user owns could be moved later, and the daemon's files (logs, the journal)
    would go where that user chooses."""
    for step in [home, *home.parents]:
        if step.is_symlink() and step.lstat().st_uid not in (os.getuid(), 0):
            owner = step.lstat().st_uid
            raise DaemonError(
                f"state dir {home} is reached through {step}, a link of uid {owner}, who"
                " could move it; use the folder it points to, or a folder of your own"
            )
    resolved = home.resolve()
    for folder in (parent for parent in resolved.parents if parent.exists()):
        who = _who_else_can_rename_in(folder)
        if who is not None:
            raise DaemonError(
                f"state dir {resolved} is inside {folder}, where {who} could move it away"
                " and put another in its place; use a folder of your own"
            )
    return resolved


def _who_else_can_rename_in(folder: Path) -> str | None:
    """Who, besides us and root, may rename what `folder` holds: its owner, or anyone
    it lets write (unless its sticky bit keeps them to their own entries, as /tmp's).
    The daemon opens its files by path (SQLite can open no other way): a path that
    nobody else can change is as good as a descriptor."""
    info = folder.stat()
    if info.st_uid not in (os.getuid(), 0):
        return f"uid {info.st_uid}"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
        return "others" if info.st_mode & stat.S_IWOTH else f"group {info.st_gid}"
    return None


GSUP_FILES = ("journal.sqlite", "daemon.lock", "gsup.toml", "logs")  # one of them: a state dir


def prepare_home(paths: Paths, access: Access) -> None:
    """Make the state dir (private), or check the one there: ours, private, and a
    state dir already or empty (its mode is changed: it must not be any folder, ~ or
    /etc, given by mistake)."""
    home = paths.home
    if home.exists():
        check_private(home)
        if not any((home / name).exists() for name in GSUP_FILES) and any(home.iterdir()):
            raise DaemonError(
                f"{home} holds other files and no gsup state: give an empty folder, or"
                " one that is not there yet"
            )
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        access.protect(home, access.dir_mode)
        paths.logs.mkdir(mode=0o700, exist_ok=True)
        access.protect(paths.logs, access.dir_mode)
    except OSError as exc:
        raise DaemonError(f"cannot use state dir {home}: {exc.strerror or exc}") from None
    if len(os.fsencode(paths.socket)) > 100:
        raise DaemonError(f"state dir path too long for a unix socket: {home}")


def _shared(folder: Path) -> bool:
    """Whether a folder belongs to others: not ours, or writable by group or others."""
    stats = folder.stat()
    return stats.st_uid != os.getuid() or bool(stats.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def check_private(home: Path) -> None:
    """A state dir that is ours and that no one else may write to: what is in it (the
    lock, the journal, links planted there) is ours, and writing there harms no one."""
    if _shared(home):
        raise DaemonError(
            f"state dir {home} is not private (owned by another user or writable by"
            " others); use a folder of its own"
        )


def take_lock(paths: Paths) -> int:
    """The state dir's lock, held for the daemon's life; its descriptor. Only in a
    private state dir, never through a link (the lock is truncated and written)."""
    check_private(paths.home)
    try:
        fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise DaemonError(f"cannot open the lock {paths.lock}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode().strip() or "?"
        raise DaemonRunning(f"a daemon is already running for {paths.home} (pid {pid})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def protect_journal(paths: Paths, access: Access) -> None:
    """The journal, its WAL and index, and the copies migrations left: the daemon's
    user's (and the configured group's) only."""
    for path in [*paths.journal_files, *paths.home.glob("journal.sqlite.v*.bak")]:
        if path.exists():
            try:
                access.protect(path, access.file_mode)
            except OSError as exc:
                raise DaemonError(f"cannot set the mode of {path}: {exc.strerror}") from None


def listen(paths: Paths, access: Access) -> socket.socket:
    _raise_open_files_limit()
    with contextlib.suppress(FileNotFoundError):
        paths.socket.unlink()  # left by a daemon that died; we hold the lock
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(str(paths.socket))
    finally:
        os.umask(old_umask)
    access.protect(paths.socket, access.socket_mode)
    listener.listen(128)
    listener.setblocking(False)
    return listener


def remove_socket(paths: Paths) -> None:
    with contextlib.suppress(FileNotFoundError):
        paths.socket.unlink()


def _raise_open_files_limit() -> None:
    """Each client holds a connection: allow as many as the hard limit lets us."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
