"""Options declared once: a dataclass field carries its command-line flag, help and parsing, and the
CLI (typer) and the benchmark (argparse) derive their flags from it.

    @dataclass
    class GuidanceConfig:
        scale: float = option(0.03, "Guidance strength λ (see --step-norm).", flag="--scale", aliases=("--lambda",))

    typer_parameters(GuidanceConfig)            # inspect.Parameters with typer.Option defaults
    from_values(GuidanceConfig, values)         # {field: CLI value} → a GuidanceConfig
    add_argparse_options(group, GuidanceConfig) # the same flags on an argparse group
    from_namespace(GuidanceConfig, args, defaults)

A number's range is declared here too, once, on its option (`minimum`/`maximum`, exclusive
`above`/`below`, `why` when the maximum is a sane bound): each dataclass's `validate()` checks the
declared kinds, choices and ranges with `Checks.declared()` (then its own rules across fields), the
app's widgets read `minimum`/`maximum`, the sampler checks its Python arguments with `range_problem`,
and the preflight lists the sane bounds (`preflight.SANE_BOUNDS`, docs/bad_inputs.md). `validate()` is
the one validation path, run by the CLI, the app and the benchmark before any model loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import math
import typing
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
    minimum, maximum: the inclusive range a number accepts (None: open); the app's widgets show it.
    above, below: exclusive ends (σ in (0, 1]: above=0, maximum=1).
    why: set when `maximum` is a sane bound rather than the end of what the value means: beyond it a
    value is a typo or an attack, whatever the machine (docs/bad_inputs.md lists them).
    note: a word on the range that refusals add ("1 is the plain sampler").
    Whether the number is an integer is its command-line type (`value_type`).
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
    above: float | None = None
    below: float | None = None
    why: str | None = None
    note: str | None = None


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
    """The help a command line shows: the declared text, the declared range, the field's name."""
    limits = ", ".join(part for part in (span(spec), f"≤ {_show(spec.maximum)}" if spec.why else "") if part)
    return spec.help + (f" Range: {limits}." if limits else "") + f"  [{field.name}]"


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

    def declared(self) -> None:
        """Refuse the first declared field whose value is not of its kind (a switch True/False, a number
        finite and inside its declared range, a Literal one of its choices)."""
        cls = type(self.options)
        for field, spec in declared(cls):
            value, kind = getattr(self.options, field.name), _cli_type(field, spec)
            if kind is bool:
                self.boolean(field.name)
            elif kind in (int, float):
                problem = range_problem(field, spec, value, none_allowed=_allows_none(field))
                if problem:
                    self.bad(problem)
            elif _choices(cls, field.name) and value not in _choices(cls, field.name):
                self.bad(f"{field.name} must be {_one_of(_choices(cls, field.name))}, got {value!r}")

    def boolean(self, name: str) -> bool:
        """The field's value, refused unless it is True or False."""
        value = getattr(self.options, name)
        if not isinstance(value, bool):
            self.bad(f"{name} must be True or False, got {value!r}")
        return value


def _show(number: float) -> str:
    if isinstance(number, int) and number >= 2**32 and number & (number - 1) == 0:
        return f"2^{number.bit_length() - 1}"
    return f"{number:g}" if isinstance(number, float) else str(number)


def _one_of(choices: tuple) -> str:
    words = [str(choice) for choice in choices]
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _choices(cls: type, name: str) -> tuple:
    hint = _hints(cls).get(name)
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()


def _allows_none(field: dataclasses.Field) -> bool:
    """Whether the field's annotation admits None (`int | None`: None means 'the default')."""
    return "None" in str(field.type)


def span(spec: Option) -> str:
    """The declared range in words, without a sane bound: '≥ 2', '> 0', 'in (0, 1]', '' when open."""
    low = ("[", spec.minimum) if spec.minimum is not None else ("(", spec.above) if spec.above is not None else None
    top = None if spec.why else ("]", spec.maximum) if spec.maximum is not None else (")", spec.below) if spec.below is not None else None
    if low and top:
        return f"in {low[0]}{_show(low[1])}, {_show(top[1])}{top[0]}"
    if low:
        return f"{'≥' if low[0] == '[' else '>'} {_show(low[1])}"
    if top:
        return f"{'≤' if top[0] == ']' else '<'} {_show(top[1])}"
    return ""


