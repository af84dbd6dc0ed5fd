"""How much memory one trial's training takes, from its configuration alone, and how much the
device offers: what lets a search end a trial that cannot fit before it allocates anything.

:func:`estimate` counts, in closed form, without building a model (so it takes microseconds at
any depth), the bytes :class:`cerberus.fit.Fit` holds at its peak on top of what the process
held before: weights, gradients, optimizer state, the splits copied to the device, and the
largest of the transient peaks of building the trainer, a training step, the optimizer step and
an evaluation, as resident memory. :func:`available` is what the device offers now, :func:`fits`
compares the two with :data:`HEADROOM`, and :func:`is_out_of_memory` tells an allocation that
failed anyway.

What the count assumes, for the family of :mod:`cerberus.model` (convs without bias, BatchNorm,
ReLU or GELU, identity or projection shortcuts, strides or max-pools, a conv or whitening
stem, an average or max pool, linear) and the step of :class:`cerberus.fit.Trainer`:

* Saved for backward, per training forward at batch N: the input batch (the stem conv keeps it);
  the stem's conv output (kept by its BatchNorm) and its ReLU output; per BasicBlock conv1's
  output (bn1), relu(bn1) (kept by the ReLU and by conv2), conv2's output (bn2) and the block's
  output (the last ReLU), plus the shortcut conv's output (its BatchNorm) in a projection block:
  4 maps, 5 with a projection. bn1's and bn2's outputs and the residual sum are not kept (ReLU
  keeps its output, an add keeps nothing); the pooled features are (the linear layer's input).
  This is exact: ``tests/test_memory.py`` counts the saved tensors of real steps.
* Backward holds, beside what is still saved, a few gradient maps at once (the block output's,
  the one flowing down the main path, the one BatchNorm or the conv returns):
  :data:`BACKWARD_MAPS` maps of the largest size. 3 bounded every net profiled on the CPU
  (0.5 to 3 of them, by torch's profiler).
* The step's :class:`~cerberus.precision.Precision`: in fp32 every map is 4 bytes. Under bf16
  autocast (CUDA, and a CPU with native bf16) the convs and the linear layer run in bf16 and
  BatchNorm, ReLU, the add and the pool keep the dtype they are given (torch registers no
  autocast rule for them), so every saved map and activation gradient is bf16, 2 bytes, as is
  the cached bf16 copy of the weights and the input; BatchNorm's saved statistics are fp32 but
  one value per channel.
* CPU: the splits are not copied (``Split.to`` of the device they are on returns them), so they
  count as 0: they are already in the process, and in what the CPU no longer offers. CUDA: the
  uint8 splits with int64 labels are copied once per trial. cuDNN's workspaces are an
  allowance, :data:`CUDA_WORKSPACE`, which no GPU has measured yet.
* The normalisation statistics (``train._stats``) are computed on the host copy of the
  training split, :data:`cerberus.config.STATS_CHUNK` images at a time: two fp32 temporaries of
  that many images, 12 KiB an image (61 MB), freed before the first step; on CUDA none of it is
  on the device. (The first trial of a search computes them; later ones reuse them.)
* The batch's augmentation makes a handful of batch-sized fp32 temporaries:
  :data:`AUGMENT_COPIES` of them are counted, whichever operations are on.
* Evaluation runs at :data:`cerberus.fit.EVAL_BATCH` images without autograd: at most
  :data:`EVAL_MAPS` maps of the largest size are alive at once: a block's input (kept for the
  shortcut), relu(bn1) (conv2's input), conv2's output and, on the CPU, two more of that size
  that oneDNN's conv allocates beside its output (torch's profiler shows all five); plus the normalised batch
  and its temporaries (and its mirror image, with flip TTA). Five maps are counted on CUDA too.
* The optimizer step: torch's single-tensor kernels on the CPU make a few temporaries of one
  parameter at a time (:data:`UPDATE_COPIES` of the largest); CUDA's fused SGD, Adam and AdamW
  make none, its multi-tensor Adadelta three of all the parameters.
* What the CPU's allocator makes of it (glibc's malloc, under torch's CPU allocator): a block
  of :data:`MMAP_MIN` bytes or more gets an mmap of its own, resident while it lives; smaller
  ones share glibc's heap, where they take :data:`HEAP_COPIES` times their size, and the heap
  keeps that after the training step, so an evaluation's large maps come on top of it
  (:attr:`Estimate.kept`, :attr:`Estimate.evaluation_mapped`). On CUDA, torch's caching
  allocator hands freed blocks out again and :func:`available` counts them as offered.

Not counted: the interpreter, torch and the dataset themselves (the baseline of
``benchmarks/memory_estimate.py``). How far the heap's history strays from the rule above is
what :data:`HEADROOM` is also for: over the eleven nets of ``benchmarks/RESULTS.md`` the
estimate was 0.91 to 1.51 times the measured peak resident memory of real trials (three runs).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cerberus import size
from cerberus.config import EVAL_BATCH, NUM_CLASSES, STATS_CHUNK, WHITEN_KERNEL, WHITEN_WIDTH, Arch, Config
from cerberus.errors import UserError
from cerberus.optim import OPTIMIZERS
from cerberus.precision import Precision

if TYPE_CHECKING:
    import torch

IMAGE = 3 * 32 * 32  # values in one CIFAR image
LABEL = 8  # an int64 label
BACKWARD_MAPS = 3
EVAL_MAPS = 5
AUGMENT_COPIES = 6
LOSS_COPIES = 4  # logits, their log-softmax, the soft labels, the loss terms: batch x classes each
UPDATE_COPIES = 4
# glibc serves an allocation this large with an mmap of its own and unmaps it on free (the ceiling
# of its dynamic mmap threshold on 64-bit); smaller ones come from its heap, which holds torch's
# 64-byte-aligned blocks so loosely that they take up to HEAP_COPIES times their size in resident
# memory (400 saved maps of 2 MiB in a chain of ReLUs: 1,613 MiB resident; a step of ResNet-202 at
# batch 32, 2 MiB maps: 1,313 to 1,365 MiB resident where torch allocated 810, and 815 with glibc's
# threshold pinned at 1 MiB), and keeps that after the step, for the evaluation to land on top of.
MMAP_MIN = 32 * 2**20
HEAP_COPIES = 2
CUDA_WORKSPACE = 256 * 2**20  # an allowance for cuDNN's workspaces: not measured (no GPU yet)
WORKER_LIBRARIES = 620 * 2**20  # VmRSS of `python -c "import torch, optuna, cerberus.search"`: 605 MiB on the 2-core EPYC
CPU_RUNTIME = 96 * 2**20  # the first trainer of a process brings up threads and kernels: 72 to 76 MiB measured, ~0 the next
# A trial runs only when its estimate is at most this share of what the device offers. The rest
# is for what the estimate leaves out (library workspaces, the interpreter's own growth, the
# gradients' share of heap fragmentation) and for what other processes take while the trial
# runs: what a CPU offers is a snapshot, and the Linux OOM killer, not an exception, is what
# overshooting it costs.
HEADROOM = 0.9
MEMORY_LIMIT_ENV = "CERBERUS_MEMORY_LIMIT"  # caps what any device offers, in bytes (8G, 512M work too)
CIFAR10_SEARCH = (45_000, 5_000)  # (training, validation) images of CIFAR-10's search split
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


@dataclass(frozen=True)
class Estimate:
    """A trial's memory in bytes, by part; :attr:`total` is its peak. The transient parts are
    resident bytes: on the CPU, after glibc's heap (see :data:`MMAP_MIN`)."""

    weights: int  # parameters and BatchNorm buffers, fp32
    grads: int  # a gradient per parameter, fp32
    optimizer: int  # momentum (sgd, nesterov) 1x the parameters; adam, adamw, adadelta 2x; an average (ema) 1x more
    data: int  # the training and validation splits copied to the device (0 on the CPU)
    setup: int  # building the trainer: fp32 chunks of the training split, for its statistics (host)
    step: int  # a training step: maps saved for backward, backward's gradients, the augmented batch
    update: int  # the optimizer step's temporaries
    evaluation: int  # evaluating EVAL_BATCH images
    kept: int  # of the step, what the CPU's heap keeps resident after it
    evaluation_mapped: int  # of the evaluation, what cannot reuse that (glibc's own mmaps)
    runtime: int  # CUDA: cuDNN's workspaces (an allowance); CPU: the first trial's thread pool and kernels

    @property
    def total(self) -> int:
        held = self.weights + self.grads + self.optimizer + self.data
        transient = max(self.step, self.update, self.evaluation, self.kept + self.evaluation_mapped)
        return self.runtime + max(self.weights + self.data + self.setup, held + transient)


