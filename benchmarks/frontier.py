"""The fast frontier on this machine: the shipped fast configuration, the course recipe and the
old family's best at equal training FLOPs, the fast configuration's accuracy against its
FLOPs, and an ablation that removes one choice at a time. Every row is one command of the
committed CLI, ``cerberus-search train --config FILE --seeds S``, on CIFAR-10 (on this
project's machines the JPEG copy: its figures are "CIFAR-10 JPEG copy" figures, never plain
CIFAR-10 ones); a row's FLOPs are its ``budget``, so every row of a group trains the same
FLOPs whatever its network (``cerberus.size.plan``).

    python ../shared/data/to_batches.py /tmp/cifar
    python benchmarks/frontier.py --data-dir /tmp/cifar --out /tmp/frontier [--group target] [--only NAME]

Groups: ``target`` (fast at 0.283 PFLOP, 3 seeds), ``side`` (the course recipe on the course net
and the old family's best CPU configuration at 0.283 PFLOP), ``curve`` (fast at 0.1, 0.2 and 0.5
PFLOP) and ``ablation`` (fast without each choice, at ``--ablation-budget`` PFLOP, 2 seeds).
Rerunnable: a row whose ``metrics.json`` exists is read, not trained again. Each row's test
accuracy (mean and sample std over seeds), seconds per seed and PFLOP per seed go to
``OUT/frontier.json`` as it finishes.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import ROOT, child_env, machine

FAST = json.loads((ROOT / "search" / "fast.json").read_text())
SEED = json.loads((ROOT / "search" / "seed.json").read_text())
# The old family's best known CPU configuration: the best trial of the 30-trial `--space cpu`
# search of benchmarks/cpu_experiment.json (0.7460 test after 3 epochs, JPEG copy).
OLD_BEST = json.loads((ROOT / "benchmarks" / "cpu_experiment.json").read_text())["search"]["best_config"]

# One choice removed at a time, most telling first: the field's value in the course family (its
# default), except the optimizer, whose default (SGD at Muon's learning rate) would be no fair
# stand-in: airbench94's Nesterov SGD on every parameter, its rates turned from a summed loss
# to a mean one (lr 11.5 per 1,024 examples over 1 + 1/(1 - 0.85), times the batch: 2.93; weight
# decay 0.0153 x batch over the same, over that lr: 1.33e-3; biases 64x; the head at the filters'
# rate, but airbench94 multiplies the head's output by 1/9 and cerberus's head is not scaled, so
# the same step is a rate of 1/81 here: at 1x, the first version of this row, both seeds collapsed
# to one class, 0.1000). One difference stays: cerberus's Nesterov SGD decays every group by its
# rate times the weight decay (torch's coupled decay), so the biases decay 64x faster than in
# airbench94, which divides each group's decay by its rate.
ABLATIONS: dict[str, dict[str, Any]] = {
    "no-whiten": {"arch": {"stem": "conv"}},
    "residual": {"arch": {"residual": True}},
    "no-pool-downsample": {"arch": {"downsample": "stride"}},
    "relu": {"arch": {"activation": "relu"}},
    "no-identity-init": {"arch": {"conv_init": "torch"}},
    "learned-bn-scale": {"arch": {"bn_weight": "learned"}},
    "slow-bn-stats": {"arch": {"bn_momentum": 0.1}},
    "avg-head-pool": {"arch": {"pool_type": "avg"}},
    "nesterov-not-muon": {"recipe": {"optimizer": "nesterov", "lr": 2.93, "weight_decay": 1.33e-3, "lr_bias_scale": 64.0,
                                     "lr_head_scale": 1 / 81}},
    "no-bias-head-rates": {"recipe": {"lr_bias_scale": 1.0, "lr_head_scale": 1.0}},
    "no-label-smoothing": {"recipe": {"label_smoothing": 0.0}},
    "cosine-not-linear": {"recipe": {"schedule": "cosine"}},
    "random-flips": {"recipe": {"augment": {"alternate_flip": False}}},
    "zero-padded-crop": {"recipe": {"augment": {"crop_fill": "mean"}}},
    "crop-4": {"recipe": {"augment": {"crop_padding": 4}}},
}
# Test-time augmentation changes no weight: these rows score the base row's saved models again.
TTA_ABLATIONS: dict[str, dict[str, bool]] = {"no-shift-tta": {"tta_shift": False}, "no-tta": {"tta_shift": False, "tta_flip": False}}


def merged(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in change.items():
        out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def at(config: dict[str, Any], budget: float) -> dict[str, Any]:
    return merged(config, {"recipe": {"budget": budget}})


def rows(group: str, ablation_budget: float) -> list[tuple[str, dict[str, Any], int]]:
    """(name, config, seeds) of a group."""
    if group == "target":
        return [("fast-0.283", at(FAST, 0.283), 3)]
    if group == "side":
        return [("course-0.283", at(SEED, 0.283), 1), ("old-best-0.283", at(OLD_BEST, 0.283), 1)]
    if group == "curve":
        return [(f"fast-{b}", at(FAST, b), 1) for b in (0.1, 0.2, 0.5)]
    base = at(FAST, ablation_budget)
    return [(f"fast-{ablation_budget}", base, 2)] + [
        (f"{name}-{ablation_budget}", merged(base, change), 2) for name, change in ABLATIONS.items()]


def rescore(name: str, base: str, tta: dict[str, bool], out: Path, data_dir: str) -> dict[str, Any]:
    """The base row's saved models scored on the test set with other test-time views."""
    import statistics

    import torch

    from cerberus.config import Config
    from cerberus.data import test_split, train_split
    from cerberus.fit import _stats, evaluate
    from cerberus.model import ResNet

    config = Config.from_json((out / base / "config.json").read_text())
    mean, std = _stats(train_split("cifar10", data_dir).images)
    test = test_split("cifar10", data_dir)
    accuracies = []
    for weights in sorted((out / base).glob("seed-*.pt")):
        model = ResNet(config.arch)
        model.load_state_dict(torch.load(weights, weights_only=True))
        accuracies.append(evaluate(model, test, mean, std, tta_flip=tta.get("tta_flip", config.recipe.tta_flip),
                                   tta_shift=tta.get("tta_shift", config.recipe.tta_shift)))
    return {"test_accuracy": statistics.fmean(accuracies), "test_accuracy_std": statistics.stdev(accuracies)
            if len(accuracies) > 1 else None, "seeds": len(accuracies), "rescored_from": base, "tta": tta}


