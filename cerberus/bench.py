"""How fast one architecture trains here, in cerberus's step and in the course project's loop.

``run(arch, options)`` returns one flat dict (what ``cerberus-search bench --json`` prints):

* ``images_per_s`` and ``ms_per_step``: ``options.steps`` steps of :class:`cerberus.fit.Trainer`
  (the very step a trial runs) after ``options.warmup`` untimed ones, under the course
  project's recipe (:data:`cerberus.config.COURSE`, which ``search/seed.toml`` pins) at
  ``options.batch_size``; ``first_step_s`` is the first warm-up step alone (with
  ``compile`` it holds the compilation).
* ``aten_ops_per_step``: every aten operation of one whole timed step (augmentation, forward,
  backward, clipping, optimizer, schedule), counted after the warm-up (:mod:`cerberus.opcount`):
  on a GPU each is about one kernel launch, the host work a step must hide.
* ``config``: what was timed; by default the course recipe on ``arch`` at ``batch_size``, or
  ``options.config`` (``bench --config FILE.json``) whole.
* ``flops_per_image``: forward FLOPs of one image (torch's FlopCounterMode, as
  :func:`cerberus.model.measure` counts them); ``train_flops_per_image`` is three times that
  (backward costs about twice the forward), and ``tflops`` is that times images/s.
* ``precision``: what the step computes in (:mod:`cerberus.precision`: by default bf16 autocast
  with channels-last on CUDA and on a CPU with native bf16, fp32 elsewhere).
* ``mfu``: ``tflops`` over ``peak_tflops``, the dense matmul rate measured in the same run, in
  ``peak_dtype``, the dtype the step's convs run in; ``mfu_datasheet`` over
  ``datasheet_peak_tflops``, the dense peak NVIDIA publishes for the GPU (None where unknown).
* ``peak_mem_bytes``: on CUDA the most memory the timed steps held allocated (the counter is
  reset after the warm-up)
  (``peak_mem_kind = "cuda_max_allocated"``); on the CPU the peak resident set of the whole
  process so far (``"process_peak_rss"``), which includes the interpreter and the data.
* with ``plain``: ``plain_images_per_s``, ``plain_ms_per_step`` and ``speedup_vs_plain`` of the
  same architecture in the plainest PyTorch loop: fp32, NCHW, one normalised batch made once,
  forward, cross-entropy, backward, the course recipe's SGD; no augmentation, no data movement,
  no host sync, batches already on the device. What the step gains over it is what its
  precision and layout buy (less what its on-device augmentation costs).
* with ``baseline``: ``baseline_images_per_s``, ``baseline_ms_per_step`` and ``speedup`` of the
  same architecture in the loop the course project ran: torchvision transforms per image,
  a DataLoader with 2 workers, fp32, SGD, a host sync per step for the running loss and
  accuracy; same batch size, steps and warm-up, timed the same way. On a GPU its speed is
  capped by the host CPU, whose two loader workers transform every image. With it,
  ``device_baseline_images_per_s``, ``device_baseline_ms_per_step`` and
  ``speedup_vs_device_baseline``: the same course loop fed from batches already on the device
  (normalised once, no augmentation), so the speed-up no longer measures the host CPU. Every
  baseline runs in full fp32 (``plain_precision``, ``baseline_precision``,
  ``device_baseline_precision``: no TF32, no cudnn autotuning), whatever the trainer switched on.
* ``cuda_graph``: whether a CUDA graph was asked for (``bench --cuda-graph``), ``captured``
  whether the step was recorded and every timed step replayed it (:mod:`cerberus.graph`); the
  warm-up then has at least 4 steps (3 eager, 1 recording).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cerberus import augment
from cerberus import data as datasets
from cerberus import graph as graphs
from cerberus import memory
from cerberus.config import COURSE, Arch, Config
from cerberus.data import Split
from cerberus.errors import UserError
from cerberus import size as sizes
from cerberus.model import ResNet
from cerberus.precision import Precision, choose
from cerberus.devices import device_name
from cerberus.fit import Trainer, release

COURSE_RECIPE = COURSE.recipe
# The normalisation constants the course project (after kuangliu/pytorch-cifar) hard-coded.
COURSE_MEAN, COURSE_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
PEAK_PRODUCT_SECONDS = 0.05  # matmul_peak grows its side while one product takes less than this
MAX_SYNTHETIC = 45_000  # as many training images as CIFAR-10's search split
# Dense (not sparse) tensor-core peaks from NVIDIA's datasheets, TFLOP/s, by torch's device name.
DATASHEET_TFLOPS = {
    ("NVIDIA H200", torch.bfloat16): 989.4, ("NVIDIA H100 80GB HBM3", torch.bfloat16): 989.4,
    ("NVIDIA A100-SXM4-80GB", torch.bfloat16): 312.0, ("NVIDIA A100-SXM4-40GB", torch.bfloat16): 312.0,
}


@dataclass(frozen=True)
class Options:
    batch_size: int | None = 128  # None: the --config's, else 128
    steps: int = 50
    warmup: int = 2
    device: torch.device = torch.device("cpu")
    data: str = "synthetic"
    data_dir: str | Path | None = None
    baseline: bool = False
    compile: bool = False
    precision: str = "auto"
    plain: bool = False
    config: Config | None = None  # the whole configuration to time (its arch and recipe), instead of the course recipe
    cuda_graph: bool = False  # record the step as a CUDA graph (cerberus.graph); the warm-up then covers the recording

    def __post_init__(self) -> None:
        for name, value in (("--steps", self.steps), ("--warmup", self.warmup), ("--batch-size", self.batch_size)):
            if value is not None and value < 1:  # a warm-up step is needed: the first step holds allocation, autotuning, compilation
                raise UserError(f"{name} must be at least 1, got {value}")
        if self.data not in datasets.DATASETS:
            raise UserError(f"--data {self.data!r} is not a dataset; allowed: {', '.join(datasets.DATASETS)}")


@dataclass(frozen=True)
class Speed:
    images_per_s: float
    ms_per_step: float
    first_step_s: float  # the first warm-up step alone


def run(arch: Arch, options: Options) -> dict[str, Any]:
    """Measure ``arch`` as the module docstring says; bad options are a UserError."""
    o = options
    train = _training_images(o)
    if o.batch_size > len(train):
        raise UserError(f"--batch-size {o.batch_size} is larger than the {len(train):,} training images of --data {o.data}")
    cuda = o.device.type == "cuda"
    precision = choose(o.device, o.precision)
    config = _timed(arch, o)
    peak_flops, peak_dtype = matmul_peak(o.device, precision.dtype)
    arch = config.arch
    if o.cuda_graph:  # the eager steps and the recording are warm-up: every timed step is a replay
        o = dataclasses.replace(o, warmup=max(o.warmup, graphs.WARMUP + 1))
    fast, ops, captured = _fast(config, train, o, precision)
    peak_mem = torch.cuda.max_memory_allocated(o.device) if cuda else _peak_rss()
    release(o.device, compiled=o.compile)
    size = sizes.of(arch)
    achieved = size.train_flops * fast.images_per_s
    result: dict[str, Any] = {
        "device": device_name(o.device), "torch": torch.__version__,
        "arch": {"blocks": list(arch.blocks), "widths": list(arch.widths), "conv_kernel": arch.conv_kernel,
                 "skip_kernel": arch.skip_kernel, "pool": arch.pool},
        "depth": arch.depth, "params": size.params, "data": o.data, "batch_size": o.batch_size,
        "steps": o.steps, "warmup": o.warmup, "compile": o.compile, "precision": precision.name,
        "cuda_graph": o.cuda_graph, "captured": captured,
        "images_per_s": fast.images_per_s, "ms_per_step": fast.ms_per_step, "first_step_s": fast.first_step_s,
        "aten_ops_per_step": ops, "config": config.to_dict(),
        "flops_per_image": size.flops, "train_flops_per_image": size.train_flops,
        "tflops": achieved / 1e12, "peak_tflops": peak_flops / 1e12, "peak_dtype": peak_dtype,
        "mfu": achieved / peak_flops,
        "peak_mem_bytes": peak_mem, "peak_mem_kind": "cuda_max_allocated" if cuda else "process_peak_rss",
    }
    sheet = DATASHEET_TFLOPS.get((result["device"], precision.dtype))
    result.update(datasheet_peak_tflops=sheet, mfu_datasheet=None if sheet is None else achieved / (sheet * 1e12))
    if o.plain:
        plain = _plain(arch, train, o)
        release(o.device)
        result.update(plain_images_per_s=plain.images_per_s, plain_ms_per_step=plain.ms_per_step, plain_precision="fp32",
                      speedup_vs_plain=fast.images_per_s / plain.images_per_s)
    if o.baseline:
        slow = _baseline(arch, train, o)
        release(o.device)
        fed = _device_baseline(arch, train, o)
        release(o.device)
        result.update(baseline_images_per_s=slow.images_per_s, baseline_ms_per_step=slow.ms_per_step,
                      baseline_precision="fp32", speedup=fast.images_per_s / slow.images_per_s,
                      device_baseline_images_per_s=fed.images_per_s, device_baseline_ms_per_step=fed.ms_per_step,
                      device_baseline_precision="fp32", speedup_vs_device_baseline=fast.images_per_s / fed.images_per_s)
    return result


def report(r: dict[str, Any]) -> str:
    """The human-readable form of :func:`run`'s result."""
    a = r["arch"]
    mem = "CUDA max allocated" if r["peak_mem_kind"] == "cuda_max_allocated" else "process peak RSS"
    lines = [
        f"ResNet-{r['depth']} blocks {','.join(map(str, a['blocks']))} widths {','.join(map(str, a['widths']))} "
        f"({r['params']:,} params) on {r['device']}, torch {r['torch']}, batch {r['batch_size']}, "
        f"{r['data']} data, {r['steps']} steps after {r['warmup']} warm-up, {r['precision']}{', compiled' if r['compile'] else ''}"
        f"{(', CUDA graph' if r['captured'] else ', CUDA graph asked, not recorded: eager') if r['cuda_graph'] else ''}",
        f"  speed:   {r['images_per_s']:,.1f} images/s, {r['ms_per_step']:,.2f} ms/step (first warm-up step {r['first_step_s']:.2f} s), "
        f"{r['aten_ops_per_step']:,} aten operations per step",
        f"  FLOPs:   {r['flops_per_image'] / 1e6:,.1f} MFLOPs/image forward; {r['train_flops_per_image'] / 1e9:,.2f} "
        f"GFLOPs/image training (forward and backward, counted exactly)",
        f"  MFU:     {r['mfu']:.1%} = {r['tflops']:.3f} TFLOP/s achieved / {r['peak_tflops']:.3f} TFLOP/s "
        f"{r['peak_dtype']} dense matmul peak measured in this run",
        f"  memory:  {r['peak_mem_bytes'] / 2**20:,.0f} MiB ({mem})",
    ]
    if "speedup_vs_plain" in r:
        lines.append(f"  plain loop (fp32, NCHW, one batch, no augmentation, no sync): {r['plain_images_per_s']:,.1f} images/s, "
                     f"{r['plain_ms_per_step']:,.2f} ms/step; speedup {r['speedup_vs_plain']:.2f}x")
    if "speedup" in r:
        lines.append(f"  baseline (course project loop: per-image torchvision transforms, DataLoader 2 workers, fp32): "
                     f"{r['baseline_images_per_s']:,.1f} images/s, {r['baseline_ms_per_step']:,.2f} ms/step; "
                     f"speedup {r['speedup']:.2f}x")
        lines.append(f"  the same course loop fed from batches on the device (no augmentation, fp32): "
                     f"{r['device_baseline_images_per_s']:,.1f} images/s, {r['device_baseline_ms_per_step']:,.2f} ms/step; "
                     f"speedup {r['speedup_vs_device_baseline']:.2f}x")
    return "\n".join(lines)


