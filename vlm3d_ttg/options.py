"""Options declared once: a dataclass field carries its command-line flag, help and parsing, and the
CLI (typer) and the benchmark (argparse) derive their flags from it.

    @dataclass
    class GuidanceConfig:
        scale: float = option(0.03, "Guidance strength λ (see --step-norm).", flag="--scale", aliases=("--lambda",))

    typer_parameters(GuidanceConfig)            # inspect.Parameters with typer.Option defaults
    from_values(GuidanceConfig, values)         # {field: CLI value} → a GuidanceConfig
    add_argparse_options(group, GuidanceConfig) # the same flags on an argparse group
    from_namespace(GuidanceConfig, args, defaults)

Validation is not here: each dataclass's own `validate()` is the one validation path, run by the
CLI and the benchmark before any model loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

@dataclass(frozen=True)
class Option:
    """How one dataclass field appears on a command line.

    flag: the long flag (default: --field-name). aliases: more flags for the same option.
    parse: command-line value → field value (e.g. "0.2,0.85" → (0.2, 0.85); 0 → None).
    show: field default → command-line default (the inverse of `parse`).
    cli_type: the type the command line reads (default: the type of the field's default).
    negative: for a boolean, the flag that sets it to False (e.g. --no-guidance).
    minimum, maximum: the range a number accepts, for forms that show it (the app's widgets); the
    dataclass's `validate()` still decides, and tests/test_app_cli.py checks the two agree.
    """

    help: str
    flag: str | None = None
    aliases: tuple[str, ...] = ()
    parse: Callable[[Any], Any] | None = None
    show: Callable[[Any], Any] | None = None
    cli_type: type | None = None
    negative: str | None = None
    minimum: float | None = None
    maximum: float | None = None


def option(default: Any, help: str, **spec: Any) -> Any:
    """A dataclass field with `default` whose command-line form is described by `Option(help, **spec)`."""
    return dataclasses.field(default=default, metadata={"option": Option(help=help, **spec)})


def declared(cls: type) -> list[tuple[dataclasses.Field, Option]]:
    """The fields of dataclass `cls` that declare a command-line option, in declaration order."""
    return [(f, f.metadata["option"]) for f in dataclasses.fields(cls) if "option" in f.metadata]


def flag_of(field: dataclasses.Field, spec: Option) -> str:
    """The main flag of a field (--field-name unless declared)."""
    return spec.flag or "--" + field.name.replace("_", "-")


def cli_default(field: dataclasses.Field, spec: Option) -> Any:
    """The field's default as the command line shows it."""
    return spec.show(field.default) if spec.show is not None else field.default


def value_type(field: dataclasses.Field, spec: Option) -> type:
    """The type of the field's command-line value (bool, int, float or str): what a form shows."""
    return _cli_type(field, spec)


def _cli_type(field: dataclasses.Field, spec: Option) -> type:
    if spec.cli_type is not None:
        return spec.cli_type
    default = cli_default(field, spec)
    return type(default) if default is not None else str


def _help(field: dataclasses.Field, spec: Option) -> str:
    return spec.help + f"  [{field.name}]"


class Checks:
    """The validation helpers every options dataclass's `validate()` uses (one set, not one per class).

    Each raises InvalidInputError "<prefix>: <message>", the message naming the field's flag
    (`name_the_flag`), so CLI and API users both recognise the option.
    """

    def __init__(self, options: Any, prefix: str):
        self.options, self.prefix = options, prefix

    def bad(self, message: str) -> None:
        """Refuse: `message` starts with the field's name."""
        from .errors import InvalidInputError

        raise InvalidInputError(f"{self.prefix}: {name_the_flag(type(self.options), message)}")

    def number(self, name: str, *, integer: bool = False) -> Any:
        """The field's value, refused unless it is a finite number (an integer with `integer`; never a bool)."""
        value = getattr(self.options, name)
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            self.bad(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
        if not math.isfinite(value):
            self.bad(f"{name} must be finite, got {value}")
        return value

    def integer(self, name: str) -> int:
        """The field's value, refused unless it is an integer (not a bool)."""
        return self.number(name, integer=True)

    def boolean(self, name: str) -> bool:
        """The field's value, refused unless it is True or False."""
        value = getattr(self.options, name)
        if not isinstance(value, bool):
            self.bad(f"{name} must be True or False, got {value!r}")
        return value


def option_help(cls: type, name: str) -> str:
    """The help text declared for field `name` of `cls` (for a command that takes that option with its own signature)."""
    for field, spec in declared(cls):
        if field.name == name:
            return _help(field, spec)
    raise KeyError(f"{cls.__name__} declares no option {name!r}")


def name_the_flag(cls: type, message: str) -> str:
    """A validation message that starts with a field name, with that field's flag added after it
    ('steps must be ≥ 2' → 'steps (--steps) must be ≥ 2'), so CLI and API users both recognise it."""
    head, _, rest = message.partition(" ")
    for field, spec in declared(cls):
        if head == field.name:
            return f"{head} ({flag_of(field, spec)}) {rest}"
    return message


def typer_parameters(cls: type, *, exclude: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """Keyword parameters (typer.Option defaults) for every declared field of `cls`, for a typer command's signature."""
    import typer

    parameters = []
    for field, spec in declared(cls):
        if field.name in exclude:
            continue
        kind = _cli_type(field, spec)
        if kind is bool:
            decl = f"{flag_of(field, spec)}/{spec.negative}" if spec.negative else flag_of(field, spec)
            info = typer.Option(field.default, decl, help=_help(field, spec))
        else:
            info = typer.Option(cli_default(field, spec), flag_of(field, spec), *spec.aliases, help=_help(field, spec))
        parameters.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=kind))
    return parameters


def from_values(cls: type, values: dict[str, Any], **fixed: Any) -> Any:
    """An instance of `cls` from command-line values keyed by field name (others keep their defaults).
    A value of the wrong kind for its flag (a number where text like '0.2,0.85' goes: an API caller's
    JSON) raises InvalidInputError naming the flag, as the command line would."""
    kwargs = dict(fixed)
    for field, spec in declared(cls):
        if field.name in values and field.name not in kwargs:
            value = values[field.name]
            check_value_kind(field, spec, value)
            kwargs[field.name] = spec.parse(value) if spec.parse is not None else value
    return cls(**kwargs)


def check_value_kind(field: dataclasses.Field, spec: Option, value: Any) -> None:
    """Raise InvalidInputError when `value` is not of the flag's command-line kind (text for text options,
    a number for numbers, true/false for switches; None for options whose default is None)."""
    from .errors import InvalidInputError

    kind = _cli_type(field, spec)
    if value is None and field.default is None:
        return
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str)}.get(kind, lambda v: True)(value)
    if not ok:
        what = {bool: "true or false", int: "an integer", float: "a number", str: "text"}[kind]
        example = f" like {cli_default(field, spec)!r}" if kind is str and cli_default(field, spec) is not None else ""
        raise InvalidInputError(f"Invalid value for '{flag_of(field, spec)}' ({field.name}): expected {what}{example}, "
                                f"got {type(value).__name__} {value!r}.")


