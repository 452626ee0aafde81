"""Where gsup keeps its state, and the daemon's settings.

Kept import-light: the CLI's `add` path imports this module.
Settings come, highest first, from command-line flags, environment variables
(`GSUP_HOME`, `GSUP_USER_THREADS`, ...) and `gsup.toml` in the state dir.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

POOL_NAMES = ("user", "monitoring")
DEFAULT_POOL = "user"
DEFAULT_THREADS = 5  # as Ganga's queues


def default_queue_size(threads: int) -> int:
    """Jobs a pool holds ahead of its threads: enough that a thread that finishes finds
    its next job at once, while the supervisor's next turn is still to come. It costs
    no priority: a better job takes the place of a held one (see the dispatcher)."""
    return max(16, 4 * threads)


DEFAULT_PRIORITY = 5
MAX_MESSAGE = 8 * 1024 * 1024  # bytes in one socket message
MB = 1_000_000
DEFAULT_MAX_RESULT_MB = 64.0  # a larger result fails its job
DAY = 86_400.0


class ConfigError(Exception):
    """A setting that cannot be used; the message says which and why."""


def resolve_home(home: str | Path | None = None) -> Path:
    """The state dir: `--home`, else $GSUP_HOME, else $XDG_STATE_HOME/gsup."""
    if home:
        return Path(home).expanduser().absolute()
    if os.environ.get("GSUP_HOME"):
        return Path(os.environ["GSUP_HOME"]).expanduser().absolute()
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg).expanduser().absolute() / "gsup"


@dataclass(frozen=True)
class Paths:
    """The files of one state dir."""

    home: Path

    @property
    def socket(self) -> Path:
        return self.home / "gsup.sock"

    @property
    def journal(self) -> Path:
        return self.home / "journal.sqlite"

    @property
    def journal_files(self) -> list[Path]:
        """The journal and its write-ahead log and shared-memory index."""
        return [self.home / f"journal.sqlite{suffix}" for suffix in ("", "-wal", "-shm")]

    @property
    def lock(self) -> Path:
        return self.home / "daemon.lock"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def config(self) -> Path:
        return self.home / "gsup.toml"

    def job_output(self, job_id: int, stream: str) -> Path:
        """Where job `job_id` writes `stream` ("out" or "err")."""
        return self.logs / f"{job_id}.{stream}"


@dataclass(frozen=True)
class PoolSettings:
    name: str
    threads: int = DEFAULT_THREADS
    queue_size: int = default_queue_size(DEFAULT_THREADS)  # see default_queue_size
    max_result: int = int(DEFAULT_MAX_RESULT_MB * MB)  # bytes (UTF-8) of a result, at most


@dataclass(frozen=True)
class Settings:
    paths: Paths
    pools: tuple[PoolSettings, ...] = field(
        default_factory=lambda: tuple(PoolSettings(name) for name in POOL_NAMES)
    )
    grace: float = 10.0  # seconds running jobs get when the daemon stops
    stop_grace: float = 2.0  # seconds a stopped thread gets before its pool is recycled
    max_message: int = MAX_MESSAGE
    group: str | None = None  # its members may use the daemon too
    min_free_mb: float = 50.0  # below this much free disk, new jobs are refused
    max_result_mb: float = DEFAULT_MAX_RESULT_MB  # a larger result fails its job
    keep_days: float | None = None  # ended jobs older than this are pruned daily; None: kept
    # Seconds between the daemon's prunes under keep_days: a day. Only tests change it,
    # through GSUP_PRUNE_EVERY (not a documented setting).
    prune_every: float = DAY

    def pool(self, name: str) -> PoolSettings:
        return next(p for p in self.pools if p.name == name)


def _positive_int(value: object, what: str) -> int:
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a whole number, not {value!r}") from None
    if number < 1:
        raise ConfigError(f"{what} must be at least 1, not {number}")
    return number


def _read_toml(path: Path) -> dict:
    if not path.exists():
        return {}
    import tomllib

    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def load_settings(
    home: Path,
    threads: dict[str, int | None] | None = None,
    grace: float | None = None,
) -> Settings:
    """Settings for the daemon of state dir `home`; `threads` are flag values."""
    paths = Paths(home)
    toml = _read_toml(paths.config)
    _known(toml, TOP_KEYS, "")
    _known(_table(toml.get("pools"), "pools"), set(POOL_NAMES), "pools.")
    max_result_mb = _seconds(
        os.environ.get("GSUP_MAX_RESULT_MB", toml.get("max_result_mb", DEFAULT_MAX_RESULT_MB)),
        "max_result_mb",
    )
    if max_result_mb <= 0:
        raise ConfigError("max_result_mb must be more than 0")
    keep_days = os.environ.get("GSUP_KEEP_DAYS") or toml.get("keep_days")
    if keep_days is not None:
        keep_days = _seconds(keep_days, "keep_days")
        if keep_days <= 0:
            raise ConfigError("keep_days must be more than 0 (leave it out to keep every job)")
    prune_every = _seconds(os.environ.get("GSUP_PRUNE_EVERY", DAY), "GSUP_PRUNE_EVERY")
    pools = []
    for name in POOL_NAMES:
        section = _table(_table(toml.get("pools"), "pools").get(name), f"pools.{name}")
        _known(section, POOL_KEYS, f"pools.{name}.")
        env = os.environ.get(f"GSUP_{name.upper()}_THREADS")
        flag = (threads or {}).get(name)
        count = _positive_int(
            next(v for v in (flag, env, section.get("threads"), DEFAULT_THREADS) if v is not None),
            f"threads of pool {name!r}",
        )
        queue = _positive_int(
            section.get("queue_size", default_queue_size(count)), f"queue_size of pool {name!r}"
        )
        pools.append(PoolSettings(name, count, queue, int(max_result_mb * MB)))
    if grace is None:
        grace = os.environ.get("GSUP_GRACE", toml.get("grace", 10.0))  # type: ignore[assignment]
    grace = _seconds(grace, "grace")
    group = os.environ.get("GSUP_GROUP") or toml.get("group")
    if group is not None and not isinstance(group, str):
        raise ConfigError(f"group must be a group name, not {group!r}")
    return Settings(
        paths=paths,
        pools=tuple(pools),
        grace=grace,
        stop_grace=_seconds(toml.get("stop_grace", 2.0), "stop_grace"),
        max_message=_positive_int(toml.get("max_message", MAX_MESSAGE), "max_message"),
        group=group,
        min_free_mb=_seconds(toml.get("min_free_mb", 50.0), "min_free_mb"),
        max_result_mb=max_result_mb,
        keep_days=keep_days,
        prune_every=max(prune_every, 0.01),
    )


TOP_KEYS = {"grace", "stop_grace", "min_free_mb", "group", "max_message", "pools",
            "max_result_mb", "keep_days"}  # fmt: skip
POOL_KEYS = {"threads", "queue_size"}


def _known(table: dict, keys: set[str], prefix: str) -> None:
    """A misspelt setting is an error, not a default silently kept."""
    unknown = sorted(set(table) - keys)
    if unknown:
        raise ConfigError(
            f"unknown setting {prefix}{unknown[0]} in gsup.toml; known: "
            + ", ".join(prefix + key for key in sorted(keys))
        )


def _table(value: object, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"[{what}] in gsup.toml must be a table")
    return value


def _seconds(value: object, what: str) -> float:
    """A finite number, 0 or more (seconds, or megabytes, or days)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, not {value!r}") from None
    if not 0 <= number < float("inf"):
        raise ConfigError(f"{what} must be a number from 0, not {value!r}")
    return number
