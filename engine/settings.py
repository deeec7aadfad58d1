"""Settings declared once: each field of a settings dataclass carries its default, its choices or rule, and its
help, and the same declaration validates the API's values and generates the command's options.

A field declared with `setting(...)` is checked by `check_settings` (called from the dataclass's
`__post_init__`) and becomes a command-line option through `add_setting_arguments`; `settings_from_arguments`
builds the dataclass back from the parsed options. So the API and the command cannot disagree on a default,
a choice list or a bound (the pattern of scikit-learn's declared parameter constraints).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import UsageError

_SETTING = "memscore_setting"


@dataclass(frozen=True)
class Rule:
    """A constraint on a number: `accepts(value)` is True for allowed values; `text` says which those are."""

    accepts: Callable[[Any], bool]
    text: str


WHOLE_POSITIVE = Rule(lambda v: isinstance(v, int) and v >= 1, "a whole number >= 1")
WHOLE_NON_NEGATIVE = Rule(lambda v: isinstance(v, int) and v >= 0, "a whole number >= 0")
FRACTION = Rule(lambda v: 0.0 < v < 1.0, "strictly between 0 and 1")
NON_NEGATIVE = Rule(lambda v: 0.0 <= v < math.inf, "a finite number >= 0")


@dataclass(frozen=True)
class Setting:
    """How one field is checked and offered on the command line."""

    help: str
    choices: tuple[Any, ...] | Callable[[], tuple[Any, ...]] | None = None
    """Allowed values (or a function giving them, for registries filled at import time)."""
    rule: Rule | None = None
    flag: str | None = None
    """The option's name when it is not `--field-name`."""
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None
    """Text -> value for the command line (default: the field's type)."""
    optional: bool = False
    """None is allowed (the field's `X | None` type)."""
    repeat: bool = False
    """The option may be given several times; the field holds the values in a tuple."""

    def allowed(self) -> tuple[Any, ...] | None:
        return self.choices() if callable(self.choices) else self.choices


def setting(default: Any, help: str, **declaration: Any) -> Any:
    """A dataclass field with its default and its `Setting` (choices, rule, flag, ...)."""
    return dataclasses.field(default=default, metadata={_SETTING: Setting(help, **declaration)})


def declared(cls: type) -> list[tuple[dataclasses.Field, Setting]]:
    """The fields of `cls` declared with `setting`, in order."""
    return [(f, f.metadata[_SETTING]) for f in dataclasses.fields(cls) if _SETTING in f.metadata]


def check_value(name: str, value: Any, spec: Setting) -> None:
    """Refuse `value` for the setting `name` unless its declaration allows it (a UsageError naming both)."""
    if value is None and spec.optional:
        return
    allowed = spec.allowed()
    if allowed is not None and value not in allowed:
        raise UsageError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")
    if spec.rule is not None and not _accepts(spec.rule, value):
        raise UsageError(f"{name} must be {spec.rule.text}; got {value!r}")


def check_settings(instance: Any) -> None:
    """Validate every declared field of a settings dataclass (call from its `__post_init__`)."""
    for field, spec in declared(type(instance)):
        check_value(field.name, getattr(instance, field.name), spec)


def option_name(field: dataclasses.Field, spec: Setting) -> str:
    return spec.flag or "--" + field.name.replace("_", "-")


def add_setting_arguments(parser: argparse.ArgumentParser, cls: type, *, required: Iterable[str] = ()) -> None:
    """One command-line option per declared field of `cls`, with the declared default, choices and rule; values
    are checked while parsing, so a bad one stops the command before anything runs."""
    required = set(required)
    for field, spec in declared(cls):
        needed = field.name in required
        flag = field.type in ("bool", bool)
        _add_option(parser, field, spec, spec.help if flag else _help(spec, field.default, needed), field.default,
                    needed)