def _timed(arch: Arch, o: Options) -> Config:
    """The configuration ``bench`` times: ``o.config``, else the course recipe on ``arch``."""
    return o.config or Config(arch, dataclasses.replace(COURSE_RECIPE, batch_size=o.batch_size))


def check_memory(arch: Arch, o: Options) -> None:
    """Refuse (UserError) a step that cannot fit the device, as `run` refuses the same trial:
    better than the kernel's OOM killer half-way through."""
    need = memory.estimate(_timed(arch, o), choose(o.device, o.precision), MAX_SYNTHETIC, 0).total
    offered = memory.available(o.device)
    if not memory.fits(need, offered):
        raise UserError(f"a step at batch {o.batch_size} needs about {memory.format_bytes(need)}, {memory.format_bytes(offered)} "
                        f"is available on {o.device} ({memory.HEADROOM:.0%} of it usable); give a smaller --batch-size")


def matmul_peak(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """Dense matmul FLOP/s this device reaches now in ``dtype``, and the dtype's name: the best
    of a few timed rounds of square products of the largest side up to 2048 (8192 on CUDA) whose
    product takes under :data:`PEAK_PRODUCT_SECONDS`. A CPU that only emulates the dtype (bf16
    without AVX512-BF16 or AMX, about 1 GFLOP/s) stops at a small side instead of taking minutes."""
    cuda = device.type == "cuda"
    largest, reps = (8192, 20) if cuda else (2048, 4)
    n = 256
    while n < largest and _product_seconds(n, device, dtype) < PEAK_PRODUCT_SECONDS:
        n *= 2
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty_like(a)
    torch.matmul(a, b, out=out)
    best = math.inf
    for _ in range(5):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b, out=out)
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / reps)
    del a, b, out
    release(device)
    return 2 * n**3 / best, str(dtype).removeprefix("torch.")


