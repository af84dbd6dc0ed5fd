"""What TrivialAugment costs per batch next to the rest of the augmentation, on this machine.

Times, for random batches of 32x32 RGB images in [0, 1] on ``--device``, the median over
``--reps`` runs (after one untimed) of

* ``trivial``: :func:`cerberus.augment.trivial_augment` alone;
* ``rest``: :func:`cerberus.augment.apply` with the heaviest rest of the default space
  (crop 4, flip, rotation 10, one 16x16 cutout, mixup and cutmix) and normalisation;
* ``all``: the same with ``trivial_augment`` on too.

    PYTHONPATH=. python benchmarks/augment_cost.py [--device cpu] [--reps 20] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable

import torch

from cerberus import augment
from cerberus.config import Augment

REST = Augment(crop_padding=4, flip=True, rotation=10.0, cutout_holes=1, cutout_length=16, mixup_alpha=0.2, cutmix_alpha=1.0)


def median_ms(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        print(f"--device {args.device!r} is not usable here ({e}); allowed: cpu, cuda, cuda:N", file=sys.stderr)
        return 2
    if args.reps < 1 or (args.threads is not None and args.threads < 1):
        print("--reps and --threads must be integers >= 1", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mean = torch.full((1, 3, 1, 1), 0.47, device=device)
    std = torch.full((1, 3, 1, 1), 0.25, device=device)
    with_trivial = dataclasses.replace(REST, trivial_augment=True)
    print(f"device {device}, {torch.get_num_threads()} CPU threads, median of {args.reps} runs, ms per batch")
    print(f"{'batch':>6} {'trivial':>8} {'rest':>8} {'all':>8}")
    for batch in (128, 256, 512):
        x = torch.rand(batch, 3, 32, 32, device=device)
        y = torch.eye(10, device=device)[torch.randint(0, 10, (batch,), device=device)]
        row = [median_ms(lambda: augment.trivial_augment(x), device, args.reps),
               median_ms(lambda: augment.apply(x, y, REST, mean, std), device, args.reps),
               median_ms(lambda: augment.apply(x, y, with_trivial, mean, std), device, args.reps)]
        print(f"{batch:>6} " + " ".join(f"{ms:>8.2f}" for ms in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
