"""The one object a trial, ``best`` and ``train`` all speak of.

A :class:`Config` is an architecture (:class:`Arch`) plus a training recipe (:class:`Recipe`,
with its :class:`Augment`). All three are frozen dataclasses of plain values, so a config is
hashable, printable, and round-trips exactly through JSON::

    Config.from_json(config.to_json()) == config

Each field is declared once, here, with :func:`cerberus.knobs.knob`: its type, what it allows,
its default, one line of meaning and when it acts. Validation, space files, ``best`` and the
options reference (docs/reference.md) all read those declarations; a configuration that breaks
one is refused whatever its source. Nothing here knows about Optuna or search spaces.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cerberus import knobs
from cerberus.errors import UserError, read_text
from cerberus.knobs import BOOL, Increasing, Interval, OneOf, ReadBy, Rule, When, knob
from cerberus.optim import OPTIMIZERS, SCHEDULES

NUM_CLASSES = 10  # CIFAR-10's, and the model's outputs
STATS_CHUNK = 2_500  # training images converted to float at a time for the normalisation statistics
EVAL_BATCH = 1000  # images per evaluation forward: divides the 5,000 validation and 10,000 test images (no ragged batch to autotune)
# The most BasicBlocks (all stages together) that `count`, a space file and so `run` accept.
# The closed-form size (cerberus.size) takes microseconds at any depth, but building a net, and
# its meta-device oracle (cerberus.model.measure), grow with depth: the oracle took 0.45 s at
# 100 blocks, 3.9 s at 1,000, 19.7 s at 5,000 (one stage of width 16, two CPU cores), and
# `count --blocks 100000`, when it still built the net, ran 8 minutes and crashed. 1,000 blocks
# is ResNet-2002, over three times the deepest published CIFAR ResNet (ResNet-1202).
MAX_BLOCKS = 1000
MAX_STAGES = 6  # 32x32 halves to 1x1 at the sixth stage
IMAGE_SIDE = 32
WHITEN_KERNEL, WHITEN_WIDTH = 2, 24  # a whitening stem's patches (2x2), and its filters: 12 eigenvectors and their negatives
MAX_WIDTH = 4096  # channels of a stage: a 3x3 conv of 4096 -> 4096 alone is 151M parameters
MAX_CUTOUT_HOLES = 16  # each hole is a mask of the batch's size, made every step
OPTIMIZER, SCHEDULE = ReadBy("optimizer", OPTIMIZERS), ReadBy("schedule", SCHEDULES)


@dataclass(frozen=True)
class Arch:
    """A CIFAR ResNet: stem, ``len(blocks)`` stages of BasicBlocks, pool, linear (:mod:`cerberus.model`).

    ``blocks[i]`` BasicBlocks of width ``widths[i]`` form stage ``i``; by default stage 0 keeps
    the 32x32 resolution and every later stage halves it at its first block, and a block that
    changes the shape has a projection shortcut. Every field but blocks and widths defaults to
    the course project's family.
    """

    TABLE: ClassVar[str] = "arch"
    blocks: tuple[int, ...] = knob(dataclasses.MISSING, "BasicBlocks in each stage", Interval(1), shown=True, per_stage=True)
    widths: tuple[int, ...] = knob(dataclasses.MISSING, "channels of each stage", Interval(1, MAX_WIDTH), shown=True,
                                   per_stage=True)
    conv_kernel: int = knob(3, "kernel of the stem and of every block conv (F)",
                            Rule(lambda v: v >= 1 and v % 2 == 1, "odd integers >= 1"))
    skip_kernel: int = knob(1, "kernel of a projection shortcut (K)", OneOf((1, 3)))
    pool: int = knob(0, "pool kernel over the last map (P)",
                     Rule(lambda v: v >= 0, "0 (global) or an integer no larger than the last map"))
    pool_type: str = knob("avg", "the pool over the last map: average or max", OneOf(("avg", "max")))
    stem: str = knob("conv", "conv: a conv of kernel F and its BatchNorm; whiten: a frozen 2x2 conv that whitens "
                     "the image's patches (24 filters from the training images' covariance; Page, airbench)",
                     OneOf(("conv", "whiten")))
    downsample: str = knob("stride", "stride: each stage after the first halves the map with a stride-2 first conv; "
                           "pool: every stage max-pools right after its first conv (Page's ResNet-9, airbench)",
                           OneOf(("stride", "pool")))
    activation: str = knob("relu", "the activation of the stem and the blocks", OneOf(("relu", "gelu")))
    conv_init: str = knob("torch", "torch: PyTorch's default; identity: each conv's first filters pass one input "
                          "channel through (dirac_) and the head's weights start at std 1/inputs (airbench)",
                          OneOf(("torch", "identity")))
    bn_weight: str = knob("learned", "BatchNorm's scale: learned, or frozen at 1 (airbench)", OneOf(("learned", "frozen")))
    bn_momentum: float = knob(0.1, "weight of each batch in BatchNorm's running statistics (torch's momentum; "
                              "airbench 0.4)", Interval(0, 1, open_low=True))
    residual: bool = knob(True, "add each block's input to its output (pooled, or projected where the width "
                          "changes); false: plain blocks, as airbench's", BOOL)

    def __post_init__(self) -> None:
        if len(self.blocks) != len(self.widths) or not self.blocks:
            raise ValueError(
                f"blocks and widths need one entry per stage (at least one stage), "
                f"got blocks={list(self.blocks)} widths={list(self.widths)}"
            )
        if len(self.blocks) > MAX_STAGES:
            raise ValueError(f"arch: {len(self.blocks)} stages; allowed: 1..{MAX_STAGES} (32x32 halves to 1x1 at the sixth)")
        if sum(self.blocks) > MAX_BLOCKS:  # every Arch, before anything is built: sizing it would take minutes
            raise ValueError(f"blocks {','.join(map(str, self.blocks))}: {sum(self.blocks):,} blocks in all, more than the "
                             f"{MAX_BLOCKS:,} cerberus builds (a deeper net takes more than seconds just to size); "
                             f"give fewer blocks")
        knobs.check(self, self.TABLE)
        if self.final_map_size < 1:
            most = max(n for n in range(1, MAX_STAGES + 1) if _sides(self.stem, self.downsample, n)[-1][1] >= 1)
            raise ValueError(f"{len(self.blocks)} stages with downsample {self.downsample} and stem {self.stem} halve "
                             f"the image to nothing; allowed: at most {most} stages")
        if self.pool > self.final_map_size:
            raise ValueError(
                f"pool must be 0 (global) or 1..{self.final_map_size} for {len(self.blocks)} "
                f"stages (last map {self.final_map_size}x{self.final_map_size}), got {self.pool}"
            )

    @property
    def sides(self) -> list[tuple[int, int]]:
        """Each stage's (incoming, outgoing) map side (see :func:`_sides`)."""
        return _sides(self.stem, self.downsample, len(self.blocks))

    @property
    def final_map_size(self) -> int:
        return self.sides[-1][1]

    @property
    def depth(self) -> int:
        """Conv and linear layers on the main path, as ResNet names count them."""
        return 2 * sum(self.blocks) + 2