def _product_seconds(n: int, device: torch.device, dtype: torch.dtype) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, a)
    _sync(device)
    t0 = time.perf_counter()
    torch.matmul(a, a)
    _sync(device)
    return time.perf_counter() - t0


def time_steps(step: Callable[[], object], steps: int, warmup: int, batch: int, device: torch.device) -> Speed:
    """Run ``step`` ``warmup`` (>= 1) times untimed, the first timed alone, then ``steps`` times
    timed, with the device drained before each clock read. CUDA's peak-memory counter is reset
    after the warm-up, so it holds what the timed steps needed, not the set-up."""
    _sync(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - t0
    return Speed(steps * batch / seconds, 1000 * seconds / steps, first)


def _fast(config: Config, train: Split, o: Options, precision: Precision) -> tuple[Speed, int, bool]:
    """The timed steps, the aten operations of one more step (a replayed graph's are the few
    outside it: the copy of the indices, the optimizer, the schedule), and whether the step
    ran as a CUDA graph."""
    from cerberus import opcount

    trainer = Trainer(config, train, o.device, total_steps=o.warmup + o.steps + 1, compile=o.compile,
                      precision=precision, cuda_graph=o.cuda_graph)
    trainer.model.train()
    batches = _forever(trainer.batches)
    speed = time_steps(lambda: trainer.step(next(batches)), o.steps, o.warmup, config.recipe.batch_size, o.device)
    return speed, opcount.count(lambda: trainer.step(next(batches))), trainer.run.captured


class PerImage(torch.utils.data.Dataset):
    """A uint8 split served one PIL image at a time, as torchvision's CIFAR10 dataset does."""

    def __init__(self, split: Split, transform: Callable) -> None:
        self.images = split.images.permute(0, 2, 3, 1).numpy()  # HWC, what PIL wants
        self.labels = split.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(np.ascontiguousarray(self.images[i]))), self.labels[i]


