"""The daemon's settings: highest first from command-line flags, environment variables
(`GSUP_USER_THREADS`, ...) and `gsup.toml` in the state dir. Read by the daemon only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from gsup.config import (
    BACKENDS,
    DAY,
    DEFAULT_POOL,
    MAX_MESSAGE,
    MB,
    POOL_NAMES,
    PROCESS_POOL,
    Paths,
    pool_for,
)

DEFAULT_THREADS = 5  # as Ganga's queues


def default_threads(pool: str) -> int:
    """As Ganga's queues; the process backend's pool: a job per core at once."""
    return (os.cpu_count() or 1) if pool == PROCESS_POOL else DEFAULT_THREADS


MAX_THREADS = 1024  # of a pool (and jobs a pool holds ahead of them: see queue_size)


def default_queue_size(threads: int) -> int:
    """Jobs a pool holds ahead of its threads: enough that a thread that finishes finds
    its next job at once, while the supervisor's next turn is still to come. It costs
    no priority: a better job takes the place of a held one (see the dispatcher)."""
    return max(16, 4 * threads)


DEFAULT_MAX_RESULT_MB = 64.0  # a larger result fails its job
DEFAULT_MAX_LOG_MB = 1024.0  # of each of a job's log files; what is beyond is dropped
DEFAULT_MIN_FREE_MB = 50.0  # of disk kept for the journal: no new job, no more log output


class ConfigError(Exception):
    """A setting that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class PoolSettings:
    name: str
    threads: int = DEFAULT_THREADS
    queue_size: int = default_queue_size(DEFAULT_THREADS)  # see default_queue_size
    max_result: int = int(DEFAULT_MAX_RESULT_MB * MB)  # bytes (UTF-8) of a result, at most
    max_log: int = int(DEFAULT_MAX_LOG_MB * MB)  # bytes of each of a job's log files
    min_free: int = int(DEFAULT_MIN_FREE_MB * MB)  # bytes of disk no log output may take

    @property
    def isolated(self) -> bool:
        """Each job runs in a process of its own (the process backend), not a thread."""
        return self.name == PROCESS_POOL


MAX_POLL = 3600.0  # seconds: a longer poll would leave jobs' ends unseen for hours


@dataclass(frozen=True)
class SlurmSettings:
    """`[backends.slurm]` in gsup.toml."""

    # Slurm jobs gsup keeps submitted at once, at most: Slurm's MaxJobCount, and as many
    # ids as one squeue argument takes (128 KiB)
    slots: int = 10_000
    poll: float = 2.0  # seconds between two squeue calls (one for all jobs followed)
    sbatch: tuple[str, ...] = ()  # options given to every sbatch: --partition=, --account=...
    max_result: int = int(DEFAULT_MAX_RESULT_MB * MB)  # bytes (UTF-8) of a result, at most


@dataclass(frozen=True)
class DaskSettings:
    """`[backends.dask]` in gsup.toml."""

    address: str | None = None  # the scheduler's, as Client() takes it: tcp://host:8786
    slots: int = 10_000  # calls gsup keeps submitted to Dask at once, at most
    connect: float = 10.0  # seconds a connection to the scheduler may take


DEFAULT_WEB_LISTEN = "127.0.0.1:8765"
MIN_TOKEN = 16  # characters of a web token, at least
TOKEN_CHARACTERS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~+/="
)  # a header and a cookie carry it unquoted


@dataclass(frozen=True)
class WebSettings:
    """`[web]` in gsup.toml: for `gsup web` and `gsup metrics --listen`."""

    listen: str = DEFAULT_WEB_LISTEN  # HOST:PORT of `gsup web`
    token: str | None = None  # required of requests when listening beyond loopback


@dataclass(frozen=True)
class Settings:
    paths: Paths
    pools: tuple[PoolSettings, ...] = field(
        default_factory=lambda: tuple(
            PoolSettings(name, default_threads(name), default_queue_size(default_threads(name)))
            for name in POOL_NAMES
        )
    )
    backend: str = "local"  # what runs a job that names no backend nor queue
    slurm: SlurmSettings = SlurmSettings()
    dask: DaskSettings = DaskSettings()
    web: WebSettings = WebSettings()
    grace: float = 10.0  # seconds running jobs get when the daemon stops
    stop_grace: float = 2.0  # seconds a stopped thread gets before its pool is recycled
    max_message: int = MAX_MESSAGE
    group: str | None = None  # its members may use the daemon too
    min_free_mb: float = DEFAULT_MIN_FREE_MB  # below it, new jobs and job output are refused
    max_result_mb: float = DEFAULT_MAX_RESULT_MB  # a larger result fails its job
    max_log_mb: float = DEFAULT_MAX_LOG_MB  # of each of a job's log files
    keep_days: float | None = None  # ended jobs older than this are pruned daily; None: kept
    # Seconds between the daemon's prunes under keep_days: a day. Only tests change it,
    # through GSUP_PRUNE_EVERY (not a documented setting).
    prune_every: float = DAY

    def pool(self, name: str) -> PoolSettings:
        return next(p for p in self.pools if p.name == name)

    @property
    def default_pool(self) -> str:
        """The pool of a job that names none: the default backend's."""
        return pool_for(self.backend, None) or DEFAULT_POOL