def saved_maps(arch: Arch, batch: int) -> list[tuple[int, int]]:
    """(values, how many) of the activation maps a training forward at ``batch`` keeps for
    backward, the input batch aside: the stem's two (a whitening stem's one), four per block
    (five with a projection), the features. GELU keeps its input where ReLU keeps its output,
    which the next conv keeps anyway: one more map per activation. A stage that max-pools keeps
    its first conv's output at the incoming resolution, and its shortcut's pooled input."""
    gelu = arch.activation == "gelu"
    if arch.stem == "whiten":
        side = size.IMAGE_SIDE - WHITEN_KERNEL + 1
        maps = [(batch * WHITEN_WIDTH * side ** 2, 1 + gelu)]
    else:
        maps = [(batch * arch.widths[0] * size.IMAGE_SIDE ** 2, 2 + gelu)]
    for s in size.stages(arch):
        maps.append((batch * s.width * s.side ** 2, (4 + 2 * gelu) * s.blocks + s.projection))
        if s.pooled:
            maps.append((batch * s.width * s.side_in ** 2, 1))
            if s.projection:
                maps.append((batch * s.c_in * s.side ** 2, 1))
    return maps + [(batch * size.features(arch), 1)]


def saved_indices(arch: Arch, batch: int) -> list[tuple[int, int]]:
    """(values, how many) of the int64 indices the max-pools keep for backward: a pooling
    stage's two (its block's and its shortcut's), and a max head pool's."""
    out = []
    for s in size.stages(arch):
        if s.pooled:
            out += [(batch * s.width * s.side ** 2, 1), *([(batch * s.c_in * s.side ** 2, 1)] if arch.residual else [])]
    if arch.pool_type == "max":
        out.append((batch * size.features(arch), 1))
    return out


