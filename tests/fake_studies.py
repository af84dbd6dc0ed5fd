"""Studies shaped like a cerberus search, built in seconds with ``optuna.trial.create_trial``:
the same parameters, user attrs, constraint and per-epoch values a real run stores, with
made-up accuracies. For tests that need many trials or rare endings, and for the report
benchmark; tests that need a real search run the CLI instead.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import random

import optuna
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from cerberus.config import Arch, Augment, Config, Recipe
from cerberus.size import of as measure

BUDGET = 5_000_000
EPOCHS = 15
WIDTHS = (32, 48, 64, 96, 128, 192, 256, 320)
OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw")
SEED_ARCH = Arch((3, 5, 3), (64, 128, 256))  # the course project's ResNet-24


@functools.cache
def _size(arch: Arch) -> tuple[int, int, int]:
    m = measure(arch)
    return m.params, m.flops, m.train_flops


def trial(number: int, *, ending: str = "complete", arch: Arch | None = None, rng: random.Random | None = None,
          worker: str = "host:1", start: dt.datetime | None = None, budget: int = BUDGET) -> FrozenTrial:
    """One trial as ``run`` leaves it. ``ending`` is ``complete``, ``over_budget``, ``pruned``,
    ``diverged``, ``error`` (FAIL with reason) or ``worker_died`` (FAIL without one)."""
    rng = rng or random.Random(number)
    stages = len(arch.blocks) if arch else rng.choice((3, 4))
    arch = arch or Arch(tuple(rng.randint(1, 5) for _ in range(stages)), tuple(rng.choice(WIDTHS) for _ in range(stages)))
    optimizer, lr = rng.choice(OPTIMIZERS), math.exp(rng.uniform(math.log(1e-4), math.log(1.0)))
    config = Config(arch, Recipe(optimizer=optimizer, lr=lr, epochs=EPOCHS, augment=Augment(crop_padding=4, flip=True)))
    params = {"stages": stages, "optimizer": optimizer, "lr": lr}
    dists = {"stages": CategoricalDistribution((1, 2, 3, 4)), "optimizer": CategoricalDistribution(OPTIMIZERS),
             "lr": FloatDistribution(1e-4, 1.0, log=True)}
    for i, (b, w) in enumerate(zip(arch.blocks, arch.widths), 1):
        params[f"blocks_{i}"], dists[f"blocks_{i}"] = b, IntDistribution(1, 5)
        params[f"widths_{i}"], dists[f"widths_{i}"] = w, CategoricalDistribution(WIDTHS)
    n_params, flops, per_image = _size(arch)
    attrs = {"config": config.to_dict(), "params": n_params, "flops": flops, "origin": number, "worker": worker}
    start = start or dt.datetime(2026, 1, 1) + dt.timedelta(minutes=number)
    if ending == "over_budget":
        attrs["reason"] = ending
        return _make(TrialState.PRUNED, params, dists, attrs, {}, None, start, dt.timedelta(milliseconds=20), n_params - budget)
    ceiling = rng.uniform(0.6, 0.95)
    epochs = {"complete": EPOCHS, "error": 3, "worker_died": 4}.get(ending, rng.randint(2, EPOCHS - 1))
    curve = {e: ceiling * (1 - math.exp(-(e + 1) / 4)) for e in range(1, epochs + 1)}
    seconds = 20.0 * epochs
    attrs.update(epochs=epochs, train_seconds=seconds, images_per_s=45_000 * epochs / seconds, device="NVIDIA H100",
                 train_flops=epochs * (45_000 // 128) * 128 * per_image)
    state, value = TrialState.COMPLETE, curve[epochs]
    if ending != "complete":
        state, value = (TrialState.PRUNED if ending in ("pruned", "diverged") else TrialState.FAIL), None
        if ending != "worker_died":
            attrs["reason"] = ending
        if ending == "error":
            attrs["error"] = "RuntimeError: made up"
    return _make(state, params, dists, attrs, curve, value, start, dt.timedelta(seconds=seconds), n_params - budget)


def _make(state: TrialState, params: dict, dists: dict, attrs: dict, curve: dict, value: float | None,
          start: dt.datetime, took: dt.timedelta, constraint: float) -> FrozenTrial:
    t = optuna.trial.create_trial(state=state, value=value, params=params, distributions=dists, user_attrs=attrs,
                                  intermediate_values=curve, constraints={"params": float(constraint)})
    t.datetime_start, t.datetime_complete = start, start + took  # create_trial stamps "now"
    return t


def search(n: int, seed: int = 0, workers: int = 4, archs: int = 40) -> list[FrozenTrial]:
    """``n`` trials of a search on ``workers`` machines working side by side: a third over
    budget, a third cut by the pruner, a few diverged or failed, the course ResNet-24 once."""
    rng = random.Random(seed)
    # ``archs`` architectures, measured once (60 ms each), stand for the thousands a search samples.
    pool = {Arch(tuple(rng.randint(1, 5) for _ in range(s)), tuple(rng.choice(WIDTHS) for _ in range(s)))
            for s in rng.choices((3, 4), k=archs)} | {Arch((5, 5, 5, 5), (320,) * 4)}
    fits = sorted((a for a in pool if _size(a)[0] <= BUDGET), key=str)
    over = sorted((a for a in pool if _size(a)[0] > BUDGET), key=str)
    clock = {f"gpu{w}:100{w}": dt.datetime(2026, 1, 1) for w in range(workers)}
    out = []
    for number in range(n):
        worker = min(clock, key=clock.get)  # the worker that is free first takes the next trial
        ending = "complete" if number == 1 else rng.choices(
            ("complete", "over_budget", "pruned", "diverged", "error", "worker_died"), (30, 33, 30, 3, 2, 2))[0]
        arch = SEED_ARCH if number == 1 else rng.choice(over if ending == "over_budget" else fits or [SEED_ARCH])
        t = trial(number, ending=ending, rng=rng, worker=worker, start=clock[worker], arch=arch)
        clock[worker] = t.datetime_complete + dt.timedelta(seconds=1)
        out.append(t)
    return out


def create(storage: str, name: str, trials: list[FrozenTrial]) -> optuna.Study:
    """A study ``name`` in ``storage`` (a URL) holding ``trials``, maximising like cerberus'."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.add_trials(trials)
    return study
