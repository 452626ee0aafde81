"""Who is at the other end of a unix socket, and whether a client may trust a daemon.

Import-light: every command that talks to the daemon checks it before sending anything,
and every one that reads the journal file checks that file before reading it.
"""

from __future__ import annotations

import os
import stat
import struct
from _socket import SO_PEERCRED, SOL_SOCKET  # not socket.py: see gsup/client.py
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _socket import socket as Socket

_CREDENTIALS = struct.Struct("3i")  # pid, uid, gid


def peer_credentials(sock: Socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix socket."""
    data = sock.getsockopt(SOL_SOCKET, SO_PEERCRED, _CREDENTIALS.size)
    return _CREDENTIALS.unpack(data)


def untrusted_daemon(sock: Socket, socket_path: Path) -> str | None:
    """Why the daemon listening at `socket_path` (connected as `sock`) must not be sent
    anything, or None. Our own user's daemon is trusted. Another user's (a group's
    shared daemon) only where nobody else could have put it: see `_suspect_folder`.
    Otherwise anyone could make a state dir in a shared folder (/tmp) to receive our
    commands and their environments."""
    _, uid, _ = peer_credentials(sock)
    folder = _suspect_folder(socket_path, uid)
    if folder is None:
        return None
    return (
        f"the daemon at {socket_path} runs as uid {uid}, not as you, and {folder} could"
        " have been made by someone else: refusing to send it anything"
    )


def untrusted_journal(journal: Path) -> str | None:
    """Why the journal file at `journal` must not be read (its jobs and results could
    be anyone's invention), or None: as for a daemon, by the journal's owner."""
    uid = journal.stat().st_uid
    folder = _suspect_folder(journal, uid)
    if folder is None:
        return None
    return (
        f"the journal {journal} belongs to uid {uid}, not to you, and {folder} could have"
        " been made by someone else: refusing to read it"
    )


def _suspect_folder(path: Path, uid: int) -> Path | None:
    """The first of `path` and the folders above it that someone other than `uid` (the
    owner of what `path` names) could have made or changed; None if there is none, or
    if `uid` is ours. The file and its folder must be `uid`'s, every folder above
    `uid`'s or root's, and none of the folders writable by anyone else."""
    if uid == os.getuid():
        return None
    for folder in [path, *path.parents]:
        info = folder.stat()
        owners = (uid,) if folder in (path, path.parent) else (uid, 0)
        writable_by_others = folder != path and info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if info.st_uid not in owners or writable_by_others:
            return folder
    return None
