"""The table (plain text for the terminal, Markdown for RESULTS.md) and the machine's
description."""

from __future__ import annotations

import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from importlib import metadata
from pathlib import Path

HEADER = ("figure", "gsup", "before", "peer or limit", "ratio", "target", "met?")
LIMITS_HEADING = "## What limits it"
LIMITS_PLACEHOLDER = "_To be written: what bounds each figure that misses its target._\n"


@dataclass(frozen=True)
class Row:
    figure: str
    gsup: str
    before: str = "-"  # the same figure on an earlier release (`--before`)
    peer: str = "-"
    ratio: str = "-"
    target: str = "-"
    met: str = "-"


def _header(before: str | None) -> tuple[str, ...]:
    return tuple(f"gsup {before}" if h == "before" and before else h for h in HEADER)


def text_table(rows: Sequence[Row], before: str | None = None) -> str:
    cells = [_header(before), *(astuple(row) for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADER))]
    right = {1, 2, 3, 4}  # numbers line up on the right

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if i in right else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(values) for values in cells[1:])])


def markdown_table(rows: Sequence[Row], before: str | None = None) -> str:
    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    align = "| --- | ---: | ---: | ---: | ---: | --- | --- |"
    return "\n".join([line(_header(before)), align, *(line(astuple(row)) for row in rows)])


# --- the machine -----------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _filesystem(path: Path) -> str:
    """The type of the filesystem `path` is on, from the longest matching mount point."""
    best, kind = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, point, fstype, *_ = line.split()
            if str(path).startswith(point) and len(point) > len(best):
                best, kind = point, fstype
    except (OSError, ValueError):
        pass
    return kind


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _commit() -> str:
    """The checkout's commit, read without touching the index (another may be writing it)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def machine(temp_root: Path, before: str | None = None) -> list[tuple[str, str]]:
    free = shutil.disk_usage(temp_root).free / 2**30
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        ("CPU", _cpu_model()),
        ("cores", f"{os.cpu_count()} ({len(os.sched_getaffinity(0))} usable)"),
        ("memory", _memory()),
        ("temp dirs", f"{temp_root.parent} ({_filesystem(temp_root)}, {free:.0f} GiB free)"),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("load average at start", load),
        ("Python", sys.version.split()[0]),
        ("gsup", f"{_version('gsup')} (checkout at commit {_commit()})"),
        *([("gsup before", f"{before} (installed for --before)")] if before else []),
        ("huey", _version("huey")),
        ("typer", _version("typer")),
        ("SQLite", sqlite3.sqlite_version),
    ]


# --- RESULTS.md ----------------------------------------------------------------------------


def _kept_limits(path: Path) -> str:
    """The 'What limits it' section of an earlier RESULTS.md: written by hand, kept."""
    if not path.exists():
        return LIMITS_PLACEHOLDER
    text = path.read_text()
    if LIMITS_HEADING not in text:
        return LIMITS_PLACEHOLDER
    return text.split(LIMITS_HEADING, 1)[1].lstrip("\n") or LIMITS_PLACEHOLDER


def results_markdown(
    rows: Sequence[Row],
    described: Sequence[tuple[str, str]],
    command: str,
    notes: Sequence[str],
    limits: str,
    before: str | None = None,
) -> str:
    lines = [
        "# gsup benchmark results",
        "",
        f"Run on {time.strftime('%Y-%m-%d %H:%M %Z')} with `{command}`. "
        "Regenerate with the same command; the last section is kept.",
        "",
        "## Machine",
        "",
        *(f"- {name}: {value}" for name, value in described),
        "",
        "## Figures",
        "",
        markdown_table(rows, before),
        "",
        "## How each figure is measured",
        "",
        *(f"- {note}" for note in notes),
        "",
        LIMITS_HEADING,
        "",
        limits.rstrip("\n"),
        "",
    ]
    return "\n".join(lines)


def write_results(
    path: Path,
    rows: Sequence[Row],
    described: Sequence[tuple[str, str]],
    command: str,
    notes: Sequence[str],
    before: str | None = None,
) -> None:
    limits = _kept_limits(path)
    path.write_text(results_markdown(rows, described, command, notes, limits, before))