def run_row(name: str, config: dict[str, Any], seeds: int, out: Path, data: list[str]) -> dict[str, Any]:
    folder = out / name
    if not (folder / "metrics.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{name}.json"
        path.write_text(json.dumps(config, indent=2))
        command = [sys.executable, "-m", "cerberus", "train", "--config", str(path), "--seeds", str(seeds),
                   "--out", str(folder), "--device", "cpu", *data]
        print(f"{name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
        subprocess.run(command, check=True, env=child_env())
    m = json.loads((folder / "metrics.json").read_text())
    return {"test_accuracy": m["test_accuracy"], "test_accuracy_std": m["test_accuracy_std"], "seeds": m["test_seeds"],
            "seconds_per_seed": [s["train_seconds"] for s in m["seeds"]],
            "step_seconds_per_seed": [s.get("step_seconds") for s in m["seeds"]],
            "test_seconds_per_seed": [s.get("test_seconds") for s in m["seeds"]], "pflop_per_seed": m["train_flops"] / 1e15,
            "params": m["params"], "epochs": m["epochs"], "precision": m["precision"], "device": m["device"],
            "torch": m["torch"], "date": m["date"], "config": json.loads((folder / "config.json").read_text())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py/")
    p.add_argument("--out", type=Path, default=Path("/tmp/frontier"))
    p.add_argument("--group", action="append", choices=("target", "side", "curve", "ablation"),
                   help="repeatable; default: all four, in that order")
    p.add_argument("--only", help="run only the rows whose name contains this")
    p.add_argument("--ablation-budget", type=float, default=0.05)
    a = p.parse_args()
    out = a.out.resolve()
    summary_path = out / "frontier.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary["machine"] = machine()
    for group in a.group or ("target", "side", "curve", "ablation"):
        for name, config, seeds in rows(group, a.ablation_budget):
            if a.only and a.only not in name:
                continue
            summary.setdefault(group, {})[name] = r = run_row(name, config, seeds, out, ["--data-dir", a.data_dir])
            std = f" ± {r['test_accuracy_std']:.4f}" if r["test_accuracy_std"] is not None else ""
            print(f"{name}: test {r['test_accuracy']:.4f}{std} over {r['seeds']} seed(s), {r['pflop_per_seed']:.3f} PFLOP, "
                  f"{sum(r['seconds_per_seed']) / len(r['seconds_per_seed']):.0f} s a seed", flush=True)
            summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        if group == "ablation":
            for name, tta in TTA_ABLATIONS.items():
                base = f"fast-{a.ablation_budget}"
                if a.only and a.only not in f"{name}-{a.ablation_budget}":
                    continue
                summary[group][f"{name}-{a.ablation_budget}"] = r = rescore(name, base, tta, out, a.data_dir)
                print(f"{name}: test {r['test_accuracy']:.4f} (the models of {base}, rescored)", flush=True)
                summary_path.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
