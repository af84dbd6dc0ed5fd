"""Every field of a configuration, declared once: type, allowed values, default, meaning, when it acts.

A field of :class:`cerberus.config.Arch`, :class:`~cerberus.config.Recipe` or
:class:`~cerberus.config.Augment` is a dataclass field made by :func:`knob`; its type is the
annotation. Everything that speaks of fields reads that one declaration:

* :func:`check` validates an instance (each ``__post_init__`` calls it), whatever its source:
  a space file, ``--config``, ``--enqueue``, a stored trial;
* :func:`build` rebuilds one from JSON-shaped data, refusing unknown, missing or mistyped keys;
* :mod:`cerberus.space` parses a space file's values with :func:`coerce` and each field's
  ``allowed``, and samples a field only where it ``acts`` (fields are sampled in declaration
  order, so a field that others depend on is declared before them);
* :func:`summary` is the one-line configuration of ``best`` and ``report``, and
  :mod:`cerberus.reference` writes the options reference from the same declarations.

Every failure is a ValueError whose message names the field and what it allows.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


class Allowed(Protocol):
    def ok(self, value: Any) -> bool: ...

    def words(self, kind: type) -> str: ...


@dataclass(frozen=True)
class Interval:
    """Numbers between ``low`` and ``high`` (None: unbounded), each end closed unless ``open_*``."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def ok(self, value: Any) -> bool:
        if self.low is not None and (value < self.low or self.open_low and value == self.low):
            return False
        return not (self.high is not None and (value > self.high or self.open_high and value == self.high))

    def words(self, kind: type) -> str:
        noun = "integers" if kind is int else "numbers"
        low, high = self.low, self.high
        if low is not None and high is not None:
            if kind is int:
                return f"integers {low:g}..{high:g}"
            return f"numbers in {'(' if self.open_low else '['}{low:g}, {high:g}{')' if self.open_high else ']'}"
        if low is not None:
            return f"{noun} {'>' if self.open_low else '>='} {low:g}"
        if high is not None:
            return f"{noun} {'<' if self.open_high else '<='} {high:g}"
        return noun


@dataclass(frozen=True)
class OneOf:
    values: tuple[Any, ...]
    note: str = ""  # said after the choices, e.g. "(0: global)"

    def ok(self, value: Any) -> bool:
        return any(value == v and type(value) is type(v) for v in self.values)

    def words(self, kind: type) -> str:
        names = ["true" if v is True else "false" if v is False else str(v) for v in self.values]
        shown = " or ".join(names) if len(names) == 2 else ", ".join(names)
        return f"{shown} {self.note}".strip()


@dataclass(frozen=True)
class Increasing:
    """A non-empty, strictly increasing list whose items ``each`` allows; ``text`` says so."""

    each: Interval
    text: str

    def ok(self, value: Any) -> bool:
        return bool(value) and all(self.each.ok(v) for v in value) and list(value) == sorted(set(value))

    def words(self, kind: type) -> str:
        return self.text


@dataclass(frozen=True)
class Rule:
    """Values that ``test`` accepts, described by ``text``."""

    test: Callable[[Any], bool]
    text: str

    def ok(self, value: Any) -> bool:
        return self.test(value)

    def words(self, kind: type) -> str:
        return self.text


BOOL = OneOf((True, False))


class Acts(Protocol):
    """When a field matters, given the values already chosen for the fields declared before it."""

    def __call__(self, name: str, chosen: Mapping[str, Any]) -> bool: ...

    def words(self, name: str) -> str: ...


class Always:
    def __call__(self, name: str, chosen: Mapping[str, Any]) -> bool:
        return True

    def words(self, name: str) -> str:
        return "always"


ALWAYS = Always()


@dataclass(frozen=True)
class When:
    """Acts when field ``key`` passes ``test``; ``says`` is the condition in words."""

    key: str
    test: Callable[[Any], bool]
    says: str

    def __call__(self, name: str, chosen: Mapping[str, Any]) -> bool:
        return self.test(chosen[self.key])

    def words(self, name: str) -> str:
        return f"when {self.says}"


@dataclass(frozen=True)
class ReadBy:
    """Acts when the entry that field ``key`` names in ``registry`` (an optimizer, a schedule)
    lists the field among the ones it ``reads``."""

    key: str
    registry: Mapping[str, Any]

    def __call__(self, name: str, chosen: Mapping[str, Any]) -> bool:
        return name in self.registry[chosen[self.key]].reads

    def words(self, name: str) -> str:
        users = [n for n, entry in self.registry.items() if name in entry.reads]
        return f"when {self.key} is {', '.join(users)}"


@dataclass(frozen=True)
class Spec:
    doc: str  # one line of meaning
    allowed: Allowed
    acts: Acts = ALWAYS
    shown: bool = False  # always in the one-line summary, even at its default
    per_stage: bool = False  # a tuple of one value per stage (Arch.blocks, Arch.widths); ``allowed`` is per value
    # how long it trains or how it is scored, not what it is: a search's to set (epochs, budget,
    # test-time views), so a configuration enqueued into a space keeps the space's
    fidelity: bool = False


