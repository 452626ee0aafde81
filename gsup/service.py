"""systemd units for a real install: `gsup service install [--user]`.

One template for both scopes. The unit starts the gsup that wrote it (the console
script beside this interpreter, so a virtualenv's gsup works), for one state dir,
as `Type=notify` with a watchdog (see gsup/systemd.py for the messages).
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from gsup.config import resolve_home
from gsup.errors import GsupError

SYSTEM_HOME = Path("/var/lib/gsup")
SYSTEM_USER = "gsup"
UNIT_NAME = "gsup.service"


@dataclass(frozen=True)
class Unit:
    path: Path  # where it is installed
    text: str
    scope: str  # "--user" or "" (the system manager)
    home: Path  # the state dir
    user: str | None = None  # who a system unit runs as

    def enable_hint(self) -> str:
        systemctl = f"systemctl{' ' + self.scope if self.scope else ''}"
        return f"{systemctl} daemon-reload && {systemctl} enable --now {UNIT_NAME}"


def gsup_command() -> list[str]:
    """How to run the gsup that runs now: its console script, else `python -m gsup`
    (the interpreter's path as given, not resolved: a virtualenv's stays itself)."""
    script = Path(sys.executable).parent / "gsup"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script.absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "gsup"]


def user_unit(home: Path | None = None) -> Unit:
    """The unit of the calling user's own daemon (`systemctl --user`)."""
    home = resolve_home(home)
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    text = _unit(
        description="gsup job supervisor (user)",
        home=home,
        service=[],
        wanted_by="default.target",
    )
    return Unit(config / "systemd" / "user" / UNIT_NAME, text, "--user", home)


def system_unit(home: Path | None = None, user: str = SYSTEM_USER) -> Unit:
    """The unit of a daemon run by the system manager as `user` (who must exist:
    see the README), on /var/lib/gsup unless told otherwise."""
    home = Path(home).absolute() if home else SYSTEM_HOME
    state = ["StateDirectory=gsup", "StateDirectoryMode=0700"] if home == SYSTEM_HOME else []
    text = _unit(
        description="gsup job supervisor",
        home=home,
        service=[f"User={user}", f"Group={user}", *state],
        wanted_by="multi-user.target",
        after="After=network.target",
    )
    return Unit(Path("/etc/systemd/system") / UNIT_NAME, text, "", home, user)


def _unit(description: str, home: Path, service: list[str], wanted_by: str, after: str = "") -> str:
    command = shlex.join([*gsup_command(), "daemon", "--home", str(home)])
    command = command.replace("%", "%%").replace("$", "$$")  # systemd's specifiers
    lines = [
        "# Written by `gsup service install`; write it again after moving gsup.",
        "[Unit]",
        f"Description={description}",
        *([after] if after else []),
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        *service,
        f"ExecStart={command}",
        "Restart=on-failure",
        "RestartSec=2",
        "WatchdogSec=30",
        "TimeoutStopSec=60",
        "# SIGTERM to the supervisor alone: it stops its pools and their jobs itself,",
        "# and systemd's SIGKILL after TimeoutStopSec reaches everything that is left.",
        "KillMode=mixed",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "# Jobs may write only to the state dir; add ReadWritePaths= for their folders.",
        "ProtectSystem=strict",
        f"ReadWritePaths=-{home}",
        "",
        "[Install]",
        f"WantedBy={wanted_by}",
    ]
    return "\n".join(lines) + "\n"


def _check_user(user: str) -> None:
    import pwd

    try:
        pwd.getpwnam(user)
    except KeyError:
        raise GsupError(
            f"no user {user!r} here: create it first (useradd --system --home-dir"
            f" {SYSTEM_HOME} --shell /usr/sbin/nologin {user}) or choose one with --run-as"
        ) from None


def install(unit: Unit, force: bool) -> None:
    """Write the unit file; an existing one only with `force`."""
    if unit.user is not None:
        _check_user(unit.user)
    if unit.path.exists() and not force:
        raise GsupError(f"{unit.path} exists; --force replaces it")
    if not unit.scope and os.geteuid() != 0:
        raise GsupError(f"writing {unit.path} needs root (or --print to see the unit)")
    try:
        if unit.scope:  # under ProtectSystem=strict the daemon could not make it
            unit.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        unit.path.parent.mkdir(parents=True, exist_ok=True)
        unit.path.write_text(unit.text)
    except OSError as exc:
        raise GsupError(f"cannot write {unit.path}: {exc.strerror or exc}") from None
