"""The exact size of ``cerberus.model.ResNet(arch)`` in closed form: what the budget check reads.

``of(arch)`` returns its parameter count and its forward FLOPs for one 32x32 image, counted as
torch's ``FlopCounterMode`` counts them (a convolution 2 * C_in * C_out * k^2 per output pixel,
the linear layer 2 * inputs * outputs; BatchNorm, ReLU, the adds and the pool count nothing).
It works stage by stage, not block by block, imports neither torch nor the model, and takes
microseconds at any depth. :func:`cerberus.model.measure`, which builds the model on the meta
device and counts its forward, is the oracle: the tests hold the two equal on thousands of
random architectures of every stage count, kernel, skip kernel and pool.

The family (see :mod:`cerberus.model`): a stem conv 3 -> ``widths[0]`` (kernel F) and its
BatchNorm; per stage, ``blocks[i]`` BasicBlocks of width ``widths[i]``, two F x F convs and two
BatchNorms each, the first one striding 2 in every stage after the first, with a K x K conv and
a BatchNorm as its shortcut where it changes the shape; an average pool of kernel P (0: the
whole last map) and a linear layer, with bias, to 10 classes.
"""

from __future__ import annotations

from typing import NamedTuple

from cerberus.config import NUM_CLASSES, Arch

IMAGE_SIDE = 32


class Size(NamedTuple):
    params: int
    flops: int  # forward FLOPs for one 32x32 image, as torch's FlopCounterMode counts them


class Stage(NamedTuple):
    blocks: int
    c_in: int  # channels into its first block
    width: int
    side: int  # every block's output map is side x side
    projection: bool  # its first block has a conv + BatchNorm shortcut


def stages(arch: Arch) -> list[Stage]:
    """The stages of ``ResNet(arch)`` in order, as cerberus.model builds them."""
    out, c_in, side = [], arch.widths[0], IMAGE_SIDE
    for i, (n, width) in enumerate(zip(arch.blocks, arch.widths)):
        stride = 2 if i > 0 else 1
        side = (side - 1) // stride + 1  # an odd kernel with padding kernel // 2, and a 1x1 without padding
        out.append(Stage(n, c_in, width, side, stride != 1 or c_in != width))
        c_in = width
    return out


def features(arch: Arch) -> int:
    """Inputs of the final linear layer: the last width times the pooled map's area."""
    m = arch.final_map_size
    pool = arch.pool or m
    return arch.widths[-1] * ((m - pool) // pool + 1) ** 2


def conv_weights(arch: Arch) -> list[tuple[int, int]]:
    """(elements, how many) of the conv weights and the linear weight, stem first."""
    k2, s2 = arch.conv_kernel ** 2, arch.skip_kernel ** 2
    sizes = [(3 * arch.widths[0] * k2, 1), (features(arch) * NUM_CLASSES, 1)]
    for s in stages(arch):
        sizes += [(s.c_in * s.width * k2, 1), (s.width * s.width * k2, 2 * s.blocks - 1)]
        if s.projection:
            sizes.append((s.c_in * s.width * s2, 1))
    return sizes


def norms(arch: Arch) -> tuple[int, int]:
    """(BatchNorm layers, their channels in all): each has a weight and a bias per channel."""
    layers, channels = 1, arch.widths[0]
    for s in stages(arch):
        n = 2 * s.blocks + s.projection
        layers, channels = layers + n, channels + n * s.width
    return layers, channels


def params(arch: Arch) -> int:
    """Parameters of ``ResNet(arch)``: conv and linear weights, BatchNorm's affine pairs, the
    linear layer's bias."""
    return sum(size * n for size, n in conv_weights(arch)) + 2 * norms(arch)[1] + NUM_CLASSES


def flops(arch: Arch) -> int:
    """Forward FLOPs of one image: each conv's weight times its output pixels, doubled
    (a multiply and an add), and the linear layer's the same with one output "pixel"."""
    k2, s2 = arch.conv_kernel ** 2, arch.skip_kernel ** 2
    total = 3 * arch.widths[0] * k2 * IMAGE_SIDE ** 2 + features(arch) * NUM_CLASSES
    for s in stages(arch):
        area = s.side ** 2
        total += area * (s.c_in * s.width * k2 + (2 * s.blocks - 1) * s.width * s.width * k2
                         + s.projection * s.c_in * s.width * s2)
    return 2 * total


def of(arch: Arch) -> Size:
    """Exact parameters and forward FLOPs per image of ``ResNet(arch)`` (see the module docstring)."""
    return Size(params(arch), flops(arch))
