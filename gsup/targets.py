"""Targets: `pkg.mod:attr` strings, command-line arguments, callables by value.

The client side (parsing, encoding) stays import-light; dill and importlib work
happen only in pool processes and in the short-lived `--check` child.
`python -m gsup.targets` is that child: it reads a job spec on stdin, imports the
target and binds the arguments, and prints one line.
"""

from __future__ import annotations

import ast
import base64
import importlib
import importlib.machinery
import os
import sys
import threading
from collections.abc import Callable
from typing import Any


class TargetError(Exception):
    """A target or argument that cannot be used; the message says why."""


# --- parsing (client side) -----------------------------------------------------


def parse_target(text: str) -> tuple[str, str]:
    """Split `pkg.mod:attr.sub` into ("pkg.mod", "attr.sub"), checking every name."""
    module, colon, attr = text.partition(":")
    if not colon or not module or not attr:
        raise TargetError(f"target {text!r} must look like pkg.module:function")
    for part in (*module.split("."), *attr.split(".")):
        if not part.isidentifier():
            raise TargetError(f"target {text!r}: {part!r} is not a Python name")
    return module, attr


def parse_value(text: str, as_string: bool = False) -> Any:
    """A command-line argument: a Python literal if it parses as one, else the string."""
    if as_string:
        return text
    if text.isascii() and text.isdigit() and (text == "0" or text[0] != "0"):
        return int(text)  # the common cases, without the parser (007 is no literal)
    if text.isidentifier() and text not in ("None", "True", "False"):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def parse_keyword(text: str, as_string: bool = False) -> tuple[str, Any]:
    name, equals, value = text.partition("=")
    if not equals or not name.isidentifier():
        raise TargetError(f"keyword argument {text!r} must look like name=value")
    return name, parse_value(value, as_string)


_PLAIN = (str, int, bool, type(None))  # their repr is always an equal literal
_NO_ARGUMENTS = repr(((), {}))


def literal_text(args: tuple, kwargs: dict[str, Any]) -> str | None:
    """`repr((args, kwargs))` if it reads back as an equal literal, else None."""
    text = repr((tuple(args), dict(kwargs)))
    if all(type(value) in _PLAIN for value in (*args, *kwargs.values())):
        return text  # the common case, without parsing the text back
    try:
        same = ast.literal_eval(text) == (tuple(args), dict(kwargs))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return text if same else None


def describe_call(target: str, args: tuple, kwargs: dict[str, Any], limit: int = 200) -> str:
    """`mod:f(1, x=2)`, shortened to `limit` characters for tables."""
    parts = [_short_repr(a) for a in args] + [f"{k}={_short_repr(v)}" for k, v in kwargs.items()]
    text = f"{target}({', '.join(parts)})"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # a user object whose __repr__ raises
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:59] + "…"


def reference_of(func: Callable[..., Any]) -> str | None:
    """`module:qualname` if a fresh process can import `func` by that name, else None."""
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        return None
    found = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return f"{module}:{qualname}" if found is func else None


def dumps_by_value(obj: Any) -> str:
    import dill  # brought by multiprocess; only the Python API pays its import

    return base64.b64encode(dill.dumps(obj, recurse=True)).decode()


def loads_by_value(text: str) -> Any:
    import dill

    return dill.loads(base64.b64decode(text))


# --- resolving (pool side) -----------------------------------------------------

_import_lock = threading.Lock()
# Where each module a job imported came from: (the job's path, its file, that file's mtime).
_origins: dict[str, tuple[tuple[str, ...], str, int]] = {}


def resolve(target: str, path: list[str]) -> Callable[..., Any]:
    """Import `pkg.mod:attr` as Python would with `path` in front of sys.path.

    A pool lives long and serves many folders: a module is imported again when the
    job's path finds another file for it, or when its file has changed since.
    The path entries stay on sys.path, so the job's own imports work as they would.
    """
    key = (target, tuple(path))
    known = _resolved.get(key)
    if known is not None and _mtime(known[1]) == known[2]:
        return known[0]  # the usual case: one stat
    found = _import_target(target, path)
    file = _origins.get(parse_target(target)[0], ((), "", -1))[1]
    _resolved[key] = (found, file, _mtime(file))
    return found


# The callable each (target, path) resolved to, with its module's file and mtime then.
_resolved: dict[tuple[str, tuple[str, ...]], tuple[Callable[..., Any], str, int]] = {}


