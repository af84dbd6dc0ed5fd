"""The ResNet family cerberus searches, and the meta-device oracle of its size.

``ResNet(arch)`` is the whole model, in the shape of kuangliu/pytorch-cifar's ResNet: a stem,
stages of BasicBlocks, a pool, a linear layer to 10 classes. With ``Arch((3, 5, 3), (64, 128,
256))`` and every other field at its default it is the course project's ResNet-24, 4,918,602
parameters. The other fields are the choices of the fast CIFAR-10 recipes (Page's "How to train
your ResNet", hlb-CIFAR10, Keller Jordan's airbench), each off by default:

* ``stem = "whiten"``: a frozen 2x2 conv whose 24 filters whiten the image's 2x2 patches (the
  eigenvectors of their covariance over training images, scaled by 1/sqrt(eigenvalue), and their
  negatives), with a trainable bias, then the activation: :meth:`ResNet.whiten` sets it.
* ``downsample = "pool"``: every stage (the first included) runs its first conv at the incoming
  resolution and max-pools by 2 right after it, so its second conv runs at half the resolution;
  the shortcut max-pools too (and projects when the width changes).
* ``activation = "gelu"``, ``conv_init = "identity"`` (each conv's first filters pass their
  input channel through: ``dirac_``; the head's weights start at std 1/inputs), ``bn_weight = "frozen"`` (BatchNorm's scale fixed at 1),
  ``bn_momentum`` (how fast the running statistics follow), ``pool_type = "max"``, and
  ``residual = False`` (plain blocks, no shortcut: airbench's ConvGroup).

``measure(arch)`` builds the same module on the meta device (no memory, no weights) and counts
its parameters and its forward FLOPs per image with torch's FlopCounterMode, and the FLOPs of a
training forward and backward: tens of milliseconds. It is the oracle of :mod:`cerberus.size`,
the closed form every command uses.

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

from cerberus.config import NUM_CLASSES, WHITEN_KERNEL, WHITEN_WIDTH, Arch
from cerberus.precision import Precision
from cerberus.size import Size

LATENCY_BATCH = 256
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}
WHITEN_EPS = 5e-4  # added to each eigenvalue before its inverse square root (airbench's)
WHITEN_IMAGES = 5000  # training images whose patches make the covariance


def _norm(channels: int, arch: Arch) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels, momentum=arch.bn_momentum)
    norm.weight.requires_grad_(arch.bn_weight == "learned")
    return norm


def _conv(c_in: int, c_out: int, kernel: int, stride: int, arch: Arch) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False)
    if arch.conv_init == "identity":  # the first filters pass a channel through, the rest keep torch's init
        with torch.no_grad():
            nn.init.dirac_(conv.weight[: min(c_in, c_out)])
    return conv


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, down: bool, arch: Arch) -> None:
        super().__init__()
        k, pooled = arch.conv_kernel, down and arch.downsample == "pool"
        stride = 2 if down and not pooled else 1
        self.act = ACTIVATIONS[arch.activation]
        self.conv1 = _conv(c_in, c_out, k, stride, arch)
        self.pool = nn.MaxPool2d(2) if pooled else nn.Identity()
        self.bn1 = _norm(c_out, arch)
        self.conv2 = _conv(c_out, c_out, k, 1, arch)
        self.bn2 = _norm(c_out, arch)
        shortcut: list[nn.Module] = [nn.MaxPool2d(2)] if pooled else []
        if stride != 1 or c_in != c_out:
            shortcut += [_conv(c_in, c_out, arch.skip_kernel, stride, arch), _norm(c_out, arch)]
        self.shortcut = nn.Sequential(*shortcut) if arch.residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.pool(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return self.act(out if self.shortcut is None else out + self.shortcut(x))


class Whiten(nn.Module):
    """A frozen 2x2 patch-whitening conv with a trainable bias, then the activation."""

    def __init__(self, arch: Arch) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, WHITEN_WIDTH, WHITEN_KERNEL, bias=True)
        self.conv.weight.requires_grad_(False)
        self.act = ACTIVATIONS[arch.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """Set the filters from normalised ``images`` (N, 3, H, W): the covariance of their 2x2
        patches, its eigenvectors over sqrt(eigenvalue + eps), and their negatives."""
        k = WHITEN_KERNEL
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * k * k)
        covariance = patches.T @ patches / len(patches)
        values, vectors = torch.linalg.eigh(covariance.double())
        filters = (vectors.T / (values + WHITEN_EPS).sqrt().unsqueeze(1)).float().view(-1, 3, k, k)
        self.conv.weight.copy_(torch.cat([filters, -filters]).to(self.conv.weight))


class ResNet(nn.Module):
    def __init__(self, arch: Arch) -> None:
        super().__init__()
        k, act = arch.conv_kernel, ACTIVATIONS[arch.activation]
        if arch.stem == "whiten":
            self.stem: nn.Module = Whiten(arch)
            c_in = WHITEN_WIDTH
        else:
            self.stem = nn.Sequential(_conv(3, arch.widths[0], k, 1, arch), _norm(arch.widths[0], arch),
                                      nn.ReLU(inplace=True) if act is F.relu else nn.GELU())
            c_in = arch.widths[0]
        layers: list[nn.Module] = []
        for stage, (n_blocks, width) in enumerate(zip(arch.blocks, arch.widths)):
            for b in range(n_blocks):
                down = b == 0 and (stage > 0 or arch.downsample == "pool")
                layers.append(BasicBlock(c_in, width, down, arch))
                c_in = width
        self.layers = nn.Sequential(*layers)
        m = arch.final_map_size
        pool = arch.pool or m
        self.pool = nn.MaxPool2d(pool) if arch.pool_type == "max" else nn.AvgPool2d(pool)
        side = (m - pool) // pool + 1
        self.linear = nn.Linear(c_in * side * side, NUM_CLASSES)
        if arch.conv_init == "identity":  # airbench's head: weights of std 1 over an output divided by the inputs
            with torch.no_grad():
                self.linear.weight.normal_(0, 1 / self.linear.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.layers(self.stem(x)))
        return self.linear(out.flatten(1))

    def whiten(self, images: torch.Tensor) -> None:
        """Set a whitening stem from normalised training images (the first :data:`WHITEN_IMAGES`);
        nothing to do for a conv stem."""
        if isinstance(self.stem, Whiten):
            self.stem.fit(images[:WHITEN_IMAGES])

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The trainable parameters by what optimizers treat apart: ``filters`` (every conv's
        weight), ``head`` (the linear layer's weight and bias) and ``other`` (BatchNorm's weights
        and biases, the whitening bias)."""
        trainable = [p for p in self.parameters() if p.requires_grad]
        filters = [p for p in trainable if p.ndim == 4]
        head = [self.linear.weight, self.linear.bias]
        taken = {id(p) for p in filters + head}
        return {"filters": filters, "head": head, "other": [p for p in trainable if id(p) not in taken]}


def measure(arch: Arch) -> Size:
    """Parameter count, forward FLOPs per image, and the FLOPs of a training forward and
    backward per image, of ``ResNet(arch)``, counted on the meta device."""
    with torch.device("meta"):
        model = ResNet(arch).eval()
        x = torch.empty(1, 3, 32, 32)
    params = sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter:
        model(x)
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        model.train()(x.expand(2, -1, -1, -1)).sum().backward()  # two images: BatchNorm trains on a batch
    return Size(params, forward, counter.get_total_flops() // 2)


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
