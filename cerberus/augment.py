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
    """Mixup or cutmix (one per batch, equal chance when both are on) on images and soft labels."""
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or torch.rand(()).item() < 0.5)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(x.shape[0], device=x.device)
    if use_cutmix:
        h, w = x.shape[2:]
        ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        top, left = int(torch.randint(0, h - ch + 1, ())), int(torch.randint(0, w - cw + 1, ()))
        x = x.clone()
        x[:, :, top : top + ch, left : left + cw] = x[perm, :, top : top + ch, left : left + cw]
        lam = 1 - (ch * cw) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, lam * y + (1 - lam) * y[perm]


def apply(x: torch.Tensor, y: torch.Tensor, aug: Augment) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole training-time pipeline for one batch: ``y`` is one-hot (or soft) labels."""
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
