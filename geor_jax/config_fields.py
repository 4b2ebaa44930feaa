"""Typed, validated dataclass configs, and their ml_collections sections.

Every component (optimizer, GRPO, reward, pipeline, ...) keeps its settings in
one frozen dataclass: the fields, their defaults and their checks live there
and nowhere else. ``check`` (called from the dataclass's ``__post_init__``)
coerces each value to its annotated type and runs the field's check;
``section`` turns a dataclass into the ``ConfigDict`` section that config
files and ``--config.x.y=...`` flags edit, and ``from_section`` turns a
section back into the dataclass, naming any bad field the way it is typed on
the command line (``--config.optimizer.learning_rate: must be > 0, got -1.0``).

A field's check is a function of its value that returns an error message,
or None when the value is fine::

    @dataclasses.dataclass(frozen=True)
    class OptimizerConfig:
        learning_rate: float = config_fields.field(1e-6, greater_than(0))

        def __post_init__(self):
            config_fields.check(self)
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

Check = Callable[[Any], "str | None"]
_CHECK = "check"
_EXCLUDE = "exclude"


class ConfigError(ValueError):
    """A config field holds a value its component cannot run with; the message names the field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def field(default: Any, check: Check | None = None, *, exclude: Sequence[str] = ()) -> Any:
    """A dataclass field with a ``check`` (value -> message or None).

    ``exclude`` (for a nested dataclass field): its fields that code sets
    and config files do not (e.g. a vocabulary size taken from the tokenizer).
    """
    metadata = {_CHECK: check, _EXCLUDE: tuple(exclude)}
    if dataclasses.is_dataclass(default) or isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# --- Checks -------------------------------------------------------------------------------------------


def greater_than(low: float) -> Check:
    return lambda value: None if value is None or value > low else f"must be > {low}, got {value!r}"


def at_least(low: float) -> Check:
    return lambda value: None if value is None or value >= low else f"must be >= {low}, got {value!r}"


def between(low: float, high: float) -> Check:
    """low <= value <= high."""
    return lambda value: None if value is None or low <= value <= high else \
        f"must be in [{low}, {high}], got {value!r}"


def one_of(*choices) -> Check:
    return lambda value: None if value in choices else f"{value!r} is not one of {list(choices)}"


def each(check: Check) -> Check:
    """``check`` on every element of a tuple value."""
    def check_each(values):
        for value in values or ():
            message = check(value)
            if message:
                return f"element {value!r}: {message}"
        return None

    return check_each


def all_of(*checks: Check) -> Check:
    def check_all(value):
        for check_one in checks:
            message = check_one(value)
            if message:
                return message
        return None

    return check_all


# --- Types --------------------------------------------------------------------------------------------


@functools.cache
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(annotation) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def coerce(value: Any, annotation: Any) -> Any:
    """``value`` as ``annotation`` (int, float, bool, str, X | None, tuple[...], a dataclass), or TypeError.

    Lenient only where nothing is lost: an int for a float, a list for a
    tuple, a mapping for a dataclass or for a tuple of (name, value) pairs.
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any or annotation is object:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return coerce(value, option)
            except TypeError as error:
                errors.append(str(error))
        raise TypeError(errors[0] if len(errors) == 1 else f"expected {_type_name(annotation)}, got {value!r}")
    if origin is tuple:
        if isinstance(value, Mapping) and len(args) == 2 and args[1] is Ellipsis:
            value = tuple(value.items())  # a dict for a tuple of (name, value) pairs
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise TypeError(f"expected a tuple, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0]) for v in value)
        if args and len(value) != len(args):
            raise TypeError(f"expected {len(args)} values, got {len(value)}: {tuple(value)!r}")
        return tuple(coerce(v, a) for v, a in zip(value, args)) if args else tuple(value)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if isinstance(value, (Mapping, ml_collections.ConfigDict)):
            return annotation(**dict(value))
        raise TypeError(f"expected {annotation.__name__} settings, got {value!r}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError(f"expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError(f"expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise TypeError(f"expected a string, got {value!r}")
    return value


def check(instance) -> None:
    """Coerce every field of a (frozen) dataclass instance to its type and run its check.

    Raises ``ConfigError`` naming ``<Class>.<field>``. Call from ``__post_init__``.
    """
    cls = type(instance)
    hints = _hints(cls)
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        try:
            value = coerce(value, hints[f.name])
        except ConfigError as error:  # a nested dataclass: keep its field's name
            raise ConfigError(f"{cls.__name__}.{f.name}.{error.field.split('.', 1)[-1]}", error.message) from None
        except TypeError as error:
            raise ConfigError(f"{cls.__name__}.{f.name}", str(error)) from None
        object.__setattr__(instance, f.name, value)
        message = (f.metadata.get(_CHECK) or (lambda _: None))(value)
        if message:
            raise ConfigError(f"{cls.__name__}.{f.name}", message)


# --- Sections -----------------------------------------------------------------------------------------


def _is_pairs(annotation) -> bool:
    """Whether ``annotation`` is ``tuple[tuple[str, X], ...]`` (keyword arguments as pairs)."""
    args = typing.get_args(annotation)
    return (typing.get_origin(annotation) is tuple and len(args) == 2 and args[1] is Ellipsis
            and typing.get_origin(args[0]) is tuple and typing.get_args(args[0])[:1] == (str,))


def _section_value(value: Any, annotation: Any):
    """A field's default as a ConfigDict entry: (name, value) pairs become a dict, None a typed
    placeholder the command line can set."""
    if _is_pairs(annotation):
        return dict(value)
    if value is None:
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        base = typing.get_origin(options[0]) or options[0] if options else object
        return ml_collections.config_dict.placeholder(base if isinstance(base, type) else object)
    return value


def section(cls_or_instance, exclude: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The ConfigDict of a dataclass's fields and defaults (nested dataclasses become nested sections)."""
    instance = cls_or_instance if not isinstance(cls_or_instance, type) else cls_or_instance()
    hints = _hints(type(instance))
    out = ml_collections.ConfigDict()
    for f in dataclasses.fields(instance):
        if f.name in exclude:
            continue
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = section(value, f.metadata.get(_EXCLUDE, ()))
        else:
            out[f.name] = _section_value(value, hints[f.name])
    return out


def from_section(cls, values, path: str, exclude: Sequence[str] = (), **fixed):
    """``cls`` built from a ConfigDict section (or mapping) at ``--config.<path>``, validated.

    ``fixed``: values for fields the section does not carry (``exclude``d
    ones). Unknown keys and bad values raise ``ConfigError`` naming
    ``--config.<path>.<field>``; missing keys take the dataclass defaults.
    """
    values = values.to_dict() if isinstance(values, ml_collections.ConfigDict) else dict(values or {})
    prefix = f"--config.{path}." if path else "--config."
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names or key in exclude:
            known = sorted(n for n in names if n not in exclude)
            raise ConfigError(f"{prefix}{key}", f"is not a setting of {path or 'the config'} (known: {known})")
    hints = _hints(cls)
    kwargs = dict(fixed)
    for key, value in values.items():
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation) and isinstance(value, Mapping):
            value = from_section(annotation, value, f"{prefix[len('--config.'):]}{key}",
                                 names[key].metadata.get(_EXCLUDE, ()))
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except ConfigError as error:
        if error.field.startswith("--config."):
            raise
        name = error.field.split(".", 1)[1] if "." in error.field else error.field  # drop "<Class>."
        raise ConfigError(f"{prefix}{name}", error.message) from None
