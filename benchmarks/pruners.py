"""Which sampler and pruner to search with: each pair replays real learning curves at equal
search compute, and is judged by the test accuracy of the configuration it picks.

The curves are ``benchmarks/curves.json`` (``benchmarks/curves.py``: configurations of
``search/cpu.toml`` trained unpruned on this CPU, the CIFAR-10 JPEG copy, each with its probe
accuracy after every epoch but the last, its final validation accuracy and its test accuracy).
A replayed study samples ``search/cpu.toml`` with the pair's sampler (``tpe`` is the search's
own, :func:`cerberus.study.make_sampler`), its first trial the table's first curve (the shipped
fast configuration, as ``run --enqueue-seed`` queues it); each trial takes the
recorded curve of the configuration nearest to what it sampled (every parameter scaled to its
range, logarithmically where the space is), reports it as the search does (at the percent of
its steps done) and lets the pair's pruner cut it. A study stops once it has spent
``--compute`` trials' worth of training (a cut trial costs the share it trained). Its pick is
its best completed trial by validation accuracy, and the pick's score is that configuration's
recorded test accuracy: what retraining it gives, not its lucky validation value. Printed per
pair, over ``--repeats`` seeds: the mean test accuracy of the pick, its gain over the same
sampler without a pruner (paired by seed, with its standard error), how many trials the
compute bought, and how often the pick was the table's best.

    python benchmarks/pruners.py [--curves benchmarks/curves.json] [--compute 16] [--repeats 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from cerberus import space as spaces
from cerberus.study import make_pruner, make_sampler

ROOT = Path(__file__).resolve().parents[1]
SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "tpe": make_sampler,  # the search's own
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
}
PAIRS = [(s, p) for s in ("tpe", "random") for p in ("none", "median", "percentile", "halving", "hyperband")]


def distance(space: spaces.Space, a: dict[str, Any], b: dict[str, Any]) -> float:
    """How far apart two sampled parameter sets are: each numeric parameter's gap over its range
    (in logs for a log range), each other one 1 where they differ; a parameter one of them lacks
    counts as different."""
    dims = {**space.arch, **space.recipe, **space.augment}
    total = 0.0
    for key in set(a) | set(b):
        if key not in a or key not in b:
            total += 1
            continue
        dim = dims.get(key) or dims.get(key.rsplit("_", 1)[0])  # blocks_2: its own, or every stage's
        if isinstance(dim, spaces.Range) and not isinstance(a[key], bool):
            lo, hi, x, y = dim.low, dim.high, a[key], b[key]
            if dim.log:
                lo, hi, x, y = math.log(lo), math.log(hi), math.log(x), math.log(y)
            total += abs(x - y) / (hi - lo)
        else:
            total += float(a[key] != b[key])
    return total


def replay(curves: list[dict[str, Any]], space: spaces.Space, sampler: str, pruner: str, compute: float,
           seed: int) -> tuple[float, int]:
    """One study: (the pick's test accuracy, the trials it trained)."""
    study = optuna.create_study(direction="maximize", sampler=SAMPLERS[sampler](seed), pruner=make_pruner(pruner))
    study.enqueue_trial(curves[0]["params"])  # the shipped fast configuration, as run --enqueue-seed queues it
    spent = 0.0
    while spent < compute:
        trial = study.ask()
        space.sample(trial)
        curve = min(curves, key=lambda c: distance(space, trial.params, c["params"]))
        trial.set_user_attr("curve", curves.index(curve))
        pruned = False
        for percent, accuracy in curve["points"]:  # the last at 100%: reported, never pruned, as the search does
            trial.report(accuracy, percent)
            if percent < 100 and trial.should_prune():
                spent += percent / 100
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                pruned = True
                break
        if not pruned:
            spent += 1
            study.tell(trial, curve["val_accuracy"])
    best = study.best_trial
    return curves[best.user_attrs["curve"]]["test_accuracy"], len(study.trials)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--curves", type=Path, default=ROOT / "benchmarks" / "curves.json")
    p.add_argument("--compute", type=float, default=16.0,
                   help="trials' worth of training a study may spend (default: run --space cpu --trials 16)")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--json", action="store_true", help="print one JSON object (with every study's pick)")
    a = p.parse_args()
    result = compare(a.curves, a.compute, a.repeats)
    print(json.dumps(result) if a.json else table(result))


def compare(curves_path: Path, compute: float, repeats: int) -> dict[str, Any]:
    """Every pair of :data:`PAIRS`, replayed ``repeats`` times: each study's pick (its test
    accuracy), their mean, the mean trials trained, the share of studies whose pick was the
    table's best, and the pick's gain over the same sampler without pruning (:func:`gain`)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    curves = json.loads(curves_path.read_text())["curves"]
    space = spaces.load(ROOT / "search" / "cpu.toml")
    top = max(c["test_accuracy"] for c in curves)
    out: dict[str, Any] = {"curves": len(curves), "compute": compute, "repeats": repeats, "table_best_test": top, "pairs": {}}
    for sampler, pruner in PAIRS:
        runs = [replay(curves, space, sampler, pruner, compute, seed) for seed in range(repeats)]
        tests = [t for t, _ in runs]
        out["pairs"][f"{sampler}+{pruner}"] = {
            "test": statistics.fmean(tests), "test_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
            "trials": statistics.fmean(n for _, n in runs), "found_best": sum(t == top for t in tests) / len(tests),
            "picks": tests}
    for name, r in out["pairs"].items():
        r["gain"], r["gain_stderr"] = gain(r["picks"], out["pairs"][name.split("+")[0] + "+none"]["picks"])
    return out


def gain(picks: list[float], baseline: list[float]) -> tuple[float, float]:
    """The mean of the paired differences of two pairs' picks (studies of the same seed: the same
    start-up trials), and its standard error."""
    d = [a - b for a, b in zip(picks, baseline, strict=True)]
    return statistics.fmean(d), statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else 0.0


def table(result: dict[str, Any]) -> str:
    """The result as a table that fits an 80-column terminal."""
    lines = [f"{result['curves']} recorded curves, {result['compute']:g} trials' worth of compute, "
             f"{result['repeats']} studies a pair;",
             f"the table's best test accuracy {result['table_best_test']:.4f}",
             f"{'pair':<19}{'pick test':>10}{'± std':>8}{'vs no pruner (paired)':>22}{'trials':>8}{'found best':>12}"]
    for name, r in sorted(result["pairs"].items(), key=lambda kv: -kv[1]["test"]):
        vs = f"{r['gain']:+.4f} ± {r['gain_stderr']:.4f}"
        lines.append(f"{name:<19}{r['test']:>10.4f}{r['test_std']:>8.4f}{vs:>22}{r['trials']:>8.1f}{r['found_best']:>12.0%}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
