"""Which sampler and pruner to search with at 50 trials: cerberus's own search loop, with
training replaced by a learning-curve simulator, for several pairs over several seeds.

Each study is :func:`cerberus.search.run` itself on the default space (sampling, the budget
check with its rejections and constraints, per-epoch reports, the pruner's cuts, the count
of 50 trained trials), with :class:`cerberus.fit.Fit` swapped for :class:`SimulatedFit` (the search's ``trainer``), so a
study costs seconds instead of GPU hours. Each study first trains ``--trials`` trials, then
goes on (as ``run`` resumes a study) until it has spent the cost of ``--trials`` full trials
of the median net of the space, so that pairs that prune can also be compared at equal
compute. Cost is epochs weighted by each net's forward FLOPs. Printed per pair, as mean (and
min..max) over seeds:

* at ``--trials`` trained trials: ``true best``, the expected final accuracy of the
  configuration the study ranks best (its noise-free :func:`final_accuracy`: what retraining
  it would give, not its lucky reported value); the ``epochs`` trained and their ``cost`` as
  a share of the budget; how many trials ran to the end (``complete``) and how many draws were
  ``rejected`` over the parameter budget on the way;
* at equal cost: how many trained ``trials`` fit in the budget and the ``true best`` of those.

The simulator (an invented response surface, not CIFAR-10 measurements; its constants are
set from common CIFAR-10 ResNet experience and are below): a configuration has an expected
final accuracy (capacity from its parameter count; learning rate and weight decay against an
optimum that depends on optimizer and batch size; schedule, warm-up, label smoothing, batch
size, flip TTA; augmentation that pays off more on bigger nets) and an early deficit that the
training closes as ``(1 - epoch / epochs) ** 1.5``. The deficit grows with the learning rate
and the augmentation strength and varies by trial, so curves cross: strongly regularised,
high-learning-rate runs look worse early and end better. A learning rate far above the
optimum diverges in the first epoch. Each report carries evaluation noise. The printed rank
correlation between early and final accuracy over random configurations says how much the
early epochs tell, which is what decides how well a pruner can do.

    PYTHONPATH=. python benchmarks/pruners.py [--seeds 5] [--trials 50] [--pairs NAME,...]
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import torch
from common import SEARCH_SIZES
from rich.console import Console

from cerberus import space as spaces
from cerberus import search as searches
from cerberus import study as studies
from cerberus import trials as records
from cerberus.trials import Reason
from cerberus.config import Arch, Config
from cerberus.size import flops as count_flops, params as count_params
from cerberus.reporter import Reporter
from cerberus.fit import Epoch, Result

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 5_000_000
CHANCE = 10.0  # percent, ten classes
BASE_DEFICIT = 40.0  # points below the final accuracy that the first epochs start from
EVAL_NOISE = 0.5  # points, standard deviation of one epoch's validation accuracy
SEED_NOISE = 0.25  # points, of the final accuracy between training seeds


def final_accuracy(config: Config) -> float:
    """Expected validation accuracy (percent) of ``config`` after its epochs; CHANCE if it diverges."""
    r = config.recipe
    acc = 92.5 - 2.2 * math.log2(BUDGET / _params(config.arch))  # halving the net costs 2.2 points
    acc -= 0.15 * max(0, sum(config.arch.blocks) - 10)  # very deep nets are slow to train in few epochs
    over = _lr_excess(config)
    if over > 0.9:
        return CHANCE
    acc -= 5.0 * over**2
    wd_opt = 5e-2 if r.optimizer == "adamw" else 5e-4
    acc -= min(8.0, 1.5 * math.log10(r.weight_decay / wd_opt) ** 2)
    acc += {"cosine": 0.0, "onecycle": 0.1, "step": -0.4}[r.schedule] + (0.1 if r.warmup and r.schedule != "onecycle" else 0.0)
    acc += 0.2 * (r.label_smoothing > 0) + 0.3 * r.tta_flip + {128: 0.3, 256: 0.0, 512: -0.6}.get(r.batch_size, 0.0)
    strength = _augment_strength(config)
    acc += (0.8 * min(strength, 2.0) - 0.6 * max(0.0, strength - 2.0)) * _params(config.arch) / BUDGET * 2 - 0.3 * strength
    return acc


@functools.cache
def _params(arch: Arch) -> int:
    return count_params(arch)


def _lr_excess(config: Config) -> float:
    """log10 of the learning rate over its optimum (negative: below it)."""
    r = config.recipe
    optimum = 2e-3 * math.sqrt(r.batch_size / 128) if r.optimizer == "adamw" else min(0.4, 0.1 * r.batch_size / 128)
    return math.log10(r.lr / optimum)


def _augment_strength(config: Config) -> float:
    a = config.recipe.augment
    return (0.3 * (a.rotation > 0) + (0.5 + 0.5 * (a.cutout_length >= 16)) * (a.cutout_holes > 0)
            + (a.mixup_alpha > 0) + (a.cutmix_alpha > 0) + 1.5 * a.trivial_augment)


def curve(config: Config, seed: int) -> list[float]:
    """Validation accuracy (fraction) after each epoch of one simulated training run, or []
    when it diverges in the first epoch."""
    final = final_accuracy(config)
    if final <= CHANCE:
        return []
    g = torch.Generator().manual_seed(seed)
    normal = lambda: float(torch.randn((), generator=g))  # noqa: E731
    deficit = (BASE_DEFICIT + 12 * max(0.0, _lr_excess(config)) + 4 * _augment_strength(config)) * math.exp(0.2 * normal())
    final += SEED_NOISE * normal()
    epochs = config.recipe.epochs
    return [max(CHANCE, min(100.0, final - deficit * (1 - e / epochs) ** 1.5 + EVAL_NOISE * normal())) / 100
            for e in range(1, epochs + 1)]


class SimulatedFit:
    """:class:`cerberus.fit.Fit`'s contract as the search uses it, with the simulated curve
    instead of training (no model: no latency objective, no checkpoint)."""

    def __init__(self, config: Config, train: object, val: object, device: torch.device, seed: int | None = None,
                 **_: object) -> None:
        self.curve, self.history, self.diverged = curve(config, seed or 0), [], False

    def __enter__(self) -> "SimulatedFit":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def restore(self, state: dict) -> None:
        raise AssertionError("the simulation keeps no checkpoints")

    def __iter__(self) -> Iterator[Epoch]:
        if not self.curve:
            self.diverged = True
            yield Epoch(1, None, diverged=True)
            return
        for epoch, accuracy in enumerate(self.curve, 1):
            self.history.append(accuracy)
            yield Epoch(epoch, accuracy, 0.0)

    def result(self) -> Result:
        return Result(self.history[-1] if self.history else 0.0, len(self.history), 0.0, 0.0, history=list(self.history),
                      diverged=self.diverged)


def pairs(epochs: int) -> dict[str, tuple[str, Callable[[], optuna.pruners.BasePruner]]]:
    """Name -> (sampler, pruner factory). "tpe" is the sampler cerberus.study.create_study makes.
    The median and percentile pruners start after 5 completed trials and prune from epoch 1
    (epoch 3 for ``median-warm3``); ``patient-median`` prunes after 2 epochs in a row under the
    median; ASHA and Hyperband use rungs at epochs 1, 3, 9 (reduction factor 3)."""
    P = optuna.pruners
    return {
        "tpe+none": ("tpe", P.NopPruner),
        "tpe+median": ("tpe", lambda: P.MedianPruner(n_startup_trials=5, n_warmup_steps=1)),
        "tpe+median-warm3": ("tpe", lambda: P.MedianPruner(n_startup_trials=5, n_warmup_steps=3)),
        "tpe+percentile25": ("tpe", lambda: P.PercentilePruner(25.0, n_startup_trials=5, n_warmup_steps=1)),
        "tpe+patient-median": ("tpe", lambda: P.PatientPruner(P.MedianPruner(n_startup_trials=5, n_warmup_steps=1), patience=2)),
        "tpe+asha": ("tpe", lambda: P.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)),
        "tpe+hyperband": ("tpe", lambda: P.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)),
        "random+median": ("random", lambda: P.MedianPruner(n_startup_trials=5, n_warmup_steps=1)),
    }


def one_study(space: spaces.Space, sampler: str, pruner: optuna.pruners.BasePruner, trials: int,
              budget: float, seed: int) -> dict[str, float]:
    """One study of ``trials`` trained trials, then continued until it has spent ``budget``
    (FLOP-weighted epochs), as ``run`` resumes a study; scored at both points."""
    study = studies.create_study(f"bench-{seed}", optuna.storages.InMemoryStorage(), seed=seed)
    if sampler == "random":
        study.sampler = optuna.samplers.RandomSampler(seed=seed)
    study.pruner = pruner
    target = trials
    while True:
        opts = searches.RunOptions(trials=target, max_params=BUDGET, seed=seed)
        with Reporter(target, 0, console=Console(quiet=True)) as reporter:
            searches.run(study, space, opts, reporter, splits=lambda: SEARCH_SIZES, trainer=SimulatedFit)
        trained = [t for t in study.trials if records.is_trained(t)]
        if _cost(trained) >= budget:
            break
        target += 10
    first = trained[:trials]
    affordable = [t for i, t in enumerate(trained) if _cost(trained[: i + 1]) <= budget]
    return {
        "true": _true_best(first),
        "epochs": sum(t.user_attrs.get("epochs", 0) for t in first),
        "cost": _cost(first) / budget,
        "completed": sum(t.state == optuna.trial.TrialState.COMPLETE for t in first),
        "rejected": sum(t.user_attrs.get("reason") == Reason.OVER_BUDGET for t in study.trials[: first[-1].number + 1]),
        "budget_trials": len(affordable),
        "budget_true": _true_best(affordable),
    }


def _cost(trials: list[optuna.trial.FrozenTrial]) -> float:
    return sum(t.user_attrs.get("epochs", 0) * t.user_attrs["flops"] for t in trials)


def _true_best(trials: list[optuna.trial.FrozenTrial]) -> float:
    """The expected final accuracy of the completed trial with the best reported one."""
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return math.nan
    return final_accuracy(Config.from_dict(max(done, key=lambda t: t.value).user_attrs["config"]))


def rank_correlations(space: spaces.Space, n: int = 400) -> dict[int, float]:
    """Spearman correlation between the accuracy at an epoch and the expected final one, over
    random configurations of the space that fit and do not diverge."""
    configs = [c for c in _random_configs(space, n) if _params(c.arch) <= BUDGET and final_accuracy(c) > CHANCE]
    finals = torch.tensor([final_accuracy(c) for c in configs])
    curves = torch.tensor([curve(c, i) for i, c in enumerate(configs)])
    rank = lambda v: v.argsort().argsort().double()  # noqa: E731
    return {e: float(torch.corrcoef(torch.stack([rank(curves[:, e - 1]), rank(finals)]))[0, 1])
            for e in (1, 2, 3, 5, 8, curves.shape[1])}


def _random_configs(space: spaces.Space, n: int) -> list[Config]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return [space.sample(study.ask()) for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default=str(ROOT / "search/default.toml"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--pairs", default="", help="comma-separated names (default: all)")
    args = parser.parse_args(argv)
    space = spaces.load(args.space)
    epochs = space.recipe["epochs"].values()
    if len(epochs) != 1:
        print(f"{args.space}: [recipe] epochs must be one fixed value for this benchmark, got {epochs}", file=sys.stderr)
        return 2
    table = pairs(epochs[0])
    chosen = [p for p in args.pairs.split(",") if p] or list(table)
    unknown = [p for p in chosen if p not in table]
    if unknown:
        print(f"--pairs: unknown pair {unknown[0]!r}; allowed: {', '.join(table)}", file=sys.stderr)
        return 2
    if args.seeds < 1 or args.trials < 1:
        print(f"--seeds {args.seeds} --trials {args.trials}: both must be integers >= 1", file=sys.stderr)
        return 2
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    print("surrogate: rank correlation of epoch-k accuracy with the final, random configs:",
          ", ".join(f"epoch {e}: {r:.2f}" for e, r in rank_correlations(space).items()))
    median_flops = statistics.median(count_flops(c.arch) for c in _random_configs(space, 200) if _params(c.arch) <= BUDGET)
    budget = args.trials * epochs[0] * median_flops
    print(f"{args.trials} trained trials per study, then on to a budget of {args.trials} x {epochs[0]} epochs of the "
          f"median net ({median_flops / 1e9:.2f} GFLOPs); {args.seeds} seeds; mean (min..max) over seeds")
    print(f"{'':<20} {'--- at ' + str(args.trials) + ' trained trials ---':^52} {'--- at equal cost ---':^30}")
    print(f"{'pair':<20} {'true best %':>20} {'epochs':>7} {'cost':>5} {'complete':>8} {'rejected':>8}"
          f" {'trials':>7} {'true best %':>20} {'s':>5}")
    for name in chosen:
        sampler, pruner = table[name]
        start = time.perf_counter()
        rows = [one_study(space, sampler, pruner(), args.trials, budget, seed) for seed in range(args.seeds)]
        col = lambda k: [r[k] for r in rows]  # noqa: E731
        spread = lambda k: f"{statistics.mean(col(k)):>6.2f} ({min(col(k)):.2f}..{max(col(k)):.2f})"  # noqa: E731
        print(f"{name:<20} {spread('true'):>20} {statistics.mean(col('epochs')):>7.0f} {statistics.mean(col('cost')):>5.2f}"
              f" {statistics.mean(col('completed')):>8.1f} {statistics.mean(col('rejected')):>8.1f}"
              f" {statistics.mean(col('budget_trials')):>7.1f} {spread('budget_true'):>20} {time.perf_counter() - start:>5.0f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