def add_argparse_options(group: Any, cls: type, *, exclude: tuple[str, ...] = (), default_note: dict[str, str] | None = None) -> None:
    """The declared options of `cls` on an argparse parser/group; options not given stay out of the
    namespace (see from_namespace)."""
    notes = default_note or {}
    for field, spec in declared(cls):
        if field.name in exclude:
            continue
        kind = _cli_type(field, spec)
        shown = notes.get(field.name, repr(cli_default(field, spec)))
        help_text = f"{_help(field, spec)} (default: {shown})"
        if kind is bool:
            group.add_argument(flag_of(field, spec), dest=field.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            # SUPPRESS: an option not given is absent from the namespace (and from "default: None" in help).
            group.add_argument(flag_of(field, spec), *spec.aliases, dest=field.name, type=kind,
                               default=argparse.SUPPRESS, help=help_text)


def from_namespace(cls: type, args: argparse.Namespace, *, defaults: dict[str, Any] | None = None, **fixed: Any) -> Any:
    """An instance of `cls` from parsed argparse options: given values, else `defaults` (field values,
    e.g. a preset's), else the dataclass defaults."""
    kwargs = dict(fixed)
    for field, spec in declared(cls):
        if field.name in kwargs:
            continue
        value = getattr(args, field.name, None)
        if value is not None:
            kwargs[field.name] = spec.parse(value) if spec.parse is not None else value
        elif defaults and field.name in defaults:
            kwargs[field.name] = defaults[field.name]
    return cls(**kwargs)


__all__ = ["Option", "add_argparse_options", "cli_default", "declared", "flag_of", "from_namespace", "from_values",
           "name_the_flag", "option", "typer_parameters", "value_type"]