def _resident(allocations: list[tuple[int, int]], cpu: bool) -> tuple[int, int]:
    """(heap, mapped): resident bytes of ``allocations`` ((bytes, how many) pairs), split by
    where the CPU's allocator puts them (see MMAP_MIN); on CUDA all of it is "mapped"."""
    heap = sum(HEAP_COPIES * b * n for b, n in allocations if cpu and b < MMAP_MIN)
    return heap, sum(b * n for b, n in allocations if not cpu or b >= MMAP_MIN)


def estimate(config: Config, precision: Precision, train_images: int, val_images: int) -> Estimate:
    """What fitting ``config`` in ``precision`` (which names the device type) with splits of
    these sizes takes (see the module docstring for what is counted and why)."""
    arch, recipe = config.arch, config.recipe
    cpu = precision.device_type != "cuda"
    act = precision.activation_bytes  # of a saved map or an activation gradient
    params = size.params(arch)
    weights = size.conv_weights(arch)
    largest_weight = max(n for n, _ in weights)
    norm_layers, norm_channels = size.norms(arch)
    batch = min(recipe.batch_size, train_images)  # as the trainer takes it
    maps = saved_maps(arch, batch)
    step = [(act * values, n) for values, n in maps] + [(act * max(v for v, _ in maps), BACKWARD_MAPS),
            (4 * IMAGE * batch, AUGMENT_COPIES), (4 * batch * NUM_CLASSES, LOSS_COPIES)]
    step += [(8 * values, n) for values, n in saved_indices(arch, batch)]
    if act == 2:
        step += [(2 * IMAGE * batch, 1), (2 * sum(n * k for n, k in weights), 1)]  # the bf16 input and weights
    update = [(4 * largest_weight, UPDATE_COPIES)]
    if not cpu and not OPTIMIZERS[recipe.optimizer].fused:
        update.append((4 * params, 3))  # multi-tensor kernels: whole lists of temporaries
    evaluation: list[tuple[int, int]] = []
    if val_images:
        n = min(EVAL_BATCH, val_images)
        inputs = 3 + recipe.tta_flip + 3 * recipe.tta_shift  # the float batch, its normalising temporaries, the views
        largest = max(v for v, _ in saved_maps(arch, n))
        evaluation = [(act * largest, EVAL_MAPS), (4 * IMAGE * n, inputs), (4 * n * NUM_CLASSES, 2)]
    step_heap, step_mapped = _resident(step, cpu)
    eval_heap, eval_mapped = _resident(evaluation, cpu)
    return Estimate(
        weights=4 * params + 4 * 2 * norm_channels + 8 * norm_layers,  # running mean, var, count
        grads=4 * params,
        optimizer=4 * params * OPTIMIZERS[recipe.optimizer].state_copies(recipe)
        + (4 * params + 4 * 2 * norm_channels + 8 * norm_layers if recipe.ema > 0 else 0),  # the average: weights and statistics
        data=0 if cpu else (train_images + val_images) * (IMAGE + LABEL),
        setup=sum(_resident([(4 * IMAGE * min(STATS_CHUNK, train_images), 2)], cpu)) if cpu else 0,
        step=step_heap + step_mapped,
        update=sum(_resident(update, cpu)),
        evaluation=eval_heap + eval_mapped,
        kept=step_heap,
        evaluation_mapped=eval_mapped,
        runtime=CPU_RUNTIME if cpu else CUDA_WORKSPACE,
    )


def worker_process(images: int) -> int:
    """Resident bytes of a worker process before its first trial: the interpreter with torch,
    Optuna and SQLAlchemy loaded (:data:`WORKER_LIBRARIES`), and its copy of ``images`` images."""
    return WORKER_LIBRARIES + images * (IMAGE + LABEL)


