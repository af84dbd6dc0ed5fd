"""One search: an Optuna study whose trials are sampled from a Space, budget-checked, trained.

Contract of :func:`run`:

* :func:`check_budget` comes first (the command line calls it before storage is touched): it
  measures the smallest architecture of the space and refuses (UserError) a budget that not
  even that one meets, so a run never loops on rejections.
* Each trial samples a Config and measures it on the meta device. Over budget, it ends PRUNED
  with user attrs ``params`` and ``reason = "over_budget"``: no model, no data. Every trial
  carries the constraint ``params - max_params`` (``Trial.set_constraint``), which TPE reads
  for pruned trials too, so the sampler learns to stay inside the budget.
* Trained trials report validation accuracy per epoch; the pruner may stop them (PRUNED,
  ``reason = "pruned"``); a diverged loss ends them PRUNED with ``reason = "diverged"``.
* ``trials`` is a target for the *study*: the run stops once the study holds that many trained
  trials (COMPLETE, or PRUNED after training). Rejected architectures do not count, so the same
  command after an interruption trains only the remainder.
"""

from __future__ import annotations

import functools
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from cerberus import data as datasets
from cerberus.config import Config
from cerberus.errors import UserError
from cerberus.model import measure
from cerberus.progress import Reporter
from cerberus.space import Space, replace_epochs
from cerberus.train import fit

OVER_BUDGET, PRUNED, DIVERGED = "over_budget", "pruned", "diverged"
MAX_REJECTIONS_IN_A_ROW = 1000  # a feasible space that the sampler still cannot hit


@dataclass(frozen=True)
class RunOptions:
    trials: int
    max_params: int = 5_000_000
    epochs: int | None = None  # overrides the space
    device: torch.device = torch.device("cpu")
    data: str = "cifar10"
    data_dir: str | None = None
    seed: int | None = None
    timeout: float | None = None


@dataclass(frozen=True)
class RunSummary:
    trained: int  # trained trials the study holds now
    trained_now: int
    rejected_now: int
    best: FrozenTrial | None
    gave_up: bool = False  # MAX_REJECTIONS_IN_A_ROW rejections without a trained trial


def is_trained(t: FrozenTrial) -> bool:
    return t.state == TrialState.COMPLETE or (t.state == TrialState.PRUNED and t.user_attrs.get("reason") != OVER_BUDGET)