def _sides(stem: str, downsample: str, stages: int) -> list[tuple[int, int]]:
    """Each stage's (incoming, outgoing) map side: a stride halves it, rounding up, from the
    second stage on; a max-pool halves it, rounding down, in every stage."""
    side = IMAGE_SIDE - WHITEN_KERNEL + 1 if stem == "whiten" else IMAGE_SIDE
    out = []
    for i in range(stages):
        new = side // 2 if downsample == "pool" else (side - 1) // 2 + 1 if i > 0 else side
        out.append((side, new))
        side = new
    return out


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation; every field at its zero value switches that part off.

    Cutout and mixup (or cutmix) combine when both are on. With both mixup and cutmix on,
    each batch uses one of them, chosen with equal chance. TrivialAugment acts first.
    """

    TABLE: ClassVar[str] = "augment"
    crop_padding: int = knob(0, "random crop after padding by this many pixels (0: no crop)", Interval(0, 16))
    flip: bool = knob(False, "mirror half of the images left to right", BOOL)
    rotation: float = knob(0.0, "rotate by up to this many degrees either way", Interval(0, 180))
    cutout_holes: int = knob(0, "squares zeroed per image (cutout)", Interval(0, MAX_CUTOUT_HOLES))
    cutout_length: int = knob(8, "side of a cutout square, pixels", Interval(1, 32),
                              When("cutout_holes", lambda v: v > 0, "cutout_holes > 0"))
    mixup_alpha: float = knob(0.0, "mixup's Beta(alpha, alpha) (0: off)", Interval(0))
    cutmix_alpha: float = knob(0.0, "cutmix's Beta(alpha, alpha) (0: off)", Interval(0))
    trivial_augment: bool = knob(False, "one TrivialAugmentWide operation per image (Mueller and Hutter, 2021)", BOOL)
    crop_fill: str = knob("mean", "what the crop pads with: the mean colour, or the image reflected at its edge "
                          "(airbench)", OneOf(("mean", "reflect")), When("crop_padding", lambda v: v > 0, "crop_padding > 0"))
    alternate_flip: bool = knob(False, "flip a random half of the images in the first epoch, then flip every image "
                                "the other way each epoch after (airbench)", BOOL, When("flip", lambda v: v, "flip is true"))

    def __post_init__(self) -> None:
        knobs.check(self, self.TABLE)


@dataclass(frozen=True)
class Recipe:
    """How to train: optimizer, learning-rate schedule, length, regularisation, augmentation."""

    TABLE: ClassVar[str] = "recipe"
    optimizer: str = knob("sgd", "the optimizer (see cerberus/optim.py)", OneOf(tuple(OPTIMIZERS)), shown=True)
    lr: float = knob(0.1, "peak learning rate", Interval(0, open_low=True), shown=True)
    momentum: float = knob(0.9, "momentum", Interval(0, 1, open_high=True), OPTIMIZER)
    weight_decay: float = knob(5e-4, "weight decay", Interval(0))
    schedule: str = knob("cosine", "learning-rate schedule, stepped every batch", OneOf(tuple(SCHEDULES)), shown=True)
    milestones: tuple[float, ...] = knob((0.5, 0.75), "fractions of the steps after which the learning rate drops 10x",
                                         Increasing(Interval(0, 1, open_low=True, open_high=True), "increasing fractions in (0, 1), e.g. [0.5, 0.75]"), SCHEDULE)
    agc_clip: float = knob(0.01, "adaptive gradient clipping factor (Brock et al., 2021)", Interval(0, open_low=True), OPTIMIZER)
    warmup: float = knob(0.0, "fraction of the steps over which the learning rate first ramps up from zero",
                         Interval(0, 1, open_high=True), SCHEDULE)
    budget: float = knob(0.0, "training PFLOP of a fit (forward and backward, counted in closed form): its steps follow "
                         "from the network and the batch; 0: epochs set its length", Interval(0, 1e6), fidelity=True)
    epochs: int = knob(10, "passes over the training split", Interval(1), When("budget", lambda v: v == 0, "budget is 0"),
                       shown=True, fidelity=True)
    batch_size: int = knob(128, "images per step", Interval(1, 50_000), shown=True)
    label_smoothing: float = knob(0.0, "label smoothing of the cross-entropy", Interval(0, 1, open_high=True))
    tta_flip: bool = knob(False, "score each evaluated image by its logits plus its mirror image's", BOOL, fidelity=True)
    ema: float = knob(0.0, "decay per step of an average of the weights (and BatchNorm statistics) that is evaluated "
                      "and saved instead of them (0: off)", Interval(0, 1, open_high=True))
    muon_momentum: float = knob(0.6, "momentum of Muon's updates of the conv filters", Interval(0, 1, open_high=True),
                                OPTIMIZER)
    lr_bias_scale: float = knob(1.0, "learning rate of BatchNorm's and the biases' parameters, as a multiple of lr",
                                Interval(0, open_low=True), OPTIMIZER)
    lr_head_scale: float = knob(1.0, "learning rate of the linear head's weight, as a multiple of lr",
                                Interval(0, open_low=True), OPTIMIZER)
    tta_shift: bool = knob(False, "also score each evaluated image shifted by one pixel up-left and down-right "
                           "(reflected), weighted as airbench: half the image's views, a quarter each shift's", BOOL,
                           fidelity=True)
    augment: Augment = field(default_factory=Augment)

    def __post_init__(self) -> None:
        knobs.check(self, self.TABLE)


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
        return knobs.build(cls, data, "config")

    @classmethod
    def from_json(cls, text: str) -> Config:
        return cls.from_dict(json.loads(text))

    def summary(self) -> str:
        """The configuration in one line of short words (:func:`cerberus.knobs.summary`)."""
        return " ".join(knobs.summary(self.arch) + knobs.summary(self.recipe))


TABLES = {"arch": Arch, "recipe": Recipe, "augment": Augment}


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
