"""Batched augmentation of image tensors, on whatever device the batch lives.

Each function takes a float batch (N, C, H, W) and returns a new one; randomness comes from
torch's generator on the batch's device. Nothing loops over images in Python, so the same code
serves a CPU test and a GPU-resident training loop.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cerberus.config import Augment

# TrivialAugmentWide (Mueller and Hutter, 2021) as torchvision defines it: 14 operations and 31
# magnitude bins. The magnitude of an operation at bin b is b / 30 of its largest, below.
TRIVIAL_OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness",
               "color", "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
TRIVIAL_BINS = 31
MAX_SHEAR = 0.99  # shear factor (tan of the angle)
MAX_TRANSLATE = 32.0  # pixels
MAX_ROTATE = 135.0  # degrees
MAX_ENHANCE = 0.99  # brightness, color, contrast, sharpness: a factor of 1 +- this
MIN_BITS = 2  # posterize keeps 8 down to this many bits
_GRAY = (0.2989, 0.587, 0.114)  # torchvision's RGB-to-grayscale weights


def crop(x: torch.Tensor, padding: int, fill: str = "mean") -> torch.Tensor:
    """Random crop after padding: each image shifts by up to ``padding`` pixels each way. The
    padding is zero ("mean": the mean colour of a normalised batch) or the image reflected at
    its edge ("reflect", airbench's translation)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4, mode="reflect") if fill == "reflect" else F.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=x.device)
    rows = (dy + torch.arange(h, device=x.device).view(1, h, 1)).expand(n, h, w)
    cols = (dx + torch.arange(w, device=x.device).view(1, 1, w)).expand(n, h, w)
    index = (rows * (w + 2 * padding) + cols).flatten(1).unsqueeze(1).expand(-1, x.shape[1], -1)
    return padded.flatten(2).gather(2, index).view_as(x)


def flip(x: torch.Tensor, which: torch.Tensor | None = None) -> torch.Tensor:
    """Mirror the images that ``which`` (a bool per image) says, by default a random half, left to right."""
    mask = torch.rand(x.shape[0], device=x.device) < 0.5 if which is None else which
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate each image by a uniform angle in [-degrees, degrees] (bilinear, zero fill)."""
    angle = (torch.rand(x.shape[0], device=x.device) * 2 - 1) * math.radians(degrees)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def cutout(x: torch.Tensor, holes: int, length: int) -> torch.Tensor:
    """Zero ``holes`` squares of side ``length`` per image, centred anywhere (clipped at edges)."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, holes, 1, 1), device=x.device)
    cx = torch.randint(0, w, (n, holes, 1, 1), device=x.device)
    ys = torch.arange(h, device=x.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, 1, w)
    inside = ((ys - cy).abs() * 2 < length) & ((xs - cx).abs() * 2 < length)
    return x * (~inside.any(1, keepdim=True)).to(x.dtype)


def mix(x: torch.Tensor, y: torch.Tensor, mixup_alpha: float, cutmix_alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix (one per batch, equal chance when both are on) on images and soft labels.

    Both are one ``lerp`` towards the shuffled batch: by ``1 - lam`` everywhere (mixup) or by 1
    inside a box and 0 outside (cutmix), and the labels by the share each image kept. Every
    draw (which of the two, the weight, the box) is made on the batch's device and the box is a
    mask, not a slice: the step never waits for the device to hand a number to Python, and its
    shapes never change (what a CUDA graph needs)."""
    h, w = x.shape[2:]
    perm = torch.randperm(x.shape[0], device=x.device)
    if cutmix_alpha > 0:
        box, kept_cut = _box(h, w, cutmix_alpha, x.device)
    if mixup_alpha > 0:
        kept_mix = _beta(mixup_alpha, x.device)
    if cutmix_alpha > 0 and mixup_alpha > 0:
        cut = torch.rand((), device=x.device) < 0.5
        weight, kept = torch.where(cut, box, 1 - kept_mix), torch.where(cut, kept_cut, kept_mix)
    else:
        weight, kept = (box, kept_cut) if cutmix_alpha > 0 else (1 - kept_mix, kept_mix)
    return torch.lerp(x, x[perm], weight), torch.lerp(y[perm], y, kept)


def _beta(alpha: float, device: torch.device) -> torch.Tensor:
    a = torch.full((), float(alpha), device=device)  # a fill, not a copy from the host: a CUDA graph can hold it
    return torch.distributions.Beta(a, a, validate_args=False).sample()  # validation would read the tensor on the host


def _box(h: int, w: int, alpha: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Cutmix's box as an (h, w) mask of ones, of area about 1 - lam (lam ~ Beta(alpha, alpha))
    and anywhere it fits, and the share of the image outside it (what the labels mix by)."""
    side = (1 - _beta(alpha, device)).sqrt()
    ch, cw = (h * side).floor(), (w * side).floor()
    top = (torch.rand((), device=device) * (h - ch + 1)).floor()
    left = (torch.rand((), device=device) * (w - cw + 1)).floor()
    rows = torch.arange(h, device=device).view(h, 1)
    cols = torch.arange(w, device=device).view(1, w)
    box = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)
    return box.float(), 1 - ch * cw / (h * w)


def trivial_augment(x: torch.Tensor) -> torch.Tensor:
    """TrivialAugmentWide on a batch of RGB images in [0, 1]: each image gets one operation of
    :data:`TRIVIAL_OPS` at one of :data:`TRIVIAL_BINS` magnitudes, uniformly at random, with a
    random sign where the operation has one.

    The batch is shuffled and cut into one equal group per operation (sizes differ by at most
    one), so each image's operation is uniform while the counts per batch are balanced, not
    drawn. About 56 operations for the whole batch, whatever its size, with no host sync and
    shapes known in advance (what a CUDA graph needs): see :func:`_operations`."""
    n = x.shape[0]
    perm = torch.randperm(n, device=x.device)
    bins = torch.randint(0, 2 * TRIVIAL_BINS, (n,), device=x.device)
    k = len(TRIVIAL_OPS)
    sizes = tuple(n // k + (i < n % k) for i in range(k))
    out = torch.empty_like(x)
    out[perm] = _operations(x[perm], bins, sizes)
    return out


def trivial_op(name: str, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Operation ``name`` of :data:`TRIVIAL_OPS` on RGB images in [0, 1], image ``i`` at signed
    magnitude bin ``level[i]`` in [-30, 30] (the operation's largest magnitude times
    ``level / 30``; posterize and solarize ignore the sign, identity, autocontrast and equalize
    the whole): the batched code :func:`trivial_augment` runs, with every image in one group.
    Each matches torchvision's functional op as TrivialAugmentWide calls it: nearest-pixel
    sampling and black fill, shears about the top-left corner, rotations about the centre."""
    if name not in TRIVIAL_OPS:
        raise ValueError(f"unknown operation {name!r}; allowed: {', '.join(TRIVIAL_OPS)}")
    sizes = tuple(len(x) if op == name else 0 for op in TRIVIAL_OPS)
    return _operations(x, torch.where(level < 0, level + TRIVIAL_BINS - 1, level + TRIVIAL_BINS), sizes)


def _magnitude(b: int) -> float:
    """The signed fraction of bin ``b`` in [0, 2 * TRIVIAL_BINS): -1 .. -0 for the first
    TRIVIAL_BINS, +0 .. +1 for the rest, so the level and the sign are uniform and independent."""
    level = b - (TRIVIAL_BINS - 1) if b < TRIVIAL_BINS else b - TRIVIAL_BINS
    return level / (TRIVIAL_BINS - 1)


@dataclass(frozen=True)
class _Tables:
    """Everything the operations look up, per magnitude bin and per position in the batch,
    computed once (in float64, as torchvision computes its matrices in Python) for a batch
    shape: a step then only indexes them."""

    theta: torch.Tensor  # (5, bins, 2, 3): the affine map of each geometric operation at each bin
    kinds: torch.Tensor  # (geometric images,): which of the five each position gets
    factor: torch.Tensor  # (bins, 1, 1, 1): 1 + MAX_ENHANCE * magnitude, the blends' factor
    # per position (blended images, 1, 1, 1), the blend's other image as weights of the smoothed
    # image, the grayscale one and its mean (all three zero: black, for brightness)
    weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    levels: torch.Tensor  # (bins, 1, 1, 1): posterize's 2 ** bits
    threshold: torch.Tensor  # (bins, 1, 1, 1): solarize's
    gray: torch.Tensor  # (1, 3, 1, 1): RGB-to-grayscale weights
    smoothing: torch.Tensor  # (3, 1, 3, 3): sharpness's kernel
    interior: torch.Tensor  # (1, 1, h, w): where the smoothed image replaces the original


@functools.lru_cache(maxsize=16)
def _tables(sizes: tuple[int, ...], h: int, w: int, device: torch.device, dtype: torch.dtype) -> _Tables:
    mags = [_magnitude(b) for b in range(2 * TRIVIAL_BINS)]
    theta = []
    for m in mags:
        s, shift, a = MAX_SHEAR * m, math.trunc(MAX_TRANSLATE * m), math.radians(MAX_ROTATE * m)
        # affine_grid's map from output to input, where the image spans [-1, 1] both ways (the
        # top-left corner is (-1, -1), a pixel is 2 / w wide): shears about the top-left
        # corner, x_in = x_out + s * (y_out - top), in these units the y offset scaled by h / w
        theta.append([[[1, s * h / w, s * h / w], [0, 1, 0]], [[1, 0, 0], [s * w / h, 1, s * w / h]],
                      [[1, 0, -2 * shift / w], [0, 1, 0]], [[1, 0, 0], [0, 1, -2 * shift / h]],
                      [[math.cos(a), -math.sin(a) * h / w, 0], [math.sin(a) * w / h, math.cos(a), 0]]])
    counts = dict(zip(TRIVIAL_OPS, sizes))
    geometric, blends = TRIVIAL_OPS[1:6], TRIVIAL_OPS[6:10]
    kinds = [i for i, name in enumerate(geometric) for _ in range(counts[name])]
    weights = [[float(name == other) for name in blends for _ in range(counts[name])]
               for other in ("sharpness", "color", "contrast")]
    bits = [8 - round(abs(m) * (8 - MIN_BITS)) for m in mags]
    interior = torch.zeros(1, 1, h, w, dtype=torch.bool)
    interior[..., 1:-1, 1:-1] = True

    def table(values: object, *shape: int) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64).to(device, dtype).view(*shape)

    return _Tables(
        theta=table(theta, 2 * TRIVIAL_BINS, 5, 2, 3).transpose(0, 1).contiguous(),
        kinds=torch.tensor(kinds, dtype=torch.long, device=device),
        factor=table([1 + MAX_ENHANCE * m for m in mags], -1, 1, 1, 1),
        weights=tuple(table(w, -1, 1, 1, 1) for w in weights),  # type: ignore[arg-type]
        levels=table([2.0**b for b in bits], -1, 1, 1, 1),
        threshold=table([1 - abs(m) for m in mags], -1, 1, 1, 1),
        gray=table(_GRAY, 1, 3, 1, 1),
        smoothing=table([[1, 1, 1], [1, 5, 1], [1, 1, 1]], 1, 1, 3, 3).div(13).expand(3, 1, 3, 3).contiguous(),
        interior=interior.to(device))


def _operations(x: torch.Tensor, bins: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """The first ``sizes[0]`` images get :data:`TRIVIAL_OPS`'s first operation, the next
    ``sizes[1]`` the second, and so on, image ``i`` at magnitude bin ``bins[i]`` (see
    :func:`_magnitude`). One ``affine_grid`` + ``grid_sample`` for all five geometric
    operations, one blend for brightness, color, contrast and sharpness, one pass each for
    posterize, solarize, autocontrast and equalize; magnitudes and matrices are looked up."""
    t = _tables(sizes, x.shape[2], x.shape[3], x.device, x.dtype)
    groups = (sizes[0], sum(sizes[1:6]), sum(sizes[6:10]), *sizes[10:])
    parts, levels = list(x.split(groups)), list(bins.split(groups))
    kernels = (None, _geometric, _blend, _posterize, _solarize, _autocontrast, _equalize)
    for i, kernel in enumerate(kernels):
        if kernel is not None and groups[i]:
            parts[i] = kernel(parts[i], levels[i], t)
    return torch.cat(parts)


def _geometric(x: torch.Tensor, bins: torch.Tensor, t: _Tables) -> torch.Tensor:
    grid = F.affine_grid(t.theta[t.kinds, bins], list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _blend(x: torch.Tensor, bins: torch.Tensor, t: _Tables) -> torch.Tensor:
    """torchvision's ``factor * x + (1 - factor) * other``, with ``other`` black (brightness),
    the grayscale image (color), its mean (contrast), or the smoothed image (sharpness)."""
    gray = (x * t.gray).sum(1, keepdim=True)
    smoothed = torch.where(t.interior, F.conv2d(x, t.smoothing, padding=1, groups=x.shape[1]), x)
    other = torch.addcmul(torch.addcmul(smoothed * t.weights[0], gray, t.weights[1]),
                          gray.mean((1, 2, 3), keepdim=True), t.weights[2])
    return torch.lerp(other, x, t.factor[bins]).clamp_(0, 1)


def _posterize(x: torch.Tensor, bins: torch.Tensor, t: _Tables) -> torch.Tensor:
    levels = t.levels[bins]
    return (x * levels).floor_().minimum(levels - 1).div_(levels)


def _solarize(x: torch.Tensor, bins: torch.Tensor, t: _Tables) -> torch.Tensor:
    return torch.where(x >= t.threshold[bins], 1 - x, x)


def _autocontrast(x: torch.Tensor, bins: torch.Tensor, t: _Tables) -> torch.Tensor:
    low, high = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    span = high - low
    return torch.where(span > 0, ((x - low) / span).clamp_(0, 1), x)


def _equalize(x: torch.Tensor, bins: torch.Tensor, t: _Tables) -> torch.Tensor:
    """torchvision's (PIL's) histogram equalization, per image and channel, on the image as
    uint8 levels: a level's new value counts the pixels below it, which a sort and a
    ``searchsorted`` give without a histogram. Integers stay exact in float32 (1,024 pixels)."""
    levels = (x * 255.999).floor_().flatten(2)  # torchvision's float-to-uint8 conversion
    below = torch.searchsorted(levels.sort(-1).values, levels)
    step = below.amax(-1, keepdim=True).div(255, rounding_mode="floor")  # pixels under the top level / 255
    lut = (below + step.div(2, rounding_mode="floor")).div_(step.clamp_min(1), rounding_mode="floor").clamp_max_(255)
    return torch.where(step > 0, lut, levels).div_(255).view_as(x)


def apply(x: torch.Tensor, y: torch.Tensor, aug: Augment, mean: torch.Tensor, std: torch.Tensor,
          flips: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole training-time pipeline for one batch of images in [0, 1], normalised on the
    way (``(x - mean) / std``); ``y`` is one-hot (or soft) labels; ``flips`` says which images
    to mirror (alternating flips, kept by the trainer), else a random half is.

    TrivialAugment acts before normalising, because its colour operations are defined on
    [0, 1] images; the rest after, so crop padding, rotation fill and cutout are the mean colour.
    """
    if aug.trivial_augment:
        x = trivial_augment(x)
    x = (x - mean) / std
    if aug.crop_padding:
        x = crop(x, aug.crop_padding, aug.crop_fill)
    if aug.flip:
        x = flip(x, flips)
    if aug.rotation:
        x = rotate(x, aug.rotation)
    if aug.cutout_holes:
        x = cutout(x, aug.cutout_holes, aug.cutout_length)
    if aug.mixup_alpha > 0 or aug.cutmix_alpha > 0:
        x, y = mix(x, y, aug.mixup_alpha, aug.cutmix_alpha)
    return x, y
