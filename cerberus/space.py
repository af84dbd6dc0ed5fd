"""Search-space files: TOML in, a validated :class:`Space` out, a :class:`Config` per trial.

A space file has three tables, ``[arch]``, ``[recipe]`` and ``[augment]``, whose keys are the
fields of :class:`~cerberus.config.Arch`, :class:`~cerberus.config.Recipe` and
:class:`~cerberus.config.Augment` (each declared once, in :mod:`cerberus.config`; the options
reference lists them). Each value is one of::

    epochs = 30                                  # fixed
    optimizer = ["nesterov", "adamw"]            # one of these (categorical)
    lr = { low = 0.01, high = 0.4, log = true }  # a range; int fields take an optional step

``[arch]`` speaks per stage: ``stages`` is how many, ``blocks`` and ``widths`` apply to every
stage, and ``blocks_2`` / ``widths_2`` override stage 2 (stages count from 1). A list-valued
field (``milestones``) is fixed when written as one list and a choice when written as a list
of lists. Keys a file leaves out take their declared defaults, except ``stages``, ``blocks``
and ``widths``, which every file must cover.

The Optuna parameter of a key has the key's name (``lr``, ``blocks_2``), and a key is only
sampled where it acts (its declaration says when: ``momentum`` under the optimizers that read
it, ``cutout_length`` when there are cutout holes, ...), in declaration order.
Every violation is a :class:`~cerberus.errors.UserError` naming the file, the table, the key
and what is allowed. :func:`sample_archs` and :func:`rejected_fraction` tell how much of a
space a parameter budget rejects.
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import optuna

from cerberus import knobs, size
from cerberus.config import MAX_BLOCKS, MAX_STAGES, TABLES, Arch, Augment, Config, Recipe
from cerberus.errors import UserError, read_text
from cerberus.knobs import Interval

Scalar = Union[bool, int, float, str, tuple]


@dataclass(frozen=True)
class Fixed:
    value: Scalar

    def sample(self, trial: optuna.Trial, name: str) -> Scalar:
        return self.value

    def values(self) -> list[Scalar]:
        return [self.value]


@dataclass(frozen=True)
class Choice:
    options: tuple[Scalar, ...]

    def sample(self, trial: optuna.Trial, name: str) -> Scalar:
        if isinstance(self.options[0], tuple):  # Optuna's categoricals hold scalars only
            labels = [",".join(map(str, o)) for o in self.options]
            return self.options[labels.index(trial.suggest_categorical(name, labels))]
        return trial.suggest_categorical(name, list(self.options))

    def values(self) -> list[Scalar]:
        return list(self.options)


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False
    step: int | None = None
    integer: bool = False

    def sample(self, trial: optuna.Trial, name: str) -> Scalar:
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), step=self.step or 1, log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def values(self) -> list[Scalar]:
        """Every value of an integer range (a float range only has its ends)."""
        if self.integer:
            return list(range(int(self.low), int(self.high) + 1, self.step or 1))
        return [self.low, self.high]


Dim = Union[Fixed, Choice, Range]
# `stages` is the one key that is not a field: how many entries the per-stage fields get.
STAGES = knobs.Field("stages", int, knobs.Spec("how many stages", Interval(1, MAX_STAGES)), dataclasses.MISSING)


@dataclass(frozen=True)
class Space:
    """A validated search space. ``sample(trial)`` turns one Optuna trial into a Config."""

    path: str
    arch: dict[str, Dim]
    recipe: dict[str, Dim]
    augment: dict[str, Dim]

    def sample(self, trial: optuna.Trial) -> Config:
        stages = self.arch["stages"].sample(trial, "stages")
        per_stage = {f.name: tuple(self._stage_dim(f.name, i).sample(trial, f"{f.name}_{i}") for i in range(1, stages + 1))
                     for f in knobs.fields(Arch) if f.spec.per_stage}
        arch = Arch(**_sample_fields(trial, Arch, self.arch, per_stage))
        recipe = _sample_fields(trial, Recipe, self.recipe, {})
        augment = Augment(**_sample_fields(trial, Augment, self.augment, {}))
        return Config(arch, Recipe(**recipe, augment=augment))

    def params_for(self, config: Config) -> dict[str, Any]:
        """The Optuna parameters under which ``sample`` returns ``config`` (its fidelity fields
        aside, its length and test-time views: those stay the space's, so an enqueued
        configuration trains and is scored as every trial of the search is).

        This is what ``study.enqueue_trial`` needs to put a known configuration into a study
        as an ordinary trial the sampler learns from. A configuration the space cannot produce
        (a value outside a range or a choice, or a key the space pins to something else) is a
        UserError naming the key and what the space allows.
        """
        a, r = config.arch, config.recipe
        wanted: dict[str, Any] = {"stages": len(a.blocks)}
        for f in knobs.fields(Arch):
            if f.spec.per_stage:
                wanted.update({f"{f.name}_{i}": v for i, v in enumerate(getattr(a, f.name), 1)})
        for table in (a, r, r.augment):
            wanted.update({f.name: getattr(table, f.name) for f in knobs.fields(type(table)) if not f.spec.per_stage})
        # Choice.sample asks for tuples (milestones) by their label
        wanted = {k: ",".join(map(str, v)) if isinstance(v, tuple) else v for k, v in wanted.items()}
        trial = _Replay(self.path, wanted)
        sampled = self.sample(trial)  # type: ignore[arg-type]
        fidelity = {f.name: getattr(config.recipe, f.name) for f in knobs.fields(Recipe) if f.spec.fidelity}
        got = dataclasses.replace(sampled, recipe=dataclasses.replace(sampled.recipe, **fidelity))
        mine, theirs = knobs.canonical(config), knobs.canonical(got)
        if mine != theirs:
            key, want, pinned = _first_difference(mine.to_dict(), theirs.to_dict())
            raise UserError(f"{self.path} cannot express this configuration: {key} = {want!r}, the space pins {pinned!r}")
        return trial.params

    def architectures(self) -> Iterator[Arch]:
        """The corner architectures: fewest blocks and narrowest widths per stage, for every
        stage count and every value of the other arch keys (those a budget or a map size
        depends on). The smallest architecture of the space is among them."""
        others = [f.name for f in knobs.fields(Arch) if not f.spec.per_stage]
        for stages in self.arch["stages"].values():
            smallest = {f.name: tuple(min(self._stage_dim(f.name, i).values()) for i in range(1, stages + 1))
                        for f in knobs.fields(Arch) if f.spec.per_stage}
            dims = [self.arch[k].values() if k in self.arch else [knobs.field(Arch, k).default] for k in others]
            for values in itertools.product(*dims):
                try:
                    yield Arch(**smallest, **dict(zip(others, values)))
                except ValueError:  # a pool larger than this stage count's last map: never sampled with it
                    continue

    def _stage_dim(self, key: str, stage: int) -> Dim:
        return self.arch.get(f"{key}_{stage}", self.arch.get(key))  # type: ignore[return-value]


def _sample_fields(trial: optuna.Trial, cls: type, dims: dict[str, Dim], given: dict[str, Any]) -> dict[str, Any]:
    """The declared fields of ``cls``, in declaration order: ``given``'s value, else sampled from
    its dim where it acts, else the file's fixed value or the declared default."""
    chosen: dict[str, Any] = {}
    for f in knobs.fields(cls):
        if f.name in given:
            chosen[f.name] = given[f.name]
            continue
        dim = dims.get(f.name)
        if dim is not None and f.spec.acts(f.name, chosen):
            chosen[f.name] = dim.sample(trial, f.name)
        elif isinstance(dim, Fixed):
            chosen[f.name] = dim.value
        else:
            chosen[f.name] = f.default
    return chosen


