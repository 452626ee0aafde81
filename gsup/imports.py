"""Where a job's code comes from: the import path of its context, and its files' freshness.

A job runs what `python -c "from mod import attr"` would import in the folder and with
the PYTHONPATH of its `gsup add`: its spec's `path`, then the interpreter's own
entries. A pool process serves one such path (see executors/local/), and the `--check`
child sets up the same one, through `use_import_path`.
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import json
import os
import sys
import threading
from typing import Any

_PATH_KEY = '"path": ['
_contexts: dict[str, tuple[str, ...]] = {}


def import_context(spec: str) -> tuple[str, ...]:
    """The import path of a call job, from its spec's JSON text. The hot path: the text
    from the `path` key on (no other key holds a list) is looked up, not parsed."""
    at = spec.rfind(_PATH_KEY)
    tail = spec[at:] if at >= 0 else spec
    known = _contexts.get(tail)
    if known is None:
        if len(_contexts) > 4096:
            _contexts.clear()
        known = _contexts[tail] = tuple(json.loads(spec).get("path") or ())
    return known


def interpreter_path() -> list[str]:
    """The interpreter's own sys.path entries (stdlib, site-packages and what their .pth
    files add), without the script's folder (sys.path[0]) and $PYTHONPATH's entries."""
    entries = sys.path if sys.flags.safe_path else sys.path[1:]
    if sys.flags.ignore_environment:
        return list(entries)
    extra = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    added = {os.path.abspath(entry) for entry in extra if entry}
    return [entry for entry in entries if os.path.abspath(entry or ".") not in added]


def use_import_path(path: list[str]) -> tuple[list[str], list[str]]:
    """Make sys.path `path` (the job's folder, then its $PYTHONPATH), then the
    interpreter's own entries. Returns the entries that are the job's own (whose
    modules are the user's), and a warning for each module imported already that a
    file in them would otherwise have provided."""
    own = interpreter_path()
    sys.path[:] = [*path, *(entry for entry in own if entry not in path)]
    users = user_entries(path, own)
    _FreshFinders.roots = tuple(os.path.join(os.path.abspath(entry), "") for entry in users)
    if _FreshFinders.hook not in sys.path_hooks:
        sys.path_hooks.insert(0, _FreshFinders.hook)
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()
    return users, shadowed(users)


class FreshSourceLoader(importlib.machinery.SourceFileLoader):
    """Compiles a module from its source, never from a .pyc: Python matches a .pyc to
    its source by mtime in whole seconds and size, so a file edited within the second
    it was imported, to the same size, would run its old code."""

    def get_code(self, fullname: str) -> Any:
        return self.source_to_code(self.get_data(self.path), self.path)


class _FreshFinders:
    """The finders of the job's own folders (and their packages'): fresh source only."""

    roots: tuple[str, ...] = ()
    loaders = (  # in the order of Python's own finder, its source loader replaced
        (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES),
        (FreshSourceLoader, importlib.machinery.SOURCE_SUFFIXES),
        (importlib.machinery.SourcelessFileLoader, importlib.machinery.BYTECODE_SUFFIXES),
    )

    @classmethod
    def hook(cls, entry: str) -> importlib.machinery.FileFinder:
        if not cls.roots or not os.path.join(os.path.abspath(entry), "").startswith(cls.roots):
            raise ImportError("not a job's own folder")  # the next hook's, as usual
        return importlib.machinery.FileFinder(entry, *cls.loaders)


# gsup itself is left out: a job that uses gsup's API gets the daemon's own, as it must,
# and a gsup checkout beside a job's code is gsup's development, not the job's.
OWN_PACKAGE = __name__.partition(".")[0]


def _top_names(entries: list[str]) -> set[str]:
    """The names of the files and folders in `entries` as module names (not gsup's)."""
    names: set[str] = set()
    for entry in entries:
        try:
            names.update(name.partition(".")[0] for name in os.listdir(entry or "."))
        except OSError:
            continue
    return names - {OWN_PACKAGE, "__pycache__"}  # bytecode: a folder no job imports


def user_entries(path: list[str], own: list[str] | None = None) -> list[str]:
    """The entries of a job's import path that are its own, not the interpreter's
    (`own`: interpreter_path(), read before sys.path was changed), nor in its
    environment (a PYTHONPATH that names the site-packages of gsup's own install)."""
    own = interpreter_path() if own is None else own
    return [entry for entry in path if entry not in own and not in_environment(entry)]


def in_environment(file: str) -> bool:
    """Whether `file` (or folder) is in the interpreter's standard library or
    site-packages: installed, not a job's own code."""
    return os.path.join(os.path.abspath(file), "").startswith(_environment())


@functools.cache
def _environment() -> tuple[str, ...]:
    import site
    import sysconfig

    paths = sysconfig.get_paths()
    folders = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    folders.update(site.getsitepackages())
    return tuple(os.path.join(os.path.abspath(folder), "") for folder in folders)


def may_shadow_installed(entries: list[str]) -> bool:
    """Whether a file in `entries` has the name of a module the interpreter has built in
    or could import from its own entries: only such a file can shadow a module a pool
    process imported before any job (a pool imports nothing from a job's folder)."""
    own = interpreter_path()
    finder = importlib.machinery.PathFinder
    return any(
        name in sys.builtin_module_names or finder.find_spec(name, own) is not None
        for name in _top_names(entries)
        if name.isidentifier()
    )


def shadowed(entries: list[str]) -> list[str]:
    """A warning for each module imported already (and so used, as `python -c` uses
    the modules the interpreter imported at its start) that a file in `entries`
    would have provided had it not been."""
    warnings = []
    for name in sorted(_top_names(entries)):
        loaded = sys.modules.get(name)
        if loaded is None or "." in name:
            continue
        spec = importlib.machinery.PathFinder.find_spec(name, entries)
        origin = spec.origin if spec is not None else None
        used = getattr(loaded, "__file__", None) or "built in"
        if origin and not _same_file(origin, used):
            warnings.append(
                f"gsup: warning: {origin} is not used: the pool had already imported"
                f" the module {name} ({used})"
            )
    return warnings


class LoadedFiles:
    """The files of the modules that jobs imported from the user's entries, with their
    modification times when first seen, to tell when one has changed on disk."""

    def __init__(self, entries: list[str]) -> None:
        self.roots = tuple(os.path.join(os.path.abspath(entry), "") for entry in entries)
        self.seen = set(sys.modules)  # what the process had before any job: not a job's
        self.count = len(sys.modules)
        self.files: dict[str, int] = {}
        self.modules: list[str] = []  # the names of those modules, as they came in
        self.lock = threading.Lock()

    def note(self, since: float | None = None) -> None:
        """Take in the modules imported since the last call. A file modified after
        `since` (when the job that imported it started) may have changed after it was
        imported: it counts as changed."""
        if len(sys.modules) == self.count or not self.roots:
            return  # the usual case, without the lock: modules are only ever added
        with self.lock:
            if len(sys.modules) == self.count or not self.roots:
                return
            for name in [name for name in list(sys.modules) if name not in self.seen]:
                self.seen.add(name)
                file = getattr(sys.modules.get(name), "__file__", None)
                if isinstance(file, str) and file.startswith(self.roots):
                    self.modules.append(name)
                    mtime = _mtime(file)
                    fresh = since is None or mtime < (since - CLOCK_SLACK) * 1e9
                    self.files[file] = mtime if fresh else CHANGED
            self.count = len(sys.modules)

    def changed(self) -> str | None:
        """A file that has changed (or gone) since it was imported, if any."""
        self.note()
        for file, mtime in list(self.files.items()):  # a copy: note() may add to it
            if _mtime(file) != mtime:
                return file
        return None


CHANGED = -2  # an mtime no file has: the file counts as changed
CLOCK_SLACK = 0.02  # s: file times come from a coarser clock than time.time()


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _mtime(file: str) -> int:
    try:
        return os.stat(file).st_mtime_ns
    except OSError:
        return -1