def add_alternative_arguments(parser: argparse.ArgumentParser, alternatives: dict[str, type], selector: str) -> None:
    """The options of several settings classes of which the option `selector` (e.g. `--kind`) chooses one: each
    option once, left out of the parsed arguments unless given, so the chosen class's own default applies
    (`alternative_from_arguments`); the help gives each class's default, or the classes that take it."""
    by_name: dict[str, list[tuple[str, dataclasses.Field, Setting]]] = {}
    for kind, cls in alternatives.items():
        for field, spec in declared(cls):
            by_name.setdefault(field.name, []).append((kind, field, spec))
    for entries in by_name.values():
        _, field, spec = entries[0]
        notes = []
        if len(entries) < len(alternatives):
            notes.append(f"{selector} {' | '.join(kind for kind, _, _ in entries)} only")
        if field.type not in ("bool", bool):  # a flag's default is what its help describes
            defaults = {kind: getattr(f.default, "text", f.default) for kind, f, _ in entries}
            if len(entries) == len(alternatives) and len(set(map(str, defaults.values()))) == 1:
                notes.append(f"default: {defaults[entries[0][0]]}")
            else:
                notes.append("default " + ", ".join(f"{kind}: {value}" for kind, value in defaults.items()))
        note = "; ".join(notes)
        _add_option(parser, field, spec, f"{spec.help} ({note})" if note else spec.help, argparse.SUPPRESS, False)


def alternative_from_arguments(alternatives: dict[str, type], chosen: str, args: argparse.Namespace,
                               selector: str) -> Any:
    """The settings class `chosen` from options added by `add_alternative_arguments`; an option given that only
    the other classes take is refused, naming it."""
    mine = {field.name for field, _ in declared(alternatives[chosen])}
    others = {(field.name, option_name(field, spec)) for kind, cls in alternatives.items() if kind != chosen
              for field, spec in declared(cls) if field.name not in mine}
    given = sorted(option for name, option in others if hasattr(args, name))
    if given:
        raise UsageError(f"{', '.join(given)} does not apply to {selector} {chosen}")
    return settings_from_arguments(alternatives[chosen], args)


def _add_option(parser: argparse.ArgumentParser, field: dataclasses.Field, spec: Setting, help_text: str,
                default: Any, required: bool) -> None:
    """The option of one declared field: a flag turning a boolean default over, a repeatable option, or a
    value checked by the field's choices and rule while parsing."""
    kwargs: dict[str, Any] = {"dest": field.name, "help": help_text}
    if field.type in ("bool", bool):  # a flag that turns the default over (`--dropout`, `--no-jitter`)
        parser.add_argument(option_name(field, spec), action="store_false" if field.default else "store_true",
                            default=default, **kwargs)
        return
    if spec.repeat:
        parser.add_argument(option_name(field, spec), action="append", type=_argument_type(field, spec),
                            metavar=spec.metavar, default=[] if default is not argparse.SUPPRESS else default,
                            **kwargs)
        return
    allowed = spec.allowed()
    kwargs["type"] = _argument_type(field, spec)
    kwargs["metavar"] = spec.metavar or option_name(field, spec).lstrip("-").replace("-", "_").upper()
    if allowed is not None and spec.parse is None:
        kwargs["choices"] = allowed
        kwargs["metavar"] = None
    if required:
        kwargs["required"] = True
    else:
        kwargs["default"] = default
    parser.add_argument(option_name(field, spec), **kwargs)


def settings_from_arguments(cls: type, args: argparse.Namespace) -> Any:
    """The dataclass `cls` from parsed options (its declared fields present in `args`)."""
    return cls(**{field.name: getattr(args, field.name) for field, _ in declared(cls) if hasattr(args, field.name)})


def _help(spec: Setting, default: Any, required: bool) -> str:
    if required or default in (None, False, "", ()):
        return spec.help
    shown = getattr(default, "text", default)
    return f"{spec.help} (default: {shown})"


def _argument_type(field: dataclasses.Field, spec: Setting) -> Callable[[str], Any]:
    cast = spec.parse or {"int": int, "float": float}.get(_base_type(field), str)
    return argument_type(cast, spec.rule)


def argument_type(cast: Callable[[str], Any], rule: Rule | None = None) -> Callable[[str], Any]:
    """An argparse type: text -> `cast(text)`, which `rule` must accept; errors are argparse's (the command stops
    with one line and exit 2 before anything runs)."""
    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except UsageError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        except ValueError:
            kind = "a whole number" if cast is int else "a number" if cast is float else "a valid value"
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if rule is not None and not _accepts(rule, value):
            raise argparse.ArgumentTypeError(f"must be {rule.text}, got {text}")
        return value
    return parse


def _accepts(rule: Rule, value: Any) -> bool:
    try:
        return bool(rule.accepts(value))
    except TypeError:
        return False


def _base_type(field: dataclasses.Field) -> str:
    """`int`, `float`, `str`, ... of an annotation such as `int | None` (annotations are strings here)."""
    annotation = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    return annotation.split("|")[0].strip()
