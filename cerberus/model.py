"""The ResNet family cerberus searches, and the meta-device oracle of its size.

``ResNet(arch)`` is the whole model, in the shape of kuangliu/pytorch-cifar's ResNet:
a 3 -> widths[0] stem (no max-pool), stages of BasicBlocks, average pool, linear to 10 classes.
With ``Arch((3, 5, 3), (64, 128, 256))`` it is the course project's ResNet-24, 4,918,602
parameters.

``measure(arch)`` builds the same module on the meta device (no memory, no weights) and counts
its parameters and its forward FLOPs per image with torch's FlopCounterMode: tens of
milliseconds. It is the oracle of :mod:`cerberus.size`, the closed form every command uses.

``latency_ms(model, device, precision)`` times inference of a batch of :data:`LATENCY_BATCH`
images the way a trial evaluates (in the trial's :class:`cerberus.precision.Precision`): the
median of several timed forwards after warm-up, with the device drained around each.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cerberus.config import NUM_CLASSES, Arch
from cerberus.precision import Precision
from cerberus.size import Size

LATENCY_BATCH = 256


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, kernel: int, skip_kernel: int) -> None:
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv2d(c_in, c_out, kernel, stride, pad, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel, 1, pad, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, skip_kernel, stride, skip_kernel // 2, bias=False),
                nn.BatchNorm2d(c_out),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, arch: Arch) -> None:
        super().__init__()
        k = arch.conv_kernel
        self.stem = nn.Sequential(
            nn.Conv2d(3, arch.widths[0], k, 1, k // 2, bias=False),
            nn.BatchNorm2d(arch.widths[0]),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        c_in = arch.widths[0]
        for stage, (n_blocks, width) in enumerate(zip(arch.blocks, arch.widths)):
            for b in range(n_blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                layers.append(BasicBlock(c_in, width, stride, k, arch.skip_kernel))
                c_in = width
        self.layers = nn.Sequential(*layers)
        m = arch.final_map_size
        pool = arch.pool or m
        self.pool = nn.AvgPool2d(pool)
        side = (m - pool) // pool + 1
        self.linear = nn.Linear(c_in * side * side, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.layers(self.stem(x)))
        return self.linear(out.flatten(1))


def measure(arch: Arch) -> Size:
    """Parameter count and FLOPs per image of ``ResNet(arch)``, counted on the meta device."""
    with torch.device("meta"):
        model = ResNet(arch).eval()
        x = torch.empty(1, 3, 32, 32)
    params = sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter:
        model(x)
    return Size(params, counter.get_total_flops())


@torch.no_grad()
def latency_ms(model: nn.Module, device: torch.device, precision: Precision, batch: int = LATENCY_BATCH) -> float:
    """Median milliseconds of one forward pass of ``batch`` random images on ``device``."""
    cuda = device.type == "cuda"
    model.eval()
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=precision.memory_format)
    warmup, reps = (5, 20) if cuda else (1, 5)  # a CPU forward is long enough to time alone
    times = []
    for i in range(warmup + reps):
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with precision.autocast():
            model(x)
        if cuda:
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)
