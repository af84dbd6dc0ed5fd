"""The one object a trial, ``best`` and ``train`` all speak of.

A :class:`Config` is an architecture (:class:`Arch`) plus a training recipe (:class:`Recipe`,
with its :class:`Augment`). All three are frozen dataclasses of plain values, so a config is
hashable, printable, and round-trips exactly through JSON::

    Config.from_json(config.to_json()) == config

Every field has a meaning on its own; nothing here knows about Optuna or search spaces.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from cerberus.errors import UserError, read_text

NUM_CLASSES = 10  # CIFAR-10's, and the model's outputs
STATS_CHUNK = 2_500  # training images converted to float at a time for the normalisation statistics
EVAL_BATCH = 1000  # images per evaluation forward: divides the 5,000 validation and 10,000 test images (no ragged batch to autotune)
OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw", "adadelta", "adadelta_agc")
SCHEDULES = ("cosine", "step", "onecycle")
# The most BasicBlocks (all stages together) that `count`, a space file and so `run` accept.
# The closed-form size (cerberus.size) takes microseconds at any depth, but building a net, and
# its meta-device oracle (cerberus.model.measure), grow with depth: the oracle took 0.45 s at
# 100 blocks, 3.9 s at 1,000, 19.7 s at 5,000 (one stage of width 16, two CPU cores), and
# `count --blocks 100000`, when it still built the net, ran 8 minutes and crashed. 1,000 blocks
# is ResNet-2002, over three times the deepest published CIFAR ResNet (ResNet-1202).
MAX_BLOCKS = 1000
MAX_STAGES = 6  # 32x32 halves to 1x1 at the sixth stage


@dataclass(frozen=True)
class Arch:
    """A CIFAR ResNet: stem, ``len(blocks)`` stages of BasicBlocks, average pool, linear.

    ``blocks[i]`` BasicBlocks of width ``widths[i]`` form stage ``i``; stage 0 keeps the
    32x32 resolution and every later stage halves it at its first block.
    ``conv_kernel`` is the kernel of the stem and of every block conv, ``skip_kernel`` the
    kernel of a projection shortcut (used where a block changes shape), and ``pool`` the
    average-pool kernel over the last map, ``0`` meaning global pooling.
    """

    blocks: tuple[int, ...]
    widths: tuple[int, ...]
    conv_kernel: int = 3
    skip_kernel: int = 1
    pool: int = 0

    def __post_init__(self) -> None:
        if len(self.blocks) != len(self.widths) or not self.blocks:
            raise ValueError(
                f"blocks and widths need one entry per stage (at least one stage), "
                f"got blocks={list(self.blocks)} widths={list(self.widths)}"
            )
        if sum(self.blocks) > MAX_BLOCKS:  # every Arch, before anything is built: sizing it would take minutes
            raise ValueError(f"blocks {','.join(map(str, self.blocks))}: {sum(self.blocks):,} blocks in all, more than the "
                             f"{MAX_BLOCKS:,} cerberus builds (a deeper net takes more than seconds just to size); "
                             f"give fewer blocks")
        if min(self.blocks) < 1 or min(self.widths) < 1:
            raise ValueError(f"blocks and widths must be >= 1, got {self}")
        if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd and >= 1, got {self.conv_kernel}")
        if self.skip_kernel not in (1, 3):
            raise ValueError(f"skip_kernel must be 1 or 3, got {self.skip_kernel}")
        if not 0 <= self.pool <= self.final_map_size:
            raise ValueError(
                f"pool must be 0 (global) or 1..{self.final_map_size} for {len(self.blocks)} "
                f"stages (last map {self.final_map_size}x{self.final_map_size}), got {self.pool}"
            )

    @property
    def final_map_size(self) -> int:
        return max(1, 32 >> (len(self.blocks) - 1))

    @property
    def depth(self) -> int:
        """Conv and linear layers on the main path, as ResNet names count them."""
        return 2 * sum(self.blocks) + 2


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation; every field at its zero value switches that part off.

    Cutout and mixup (or cutmix) combine when both are on. With both mixup and cutmix on,
    each batch uses one of them, chosen with equal chance. ``trivial_augment`` gives every
    image one TrivialAugmentWide operation (Mueller and Hutter, 2021) before the rest.
    """

    crop_padding: int = 0
    flip: bool = False
    rotation: float = 0.0  # maximum degrees, either way
    cutout_holes: int = 0
    cutout_length: int = 8
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    trivial_augment: bool = False


@dataclass(frozen=True)
class Recipe:
    """How to train: optimizer, learning-rate schedule, length, regularisation, augmentation.

    ``momentum`` is used by sgd and nesterov; ``milestones`` (fractions of the epochs after
    which the learning rate drops by 10x) by the step schedule; ``agc_clip`` (the adaptive
    gradient clipping factor of Brock et al., 2021) by adadelta_agc. ``warmup`` is the fraction
    of the steps over which cosine and step schedules first ramp up linearly (one-cycle has its
    own). ``tta_flip`` scores each evaluated image by its logits plus those of its mirror image.
    """

    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)
    agc_clip: float = 0.01
    warmup: float = 0.0
    epochs: int = 10
    batch_size: int = 128
    label_smoothing: float = 0.0
    tta_flip: bool = False
    augment: Augment = field(default_factory=Augment)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"epochs, batch_size and lr must be positive, got {self}")


@dataclass(frozen=True)
class Config:
    arch: Arch
    recipe: Recipe

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        return _build(cls, data, "config")

    @classmethod
    def from_json(cls, text: str) -> Config:
        return cls.from_dict(json.loads(text))


def read_configs(path: Path, option: str) -> list[Config]:
    """The configurations in JSON file ``path``: a Config object (``config.json``,
    ``Config.to_json``), a row of ``best --json`` (an object whose ``config`` is one), or a list
    of either. Every problem is a UserError that names ``option`` and the file."""
    text = read_text(path, f"{option} {path}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{option} {path} is not JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    configs = []
    for item in data if isinstance(data, list) else [data]:
        if isinstance(item, dict) and "config" in item:
            item = item["config"]
        try:
            configs.append(Config.from_dict(item))
        except (ValueError, TypeError) as e:
            raise UserError(f"{option} {path}: {e} (a Config object with arch and recipe, or a `best --json` row)") from None
    return configs


def _build(cls: type, data: Any, where: str) -> Any:
    """Rebuild dataclass ``cls`` from JSON-shaped ``data``, refusing unknown or mistyped keys."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(names))}")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{where}: missing key {missing[0]!r}; required: {', '.join(required)}")
    return cls(**{k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()})


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item, _) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(item, v, where) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported field type {hint!r}")


# The course project's hand-found ResNet-24 (4,918,602 parameters) and its recipe, the row every
# result is compared with; search/seed.toml pins the same and search/seed.json holds it for
# `cerberus-search train --config` (tests keep all three equal).
COURSE = Config(
    Arch((3, 5, 3), (64, 128, 256)),
    Recipe(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, schedule="step", milestones=(0.4, 0.75),
           epochs=200, batch_size=128,
           augment=Augment(crop_padding=4, flip=True, rotation=10.0, cutout_holes=1, cutout_length=8)),
)

# The same at the scale of search/cpu.toml: the course block counts at a quarter of its widths
# (309,594 parameters) and that space's 3 epochs; search/seed-cpu.json holds it.
COURSE_CPU = Config(Arch((3, 5, 3), (16, 32, 64)), dataclasses.replace(COURSE.recipe, epochs=3))
COURSE_CONFIGS = (COURSE, COURSE_CPU)
