"""The read side of a study: how its trials ended, which are trained, which are best.

Nothing here writes. ``best``, ``report``, ``export``, ``train --trial`` and the search's own
stopping rules all read a study through these functions, so they agree on what a trained
trial, a rejected one and the best one are.

Every trial cerberus ends records why in its user attr ``reason`` (a :class:`Reason`), except
a trial whose worker was killed, which cannot: :func:`end_reason` calls a failed trial without
one ``worker_died``.
"""

from __future__ import annotations

import enum
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from cerberus.config import Config


class Reason(enum.StrEnum):
    """Why a trial did not complete; stored as the plain string (user attr ``reason``)."""

    OVER_BUDGET = "over_budget"  # PRUNED before training: more parameters than the budget
    OVER_MEMORY = "over_memory"  # PRUNED before training: its training would not fit the device
    PRUNED = "pruned"  # PRUNED after training some epochs: the pruner cut it
    DIVERGED = "diverged"  # PRUNED: the loss became NaN or infinite
    INTERRUPTED = "interrupted"  # FAIL: Ctrl-C or SIGTERM; queued again, resumes from its checkpoint
    OUT_OF_MEMORY = "out_of_memory"  # FAIL: an allocation failed anyway
    ERROR = "error"  # FAIL: anything else; the user attr ``error`` says what
    WORKER_DIED = "worker_died"  # FAIL with no reason recorded: its worker was killed


REJECTED = (Reason.OVER_BUDGET, Reason.OVER_MEMORY)  # ended before training: never a trained trial
RESUMABLE = (Reason.WORKER_DIED, Reason.INTERRUPTED)  # a failure whose retry resumes from a checkpoint


def end_reason(trial: FrozenTrial) -> str | None:
    """Why a trial did not complete: its ``reason`` attribute, or ``worker_died`` for a failed
    trial without one (every other way to fail records its reason; a killed worker cannot)."""
    if trial.state == TrialState.FAIL:
        return trial.user_attrs.get("reason") or Reason.WORKER_DIED
    return trial.user_attrs.get("reason")


def deaths(trial: FrozenTrial, trials: list[FrozenTrial]) -> int:
    """How many earlier attempts of ``trial`` (its retry history, looked up in ``trials``) ended
    with their worker dead. The retry limit counts these alone: a person's Ctrl-C or SIGTERM
    says nothing against a trial, and Optuna's own count (the history's length) includes them."""
    by_number = {t.number: t for t in trials}
    return sum(1 for n in trial.system_attrs.get("retry_history", [])
               if n in by_number and end_reason(by_number[n]) == Reason.WORKER_DIED)


def rejected(trial: FrozenTrial) -> bool:
    """Ended before training: over budget or over memory."""
    return trial.user_attrs.get("reason") in REJECTED


def is_trained(t: FrozenTrial) -> bool:
    return t.state == TrialState.COMPLETE or (t.state == TrialState.PRUNED and t.user_attrs.get("reason") not in REJECTED)


def count_trained(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> int:
    """The study's trained trials; ``trials``: all of them, already read."""
    if trials is None:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return sum(is_trained(t) for t in trials)


def last_accuracy(trial: FrozenTrial) -> float | None:
    """The last per-epoch validation accuracy a trial recorded (reported, or kept in ``val_history``)."""
    steps, history = trial.intermediate_values, trial.user_attrs.get("val_history")
    if steps:
        return steps[max(steps)]
    return history[-1] if history else None


def best_trials(study: optuna.Study, top: int | None = None, trials: list[FrozenTrial] | None = None) -> list[FrozenTrial]:
    """Completed trials, best validation accuracy first (fewer parameters break ties); of a
    multi-objective study only its Pareto front. ``top=None`` is one trial, or the whole front.
    ``trials``: all of the study's, already read (a single-objective study reads nothing more)."""
    if len(study.directions) > 1:
        done = study.best_trials
    else:
        done = ([t for t in trials if t.state == TrialState.COMPLETE] if trials is not None
                else study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        top = top or 1
    return sorted(done, key=lambda t: (-t.values[0], t.user_attrs.get("params", 0), t.number))[:top]


def best_trial(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> FrozenTrial | None:
    top = best_trials(study, 1, trials)
    return top[0] if top else None


def best_seen(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> tuple[float, int] | None:
    """(validation accuracy, trial number) of the study's best trial, as the reporter shows it."""
    best = best_trial(study, trials)
    return None if best is None else (best.values[0], best.number)


def summary(t: FrozenTrial) -> dict[str, Any]:
    """The JSON object ``best --json`` prints for one trial."""
    a = t.user_attrs
    return {
        "trial": t.number,
        "val_accuracy": t.values[0],
        "params": a.get("params"),
        "latency_ms": a.get("latency_ms"),
        "flops": a.get("flops"),
        "epochs": a.get("epochs"),
        "train_flops": a.get("train_flops"),
        "train_seconds": a.get("train_seconds"),
        "images_per_s": a.get("images_per_s"),
        "device": a.get("device"),
        "config": Config.from_dict(a["config"]).to_dict(),
    }


class Snapshot:
    """The study's trials, read once after each finished trial and shared by the callbacks that
    follow it (through the gRPC proxy every read is a round trip); a callback that writes calls
    :meth:`changed`, so the next one reads again."""

    def __init__(self) -> None:
        self.number: int | None = None
        self.trials: list[FrozenTrial] = []

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> list[FrozenTrial]:
        if self.number != trial.number:
            self.trials, self.number = study.get_trials(deepcopy=False), trial.number
        return self.trials

    def changed(self) -> None:
        self.number = None