def count_trained(study: optuna.Study) -> int:
    return sum(is_trained(t) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def check_budget(space: Space, max_params: int) -> None:
    smallest = min(measure(a).params for a in space.architectures())
    if smallest > max_params:
        raise UserError(
            f"no architecture in {space.path} fits --max-params {max_params:,}: the smallest has "
            f"{smallest:,} parameters; raise --max-params or allow fewer blocks or narrower widths"
        )


def create_study(name: str, storage: optuna.storages.BaseStorage, seed: int | None) -> optuna.Study:
    """The study, made on first use. The sampler and pruner are per process (Optuna keeps
    neither in storage); the seed is offset by the trials already there, so a resumed run does
    not replay the random start-up samples of the first."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    offset = len(study.get_trials(deepcopy=False))
    with warnings.catch_warnings():
        # group=True is what keeps TPE multivariate across stage counts; it is marked experimental.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.TPESampler(
            seed=None if seed is None else seed + offset, multivariate=True, group=True, n_startup_trials=10
        )
    study.pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    return study


def run(study: optuna.Study, space: Space, opts: RunOptions, reporter: Reporter,
        stop: threading.Event | None = None) -> RunSummary:
    """Optimise until the study holds ``opts.trials`` trained trials (or the timeout).

    ``stop`` is the Ctrl-C flag: a KeyboardInterrupt can vanish when it lands in a finaliser
    that garbage collection runs (SQLAlchemy has some), so the run also checks the flag after
    every epoch and every trial and raises KeyboardInterrupt itself.
    """
    stop = stop or threading.Event()

    def check_stop() -> None:
        if stop.is_set():
            raise KeyboardInterrupt
    splits = functools.cache(lambda: datasets.search_splits(opts.data, opts.data_dir))
    state = {"trained": 0, "rejected": 0, "in_a_row": 0, "gave_up": False}

    def objective(trial: optuna.Trial) -> float:
        config = replace_epochs(space.sample(trial), opts.epochs)
        size = measure(config.arch)
        _set_attrs(trial, config=config.to_dict(), params=size.params, flops=size.flops)
        trial.set_constraint("params", size.params - opts.max_params)
        if size.params > opts.max_params:
            trial.set_user_attr("reason", OVER_BUDGET)
            reporter.rejected_arch(trial.number, size.params, opts.max_params)
            raise optuna.TrialPruned(f"{size.params} parameters > {opts.max_params}")
        train, val = splits()
        epochs = config.recipe.epochs

        def on_epoch(epoch: int, accuracy: float) -> bool:
            check_stop()
            trial.report(accuracy, epoch)
            reporter.epoch(trial.number, epoch, epochs, accuracy)
            return epoch < epochs and trial.should_prune()

        seed = None if opts.seed is None else opts.seed * 100_003 + trial.number
        result = fit(config, train, val, opts.device, on_epoch, seed=seed)
        _set_attrs(trial, epochs=result.epochs, train_seconds=result.train_seconds,
                   images_per_s=result.images_per_s, device=device_name(opts.device))
        if result.diverged or result.stopped:
            trial.set_user_attr("reason", DIVERGED if result.diverged else PRUNED)
            raise optuna.TrialPruned()
        return result.val_accuracy

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        check_stop()
        if trial.user_attrs.get("reason") == OVER_BUDGET:
            state["rejected"] += 1
            state["in_a_row"] += 1
            if state["in_a_row"] >= MAX_REJECTIONS_IN_A_ROW:
                state["gave_up"] = True
                study.stop()
            return
        state["in_a_row"] = 0
        if is_trained(trial):
            state["trained"] += 1
            accuracy = trial.value if trial.state == TrialState.COMPLETE else _last_report(trial)
            label = trial.user_attrs.get("reason", "complete")
            reporter.finished(trial.number, label, accuracy, trial.user_attrs["params"],
                              trial.user_attrs.get("train_seconds", 0.0))
        if count_trained(study) >= opts.trials:
            study.stop()

    if count_trained(study) < opts.trials:
        study.optimize(objective, timeout=opts.timeout, callbacks=[after_trial], gc_after_trial=True)
    return RunSummary(count_trained(study), state["trained"], state["rejected"], best_trial(study), state["gave_up"])


def _set_attrs(trial: optuna.Trial, **attrs: Any) -> None:
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def _last_report(trial: FrozenTrial) -> float | None:
    steps = trial.intermediate_values
    return steps[max(steps)] if steps else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def resolve_device(spec: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``, checked against this machine."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"--device {spec!r} is not a device; allowed: auto, cpu, cuda, cuda:N") from None
    if device.type == "cpu" and device.index is None:
        return device
    if device.type != "cuda":
        raise UserError(f"--device {spec!r} is not supported; allowed: auto, cpu, cuda, cuda:N")
    if not torch.cuda.is_available():
        raise UserError(f"--device {spec}: CUDA is not available on this machine; use --device cpu or auto")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise UserError(f"--device {spec}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return device


def best_trials(study: optuna.Study, top: int) -> list[FrozenTrial]:
    """Completed trials, best validation accuracy first (fewer parameters break ties)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(done, key=lambda t: (-t.value, t.user_attrs.get("params", 0), t.number))[:top]


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    top = best_trials(study, 1)
    return top[0] if top else None


def summary(t: FrozenTrial) -> dict[str, Any]:
    """The JSON object ``best --json`` prints for one trial."""
    a = t.user_attrs
    return {
        "trial": t.number,
        "val_accuracy": t.value,
        "params": a.get("params"),
        "flops": a.get("flops"),
        "epochs": a.get("epochs"),
        "train_seconds": a.get("train_seconds"),
        "images_per_s": a.get("images_per_s"),
        "device": a.get("device"),
        "config": Config.from_dict(a["config"]).to_dict(),
    }

