"""Two changes to typer 0.29, made once when the CLI starts (`install`).

Coercion without pydantic: typer 0.29 turns every command-line value into its annotated
type through a pydantic TypeAdapter, built when a command runs: importing pydantic and
building adapters costs 80-100 ms, more than the rest of a command. For str, bool, int,
float, Path, an Enum and lists of these, the conversion is plain; this fills in typer's lazily built
runtime parameter with one that does it directly. Any other annotation keeps typer's
own. tests/test_cli.py checks that no command imports pydantic, so a typer release that
changes these internals is noticed (pyproject pins typer below 0.30).

Help without Python types: typer shows `TARGET <str>`, `<list[str]>` and `{ID}`; a
parameter that has a metavar (every one of gsup's that takes a value) shows only that.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args, get_origin

import typer
from typer._coercion import RuntimeParam
from typer.core import TyperArgument, _TyperParameter

Convert = Callable[[Any], Any]


class PlainParam(RuntimeParam):
    """A RuntimeParam (a frozen dataclass) with a converter; no @dataclass of its own,
    which would cost a millisecond at every start."""

    def __init__(self, parameter_info: Any, annotation: Any, convert: Convert) -> None:
        super().__init__(parameter_info, annotation)
        object.__setattr__(self, "convert", convert)

    def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
        try:
            if isinstance(value, list | tuple):
                return [self.convert(item) for item in value]
            return self.convert(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), ctx=ctx, param=param) from None


def _number(kind: type, low: float | None, high: float | None) -> Convert:
    name = "a whole number" if kind is int else "a number"

    def convert(value: Any) -> Any:
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not {name}") from None
        if not math.isfinite(number):
            raise ValueError(f"{value!r} is not {name}")
        if low is not None and number < low:
            raise ValueError(f"{value} is below {low:g}")
        if high is not None and number > high:
            raise ValueError(f"{value} is above {high:g}")
        return number

    return convert


def _choice(kind: type[enum.Enum]) -> Convert:
    def convert(value: Any) -> Any:
        if isinstance(value, kind):
            return value
        try:
            return kind(value)
        except ValueError:
            choices = ", ".join(str(member.value) for member in kind)
            raise ValueError(f"{value!r} is not one of {choices}") from None

    return convert


def converter(annotation: Any, info: Any) -> Convert | None:
    """How to convert a value for `annotation`, or None if typer must do it."""
    if get_origin(annotation) is list:
        (annotation,) = get_args(annotation)
    if annotation is str or annotation is bool:
        return lambda value: value
    if annotation is int or annotation is float:
        return _number(annotation, getattr(info, "min", None), getattr(info, "max", None))
    if annotation is Path:
        return Path
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return _choice(annotation)
    return None


def install() -> None:
    _install_plain_coercion()
    _install_plain_help()


def _install_plain_help() -> None:
    display_type = _TyperParameter.display_type

    def shown_type(self: _TyperParameter, ctx: Any) -> str:
        return "" if self.metavar is not None else display_type(self, ctx)

    def usage_name(self: TyperArgument) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")

    def help_name(self: TyperArgument) -> str:
        return self.display_name_raw + ("..." if self.nargs != 1 else "")

    _TyperParameter.display_type = shown_type  # type: ignore[method-assign]
    TyperArgument._usage_display_name = usage_name  # type: ignore[method-assign]
    TyperArgument._rich_display_name = help_name  # type: ignore[method-assign]


def _install_plain_coercion() -> None:
    """Make every typer parameter of a simple type use PlainParam."""
    original = _TyperParameter.get_runtime_param
    if getattr(original, "plain", False):
        return

    def get_runtime_param(self: _TyperParameter) -> RuntimeParam:
        descriptor = self.type_descriptor
        if self._runtime_param is None and descriptor.file_annotation is None:
            convert = converter(descriptor.annotation, descriptor.parameter_info)
            if convert is not None:
                self._runtime_param = PlainParam(
                    descriptor.parameter_info, descriptor.annotation, convert
                )
        return original(self)

    get_runtime_param.plain = True  # type: ignore[attr-defined]
    _TyperParameter.get_runtime_param = get_runtime_param  # type: ignore[method-assign]
