"""Wall time for the seed's ResNet-24 to reach 94% and 95% validation accuracy (issue 3).

Trains the course project's architecture (blocks 3,5,3; widths 64,128,256) twice through
``cerberus.fit.Fit``, the code every trial runs, on the search split (45,000 train / 5,000
validation) and prints, per epoch, the wall time so far and the validation accuracy:

* ``fast``: cerberus's fast recipe (below), for ``--fast-epochs`` epochs;
* ``seed``: the course project's recipe (``cerberus.config.COURSE``, as ``search/seed.toml``
  pins it, 200 epochs) for at most ``--seed-minutes`` minutes, since its full run is long.

Then one line per recipe: the first wall time at which validation accuracy reached 94% and
95% (or "not reached"), the best accuracy and the epochs run. Wall time counts everything
``fit`` does (training steps and per-epoch evaluation), not data loading.

    python benchmarks/time_to_accuracy.py --data-dir /tmp/cifar10 --device cuda [--json]

On the shared JPEG copy of CIFAR-10 the figures are JPEG-copy figures, not CIFAR-10 results.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from cerberus import data as datasets
from cerberus.config import COURSE, Augment, Config, Recipe
from cerberus.devices import device_name, resolve_device
from cerberus.fit import Fit

TARGETS = (0.94, 0.95)
# Large batches and one-cycle with label smoothing and flip TTA: the usual fast CIFAR-10 recipe
# (as airbench and the DAWNBench entries tune it), on the seed's unchanged architecture.
FAST = Config(COURSE.arch, Recipe(optimizer="nesterov", lr=0.2, momentum=0.9, weight_decay=5e-4, schedule="onecycle",
                                  epochs=30, batch_size=512, label_smoothing=0.1, tta_flip=True,
                                  augment=Augment(crop_padding=4, flip=True, cutout_holes=1, cutout_length=12)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="cifar10", choices=datasets.DATASETS)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--fast-epochs", type=int, default=FAST.recipe.epochs)
    p.add_argument("--seed-minutes", type=float, default=30.0, help="stop the seed recipe after this long")
    p.add_argument("--skip-seed", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    a = p.parse_args()
    device = resolve_device(a.device)
    train, val = datasets.search_splits(a.data, a.data_dir)
    fast = dataclasses.replace(FAST, recipe=dataclasses.replace(FAST.recipe, epochs=a.fast_epochs))
    runs = {"fast": _curve("fast", fast, train, val, device, None)}
    if not a.skip_seed:
        runs["seed"] = _curve("seed", COURSE, train, val, device, 60 * a.seed_minutes)
    out = {"device": device_name(device), "data": a.data, "runs": runs}
    for name, run in runs.items():
        reached = ", ".join(f"{t:.0%} at {s:.1f} s" if s is not None else f"{t:.0%} not reached"
                            for t, s in zip(TARGETS, run["seconds_to"]))
        print(f"{name}: {reached}; best {max(run['accuracy'], default=0):.4f} after {len(run['accuracy'])} epochs "
              f"of {run['epochs_planned']} ({run['seconds'][-1] if run['seconds'] else 0:.1f} s)")
    if a.json:
        print(json.dumps(out))


def _curve(name: str, config: Config, train: datasets.Split, val: datasets.Split, device, limit_s: float | None) -> dict:
    start, seconds, accuracy = time.perf_counter(), [], []
    with Fit(config, train, val, device, seed=0) as run:
        for epoch in run:
            seconds.append(time.perf_counter() - start)
            accuracy.append(epoch.val_accuracy)
            print(f"{name} epoch {epoch.number}/{config.recipe.epochs}: {seconds[-1]:.1f} s, val {epoch.val_accuracy:.4f}", flush=True)
            if limit_s is not None and seconds[-1] > limit_s:
                break
    first = [next((s for s, acc in zip(seconds, accuracy) if acc >= t), None) for t in TARGETS]
    return {"config": config.to_dict(), "epochs_planned": config.recipe.epochs, "seconds": seconds,
            "accuracy": accuracy, "seconds_to": first}


if __name__ == "__main__":
    main()
