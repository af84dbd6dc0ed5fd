"""Search-space files: TOML in, a validated :class:`Space` out, a :class:`Config` per trial.

A space file has three tables, ``[arch]``, ``[recipe]`` and ``[augment]``, whose keys are the
fields of :class:`~cerberus.config.Arch`, :class:`~cerberus.config.Recipe` and
:class:`~cerberus.config.Augment`. Each value is one of::

    epochs = 30                                  # fixed
    optimizer = ["nesterov", "adamw"]            # one of these (categorical)
    lr = { low = 0.01, high = 0.4, log = true }  # a range; int fields take an optional step

``[arch]`` speaks per stage: ``stages`` is how many, ``blocks`` and ``widths`` apply to every
stage, and ``blocks_2`` / ``widths_2`` override stage 2 (stages count from 1). A list-valued
field (``milestones``) is fixed when written as one list and a choice when written as a list
of lists. Keys a file leaves out take the dataclass defaults, except ``stages``, ``blocks``
and ``widths``, which every file must cover.

The Optuna parameter of a key has the key's name (``lr``, ``blocks_2``), and a key is only
sampled where it acts: ``momentum`` for sgd and nesterov, ``milestones`` for the step
schedule, ``agc_clip`` for adadelta_agc, ``warmup`` for cosine and step, ``cutout_length`` when there are cutout holes.
Every violation is a :class:`~cerberus.errors.UserError` naming the file, the table, the key
and what is allowed. :func:`sample_archs` and :func:`rejected_fraction` tell how much of a
space a parameter budget rejects.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import optuna

from cerberus.config import MAX_BLOCKS, MAX_STAGES, OPTIMIZERS, SCHEDULES, Arch, Augment, Config, Recipe
from cerberus.errors import UserError, read_text
from cerberus import size

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


@dataclass(frozen=True)
class Rule:
    """What one key accepts: its type, a check on each value, and the words for that check."""

    kind: type
    ok: Callable[[Any], bool]
    allowed: str


def _rule(kind: type, ok: Callable[[Any], bool], allowed: str) -> Rule:
    return Rule(kind, ok, allowed)


def _milestones_ok(v: tuple) -> bool:
    return bool(v) and all(0 < m < 1 for m in v) and list(v) == sorted(set(v))


ARCH_RULES = {
    "stages": _rule(int, lambda v: 1 <= v <= MAX_STAGES, f"integers 1..{MAX_STAGES}"),
    "blocks": _rule(int, lambda v: v >= 1, "integers >= 1"),
    "widths": _rule(int, lambda v: v >= 1, "integers >= 1"),
    "conv_kernel": _rule(int, lambda v: v >= 1 and v % 2 == 1, "odd integers >= 1"),
    "skip_kernel": _rule(int, lambda v: v in (1, 3), "1 or 3"),
    "pool": _rule(int, lambda v: v >= 0, "0 (global) or an integer no larger than the last map"),
}
RECIPE_RULES = {
    "optimizer": _rule(str, lambda v: v in OPTIMIZERS, ", ".join(OPTIMIZERS)),
    "lr": _rule(float, lambda v: v > 0, "numbers > 0"),
    "momentum": _rule(float, lambda v: 0 <= v < 1, "numbers in [0, 1)"),
    "weight_decay": _rule(float, lambda v: v >= 0, "numbers >= 0"),
    "schedule": _rule(str, lambda v: v in SCHEDULES, ", ".join(SCHEDULES)),
    "milestones": _rule(tuple, _milestones_ok, "increasing fractions in (0, 1), e.g. [0.5, 0.75]"),
    "agc_clip": _rule(float, lambda v: v > 0, "numbers > 0"),
    "warmup": _rule(float, lambda v: 0 <= v < 1, "numbers in [0, 1)"),
    "epochs": _rule(int, lambda v: v >= 1, "integers >= 1"),
    "batch_size": _rule(int, lambda v: v >= 1, "integers >= 1"),
    "label_smoothing": _rule(float, lambda v: 0 <= v < 1, "numbers in [0, 1)"),
    "tta_flip": _rule(bool, lambda v: True, "true or false"),
}
AUGMENT_RULES = {
    "crop_padding": _rule(int, lambda v: 0 <= v <= 16, "integers 0..16 (0 = no crop)"),
    "flip": _rule(bool, lambda v: True, "true or false"),
    "rotation": _rule(float, lambda v: 0 <= v <= 180, "degrees 0..180"),
    "cutout_holes": _rule(int, lambda v: v >= 0, "integers >= 0"),
    "cutout_length": _rule(int, lambda v: 1 <= v <= 32, "integers 1..32"),
    "mixup_alpha": _rule(float, lambda v: v >= 0, "numbers >= 0 (0 = off)"),
    "cutmix_alpha": _rule(float, lambda v: v >= 0, "numbers >= 0 (0 = off)"),
    "trivial_augment": _rule(bool, lambda v: True, "true or false"),
}
TABLES = {"arch": ARCH_RULES, "recipe": RECIPE_RULES, "augment": AUGMENT_RULES}
PER_STAGE = ("blocks", "widths")


@dataclass(frozen=True)
class Space:
    """A validated search space. ``sample(trial)`` turns one Optuna trial into a Config."""

    path: str
    arch: dict[str, Dim]
    recipe: dict[str, Dim]
    augment: dict[str, Dim]

    def sample(self, trial: optuna.Trial) -> Config:
        stages = self.arch["stages"].sample(trial, "stages")
        arch = Arch(
            blocks=tuple(self._stage_dim("blocks", i).sample(trial, f"blocks_{i}") for i in range(1, stages + 1)),
            widths=tuple(self._stage_dim("widths", i).sample(trial, f"widths_{i}") for i in range(1, stages + 1)),
            **{k: d.sample(trial, k) for k, d in self.arch.items() if k in ARCH_RULES and k not in ("stages", *PER_STAGE)},
        )
        recipe = _sample_table(trial, self.recipe, _recipe_acts)
        augment = _sample_table(trial, self.augment, _augment_acts)
        return Config(arch, Recipe(**recipe, augment=Augment(**augment)))

    def params_for(self, config: Config) -> dict[str, Any]:
        """The Optuna parameters under which ``sample`` returns ``config`` (its epochs aside:
        those stay the space's, so an enqueued configuration trains at the search's fidelity).

        This is what ``study.enqueue_trial`` needs to put a known configuration into a study
        as an ordinary trial the sampler learns from. A configuration the space cannot produce
        (a value outside a range or a choice, or a key the space pins to something else) is a
        UserError naming the key and what the space allows.
        """
        a, r = config.arch, config.recipe
        wanted: dict[str, Any] = {"stages": len(a.blocks)}
        for i, (b, w) in enumerate(zip(a.blocks, a.widths), 1):
            wanted[f"blocks_{i}"], wanted[f"widths_{i}"] = b, w
        for table in (a, r, r.augment):
            wanted.update({f.name: getattr(table, f.name) for f in dataclasses.fields(table)})
        # Choice.sample asks for tuples (milestones) by their label
        wanted = {k: ",".join(map(str, v)) if isinstance(v, tuple) else v for k, v in wanted.items()}
        trial = _Replay(self.path, wanted)
        got = replace_epochs(self.sample(trial), config.recipe.epochs)  # type: ignore[arg-type]
        if _canonical(got) != _canonical(config):
            key, mine, theirs = _first_difference(_canonical(config).to_dict(), _canonical(got).to_dict())
            raise UserError(f"{self.path} cannot express this configuration: {key} = {mine!r}, the space pins {theirs!r}")
        return trial.params

    def architectures(self) -> Iterator[Arch]:
        """The corner architectures: fewest blocks and narrowest widths per stage, for every
        stage count, kernel and pool. The smallest architecture of the space is among them."""
        for stages in self.arch["stages"].values():
            blocks = tuple(min(self._stage_dim("blocks", i).values()) for i in range(1, stages + 1))
            widths = tuple(min(self._stage_dim("widths", i).values()) for i in range(1, stages + 1))
            for conv, skip, pool in itertools.product(
                self.arch["conv_kernel"].values(), self.arch["skip_kernel"].values(), self.arch["pool"].values()
            ):
                if pool <= max(1, 32 >> (stages - 1)):
                    yield Arch(blocks, widths, conv, skip, pool)

    def _stage_dim(self, key: str, stage: int) -> Dim:
        return self.arch.get(f"{key}_{stage}", self.arch.get(key))  # type: ignore[return-value]


def _recipe_acts(key: str, chosen: dict[str, Any]) -> bool:
    if key == "momentum":
        return chosen["optimizer"] in ("sgd", "nesterov")
    if key == "milestones":
        return chosen["schedule"] == "step"
    if key == "agc_clip":
        return chosen["optimizer"] == "adadelta_agc"
    if key == "warmup":
        return chosen["schedule"] != "onecycle"
    return True


def _augment_acts(key: str, chosen: dict[str, Any]) -> bool:
    return key != "cutout_length" or chosen["cutout_holes"] > 0


def _sample_table(trial: optuna.Trial, dims: dict[str, Dim], acts: Callable[[str, dict], bool]) -> dict[str, Any]:
    # Keys that others depend on (optimizer, schedule, cutout_holes) come first in the rules,
    # so the order of RECIPE_RULES and AUGMENT_RULES is the sampling order.
    chosen: dict[str, Any] = {}
    for key, dim in dims.items():
        if acts(key, chosen):
            chosen[key] = dim.sample(trial, key)
        elif isinstance(dim, Fixed):
            chosen[key] = dim.value
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
    for table, rules in TABLES.items():
        entries = raw.get(table, {})
        if not isinstance(entries, dict):
            raise UserError(f"{name}: {table} must be a table ([{table}]), got a {type(entries).__name__}")
        where = f"{name}: [{table}]"
        dims: dict[str, Dim] = {}
        stage_keys = [k for k in entries if table == "arch" and _stage_key(k)]
        for key in rules:  # rule order is the sampling order (see _sample_table)
            if key in entries:
                dims[key] = _parse(entries[key], rules[key], f"{where} {key}")
        for key in stage_keys:
            dims[key] = _parse(entries[key], rules[key.split("_")[0]], f"{where} {key}")
        extra = sorted(set(entries) - set(dims))
        if extra:
            allowed = ", ".join(sorted(rules)) + (", blocks_N, widths_N (N = 1.." + str(MAX_STAGES) + ")" if table == "arch" else "")
            raise UserError(f"{where} {extra[0]}: unknown key; allowed: {allowed}")
        tables[table] = dims
    arch = tables["arch"]
    arch.setdefault("conv_kernel", Fixed(3))
    arch.setdefault("skip_kernel", Fixed(1))
    arch.setdefault("pool", Fixed(0))
    if "stages" not in arch:
        raise UserError(f"{name}: [arch] stages: missing; give the number of stages, e.g. stages = [3, 4]")
    most = max(arch["stages"].values())
    for key in PER_STAGE:
        for stage in range(1, most + 1):
            if f"{key}_{stage}" not in arch and key not in arch:
                raise UserError(f"{name}: [arch] {key}: missing for stage {stage}; give {key} (every stage) or {key}_{stage}")
    for key in arch:
        if _stage_key(key) and int(key.split("_")[1]) > most:
            raise UserError(f"{name}: [arch] {key}: stage {key.split('_')[1]} does not exist; stages go up to {most}")
    last_map = max(1, 32 >> (most - 1))
    if max(arch["pool"].values()) > last_map:
        raise UserError(f"{name}: [arch] pool: {max(arch['pool'].values())} is larger than the last map ({last_map}x{last_map} with {most} stages); allowed: 0 (global) or 1..{last_map}")
    deepest = [_largest(arch.get(f"blocks_{stage}", arch.get("blocks"))) for stage in range(1, most + 1)]  # type: ignore[arg-type]
    if sum(deepest) > MAX_BLOCKS:
        raise UserError(f"{name}: [arch] blocks: up to {sum(deepest):,} blocks in all ({'+'.join(map(str, deepest))} over "
                        f"{most} stage(s)), more than the {MAX_BLOCKS:,} cerberus builds (a deeper net takes more than "
                        f"seconds just to size); allow fewer blocks per stage")
    return Space(name, arch, tables["recipe"], tables["augment"])


def _largest(dim: Dim) -> int:
    """The largest value of an integer key, without listing a range (which may be huge)."""
    if isinstance(dim, Range):
        step = dim.step or 1
        return int(dim.low) + (int(dim.high) - int(dim.low)) // step * step
    return max(dim.values())  # type: ignore[type-var, return-value]


def _stage_key(key: str) -> bool:
    head, _, n = key.partition("_")
    return head in PER_STAGE and n.isdigit() and 1 <= int(n) <= MAX_STAGES


def _parse(value: Any, rule: Rule, where: str) -> Dim:
    if isinstance(value, dict):
        return _parse_range(value, rule, where)
    if isinstance(value, list) and (rule.kind is not tuple or (value and isinstance(value[0], list))):
        if not value:
            raise UserError(f"{where}: empty list of choices; give at least one of: {rule.allowed}")
        options = tuple(_scalar(v, rule, where) for v in value)
        if len(set(options)) != len(options):
            raise UserError(f"{where}: a choice is listed twice in {value}; list each once")
        return Choice(options) if len(options) > 1 else Fixed(options[0])
    return Fixed(_scalar(value, rule, where))


def _scalar(value: Any, rule: Rule, where: str) -> Scalar:
    kind = rule.kind
    if kind is tuple:
        good = isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        value = tuple(float(v) for v in value) if good else value
    elif kind is float:  # TOML also spells inf and nan, which no key accepts
        good = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if good else value
    elif kind is int:
        good = isinstance(value, int) and not isinstance(value, bool)
    else:
        good = isinstance(value, kind)
    if not good or not rule.ok(value):
        raise UserError(f"{where}: {value!r} is not allowed; allowed: {rule.allowed}")
    return value


def _parse_range(table: dict, rule: Rule, where: str) -> Range:
    if rule.kind not in (int, float):
        raise UserError(f"{where}: a range needs a numeric key; give a value or a list of choices from: {rule.allowed}")
    extra = sorted(set(table) - {"low", "high", "log", "step"})
    if extra:
        raise UserError(f"{where}: unknown range key {extra[0]!r}; allowed: low, high, log, step")
    if "low" not in table or "high" not in table:
        raise UserError(f"{where}: a range needs both low and high, e.g. {{ low = 1, high = 4 }}")
    low, high = _scalar(table["low"], rule, where), _scalar(table["high"], rule, where)
    if low >= high:
        raise UserError(f"{where}: range low {low} must be below high {high}")
    log = table.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{where}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise UserError(f"{where}: a log range needs low > 0, got {low}")
    step = table.get("step")
    if step is not None:
        if rule.kind is not int or isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise UserError(f"{where}: step must be an integer >= 1 on an integer key, got {step!r}")
        if log:
            raise UserError(f"{where}: step and log cannot be combined; Optuna samples one or the other")
    return Range(low, high, log=log, step=step, integer=rule.kind is int)


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


def _canonical(config: Config) -> Config:
    """``config`` with the keys that do not act (momentum under adam, ...) at their defaults."""
    r = config.recipe
    recipe = {f.name: getattr(r, f.name) for f in dataclasses.fields(Recipe) if f.name != "augment"}
    augment = dataclasses.asdict(r.augment)
    recipe = {k: v if _recipe_acts(k, recipe) else getattr(Recipe, k) for k, v in recipe.items()}
    augment = {k: v if _augment_acts(k, augment) else getattr(Augment, k) for k, v in augment.items()}
    return Config(config.arch, Recipe(**recipe, augment=Augment(**augment)))


def _first_difference(a: dict[str, Any], b: dict[str, Any], where: str = "") -> tuple[str, Any, Any]:
    for key in a:
        if isinstance(a[key], dict):
            found = _first_difference(a[key], b[key], f"{where}{key}.")
            if found[0]:
                return found
        elif a[key] != b[key]:
            return f"{where}{key}", a[key], b[key]
    return "", None, None


def replace_epochs(config: Config, epochs: int | None) -> Config:
    """``--epochs`` overrides what the space chose."""
    if epochs is None:
        return config
    return dataclasses.replace(config, recipe=dataclasses.replace(config.recipe, epochs=epochs))


def sample_archs(space: Space, n: int, seed: int = 0) -> list[Arch]:
    """The architectures of ``n`` configurations drawn as a search's random start-up trials
    draw them: ``Space.sample`` under Optuna's RandomSampler, in memory."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.sample(study.ask()).arch for _ in range(n)]


def rejected_fraction(archs: list[Arch], max_params: int, params: Callable[[Arch], int] = size.params) -> float:
    """The share of ``archs`` with more than ``max_params`` parameters (``params`` counts them;
    pass a cached count to size many repeats once)."""
    return sum(params(a) > max_params for a in archs) / len(archs)