def memory_limit() -> int | None:
    """The cap that ``CERBERUS_MEMORY_LIMIT`` sets (bytes, or with a K, M, G or T suffix for
    powers of 1024), or None when it is unset or empty. A bad value is a UserError."""
    text = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if not text:
        return None
    match = re.fullmatch(r"(\d+)\s*([kmgt]?)(i?b)?", text.replace("_", "").lower())
    if not match or int(match[1]) == 0:
        raise UserError(f"{MEMORY_LIMIT_ENV}={text!r} is not a memory size; give bytes (> 0), e.g. "
                        f"8589934592, or with a suffix, e.g. 8G or 512M")
    return int(match[1]) * _UNITS[match[2]]


def available(device: torch.device | str) -> int:
    """Bytes a new trial may take on ``device`` now, before :data:`HEADROOM`: on CUDA the free
    device memory plus what this process's allocator holds unused (it hands that out first); on
    the CPU what the kernel says a new allocation can get without swapping (``MemAvailable``),
    or what the cgroup (a container's ``--memory``) leaves, when that is less. Capped by
    ``CERBERUS_MEMORY_LIMIT``. ``device`` may be the string ``"cpu"`` (no torch needed)."""
    if getattr(device, "type", device) == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        offered = free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    else:
        offered = min(host_available(), cgroup_available() or math.inf)  # type: ignore[assignment]
    limit = memory_limit()
    return int(offered if limit is None else min(offered, limit))


def host_available() -> int:
    """``MemAvailable`` of /proc/meminfo (Linux); elsewhere, free physical pages (less: the
    kernel could also reclaim its caches)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def cgroup_available(root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")) -> int | None:
    """What this process's memory cgroups leave before their limits (v2 ``memory.max``, v1
    ``memory.limit_in_bytes``), counting inactive file cache as free, as the kernel reclaims
    that first; None without a limit. The process's own group is read from ``membership``
    (``/proc/self/cgroup``), and every group from it up to the root limits it: the least any of
    them leaves counts. A container's limit is invisible in /proc/meminfo, and crossing it kills
    the process just as running out of RAM does."""
    left = [n for n in (_group_available(d, v2) for d, v2 in _groups(root, membership)) if n is not None]
    return min(left) if left else None


def _groups(root: Path, membership: Path) -> list[tuple[Path, bool]]:
    """(folder, is v2) of this process's memory cgroup and each one above it, innermost first."""
    own: dict[bool, str] = {}
    try:
        for line in membership.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "":
                own[True] = path
            elif "memory" in controllers.split(","):
                own[False] = path
    except (OSError, ValueError):
        pass
    out = []
    for v2, base in ((True, root), (False, root / "memory")):
        folder = base / own.get(v2, "/").lstrip("/")
        while True:
            out.append((folder, v2))
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return out


def _group_available(folder: Path, v2: bool) -> int | None:
    names = (("memory.max", "memory.current", "inactive_file") if v2 else
             ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"))
    try:
        limit_text = (folder / names[0]).read_text().strip()
        if limit_text == "max" or int(limit_text) >= 2**60:  # v1 writes "no limit" as ~2**63
            return None
        stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines() if line.strip())
        used = int((folder / names[1]).read_text()) - int(stat.get(names[2], 0))
        return max(0, int(limit_text) - used)
    except (OSError, ValueError):
        return None


def fits(need: int, offered: int) -> bool:
    """Whether a trial that needs ``need`` bytes may start where ``offered`` are available."""
    return need <= HEADROOM * offered


def constraint(need: int, offered: int, scale: int) -> float:
    """The trial's memory constraint for Optuna: positive exactly when it does not fit, as the
    share by which it misses (``need`` over ``HEADROOM * offered``, minus 1) times ``scale``.
    TPE ranks infeasible trials by the sum of their positive constraints; with ``scale`` the
    parameter budget, 10% over memory weighs as much as 10% over the budget, where raw bytes
    would drown the parameter excess."""
    return scale * (need / max(HEADROOM * offered, 1) - 1)


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is a failed allocation: CUDA's ``torch.OutOfMemoryError``, Python's
    MemoryError, or the RuntimeError of torch's CPU allocator, which reads (torch 2.14) "...
    DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes. Error code 12
    (Cannot allocate memory)"."""
    import torch

    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(e).lower()
    return any(words in text for words in ("out of memory", "can't allocate memory", "cannot allocate memory"))


def format_bytes(n: float) -> str:
    """``n`` bytes for people: 512 B, 3.4 MiB, 1.20 GiB."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.{2 if unit in ('GiB', 'TiB') else 1}f} {unit}"
    return f"{n:,.0f} B"