def range_problem(field: dataclasses.Field, spec: Option, value: Any, *, name: str | None = None,
                  say_kind: bool = False, none_allowed: bool = False) -> str | None:
    """What is wrong with `value` for a numeric option (None when nothing is): 'steps must be ≥ 2, got 1',
    'seed must be an integer in [0, 2^64), got -1', or past a sane bound 'steps must be ≤ 1000 (a sane
    bound: …; docs/bad_inputs.md), got 5000'. `name` replaces the field's name (an API argument's own);
    `say_kind` names the kind even for a value of the right kind (an API boundary); `none_allowed`: None passes."""
    if value is None and none_allowed:
        return None
    name = name or field.name
    integer = _cli_type(field, spec) is int
    kind = "an integer" if integer else "a finite number"
    where = span(spec)
    note = f" ({spec.note})" if spec.note else ""
    or_none = " or None" if none_allowed and say_kind else ""
    right_kind = (not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
                  and (isinstance(value, int) or math.isfinite(value)))  # (an int of any size is finite)
    inside = right_kind and ((spec.minimum is None or value >= spec.minimum) and (spec.above is None or value > spec.above)
                             and (spec.why or spec.maximum is None or value <= spec.maximum)
                             and (spec.below is None or value < spec.below))
    if not inside:
        said = f"{kind} {where}".strip() if say_kind or not right_kind else where
        return f"{name} must be {said}{note}{or_none}, got {value!r}"
    if spec.why and value > spec.maximum:
        return f"{name} must be ≤ {_show(spec.maximum)} (a sane bound: {spec.why}; docs/bad_inputs.md), got {value}"
    return None


def declared_option(cls: type, name: str) -> tuple[dataclasses.Field, Option]:
    """The field `name` of `cls` and its declared option (KeyError if it declares none)."""
    for field, spec in declared(cls):
        if field.name == name:
            return field, spec
    raise KeyError(f"{cls.__name__} declares no option {name!r}")


def option_help(cls: type, name: str) -> str:
    """The help text declared for field `name` of `cls` (for a command that takes that option with its own signature)."""
    return _help(*declared_option(cls, name))


def name_the_flag(cls: type, message: str) -> str:
    """A validation message that starts with a field name, with that field's flag added after it
    ('steps must be ≥ 2' → 'steps (--steps) must be ≥ 2'), so CLI and API users both recognise it."""
    head, _, rest = message.partition(" ")
    for field, spec in declared(cls):
        if head == field.name:
            return f"{head} ({flag_of(field, spec)}) {rest}"
    return message


def typer_parameters(cls: type, *, exclude: tuple[str, ...] = (), only: tuple[str, ...] | None = None,
                     flags: dict[str, tuple[str, ...]] | None = None) -> list[inspect.Parameter]:
    """Keyword parameters (typer.Option defaults) for every declared field of `cls` (or those in `only`), for a
    typer command's signature. `flags` gives a field other flags on this command ({name: (flag, *aliases)})."""
    import typer

    parameters = []
    for field, spec in declared(cls):
        if field.name in exclude or (only is not None and field.name not in only):
            continue
        kind = _cli_type(field, spec)
        names = (flags or {}).get(field.name) or (flag_of(field, spec), *spec.aliases)
        if kind is bool:
            decl = f"{flag_of(field, spec)}/{spec.negative}" if spec.negative else flag_of(field, spec)
            info = typer.Option(field.default, decl, help=_help(field, spec))
        else:
            info = typer.Option(cli_default(field, spec), *names, help=_help(field, spec))
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


__all__ = ["Option", "add_argparse_options", "cli_default", "declared", "declared_option", "flag_of", "from_namespace",
           "from_values", "name_the_flag", "option", "range_problem", "span", "typer_parameters", "value_type"]