def _import_target(target: str, path: list[str]) -> Callable[..., Any]:
    module_name, attr = parse_target(target)
    with _import_lock:
        sys.path[:0] = [entry for entry in path if entry not in sys.path]
        if _stale(module_name, path):
            _forget(module_name.partition(".")[0])
        try:
            found: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise TargetError(f"cannot import module {module_name!r}: {exc}") from None
        except Exception as exc:
            raise TargetError(
                f"importing {module_name!r} raised {type(exc).__name__}: {exc}"
            ) from exc
        _remember(module_name, found, path)
    for part in attr.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise TargetError(f"{target}: {module_name!r} has no attribute {attr!r}") from None
    if not callable(found):
        raise TargetError(f"{target} is not callable (it is a {type(found).__name__})")
    return found


def _stale(module_name: str, path: list[str]) -> bool:
    loaded = sys.modules.get(module_name)
    if loaded is None:
        return False
    known = _origins.get(module_name)
    if known is not None and _mtime(known[1]) != known[2]:
        return True  # its file changed since it was imported
    if known is not None and known[0] == tuple(path):
        return False
    top = module_name.partition(".")[0]
    spec = importlib.machinery.PathFinder.find_spec(top, path)
    if spec is None or not spec.origin:
        return False  # not in the job's folders: an installed module, left alone
    return spec.origin != getattr(sys.modules.get(top), "__file__", None)


def _remember(module_name: str, module: Any, path: list[str]) -> None:
    file = getattr(module, "__file__", None)
    if file:
        _origins[module_name] = (tuple(path), file, _mtime(file))


def _forget(top: str) -> None:
    """Drop a package and its modules, so that the next import reads them anew.
    Jobs running the old code keep it: their functions hold their own globals."""
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]
        _origins.pop(name, None)
    importlib.invalidate_caches()


def _mtime(file: str) -> int:
    if not file:
        return -1
    try:
        return os.stat(file).st_mtime_ns
    except OSError:
        return -1


def load_call(
    target: str, arguments: str | None, pickled: str | None, path: list[str]
) -> tuple[Callable[..., Any], tuple, dict[str, Any]]:
    """The callable and arguments of a job, from its spec fields."""
    func = None
    if pickled is not None:
        try:
            func, args, kwargs = loads_by_value(pickled)
        except Exception as exc:
            raise TargetError(f"cannot unpickle the call: {type(exc).__name__}: {exc}") from exc
    else:
        args, kwargs = _literal_arguments(arguments or "((), {})")
    if func is None:
        func = resolve(target, path)
    return func, tuple(args), dict(kwargs)


def _literal_arguments(text: str) -> tuple[tuple, dict[str, Any]]:
    if text == _NO_ARGUMENTS:
        return (), {}  # f(): no parse
    try:
        args, kwargs = ast.literal_eval(text)
        if (
            isinstance(args, list | tuple)
            and isinstance(kwargs, dict)
            and all(isinstance(key, str) for key in kwargs)
        ):
            return tuple(args), kwargs
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    raise TargetError(f"the arguments are not a literal (args, kwargs) pair: {text[:80]!r}")


def check_binding(func: Callable[..., Any], target: str, args: tuple, kwargs: dict) -> None:
    import inspect

    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return  # a builtin without a signature: nothing to check
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TargetError(f"{target}{signature} does not accept these arguments: {exc}") from None


def check_retry_on(names: list[str]) -> None:
    """The dotted paths of --retry-on name exception classes that can be imported."""
    for name in (name for name in names if "." in name):
        module, _, attr = name.rpartition(".")
        try:
            found = getattr(importlib.import_module(module), attr)
        except Exception as exc:
            raise TargetError(f"--retry-on {name}: cannot import it ({exc})") from None
        if not (isinstance(found, type) and issubclass(found, BaseException)):
            raise TargetError(f"--retry-on {name} is not an exception class")


def _check_main() -> int:
    """`--check`: import the target and bind its arguments; print one line."""
    import json

    from gsup.protocol import JobSpec

    spec = JobSpec.from_wire(json.load(sys.stdin))
    try:
        func, args, kwargs = load_call(spec.target, spec.arguments, spec.pickled, spec.path)
        check_binding(func, spec.target, args, kwargs)
        check_retry_on(spec.retry_on or [])
    except TargetError as exc:
        print(f"gsup: error: {exc}")
        return 1
    print(f"ok: {spec.display}")
    return 0


if __name__ == "__main__":
    sys.exit(_check_main())
