"""Batched augmentation of image tensors, on whatever device the batch lives.

Each function takes a float batch (N, C, H, W) and returns a new one; randomness comes from
torch's generator on the batch's device. Nothing loops over images in Python, so the same code
serves a CPU test and a GPU-resident training loop.
"""

from __future__ import annotations

import math

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


def crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Random crop after zero padding: each image shifts by up to ``padding`` pixels each way."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=x.device)
    rows = (dy + torch.arange(h, device=x.device).view(1, h, 1)).expand(n, h, w)
    cols = (dx + torch.arange(w, device=x.device).view(1, 1, w)).expand(n, h, w)
    index = (rows * (w + 2 * padding) + cols).flatten(1).unsqueeze(1).expand(-1, x.shape[1], -1)
    return padded.flatten(2).gather(2, index).view_as(x)


def flip(x: torch.Tensor) -> torch.Tensor:
    """Mirror half of the images left to right."""
    mask = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
    return torch.where(mask, x.flip(3), x)


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

    Every draw (which of the two, the mixing weight, the box) is made on the batch's device and
    the box is a mask, not a slice: the step never waits for the device to hand a number to
    Python, and its shapes never change (what a CUDA graph needs). With both on, both are
    computed and one is kept."""
    n, _, h, w = x.shape
    perm = torch.randperm(n, device=x.device)
    mixed = _cutmix(x, perm, cutmix_alpha) if cutmix_alpha > 0 else None
    blended = _mixup(x, perm, mixup_alpha) if mixup_alpha > 0 else None
    if mixed is None or blended is None:
        out, lam = mixed or blended  # type: ignore[misc]
    else:
        pick = torch.rand((), device=x.device) < 0.5
        out, lam = torch.where(pick, mixed[0], blended[0]), torch.where(pick, mixed[1], blended[1])
    return out, lam * y + (1 - lam) * y[perm]


def _beta(alpha: float, device: torch.device) -> torch.Tensor:
    a = torch.tensor(float(alpha), device=device)
    return torch.distributions.Beta(a, a, validate_args=False).sample()  # validation would read the tensor on the host


def _mixup(x: torch.Tensor, perm: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    lam = _beta(alpha, x.device)
    return lam * x + (1 - lam) * x[perm], lam


def _cutmix(x: torch.Tensor, perm: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A box of area 1 - lam (lam ~ Beta(alpha, alpha)) pasted from the shuffled batch; the
    labels mix by the box's actual area."""
    h, w = x.shape[2:]
    side = (1 - _beta(alpha, x.device)).sqrt()
    ch, cw = (h * side).floor(), (w * side).floor()
    top = (torch.rand((), device=x.device) * (h - ch + 1)).floor()
    left = (torch.rand((), device=x.device) * (w - cw + 1)).floor()
    rows = torch.arange(h, device=x.device).view(h, 1)
    cols = torch.arange(w, device=x.device).view(1, w)
    box = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)
    return torch.where(box, x[perm], x), 1 - ch * cw / (h * w)


def trivial_augment(x: torch.Tensor) -> torch.Tensor:
    """TrivialAugmentWide on a batch of RGB images in [0, 1]: each image gets one operation of
    :data:`TRIVIAL_OPS` at one of :data:`TRIVIAL_BINS` magnitudes, uniformly at random, with a
    random sign where the operation has one.

    The batch is shuffled and cut into one equal group per operation (sizes differ by at most
    one), so every operation runs once, on its own images only, with shapes known in advance:
    no host sync and no loop over images. Each image's operation is still uniform; only the
    counts per batch are balanced instead of drawn."""
    n = x.shape[0]
    level = torch.randint(0, TRIVIAL_BINS, (n,), device=x.device).to(x.dtype) / (TRIVIAL_BINS - 1)
    sign = torch.randint(0, 2, (n,), device=x.device).to(x.dtype) * 2 - 1
    magnitude = level * sign
    out = torch.empty_like(x)
    for name, idx in zip(TRIVIAL_OPS, torch.tensor_split(torch.randperm(n, device=x.device), len(TRIVIAL_OPS))):
        if len(idx):
            out[idx] = trivial_op(name, x[idx], magnitude[idx])
    return out


