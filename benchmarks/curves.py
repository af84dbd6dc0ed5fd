"""Real learning curves of the CPU space, for choosing a pruner on measurements instead of a model.

Draws ``--configs`` configurations from ``search/cpu.toml`` as a search's random start-up trials
draw them (the shipped fast configuration first, as ``--enqueue-seed`` queues it), and trains
each on the search split at ``--budget`` PFLOP, unpruned, exactly as a trial trains: the probe's
validation accuracy after every epoch but the last (``cerberus.search.PROBE_IMAGES`` images, one
view), the whole validation split after the last, then the test set once, with the recipe's own
test-time views. One record per configuration is appended to ``--out`` as it finishes (rerunnable:
the configurations already there are skipped). ``benchmarks/pruners.py`` replays the table.

On this project's machines the data is the CIFAR-10 JPEG copy (``../shared/data``): its figures
are "CIFAR-10 JPEG copy" figures, never plain CIFAR-10 ones.

    python benchmarks/curves.py --data-dir /tmp/cifar --configs 12 --out benchmarks/curves.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import ROOT, machine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py/")
    p.add_argument("--configs", type=int, default=12)
    p.add_argument("--budget", type=float, default=None, help="PFLOP a curve (default: the space's)")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "curves.json")
    a = p.parse_args()

    import optuna
    import torch

    from cerberus import launch
    from cerberus import space as spaces
    from cerberus.data import search_splits, test_split
    from cerberus.fit import Fit, evaluate
    from cerberus.search import PROBE_IMAGES

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = spaces.load(ROOT / "search" / "cpu.toml")
    table = json.loads(a.out.read_text()) if a.out.exists() else {"curves": []}
    sampler = optuna.samplers.RandomSampler(seed=a.seed)
    study = optuna.create_study(sampler=sampler)
    (seed_config, _), = launch.known_configs(space, "cpu", True, [])
    study.enqueue_trial(space.params_for(seed_config))
    train, val = search_splits("cifar10", a.data_dir)
    test = test_split("cifar10", a.data_dir)
    cpu = torch.device("cpu")
    for i in range(a.configs):
        trial = study.ask()
        config = spaces.set_length(space.sample(trial), budget=a.budget)
        study.tell(trial, 0.0)
        if any(c["config"] == json.loads(config.to_json()) for c in table["curves"]):  # as stored: lists, not tuples
            continue
        started = time.perf_counter()
        with Fit(config, train, val, cpu, seed=i, probe=PROBE_IMAGES) as fit:
            points = [(round(100 * e.progress), e.val_accuracy) for e in fit]
            tested = evaluate(fit.trainer.evaluated, test, fit.trainer.mean, fit.trainer.std, fit.trainer.precision,
                              config.recipe.tta_flip, config.recipe.tta_shift)
            result = fit.result()
        table["curves"].append({"params": trial.params, "config": config.to_dict(), "points": points,
                                "val_accuracy": points[-1][1], "test_accuracy": tested, "seconds": time.perf_counter() - started,
                                "step_seconds": result.step_seconds, "train_flops": result.train_flops})
        table.update(machine=machine(), torch=torch.__version__, budget=config.recipe.budget, probe_images=PROBE_IMAGES, data="cifar10 (JPEG copy)")
        a.out.write_text(json.dumps(table, indent=1) + "\n")
        print(f"curve {len(table['curves'])}: {points} test {tested:.4f} ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
