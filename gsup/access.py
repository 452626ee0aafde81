"""Who may talk to the daemon: its own user, and the members of one group if the
config names one (`group = "name"` in gsup.toml, or $GSUP_GROUP).

Two locks on the one door: file permissions on the state dir and socket, and a check
of the peer's credentials (SO_PEERCRED) on every connection.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from gsup.settings import ConfigError


@dataclass(frozen=True)
class Access:
    gid: int | None = None  # the group allowed besides the daemon's user

    @classmethod
    def for_group(cls, name: str | None) -> Access:
        if not name:
            return cls()
        try:
            return cls(grp.getgrnam(name).gr_gid)
        except KeyError:
            raise ConfigError(f"unknown group {name!r}") from None

    @property
    def dir_mode(self) -> int:
        return 0o700 if self.gid is None else 0o750

    @property
    def socket_mode(self) -> int:
        return 0o600 if self.gid is None else 0o660

    @property
    def file_mode(self) -> int:
        return 0o600 if self.gid is None else 0o640

    def protect(self, path: Path, mode: int) -> None:
        """Give `path` this mode, and to the allowed group if there is one."""
        path.chmod(mode)
        if self.gid is not None:
            try:
                os.chown(path, -1, self.gid)
            except PermissionError:
                name = grp.getgrgid(self.gid).gr_name
                raise ConfigError(
                    f"cannot give {path} to group {name!r}: the daemon's user must belong to it"
                ) from None

    def allows(self, uid: int, gid: int) -> bool:
        if uid == os.getuid():
            return True
        if self.gid is None:
            return False
        if gid == self.gid:
            return True
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            return False
        return self.gid in os.getgrouplist(name, gid)