def _positive_int(value: object, what: str, most: int = MAX_THREADS) -> int:
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a whole number, not {value!r}") from None
    if not 1 <= number <= most or isinstance(value, float | bool):
        raise ConfigError(f"{what} must be a whole number from 1 to {most:,}, not {value!r}")
    return number


def _read_toml(path: Path) -> dict:
    """The config file's table; none is an empty one. Any other failure is one line (a
    name too long, a file even root may not read, bytes that are not UTF-8)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read {path}: not UTF-8 text ({exc.reason})") from None
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def load_settings(
    home: Path,
    threads: dict[str, int | None] | None = None,
    grace: float | None = None,
) -> Settings:
    """Settings for the daemon of state dir `home`; `threads` and `grace` are flag values.
    An error names where the bad value came from: the flag, the variable or the file."""
    paths = Paths(home)
    toml = _read_toml(paths.config)
    file = str(paths.config)
    _known(toml, TOP_KEYS, "", file)
    _known(_table(toml.get("pools"), "pools", file), set(POOL_NAMES), "pools.", file)
    max_result_mb = _positive(*_pick(
        None, "", "GSUP_MAX_RESULT_MB", toml, "max_result_mb", DEFAULT_MAX_RESULT_MB, file
    ))  # fmt: skip
    max_log_mb = _positive(*_pick(
        None, "", "GSUP_MAX_LOG_MB", toml, "max_log_mb", DEFAULT_MAX_LOG_MB, file
    ))  # fmt: skip
    min_free_mb = _seconds(*_pick(None, "", "", toml, "min_free_mb", DEFAULT_MIN_FREE_MB, file))
    keep_days, where = _pick(None, "", "GSUP_KEEP_DAYS", toml, "keep_days", None, file)
    if keep_days is not None:  # left out: every job is kept
        keep_days = _positive(keep_days, where)
    prune_every = _positive(*_pick(None, "", "GSUP_PRUNE_EVERY", {}, "prune_every", DAY, file))
    pools = []
    for name in POOL_NAMES:
        section = _table(_table(toml.get("pools"), "pools", file).get(name), f"pools.{name}", file)
        _known(section, POOL_KEYS, f"pools.{name}.", file)
        count = _positive_int(*_pick(
            (threads or {}).get(name), f"--{name}-threads", f"GSUP_{name.upper()}_THREADS",
            section, f"pools.{name}.threads", default_threads(name), file,
        ))  # fmt: skip
        queue = _positive_int(*_pick(
            None, "", "", section, f"pools.{name}.queue_size", default_queue_size(count), file
        ), most=100 * MAX_THREADS)  # fmt: skip
        pools.append(PoolSettings(name, count, queue, int(max_result_mb * MB),
                                  int(max_log_mb * MB), int(min_free_mb * MB)))  # fmt: skip
    slurm = _slurm_settings(toml, file, int(max_result_mb * MB))
    dask = _dask_settings(toml, file)
    backend, where = _pick(None, "", "GSUP_BACKEND", toml, "backend", "local", file)
    if backend not in BACKENDS:
        raise ConfigError(f"{where} must be one of {', '.join(BACKENDS)}, not {backend!r}")
    group, where = _pick(None, "", "GSUP_GROUP", toml, "group", None, file)
    if group is not None:
        _check_group(group, where)
    return Settings(
        paths=paths,
        pools=tuple(pools),
        grace=_seconds(*_pick(grace, "--grace", "GSUP_GRACE", toml, "grace", 10.0, file)),
        stop_grace=_seconds(*_pick(None, "", "", toml, "stop_grace", 2.0, file)),
        max_message=_positive_int(
            *_pick(None, "", "", toml, "max_message", MAX_MESSAGE, file), most=1 << 30
        ),
        backend=backend,
        slurm=slurm,
        dask=dask,
        web=_web_settings(toml, file),
        group=group,
        min_free_mb=min_free_mb,
        max_result_mb=max_result_mb,
        max_log_mb=max_log_mb,
        keep_days=keep_days,
        prune_every=prune_every,
    )


def _backend_section(toml: dict, name: str, file: str) -> dict:
    backends = _table(toml.get("backends"), "backends", file)
    _known(backends, {"slurm", "dask"}, "backends.", file)
    return _table(backends.get(name), f"backends.{name}", file)


def _web_settings(toml: dict, file: str) -> WebSettings:
    section = _table(toml.get("web"), "web", file)
    _known(section, {"listen", "token"}, "web.", file)
    listen, where = _pick(None, "", "GSUP_WEB_LISTEN", section, "web.listen",
                          DEFAULT_WEB_LISTEN, file)  # fmt: skip
    if not isinstance(listen, str):
        raise ConfigError(f"{where} must be HOST:PORT, not {listen!r}")
    token, where = _pick(None, "", "GSUP_WEB_TOKEN", section, "web.token", None, file)
    if token is not None and not (isinstance(token, str) and len(token) >= MIN_TOKEN
                                  and TOKEN_CHARACTERS.issuperset(token)):  # fmt: skip
        raise ConfigError(
            f"{where} must be {MIN_TOKEN} or more letters, digits and - . _ ~ + / ="
            " (python3 -c 'import secrets; print(secrets.token_urlsafe())' makes one)"
        )
    return WebSettings(listen, token)


def _dask_settings(toml: dict, file: str) -> DaskSettings:
    section = _backend_section(toml, "dask", file)
    _known(section, {"address", "slots", "connect"}, "backends.dask.", file)
    default = DaskSettings()
    address, where = _pick(None, "", "GSUP_DASK_ADDRESS", section, "backends.dask.address",
                           None, file)  # fmt: skip
    if address is not None and not (isinstance(address, str) and address.strip()):
        raise ConfigError(f"{where} must be an address such as tcp://host:8786, not {address!r}")
    slots = _positive_int(*_pick(None, "", "", section, "backends.dask.slots", default.slots,
                                 file), most=default.slots)  # fmt: skip
    connect = _positive(*_pick(None, "", "", section, "backends.dask.connect", default.connect,
                               file))  # fmt: skip
    return DaskSettings(address, slots, connect)


def _slurm_settings(toml: dict, file: str, max_result: int) -> SlurmSettings:
    section = _backend_section(toml, "slurm", file)
    _known(section, {"slots", "poll", "sbatch"}, "backends.slurm.", file)
    default = SlurmSettings()
    slots = _positive_int(*_pick(None, "", "", section, "backends.slurm.slots", default.slots,
                                 file), most=default.slots)  # fmt: skip
    poll, where = _pick(None, "", "", section, "backends.slurm.poll", default.poll, file)
    poll = _positive(poll, where)
    if poll > MAX_POLL:
        raise ConfigError(f"{where} must be at most {MAX_POLL:g} seconds, not {poll!r}")
    sbatch, where = _pick(None, "", "", section, "backends.slurm.sbatch", [], file)
    from gsup.protocol import GSUP_SBATCH, is_sbatch_option

    if not (isinstance(sbatch, list) and all(isinstance(o, str) and o for o in sbatch)):
        raise ConfigError(f"{where} must be a list of sbatch options, not {sbatch!r}")
    for option in sbatch:
        if not is_sbatch_option(option):
            raise ConfigError(
                f"{where}: {option!r} must look like --name=value, and not be one gsup sets"
                f" ({', '.join(GSUP_SBATCH)})"
            )
    return SlurmSettings(slots, poll, tuple(sbatch), max_result)


def _positive(value: object, what: str) -> float:
    return _seconds(value, what, above_zero=True)


def _check_group(group: object, where: str) -> None:
    import grp

    if not isinstance(group, str):
        raise ConfigError(f"{where} must be a group name, not {group!r}")
    try:
        grp.getgrnam(group)
    except KeyError:
        raise ConfigError(f"{where}: unknown group {group!r}") from None


def _pick(
    flag: object, flag_name: str, variable: str, table: dict, key: str, default: object, file: str
) -> tuple[object, str]:
    """A setting's value, highest first from the flag, the environment variable and the
    file (`key` is its dotted name there), and the name of where it came from."""
    if flag is not None:
        return flag, flag_name
    if variable and os.environ.get(variable):
        return os.environ[variable], variable
    last = key.rpartition(".")[2]
    if last in table:
        return table[last], f"{key} in {file}"
    return default, key


TOP_KEYS = {"grace", "stop_grace", "min_free_mb", "group", "max_message", "pools", "backend",
            "backends", "web",
            "max_result_mb", "max_log_mb", "keep_days"}  # fmt: skip
POOL_KEYS = {"threads", "queue_size"}


def _known(table: dict, keys: set[str], prefix: str, file: str) -> None:
    """A misspelt setting is an error, not a default silently kept."""
    unknown = sorted(set(table) - keys)
    if unknown:
        raise ConfigError(
            f"unknown setting {prefix}{unknown[0]} in {file}; known: "
            + ", ".join(prefix + key for key in sorted(keys))
        )


def _table(value: object, what: str, file: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"[{what}] in {file} must be a table")
    return value


def _seconds(value: object, what: str, above_zero: bool = False) -> float:
    """A finite number, 0 or more (above 0 if `above_zero`): seconds, megabytes, days."""
    lowest = "above 0" if above_zero else "from 0"
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = -1.0
    if isinstance(value, bool) or not 0 <= number < float("inf") or (above_zero and not number):
        raise ConfigError(f"{what} must be a number {lowest}, not {value!r}")
    return number
