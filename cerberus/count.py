"""``cerberus-search count``: the size of one architecture, the memory a trial of it needs, and
whether both fit. It imports neither torch nor optuna, so it answers in a fraction of a second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cerberus.config import MAX_STAGES, Arch
from cerberus.errors import UserError, int_list, positive

# Where a CUDA (or ROCm) driver shows itself; without one, `auto` is the CPU without asking torch.
GPU_DRIVER_FILES = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/kfd")


def arch_from_options(blocks: str, channels: str, conv_kernel: int, skip_kernel: int, pool: int) -> Arch:
    """The architecture that ``count`` and ``bench`` are given on the command line."""
    b, c = int_list("--blocks", blocks), int_list("--channels", channels)
    if len(b) != len(c):
        raise UserError(f"--blocks has {len(b)} stages but --channels has {len(c)}; give one value per stage to each")
    if len(b) > MAX_STAGES:
        raise UserError(f"--blocks has {len(b)} stages; allowed: 1..{MAX_STAGES} (32x32 halves to 1x1 at the sixth)")
    try:
        return Arch(b, c, conv_kernel, skip_kernel, pool)
    except ValueError as e:
        raise UserError(str(e)) from None


def sizing_device(spec: str) -> Any:
    """``--device`` for ``count``: the CPU, decided without importing torch when it is asked
    for or when no GPU driver is present; anything else as every command resolves it."""
    if spec == "cpu" or (spec == "auto" and not any(Path(f).exists() for f in GPU_DRIVER_FILES)):
        return "cpu"
    from cerberus.devices import resolve_device

    return resolve_device(spec)


def command(arch: Arch, max_params: int, batch_size: int, optimizer: str, device: str, as_json: bool) -> None:
    from cerberus import memory
    from cerberus import size as sizes
    from cerberus.config import Config, Recipe
    from cerberus.optim import OPTIMIZERS
    from cerberus.precision import choose

    positive("--max-params", max_params)
    positive("--batch-size", batch_size)
    if optimizer not in OPTIMIZERS:
        raise UserError(f"--optimizer {optimizer!r} is not an optimizer; allowed: {', '.join(OPTIMIZERS)}")
    where = sizing_device(device)
    offered = memory.available(where)
    images = memory.CIFAR10_SEARCH
    step = choose(where)
    need = memory.estimate(Config(arch, Recipe(optimizer=optimizer, batch_size=batch_size)), step, *images).total
    size = sizes.of(arch)
    fits, fits_memory = size.params <= max_params, memory.fits(need, offered)
    if as_json:
        print(json.dumps({"params": size.params, "flops": size.flops, "fits": fits, "max_params": max_params,
                          "train_memory_bytes": need, "memory_available_bytes": offered, "fits_memory": fits_memory,
                          "memory_device": str(where), "precision": step.name, "batch_size": batch_size,
                          "optimizer": optimizer, "depth": arch.depth, "arch": _arch_json(arch)}))
        return
    verdict = "fits" if fits else "does NOT fit"
    capped = " under " + memory.MEMORY_LIMIT_ENV if memory.memory_limit() == offered else ""
    room = (f"fits this machine's {where}" if fits_memory else f"does NOT fit this machine's {where}") + (
        f" ({memory.format_bytes(offered)} available{capped}, {memory.HEADROOM:.0%} of it usable)")
    print(f"ResNet-{arch.depth} blocks {','.join(map(str, arch.blocks))} widths {','.join(map(str, arch.widths))}: "
          f"{size.params:,} parameters, {size.flops / 1e6:,.1f} MFLOPs per image; {verdict} --max-params {max_params:,}; "
          f"a trial at batch {batch_size} ({optimizer}, {step.name}, {images[0]:,} CIFAR-10 images) needs about "
          f"{memory.format_bytes(need)}: {room}")


def _arch_json(arch: Arch) -> dict[str, Any]:
    import dataclasses

    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(arch).items()}
