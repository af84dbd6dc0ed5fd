"""The exact size of ``cerberus.model.ResNet(arch)`` in closed form: what the budget check reads.

``of(arch)`` returns its parameter count, its forward FLOPs for one 32x32 image, and the FLOPs
of a training step's forward and backward per image, counted as torch's ``FlopCounterMode``
counts them (a convolution 2 * C_in * C_out * k^2 per output pixel, the linear layer 2 * inputs
* outputs; BatchNorm, the activations, the adds and the pools count nothing; backward, per conv
or linear layer, its forward's FLOPs again for the gradient of its input, unless that is the
image, and again for the gradient of its weight, unless that is frozen). It works stage by
stage, not block by block, imports neither torch nor the model, and takes microseconds at any
depth. :func:`cerberus.model.measure`, which builds the model on the meta device and counts its
forward and backward, is the oracle: the tests hold the two equal on random architectures of
every choice the family has.

The family (see :mod:`cerberus.model`): a stem (a conv 3 -> ``widths[0]`` of kernel F and its
BatchNorm, or a frozen 2x2 whitening conv 3 -> 24 with a bias); per stage, ``blocks[i]``
BasicBlocks of width ``widths[i]``, two F x F convs and two BatchNorms each, the first one
halving the map (by a stride in every stage after the first, or by a max-pool after it in every
stage), with a K x K conv and a BatchNorm as its shortcut where the shape changes (where only
the map halves under a max-pool, the shortcut is that pool; plain blocks have none); a pool of kernel P (0: the whole
last map) and a linear layer, with bias, to 10 classes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from cerberus.config import NUM_CLASSES, WHITEN_KERNEL, WHITEN_WIDTH, Arch, Config

IMAGE_SIDE = 32


class Size(NamedTuple):
    params: int
    flops: int  # forward FLOPs for one 32x32 image, as torch's FlopCounterMode counts them
    train_flops: int  # FLOPs of a training forward and backward, per image


class Stage(NamedTuple):
    blocks: int
    c_in: int  # channels into its first block
    width: int
    side_in: int  # the map its first conv runs on when it pools after that conv
    side: int  # every block's output map is side x side
    pooled: bool  # its first conv runs at side_in, then a 2x2 max-pool
    projection: bool  # its first block has a conv + BatchNorm shortcut


def stages(arch: Arch) -> list[Stage]:
    """The stages of ``ResNet(arch)`` in order, as cerberus.model builds them."""
    out, c_in = [], stem_width(arch)
    for i, ((side_in, side), n, width) in enumerate(zip(arch.sides, arch.blocks, arch.widths)):
        pooled = arch.downsample == "pool"
        strided = not pooled and i > 0
        out.append(Stage(n, c_in, width, side_in, side, pooled, arch.residual and (strided or c_in != width)))
        c_in = width
    return out


def stem_width(arch: Arch) -> int:
    return WHITEN_WIDTH if arch.stem == "whiten" else arch.widths[0]


def features(arch: Arch) -> int:
    """Inputs of the final linear layer: the last width times the pooled map's area."""
    m = arch.final_map_size
    pool = arch.pool or m
    return arch.widths[-1] * ((m - pool) // pool + 1) ** 2


def _stem(arch: Arch) -> tuple[int, int]:
    """(weight elements, output pixels) of the stem's conv."""
    if arch.stem == "whiten":
        return 3 * WHITEN_WIDTH * WHITEN_KERNEL ** 2, (IMAGE_SIDE - WHITEN_KERNEL + 1) ** 2
    return 3 * arch.widths[0] * arch.conv_kernel ** 2, IMAGE_SIDE ** 2


def conv_weights(arch: Arch) -> list[tuple[int, int]]:
    """(elements, how many) of the conv weights and the linear weight, stem first."""
    k2, s2 = arch.conv_kernel ** 2, arch.skip_kernel ** 2
    sizes = [(_stem(arch)[0], 1), (features(arch) * NUM_CLASSES, 1)]
    for s in stages(arch):
        sizes += [(s.c_in * s.width * k2, 1), (s.width * s.width * k2, 2 * s.blocks - 1)]
        if s.projection:
            sizes.append((s.c_in * s.width * s2, 1))
    return sizes


def norms(arch: Arch) -> tuple[int, int]:
    """(BatchNorm layers, their channels in all): each has a weight and a bias per channel."""
    layers, channels = (0, 0) if arch.stem == "whiten" else (1, arch.widths[0])
    for s in stages(arch):
        n = 2 * s.blocks + s.projection
        layers, channels = layers + n, channels + n * s.width
    return layers, channels


def params(arch: Arch) -> int:
    """Parameters of ``ResNet(arch)``: conv and linear weights, BatchNorm's affine pairs, the
    linear layer's bias and a whitening stem's bias."""
    bias = WHITEN_WIDTH if arch.stem == "whiten" else 0
    return sum(size * n for size, n in conv_weights(arch)) + 2 * norms(arch)[1] + NUM_CLASSES + bias


def _layers(arch: Arch) -> tuple[int, int, int]:
    """Forward FLOPs of one image, halved (multiply-adds): (the stem's, the blocks', the head's)."""
    k2, s2 = arch.conv_kernel ** 2, arch.skip_kernel ** 2
    weight, pixels = _stem(arch)
    blocks = 0
    for s in stages(arch):
        first = s.side_in ** 2 if s.pooled else s.side ** 2
        blocks += (first * s.c_in * s.width * k2 + s.side ** 2 * ((2 * s.blocks - 1) * s.width * s.width * k2
                                                                  + s.projection * s.c_in * s.width * s2))
    return weight * pixels, blocks, features(arch) * NUM_CLASSES


def flops(arch: Arch) -> int:
    """Forward FLOPs of one image: each conv's weight times its output pixels, doubled
    (a multiply and an add), and the linear layer's the same with one output "pixel"."""
    return 2 * sum(_layers(arch))


def train_flops(arch: Arch) -> int:
    """FLOPs of a training forward and backward, per image: every layer's forward three times
    (forward, input gradient, weight gradient), less the stem's input gradient (the image needs
    none) and, for a whitening stem, its frozen weight's gradient."""
    stem, blocks, head = _layers(arch)
    return 2 * (stem * (1 if arch.stem == "whiten" else 2) + 3 * (blocks + head))


def of(arch: Arch) -> Size:
    """Exact parameters, forward FLOPs and training FLOPs per image of ``ResNet(arch)`` (see the module docstring)."""
    return Size(params(arch), flops(arch), train_flops(arch))


class Plan(NamedTuple):
    """How long a fit trains: ``steps`` in all, ``steps_per_epoch`` full batches an epoch,
    ``epochs`` passes (the last one short when a FLOP budget ends it midway)."""

    steps: int
    steps_per_epoch: int
    epochs: int
    flops: int  # training FLOPs of all the steps: steps x batch x train_flops(arch)


def plan(config: Config, train_images: int) -> Plan:
    """The fit of ``config`` on ``train_images`` images: its recipe's epochs, or as many steps as
    its ``budget`` (PFLOP) buys at :func:`train_flops` per image, at least one."""
    r = config.recipe
    per_epoch = train_images // r.batch_size
    step = train_flops(config.arch) * r.batch_size
    steps = max(1, math.floor(r.budget * 1e15 / step)) if r.budget > 0 else per_epoch * r.epochs
    return Plan(steps, per_epoch, math.ceil(steps / max(per_epoch, 1)), steps * step)
