"""Targets: `pkg.mod:attr` strings, command-line arguments, callables by value.

The client side (parsing, encoding) stays import-light; dill and importlib work
happen only in pool processes and in the short-lived `--check` child.
`python -m gsup.targets` is that child: it reads a job spec on stdin, imports the
target and binds the arguments, and prints one line.
"""

from __future__ import annotations

import ast
import importlib
import sys
import threading
from collections.abc import Callable
from typing import Any

from gsup.errors import GsupError


class TargetError(GsupError):
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
        try:
            return int(text)  # the common cases, without the parser (007 is no literal)
        except ValueError:  # more digits than int() takes (4,300): no number a job wants
            raise TargetError(f"{text[:20]}... is a number of {len(text):,} digits") from None
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
    import base64

    import dill  # brought by multiprocess; only the Python API pays its import

    try:
        return base64.b64encode(dill.dumps(obj, recurse=True)).decode()
    except Exception as exc:  # a lock, a socket, a generator among the arguments...
        raise TargetError(f"cannot send the call by value: {type(exc).__name__}: {exc}") from exc


def loads_by_value(text: str) -> Any:
    import base64

    import dill

    return dill.loads(base64.b64decode(text))


# --- resolving (pool side) -----------------------------------------------------

_import_lock = threading.Lock()
# The callable each target resolved to. A process serves one import path
# (gsup.imports), and is replaced once a file it imported changes: no entry goes stale.
_resolved: dict[str, Callable[..., Any]] = {}


def resolve(target: str) -> Callable[..., Any]:
    """Import `pkg.mod:attr` from sys.path, as `from pkg.mod import attr` would."""
    found = _resolved.get(target)
    if found is None:
        found = _resolved[target] = _import_target(target)
    return found


def _import_target(target: str) -> Callable[..., Any]:
    module_name, attr = parse_target(target)
    with _import_lock:
        try:
            found: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise TargetError(f"cannot import module {module_name!r}: {exc}") from None
        except Exception as exc:
            raise TargetError(
                f"importing {module_name!r} raised {type(exc).__name__}: {exc}"
            ) from exc
    for part in attr.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise TargetError(f"{target}: {module_name!r} has no attribute {attr!r}") from None
    if not callable(found):
        raise TargetError(f"{target} is not callable (it is a {type(found).__name__})")
    return found


def load_call(
    target: str, arguments: str | None, pickled: str | None
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
        func = resolve(target)
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
    """`--check`: import the target and bind its arguments as a pool process would
    (the same import path, and the modules a pool has imported before any job); print
    a line for each module shadowed, then one for the verdict."""
    import json

    from gsup.imports import may_shadow_installed, use_import_path, user_entries
    from gsup.protocol import JobSpec

    spec = JobSpec.from_wire(json.load(sys.stdin))
    if may_shadow_installed(user_entries(spec.path)):  # else the same without (~90 ms)
        import gsup.supervisor.daemon  # noqa: F401 (what a pool process has imported)
    for warning in use_import_path(spec.path)[1]:
        print(warning)
    try:
        func, args, kwargs = load_call(spec.target, spec.arguments, spec.pickled)
        check_binding(func, spec.target, args, kwargs)
        check_retry_on(spec.retry_on or [])
    except TargetError as exc:
        print(f"gsup: error: {exc}")
        return 1
    print(f"ok: {spec.display}")
    return 0


if __name__ == "__main__":
    sys.exit(_check_main())
