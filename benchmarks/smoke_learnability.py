"""Does every architecture of the smoke space learn ``--data synthetic`` well above chance in its
one epoch? The README promises it; this checks it.

For each architecture the smoke space can produce (stage count, width per stage, shortcut
kernel) and each seed, the rest of the configuration (optimizer, learning rate, augmentation)
is drawn as a search's random start-up trial draws it, seeded, and trained for the space's one
epoch on the synthetic split with the search's own ``fit``; the validation accuracy is printed.

    PYTHONPATH=. python benchmarks/smoke_learnability.py [--seeds 5] [--space smoke] [--threshold 0.5]

Exits 1 when any run ends at or below ``--threshold`` (chance is 0.1).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time

import optuna
import torch

from cerberus import shipped
from cerberus import space as spaces
from cerberus.data import search_splits
from cerberus.fit import fit


def architectures(space: spaces.Space) -> list[dict]:
    """Every combination of the architecture keys the space samples, as Optuna parameters."""
    found = []
    for stages in space.arch["stages"].values():
        keys = [f"widths_{i}" for i in range(1, stages + 1)] + [f"blocks_{i}" for i in range(1, stages + 1)]
        dims = [space._stage_dim(k.split("_")[0], int(k.split("_")[1])).values() for k in keys]
        skips = space.arch["skip_kernel"].values() if stages > 1 else [1]  # one stage has no projection
        for values in itertools.product(*dims, skips):
            found.append({"stages": stages, **dict(zip(keys, values[:-1])), "skip_kernel": values[-1]})
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--space", default="smoke")
    p.add_argument("--threshold", type=float, default=0.5)
    a = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = spaces.load(shipped.resolve(a.space, shipped.SPACE, "--space"))
    train, val = search_splits("synthetic")
    worst, rows = 1.0, []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; threshold {a.threshold}", flush=True)
    for arch in architectures(space):
        scores = []
        for seed in range(a.seeds):
            study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
            study.enqueue_trial(arch)
            trial = study.ask()
            config = space.sample(trial)
            t0 = time.perf_counter()
            result = fit(config, train, val, torch.device("cpu"), seed=seed)
            scores.append(result.val_accuracy)
            r = config.recipe
            print(f"{arch} seed {seed}: {r.optimizer} lr {r.lr:.3g} -> val {result.val_accuracy:.4f} "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
        worst = min(worst, *scores)
        rows.append((arch, min(scores), statistics.mean(scores)))
    print("\narchitecture | min val | mean val")
    for arch, low, mean in rows:
        print(f"{arch} | {low:.4f} | {mean:.4f}")
    print(f"worst of {len(rows)} architectures x {a.seeds} seeds: {worst:.4f} (threshold {a.threshold})")
    return 0 if worst > a.threshold else 1


if __name__ == "__main__":
    sys.exit(main())