class Cutout:
    """Cutout on one image tensor, the per-image transform the course project appended."""

    def __init__(self, holes: int, length: int) -> None:
        self.holes, self.length = holes, length

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return augment.cutout(image.unsqueeze(0), self.holes, self.length)[0]


@contextlib.contextmanager
def _plain_fp32() -> Iterator[None]:
    """The baselines as plain PyTorch runs them: full fp32 (no TF32 convs or matmuls) and no
    cudnn autotuning, whatever the trainer switched on before."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.benchmark = torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _plain(arch: Arch, train: Split, o: Options) -> Speed:
    r = COURSE_RECIPE
    model = ResNet(arch).to(o.device)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
    x = _normalised(train.images[: o.batch_size], o.device)
    y = train.labels[: o.batch_size].to(o.device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    with _plain_fp32():
        return time_steps(step, o.steps, o.warmup, o.batch_size, o.device)


def _baseline(arch: Arch, train: Split, o: Options) -> Speed:
    """The course loop as the course ran it: per-image transforms in a 2-worker DataLoader."""
    from torchvision import transforms as T

    aug = COURSE_RECIPE.augment
    transform = T.Compose([
        T.RandomCrop(32, padding=aug.crop_padding), T.RandomHorizontalFlip(), T.RandomRotation(aug.rotation),
        T.ToTensor(), T.Normalize(COURSE_MEAN, COURSE_STD), Cutout(aug.cutout_holes, aug.cutout_length),
    ])
    loader = torch.utils.data.DataLoader(PerImage(train, transform), batch_size=o.batch_size, shuffle=True,
                                         num_workers=2, drop_last=True)
    batches = _forever(lambda: iter(loader))
    try:
        return _course_loop(arch, o, batches)
    finally:
        batches.close()  # drops the DataLoader iterator, which stops its workers


def _device_baseline(arch: Arch, train: Split, o: Options) -> Speed:
    """The same course loop fed from batches already on the device (normalised once, shuffled
    each epoch, no augmentation): what it does once the host CPU no longer feeds it."""
    images = _normalised(train.images, o.device)
    labels = train.labels.to(o.device)

    def epoch() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(labels), device=o.device)
        for s in range(len(labels) // o.batch_size):
            idx = order[s * o.batch_size : (s + 1) * o.batch_size]
            yield images[idx], labels[idx]

    return _course_loop(arch, o, _forever(epoch))


def _normalised(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images on ``device`` as the course normalised them (its ``T.Normalize``)."""
    mean = torch.tensor(COURSE_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(COURSE_STD, device=device).view(1, 3, 1, 1)
    return (images.to(device).float().div_(255) - mean) / std


def _course_loop(arch: Arch, o: Options, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> Speed:
    """The course project's step: SGD, zero_grad, forward, loss, backward, step, and its running
    loss and accuracy read on the host every step; in full fp32."""
    r = COURSE_RECIPE
    model = ResNet(arch).to(o.device)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
    criterion = nn.CrossEntropyLoss()
    running = {"loss": 0.0, "correct": 0}

    def step() -> None:
        inputs, targets = next(batches)
        inputs, targets = inputs.to(o.device), targets.to(o.device)
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = criterion(outputs, targets)
        loss.backward()
        optimizer.step()
        running["loss"] += loss.item()  # the course loop's running figures: a host sync per step
        running["correct"] += outputs.argmax(1).eq(targets).sum().item()

    with _plain_fp32():
        return time_steps(step, o.steps, o.warmup, o.batch_size, o.device)


def _forever(epoch: Callable[[], Iterator[Any]]) -> Iterator[Any]:
    while True:
        yield from epoch()


def _training_images(o: Options) -> Split:
    if o.data == "synthetic":
        # Enough images that the timed steps see no epoch boundary, up to a CIFAR-sized epoch.
        return datasets.synthetic(min(o.batch_size * (o.warmup + o.steps), MAX_SYNTHETIC), seed=1)
    return datasets.search_splits(o.data, o.data_dir)[0]


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def command(arch: Arch, config: str | None, options: Options, as_json: bool) -> None:
    """The ``bench`` command: ``config`` (a shipped name or a file) times that whole configuration
    at ``options.batch_size`` (None: the configuration's) instead of the course recipe on ``arch``."""
    import sys

    from cerberus import shipped
    from cerberus.launch import check_graphable
    from cerberus.train import from_file

    if config is not None:
        timed = from_file(shipped.resolve(config, shipped.CONFIG, "--config")).config
        batch = timed.recipe.batch_size if options.batch_size is None else options.batch_size
        arch = timed.arch
        options = dataclasses.replace(options, batch_size=batch, config=dataclasses.replace(
            timed, recipe=dataclasses.replace(timed.recipe, batch_size=batch)))
    if options.batch_size is None:
        options = dataclasses.replace(options, batch_size=128)
    check_graphable(options.cuda_graph, [options.device])
    check_memory(arch, options)
    loops = [name for name, on in (("the plain loop", options.plain), ("the course loop", options.baseline)) if on]
    print(f"bench: ResNet-{arch.depth} on {options.device}, {options.warmup} warm-up + {options.steps} timed steps"
          f"{' and the same for ' + ' and '.join(loops) if loops else ''}", file=sys.stderr, flush=True)
    result = run(arch, options)
    print(json.dumps(result) if as_json else report(result))