def trivial_op(name: str, x: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """Operation ``name`` of :data:`TRIVIAL_OPS` on RGB images in [0, 1], image ``i`` at
    ``magnitude[i]`` in [-1, 1], a signed fraction of the operation's largest magnitude
    (posterize and solarize ignore the sign; identity, autocontrast and equalize the whole).
    Each matches torchvision's functional op as TrivialAugmentWide calls it: nearest-pixel
    sampling and black fill, shears about the top-left corner, rotations about the centre."""
    mag = magnitude.to(x.dtype).view(-1, 1, 1, 1)
    factor = 1 + MAX_ENHANCE * mag
    if name == "identity":
        return x
    if name in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate"):
        return _warp(x, name, magnitude.to(x.dtype))
    if name == "brightness":
        return _blend(x, torch.zeros_like(x), factor)
    if name == "color":
        return _blend(x, _gray(x), factor)
    if name == "contrast":
        return _blend(x, _gray(x).mean((1, 2, 3), keepdim=True), factor)
    if name == "sharpness":
        return _blend(x, _smoothed(x), factor)
    if name == "posterize":
        levels = 2 ** (8 - torch.round(mag.abs() * (8 - MIN_BITS)))
        return (x * levels).floor().clamp(max=levels - 1) / levels
    if name == "solarize":
        return torch.where(x >= 1 - mag.abs(), 1 - x, x)
    # torchvision is imported here, not above: importing it costs a second (it loads dynamo),
    # which every command-line call would pay
    from torchvision.transforms.v2 import functional as TF

    if name == "autocontrast":
        return TF.autocontrast(x)
    if name == "equalize":
        return TF.equalize(x)
    raise ValueError(f"unknown operation {name!r}; allowed: {', '.join(TRIVIAL_OPS)}")


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1 - factor) * other).clamp(0, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (x * x.new_tensor(_GRAY).view(1, 3, 1, 1)).sum(1, keepdim=True)


def _smoothed(x: torch.Tensor) -> torch.Tensor:
    """torchvision's sharpness reference: a 3x3 smoothing inside, the 1-pixel border as it was."""
    c = x.shape[1]
    kernel = x.new_tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]).div(13).expand(c, 1, 3, 3)
    out = x.clone()
    out[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=c)
    return out


def _warp(x: torch.Tensor, name: str, magnitude: torch.Tensor) -> torch.Tensor:
    """A geometric operation, one affine map per image.

    ``affine_grid`` takes, per image, the map from output to input in coordinates where the
    image spans [-1, 1] both ways, so the top-left corner is (-1, -1) and a pixel is 2 / W wide.
    """
    h, w = x.shape[2:]
    one, zero = torch.ones_like(magnitude), torch.zeros_like(magnitude)
    if name == "rotate":
        angle = torch.deg2rad(MAX_ROTATE * magnitude)
        cos, sin = angle.cos(), angle.sin()
        rows = [[cos, -sin * h / w, zero], [sin * w / h, cos, zero]]
    elif name.startswith("shear"):
        # x_in = x_out + s * (y_out - top); in these units the y offset scales by h / w
        s = MAX_SHEAR * magnitude
        rows = ([[one, s * h / w, s * h / w], [zero, one, zero]] if name == "shear_x"
                else [[one, zero, zero], [s * w / h, one, s * w / h]])
    else:
        shift = torch.trunc(MAX_TRANSLATE * magnitude)  # whole pixels, as torchvision
        rows = ([[one, zero, -2 * shift / w], [zero, one, zero]] if name == "translate_x"
                else [[one, zero, zero], [zero, one, -2 * shift / h]])
    theta = torch.stack([torch.stack(row, 1) for row in rows], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def apply(x: torch.Tensor, y: torch.Tensor, aug: Augment, mean: torch.Tensor,
          std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole training-time pipeline for one batch of images in [0, 1], normalised on the
    way (``(x - mean) / std``); ``y`` is one-hot (or soft) labels.

    TrivialAugment acts before normalising, because its colour operations are defined on
    [0, 1] images; the rest after, so crop padding, rotation fill and cutout are the mean colour.
    """
    if aug.trivial_augment:
        x = trivial_augment(x)
    x = (x - mean) / std
    if aug.crop_padding:
        x = crop(x, aug.crop_padding)
    if aug.flip:
        x = flip(x)
    if aug.rotation:
        x = rotate(x, aug.rotation)
    if aug.cutout_holes:
        x = cutout(x, aug.cutout_holes, aug.cutout_length)
    if aug.mixup_alpha > 0 or aug.cutmix_alpha > 0:
        x, y = mix(x, y, aug.mixup_alpha, aug.cutmix_alpha)
    return x, y
