"""cerberus.memory's estimate of a trial's memory against the peak of real trials, on the CPU.

Each net trains as a trial does (``cerberus.fit.Fit``: the Trainer, one epoch of
``--steps`` full batches with the recipe's augmentation, then an evaluation of
``EVAL_BATCH`` validation images) in a fresh Python process. That process first imports torch
and cerberus and builds its data (``cerberus.data.synthetic``: ``steps x batch`` training
images, ``EVAL_BATCH`` validation images; a small split, so the whole benchmark stays within a
few minutes on two cores), then hands its free heap back to the kernel (``malloc_trim``) and
resets its peak resident set (``/proc/self/clear_refs``, Linux); ``baseline`` is its resident
set then. ``peak`` is its peak resident set (``VmHWM``) after the trial, and ``measured``
is ``peak - baseline``: what the trial added to a process that held torch and the data, which
is what :func:`cerberus.memory.estimate` counts. The estimate is the same call a search makes
for the trial, with these split sizes, on the CPU.

    python benchmarks/memory_estimate.py [--steps 3] [--only LABEL] [--json]

CUDA (max allocated) is not measured here: ``--device`` is the CPU only.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, child_env  # benchmarks/ is sys.path[0] when run as a script
sys.path.insert(0, str(ROOT))

from cerberus.config import COURSE, Arch, Augment, Config, Recipe  # noqa: E402

_COURSE_AUG = COURSE.recipe.augment
# (label, config): depths 1 to 100 blocks, widths 8 to 256, kernels 3 and 5, batches 32 to 1024,
# every optimizer family, every augmentation, the course project's ResNet-24 first.
NETS = [
    ("course ResNet-24", COURSE.arch, dict(batch_size=128, optimizer="sgd", augment=_COURSE_AUG)),
    ("smoke", Arch((1,), (8,)), dict(batch_size=64, optimizer="nesterov", augment=Augment(crop_padding=2, flip=True))),
    ("2 stages, skip 3", Arch((1, 1), (16, 32), skip_kernel=3), dict(batch_size=64, optimizer="adamw")),
    ("deep: ResNet-202", Arch((100,), (16,)), dict(batch_size=32, optimizer="sgd", augment=_COURSE_AUG)),
    ("deep: ResNet-182", Arch((30, 30, 30), (16, 32, 64)), dict(batch_size=64, optimizer="adam")),
    ("wide", Arch((1, 1), (128, 256)), dict(batch_size=256, optimizer="sgd", tta_flip=True)),
    ("kernel 5", Arch((2, 2), (32, 64), conv_kernel=5), dict(batch_size=128, optimizer="adadelta")),
    ("4 stages, pool 2", Arch((1, 1, 1, 1), (32, 64, 128, 256), pool=2),
     dict(batch_size=512, optimizer="adamw", augment=Augment(flip=True, mixup_alpha=0.2, trivial_augment=True))),
    ("batch 1024", Arch((2,), (16,)), dict(batch_size=1024, optimizer="nesterov", augment=Augment(crop_padding=4, cutmix_alpha=1.0))),
    ("6 stages", Arch((1,) * 6, (8, 16, 32, 64, 128, 256)), dict(batch_size=128, optimizer="adam")),
    ("3 stages, skip 3", Arch((2, 2, 2), (48, 96, 192), skip_kernel=3),
     dict(batch_size=256, optimizer="adadelta_agc", augment=Augment(rotation=15.0, cutout_holes=2, cutout_length=8))),
]


def _status(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(spec: dict) -> None:
    """One trial in this (fresh) process; prints one JSON line."""
    import torch

    from cerberus import data, memory
    from cerberus.config import EVAL_BATCH
    from cerberus.precision import choose
    from cerberus.fit import fit

    config = Config.from_dict(spec["config"])
    device = torch.device("cpu")
    train = data.synthetic(spec["steps"] * config.recipe.batch_size, seed=1)
    val = data.synthetic(EVAL_BATCH, seed=2)
    if config.recipe.augment.trivial_augment:  # a once-per-process import, not the trial's memory
        import torchvision.transforms.v2.functional  # noqa: F401
    est = memory.estimate(config, choose(device), len(train), len(val))
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # the peak resident set restarts from here
    baseline = _status("VmRSS")
    t0 = time.perf_counter()
    fit(config, train, val, device, seed=0)
    seconds = time.perf_counter() - t0
    # Not getrusage's ru_maxrss: clear_refs does not reset it, and it keeps the peak of the
    # process this one was forked from before exec (a large pytest parent read as this trial's).
    peak = _status("VmHWM")
    parts = {k: getattr(est, k) for k in ("weights", "grads", "optimizer", "setup", "step", "update", "evaluation",
                                          "kept", "evaluation_mapped")}
    print(json.dumps({"estimate": est.total, "parts": parts, "baseline": baseline, "peak": peak,
                      "measured": peak - baseline, "seconds": seconds}))


def _phase(parts: dict) -> str:
    """Which transient sets the estimate's peak."""
    held = parts["weights"] + parts["grads"] + parts["optimizer"]
    phases = {"setup": parts["weights"] + parts["setup"], "step": held + parts["step"],
              "eval": held + parts["evaluation"], "update": held + parts["update"],
              "eval on the step's heap": held + parts["kept"] + parts["evaluation_mapped"]}
    return max(phases, key=phases.get)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3, help="training steps per trial (one epoch)")
    p.add_argument("--only", help="run only the nets whose label contains this")
    p.add_argument("--json", action="store_true", help="also print every row as one JSON list")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(json.loads(a.child))
        return
    import torch

    from cerberus.size import params as count_params

    env = child_env()
    rows = []
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {os.cpu_count()} CPU(s), {a.steps} steps + "
          f"one evaluation per trial, each in a fresh process", flush=True)
    print("| net | blocks | widths | F/K/P | params | batch | optimizer | estimate, MiB (peak phase) | baseline RSS, MiB | "
          "peak RSS, MiB | measured, MiB | estimate / measured | trial s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, arch, recipe in NETS:
        if a.only and a.only not in label:
            continue
        config = Config(arch, Recipe(epochs=1, lr=0.01, **recipe))
        spec = {"config": config.to_dict(), "steps": a.steps}
        r = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env,
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            print(f"| {label} | failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode} |", flush=True)
            continue
        row = json.loads(r.stdout.strip().splitlines()[-1])
        row.update(label=label, config=config.to_dict(), params=count_params(arch))
        rows.append(row)
        mib = lambda n: f"{n / 2**20:,.0f}"  # noqa: E731
        print(f"| {label} | {','.join(map(str, arch.blocks))} | {','.join(map(str, arch.widths))} | "
              f"{arch.conv_kernel}/{arch.skip_kernel}/{arch.pool or 'global'} | {row['params']:,} | {recipe['batch_size']} | "
              f"{recipe['optimizer']} | {mib(row['estimate'])} ({_phase(row['parts'])}) | {mib(row['baseline'])} | "
              f"{mib(row['peak'])} | {mib(row['measured'])} | {row['estimate'] / row['measured']:.2f} | {row['seconds']:.1f} |",
              flush=True)
    ratios = [r["estimate"] / r["measured"] for r in rows]
    if ratios:
        print(f"estimate / measured: {min(ratios):.2f} to {max(ratios):.2f} over {len(rows)} nets "
              f"({sum(x < 1 for x in ratios)} under)")
    if a.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
