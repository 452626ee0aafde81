"""The errors gsup raises to its users: every one is a GsupError, whose text is one line.

Import-light: the CLI, the client and the target parser all raise these.
"""

from __future__ import annotations

from pathlib import Path


class GsupError(Exception):
    """An error to show the user as one line."""


class DaemonNotRunning(GsupError):
    """No daemon listens on the state dir's socket."""

    def __init__(self, home: Path, default_home: Path) -> None:
        self.home = home
        super().__init__(
            f"no gsup daemon is running for {home} (start one with: gsup daemon"
            f"{'' if home == default_home else f' --home {home}'})"
        )


class WaitTimeout(GsupError, TimeoutError):
    """A wait that gave up: the job (or the daemon) had not finished in time."""


class BadOptions(GsupError, TypeError):
    """Job options that gsup does not know."""


class PartlyAdded(GsupError):
    """A batch of which some jobs were added and some not (a refused request, a lost
    connection): `ids` are those the daemon confirmed, in order; `unsure` jobs were
    sent but no answer came (the daemon may have added them). The same jobs sent
    again with `key` are not added twice."""

    def __init__(self, why: str, ids: list[int], total: int, unsure: int, key: str | None):
        self.why, self.ids, self.total, self.unsure, self.key = why, ids, total, unsure, key
        again = f"; add_many(..., key={key!r}) adds the rest, never twice" if key else ""
        super().__init__(f"{self.outcome}{again}")

    @property
    def outcome(self) -> str:
        maybe = f", {self.unsure:,} may have been (no answer came)" if self.unsure else ""
        return f"{self.why}; {len(self.ids):,} of {self.total:,} jobs were added{maybe}"