def knob(default: Any, doc: str, allowed: Allowed, acts: Acts = ALWAYS, shown: bool = False,
         per_stage: bool = False, fidelity: bool = False) -> Any:
    """A dataclass field with its :class:`Spec`; ``dataclasses.MISSING`` makes it required."""
    spec = Spec(doc, allowed, acts, shown, per_stage, fidelity)
    return dataclasses.field(default=default, metadata={"knob": spec})


@dataclass(frozen=True)
class Field:
    name: str
    kind: Any  # bool, int, float, str, or tuple[X, ...]
    spec: Spec
    default: Any  # dataclasses.MISSING for a required field

    @property
    def item(self) -> type:
        """The type of one value: the field's own, or that of a tuple's items."""
        return typing.get_args(self.kind)[0] if typing.get_origin(self.kind) is tuple else self.kind

    def allowed_words(self) -> str:
        return self.spec.allowed.words(self.item)


@functools.cache
def fields(cls: type) -> list[Field]:
    """The declared fields of ``cls`` in declaration order (nested dataclasses left out)."""
    hints = typing.get_type_hints(cls)
    return [Field(f.name, hints[f.name], f.metadata["knob"], f.default)
            for f in dataclasses.fields(cls) if "knob" in f.metadata]


def field(cls: type, name: str) -> Field:
    return next(f for f in fields(cls) if f.name == name)


def check(obj: Any, table: str) -> None:
    """Validate every declared field of ``obj`` (ValueError naming ``table.field``), after
    taking an integer for a float field and a list for a tuple, as a frozen dataclass's
    ``__post_init__`` may."""
    for f in fields(type(obj)):
        value = getattr(obj, f.name)
        where = f"{table}.{f.name}"
        if isinstance(value, list):
            value = tuple(value)
        if f.item is float:
            value = tuple(_float(v) for v in value) if isinstance(value, tuple) else _float(value)
        object.__setattr__(obj, f.name, value)
        if typing.get_origin(f.kind) is tuple:
            if not isinstance(value, tuple):
                raise ValueError(f"{where}: expected a list, got {value!r}")
            items = value if f.spec.per_stage else [value]
            for v in value:
                _check_type(f.item, v, where)
        else:
            _check_type(f.kind, value, where)
            items = [value]
        for v in items:
            if not f.spec.allowed.ok(v):
                shown = list(v) if isinstance(v, tuple) else v
                raise ValueError(f"{where} = {_show(shown)} is not allowed; allowed: {f.allowed_words()}")


def _float(value: Any) -> Any:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _check_type(kind: type, value: Any, where: str) -> None:
    if kind is float:
        good = isinstance(value, float) and math.isfinite(value)
    elif kind is int:
        good = isinstance(value, int) and not isinstance(value, bool)
    else:
        good = isinstance(value, kind)
    if not good:
        raise ValueError(f"{where}: expected {_noun(kind)}, got {value!r}")


def _noun(kind: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(kind, kind.__name__)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def coerce(kind: Any, value: Any, where: str) -> Any:
    """``value`` as read from JSON or TOML, turned into ``kind`` (an int is a float where a
    float is wanted, a list a tuple); a value of another type is a ValueError naming ``where``."""
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        item = typing.get_args(kind)[0]
        return tuple(coerce(item, v, where) for v in value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{where}: expected {_noun(kind)}, got {value!r}")
    return value


def build(cls: type, data: Any, where: str) -> Any:
    """Rebuild dataclass ``cls`` from JSON-shaped ``data``, refusing unknown or mistyped keys
    (ValueError); nested dataclass fields are rebuilt the same way."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(names))}")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{where}: missing key {missing[0]!r}; required: {', '.join(required)}")
    values = {}
    for key, value in data.items():
        hint = hints[key]
        values[key] = build(hint, value, f"{where}.{key}") if dataclasses.is_dataclass(hint) else coerce(hint, value, f"{where}.{key}")
    return cls(**values)


def acting(cls: type, values: Mapping[str, Any]) -> Iterator[tuple[Field, bool]]:
    """Each declared field of ``cls`` with whether it acts, given ``values`` (every field's)."""
    for f in fields(cls):
        yield f, f.spec.acts(f.name, values)


def canonical(obj: Any) -> Any:
    """``obj`` with every field that does not act at its default (momentum under adamw, ...)."""
    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    changes = {f.name: f.default for f, acts in acting(type(obj), values) if not acts and f.default is not dataclasses.MISSING}
    nested = {k: canonical(v) for k, v in values.items() if dataclasses.is_dataclass(v)}
    return dataclasses.replace(obj, **changes, **nested)


def summary(obj: Any) -> list[str]:
    """The fields of ``obj`` worth a glance, as short words: those that act and differ from their
    default, and those declared ``shown``. A true flag is its name, a list is comma-joined,
    a number has 3 significant digits; nested dataclasses follow their parent."""
    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    words = []
    for f, acts in acting(type(obj), values):
        value = values[f.name]
        if acts and (f.spec.shown or value != f.default):
            words.append(f.name if value is True else f"{f.name} {_short(value)}")
    for value in values.values():
        if dataclasses.is_dataclass(value):
            words += summary(value)
    return words


def _short(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(_short(v) for v in value)
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
