"""Who is at the other end of a unix socket, and whether a client may trust a daemon.

Import-light: every command that talks to the daemon checks it before sending anything.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from pathlib import Path

_CREDENTIALS = struct.Struct("3i")  # pid, uid, gid


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix socket."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
    return _CREDENTIALS.unpack(data)


def untrusted_daemon(sock: socket.socket, socket_path: Path) -> str | None:
    """Why the daemon listening at `socket_path` (connected as `sock`) must not be sent
    anything, or None. Our own user's daemon is trusted. Another user's (a group's
    shared daemon) only where nobody else could have put it: the socket and its folder
    are that user's, and every folder above belongs to it or to root and is writable
    by no one else. Otherwise anyone could make a state dir in a shared folder (/tmp)
    to receive our commands and their environments."""
    _, uid, _ = peer_credentials(sock)
    if uid == os.getuid():
        return None
    path = socket_path
    for folder in [path, *path.parents]:
        info = folder.stat()
        owners = (uid,) if folder in (path, path.parent) else (uid, 0)
        writable_by_others = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if info.st_uid not in owners or (writable_by_others and not stat.S_ISSOCK(info.st_mode)):
            return (
                f"the daemon at {socket_path} runs as uid {uid}, not as you, and {folder} could"
                " have been made by someone else: refusing to send it anything"
            )
    return None