def load(path: str | Path) -> Space:
    """Read and validate a space file; every problem is a UserError naming file, table and key."""
    return parse(read_text(Path(path), f"space file {path}"), str(path))


def parse(text: str, name: str) -> Space:
    """Validate the TOML ``text`` of a space (a file's, or the copy a study stores); ``name``
    is what every UserError calls it."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{name}: not valid TOML: {e}") from None
    unknown = sorted(set(raw) - set(TABLES))
    if unknown:
        raise UserError(f"{name}: unknown table [{unknown[0]}]; allowed: [arch], [recipe], [augment]")
    tables = {}
    for table, cls in TABLES.items():
        entries = raw.get(table, {})
        if not isinstance(entries, dict):
            raise UserError(f"{name}: {table} must be a table ([{table}]), got a {type(entries).__name__}")
        tables[table] = _parse_table(entries, cls, f"{name}: [{table}]")
    arch = tables["arch"]
    if "stages" not in arch:
        raise UserError(f"{name}: [arch] stages: missing; give the number of stages, e.g. stages = [3, 4]")
    _check_arch(arch, name)
    return Space(name, arch, tables["recipe"], tables["augment"])


def _parse_table(entries: dict[str, Any], cls: type, where: str) -> dict[str, Dim]:
    declared = knobs.fields(cls)
    keys = {f.name: f for f in declared}
    if cls is Arch:
        keys["stages"] = STAGES
        for f in declared:
            if f.spec.per_stage:
                keys.update({f"{f.name}_{i}": f for i in range(1, MAX_STAGES + 1)})
    dims: dict[str, Dim] = {}
    for key, value in entries.items():  # declaration order is the sampling order; a dict keeps none of it
        if key not in keys:
            allowed = ", ".join(sorted(f.name for f in declared))
            if cls is Arch:
                allowed += f", stages, blocks_N, widths_N (N = 1..{MAX_STAGES})"
            raise UserError(f"{where} {key}: unknown key; allowed: {allowed}")
        dims[key] = _parse(value, keys[key], f"{where} {key}")
    return dims


def _check_arch(arch: dict[str, Dim], name: str) -> None:
    most = max(arch["stages"].values())
    for key in ("blocks", "widths"):
        for stage in range(1, most + 1):
            if f"{key}_{stage}" not in arch and key not in arch:
                raise UserError(f"{name}: [arch] {key}: missing for stage {stage}; give {key} (every stage) or {key}_{stage}")
    for key in arch:
        head, _, n = key.partition("_")
        if head in ("blocks", "widths") and n.isdigit() and int(n) > most:
            raise UserError(f"{name}: [arch] {key}: stage {n} does not exist; stages go up to {most}")
    last_map = max(1, 32 >> (most - 1))
    if "pool" in arch and max(arch["pool"].values()) > last_map:  # type: ignore[type-var]
        raise UserError(f"{name}: [arch] pool: {max(arch['pool'].values())} is larger than the last map ({last_map}x{last_map} "
                        f"with {most} stages); allowed: 0 (global) or 1..{last_map}")
    deepest = [_largest(arch.get(f"blocks_{stage}", arch.get("blocks"))) for stage in range(1, most + 1)]  # type: ignore[arg-type]
    if sum(deepest) > MAX_BLOCKS:
        raise UserError(f"{name}: [arch] blocks: up to {sum(deepest):,} blocks in all ({'+'.join(map(str, deepest))} over "
                        f"{most} stage(s)), more than the {MAX_BLOCKS:,} cerberus builds (a deeper net takes more than "
                        f"seconds just to size); allow fewer blocks per stage")


def _largest(dim: Dim) -> int:
    """The largest value of an integer key, without listing a range (which may be huge)."""
    if isinstance(dim, Range):
        step = dim.step or 1
        return int(dim.low) + (int(dim.high) - int(dim.low)) // step * step
    return max(dim.values())  # type: ignore[type-var, return-value]


def _parse(value: Any, f: knobs.Field, where: str) -> Dim:
    if isinstance(value, dict):
        return _parse_range(value, f, where)
    # A list-valued field (milestones) is fixed as one list, a choice as a list of lists; a
    # per-stage field's list (blocks = [1, 2]) is a choice of one value for every stage.
    listed = f.kind is not f.item and not f.spec.per_stage
    if isinstance(value, list) and (not listed or (value and isinstance(value[0], list))):
        if not value:
            raise UserError(f"{where}: empty list of choices; give at least one of: {f.allowed_words()}")
        options = tuple(_scalar(v, f, where) for v in value)
        if len(set(options)) != len(options):
            raise UserError(f"{where}: a choice is listed twice in {value}; list each once")
        return Choice(options) if len(options) > 1 else Fixed(options[0])
    return Fixed(_scalar(value, f, where))


def _scalar(value: Any, f: knobs.Field, where: str) -> Scalar:
    """One value of key ``f`` (for a per-stage key, one stage's), checked as the config checks it."""
    kind = f.item if f.spec.per_stage else f.kind
    try:
        value = knobs.coerce(kind, value, where)
    except ValueError:
        raise UserError(f"{where}: {value!r} is not allowed; allowed: {f.allowed_words()}") from None
    if not f.spec.allowed.ok(value):
        shown = list(value) if isinstance(value, tuple) else value
        raise UserError(f"{where}: {shown!r} is not allowed; allowed: {f.allowed_words()}")
    return value


def _parse_range(table: dict, f: knobs.Field, where: str) -> Range:
    kind = f.item if f.spec.per_stage else f.kind
    if kind not in (int, float):
        raise UserError(f"{where}: a range needs a numeric key; give a value or a list of choices from: {f.allowed_words()}")
    extra = sorted(set(table) - {"low", "high", "log", "step"})
    if extra:
        raise UserError(f"{where}: unknown range key {extra[0]!r}; allowed: low, high, log, step")
    if "low" not in table or "high" not in table:
        raise UserError(f"{where}: a range needs both low and high, e.g. {{ low = 1, high = 4 }}")
    low, high = _scalar(table["low"], f, where), _scalar(table["high"], f, where)
    if low >= high:  # type: ignore[operator]
        raise UserError(f"{where}: range low {low} must be below high {high}")
    log = table.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{where}: log must be true or false, got {log!r}")
    if log and low <= 0:  # type: ignore[operator]
        raise UserError(f"{where}: a log range needs low > 0, got {low}")
    step = table.get("step")
    if step is not None:
        if kind is not int or isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise UserError(f"{where}: step must be an integer >= 1 on an integer key, got {step!r}")
        if log:
            raise UserError(f"{where}: step and log cannot be combined; Optuna samples one or the other")
    if kind is int and not all(f.spec.allowed.ok(v) for v in range(int(low), int(high) + 1, step or 1)[:1000]):  # type: ignore[arg-type]
        raise UserError(f"{where}: the range {low}..{high} holds values that are not allowed; allowed: {f.allowed_words()}")
    return Range(low, high, log=log, step=step, integer=kind is int)  # type: ignore[arg-type]


class _Replay:
    """Stands in for an Optuna trial: answers each suggestion with ``wanted``'s value, and
    refuses (UserError) one the suggested distribution does not hold."""

    def __init__(self, path: str, wanted: dict[str, Any]) -> None:
        self.path, self.wanted, self.params = path, wanted, {}

    def _take(self, name: str, inside: bool, allowed: str) -> Any:
        value = self.wanted[name]
        if not inside:
            raise UserError(f"{self.path} cannot express this configuration: {name} = {value!r}, the space allows {allowed}")
        self.params[name] = value
        return value

    def suggest_categorical(self, name: str, choices: list) -> Any:
        v = self.wanted[name]
        inside = any(v == c and (type(v) is bool) == (type(c) is bool) for c in choices)
        return self._take(name, inside, ", ".join(map(str, choices)))

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        v = self.wanted[name]
        return self._take(name, isinstance(v, int) and low <= v <= high and (v - low) % step == 0, f"{low}..{high}")

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        return self._take(name, low <= self.wanted[name] <= high, f"{low:g}..{high:g}")


def _first_difference(a: dict[str, Any], b: dict[str, Any], where: str = "") -> tuple[str, Any, Any]:
    for key in a:
        if isinstance(a[key], dict):
            found = _first_difference(a[key], b[key], f"{where}{key}.")
            if found[0]:
                return found
        elif a[key] != b[key]:
            return f"{where}{key}", a[key], b[key]
    return "", None, None


def set_length(config: Config, epochs: int | None = None, budget: float | None = None) -> Config:
    """``--epochs`` or ``--budget`` (PFLOP) overrides how long the configuration trains; None: as it says."""
    if epochs is not None:
        return dataclasses.replace(config, recipe=dataclasses.replace(config.recipe, epochs=epochs, budget=0.0))
    if budget is not None:
        return dataclasses.replace(config, recipe=dataclasses.replace(config.recipe, budget=budget))
    return config


def sample_archs(space: Space, n: int, seed: int = 0) -> list[Arch]:
    """The architectures of ``n`` configurations drawn as a search's random start-up trials
    draw them: ``Space.sample`` under Optuna's RandomSampler, in memory."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.sample(study.ask()).arch for _ in range(n)]


def rejected_fraction(archs: list[Arch], max_params: int, params: Callable[[Arch], int] = size.params) -> float:
    """The share of ``archs`` with more than ``max_params`` parameters (``params`` counts them;
    pass a cached count to size many repeats once)."""
    return sum(params(a) > max_params for a in archs) / len(archs)
