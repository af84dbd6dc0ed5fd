"""One search: an Optuna study whose trials are sampled from a Space, budget-checked, trained.

Contract of :func:`run`:

* :func:`check_budget` comes first (the command line calls it before storage is touched): it
  measures the smallest architecture of the space and refuses (UserError) a budget that not
  even that one meets, so a run never loops on rejections.
* Each trial samples a Config and measures it on the meta device. Over budget, it ends PRUNED
  with user attrs ``params`` and ``reason = "over_budget"``: no model, no data. Every trial
  carries the constraint ``params - max_params`` (``Trial.set_constraint``), which TPE reads
  for pruned trials too, so the sampler learns to stay inside the budget.
* Then :func:`check_memory` estimates its training memory (:mod:`cerberus.memory`, user attr
  ``memory_bytes``, recorded for every trial that gets this far). One that cannot fit the
  device ends PRUNED with ``reason = "over_memory"``, untrained, with a positive ``memory``
  constraint that TPE learns from as from ``params``. Neither rejection counts as trained. An
  allocation that fails anyway (CUDA's or the CPU's) ends the trial FAIL, ``out_of_memory``.
* Trained trials report validation accuracy per epoch; the pruner may stop them (PRUNED,
  ``reason = "pruned"``); a diverged loss ends them PRUNED with ``reason = "diverged"``.
* With ``objectives`` ``accuracy,params`` or ``accuracy,latency`` the study has two objectives
  (maximise validation accuracy, minimise parameters or the milliseconds of a forward pass at
  :data:`cerberus.model.LATENCY_BATCH` images) and its best trials are the Pareto front. Optuna
  prunes single-objective studies only, and cutting trials on accuracy alone would cut exactly
  the small, slow-to-learn nets a front is for, so a multi-objective trial trains all its epochs;
  its per-epoch accuracy is kept as the user attr ``val_history``. The objectives are stored
  with the study (user attr ``objectives``), and a run that asks for others is refused.
* :func:`enqueue` puts a known configuration (the course project's, or a user's) into the
  study as an ordinary trial, trained at the search's fidelity, so the search can only improve
  on it.
* ``trials`` is a target for the *study*: the run stops once the study holds that many trained
  trials (COMPLETE, or PRUNED after training). Rejected architectures do not count, so the same
  command after an interruption trains only the remainder.
"""

from __future__ import annotations

import copy
import functools
import gc
import os
import socket
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from cerberus import data as datasets
from cerberus import memory
from cerberus.config import Config, Recipe
from cerberus.errors import UserError
from cerberus import size as sizes
from cerberus.model import LATENCY_BATCH, latency_ms
from cerberus.precision import Precision, choose
from cerberus.progress import Reporter
from cerberus.data import Split
from cerberus.space import Space, replace_epochs
from cerberus.storage import MAX_RETRY
from cerberus.train import Progress, Result, Trainer, fit

# The objectives a study can have, the first always validation accuracy, and their directions.
OBJECTIVES = {"accuracy": "maximize", "params": "minimize", "latency": "minimize"}
ALLOWED_OBJECTIVES = ("accuracy", "accuracy,params", "accuracy,latency")
OVER_BUDGET, PRUNED, DIVERGED = "over_budget", "pruned", "diverged"  # PRUNED trials
OVER_MEMORY = "over_memory"  # PRUNED too: its training would not fit the device's memory
REJECTED = (OVER_BUDGET, OVER_MEMORY)  # ended before training: never a trained trial
INTERRUPTED, OUT_OF_MEMORY, ERROR, WORKER_DIED = "interrupted", "out_of_memory", "error", "worker_died"  # FAIL
# This process, as the user attr ``worker`` of every trial it runs (the report's timeline lanes):
# the pid keeps two runs on one machine apart, the host name workers on different machines.
WORKER = f"{socket.gethostname()}:{os.getpid()}"
MAX_REJECTIONS_IN_A_ROW = 1000  # a feasible space that the sampler still cannot hit
# What a finished trial records about how it ended; a retry, which inherits them, clears them.
OUTCOME_ATTRS = ("reason", "error", "epochs", "train_seconds", "step_seconds", "images_per_s", "resumed_epochs",
                 "epoch_seconds")


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
    max_failures: int = 5  # failed trials in a row that end the run
    artifacts: Path | None = None  # the study's folder; checkpoints go in artifacts/checkpoints
    compile: bool = False  # torch.compile each trial's training forward
    objectives: tuple[str, ...] = ("accuracy",)
    grace: float | None = None  # the storage's heartbeat grace period (seconds); None: heartbeats off
    precision: str = "auto"  # cerberus.precision.PRECISIONS

    @property
    def step_precision(self) -> Precision:
        return choose(self.device, self.precision)


@dataclass(frozen=True)
class RunSummary:
    trained: int  # trained trials the study holds now
    trained_now: int
    rejected_now: int
    best: FrozenTrial | None
    gave_up: bool = False  # MAX_REJECTIONS_IN_A_ROW rejections without a trained trial
    failed_out: bool = False  # max_failures failed trials in a row


def is_trained(t: FrozenTrial) -> bool:
    return t.state == TrialState.COMPLETE or (t.state == TrialState.PRUNED and t.user_attrs.get("reason") not in REJECTED)


def count_trained(study: optuna.Study) -> int:
    return sum(is_trained(t) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def check_budget(space: Space, max_params: int) -> None:
    smallest = min(sizes.params(a) for a in space.architectures())
    if smallest > max_params:
        raise UserError(
            f"no architecture in {space.path} fits --max-params {max_params:,}: the smallest has "
            f"{smallest:,} parameters; raise --max-params or allow fewer blocks or narrower widths"
        )


def check_memory_floor(space: Space, device: torch.device, data: str, precision: str = "auto") -> None:
    """Refuse (UserError) a space whose every trial would end ``over_memory`` on ``device``:
    not even its smallest architecture, at its smallest batch and with plain SGD (the least
    state), fits what the device offers now. Such a run would only reject trials."""
    batches = space.recipe["batch_size"].values() if "batch_size" in space.recipe else [Recipe.batch_size]
    recipe = Recipe(optimizer="sgd", momentum=0.0, batch_size=int(min(batches)))
    val = datasets.VAL_SIZE[data]
    train = datasets.TRAIN_SIZE[data] - val
    step = choose(device, precision)
    need = min(memory.estimate(Config(a, recipe), step, train, val).total for a in space.architectures())
    offered = memory.available(device)
    if not memory.fits(need, offered):
        raise UserError(
            f"no trial of {space.path} fits the memory of {device}: the smallest architecture at batch "
            f"{recipe.batch_size} needs about {memory.format_bytes(need)}, {memory.format_bytes(offered)} is available "
            f"({memory.HEADROOM:.0%} of it usable); allow fewer blocks, narrower widths or smaller batches"
        )


def parse_objectives(text: str) -> tuple[str, ...]:
    if text not in ALLOWED_OBJECTIVES:
        raise UserError(f"--objectives {text!r} is not supported; allowed: {', '.join(ALLOWED_OBJECTIVES)}")
    return tuple(text.split(","))


def create_study(name: str, storage: optuna.storages.BaseStorage, seed: int | None, worker: int = 0,
                 objectives: tuple[str, ...] = ("accuracy",)) -> optuna.Study:
    """The study, made on first use. The sampler and pruner are per process (Optuna keeps
    neither in storage); the seed is offset by the trials already there and by the worker's
    index, so neither a resumed run nor a second worker replays the random start-up samples.
    An existing study searched for other ``objectives`` is a UserError, and is left as it was."""
    if name in {s.study_name for s in storage.get_all_studies()}:
        check_ours(optuna.load_study(study_name=name, storage=storage), "run")
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                directions=[OBJECTIVES[o] for o in objectives])
    stored = study_objectives(study)
    if stored is not None and stored != objectives:
        raise UserError(f"study {name!r} was created with --objectives {','.join(stored)}; run it with those, "
                        f"or give this search another --study")
    check_directions(study, objectives)
    if "objectives" not in study.user_attrs:  # a new study, or one from before they were stored
        study.set_user_attr("objectives", list(objectives))
    offset = len(study.get_trials(deepcopy=False))
    with warnings.catch_warnings():
        # group=True is what keeps TPE multivariate across stage counts; it is marked experimental.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.TPESampler(
            seed=None if seed is None else seed + offset + 7919 * worker, multivariate=True, group=True, n_startup_trials=10
        )
    # Measured on a learning-curve simulator (benchmarks/pruners.py, figures in
    # benchmarks/RESULTS.md): with TPE, this pruner halves the epochs of 50 trials and at equal
    # compute finds configurations as good as no pruning; ASHA, Hyperband and a 25th-percentile
    # pruner cut too much at this size and end worse, and a patient pruner never cuts.
    study.pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    return study


def made_by_cerberus(study: optuna.Study) -> bool:
    """Whether cerberus made ``study`` (:func:`cerberus.storage.made_by_cerberus`)."""
    from cerberus import storage as stores

    return stores.made_by_cerberus(study.user_attrs, study.get_trials(deepcopy=False))


def check_directions(study: optuna.Study, objectives: tuple[str, ...]) -> None:
    """Refuse (UserError) a study whose directions are not those of ``objectives`` (an empty
    study that another program made)."""
    directions = [d.name.lower() for d in study.directions]
    if directions != [OBJECTIVES[o] for o in objectives]:
        raise UserError(f"study {study.study_name!r} has the directions {','.join(directions)}, not those of "
                        f"--objectives {','.join(objectives)}; give this search another --study")


def check_joinable(name: str, url: str, objectives: tuple[str, ...]) -> None:
    """Refuse (UserError) to search in a study cerberus did not make, before the storage is
    opened for writing: an existing SQLite file is read only. (A database server is checked by
    :func:`create_study`, once its tables exist.)"""
    from cerberus import storage as stores

    path = stores.sqlite_path(url)
    if path is None or not path.exists() or path.stat().st_size == 0:
        return
    with stores.reading(url) as storage:
        if name in {s.study_name for s in storage.get_all_studies()}:
            study = optuna.load_study(study_name=name, storage=storage)
            check_ours(study, "run")
            stored = study_objectives(study)
            if stored is None or stored == objectives:  # other objectives: create_study says which
                check_directions(study, objectives)


def check_ours(study: optuna.Study, command: str) -> None:
    """Refuse (UserError) ``command`` (``run``, ``best``, ``report``) on a study cerberus did not make."""
    if made_by_cerberus(study):
        return
    directions = ",".join(d.name.lower() for d in study.directions)
    held = f"{len(study.get_trials(deepcopy=False))} trial(s) without a cerberus configuration, direction {directions}"
    instead = ("give this search another --study" if command == "run"
               else "`cerberus-search export` lists its trials, `cerberus-search dashboard` shows them")
    raise UserError(f"study {study.study_name!r} was not made by cerberus ({held}); {command} refuses it: {instead}")


def study_objectives(study: optuna.Study) -> tuple[str, ...] | None:
    """What ``study`` optimises; a one-direction study from before objectives were stored is
    an accuracy search, and a study cerberus did not make has none."""
    stored = study.user_attrs.get("objectives")
    if stored is not None:
        return tuple(stored)
    return ("accuracy",) if study.directions == [optuna.study.StudyDirection.MAXIMIZE] else None


def enqueue(study: optuna.Study, space: Space, config: Config, label: str) -> bool:
    """Queue ``config`` as the study's next trial, unless a trial with this ``label`` (user
    attr ``enqueued``) is already there, so repeating a command queues nothing twice. The
    trial samples the space like any other, with its parameters fixed to ``config``'s (see
    :meth:`Space.params_for`): the sampler learns from it and it trains at the search's epochs.
    Returns whether it queued."""
    params = space.params_for(config)
    if any(t.user_attrs.get("enqueued") == label for t in study.get_trials(deepcopy=False)):
        return False
    study.enqueue_trial(params, user_attrs={"enqueued": label})
    return True


def run(study: optuna.Study, space: Space, opts: RunOptions, reporter: Reporter,
        stop: threading.Event | None = None, splits: Callable[[], tuple[Split, Split]] | None = None,
        callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = ()) -> RunSummary:
    """Optimise until the study holds ``opts.trials`` trained trials (or the timeout).

    ``stop`` is the Ctrl-C flag: a KeyboardInterrupt can vanish when it lands in a finaliser
    that garbage collection runs (SQLAlchemy has some), so the run also checks the flag after
    every epoch and every trial and raises KeyboardInterrupt itself. The interrupted trial
    ends FAIL with ``reason = "interrupted"``, keeps its checkpoint and is queued again, so
    the next run resumes it. ``splits`` loads (train, validation); by default the dataset of
    ``opts``, loaded once, when the first trial that fits the budget needs it. ``callbacks``
    run after each trial, after cerberus's own (a benchmark reads GPU memory there).
    """
    stop = stop or threading.Event()
    splits = functools.cache(splits or (lambda: datasets.search_splits(opts.data, opts.data_dir)))
    state = {"trained": 0, "rejected": 0, "rejected_in_a_row": 0, "failed_in_a_row": 0,
             "gave_up": False, "failed_out": False, "current": None}

    def check_stop() -> None:
        if stop.is_set():
            raise KeyboardInterrupt

    multi = len(opts.objectives) > 1
    precision = opts.step_precision

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        state["current"] = trial.number
        inherited = trial.user_attrs
        if "origin" in inherited:  # a retry: Optuna's retry callback copied its original's attributes
            config = Config.from_dict(inherited["config"])
            _set_attrs(trial, **{k: None for k in OUTCOME_ATTRS if k in inherited})
        else:
            config = replace_epochs(space.sample(trial), opts.epochs)
            trial.set_user_attr("origin", trial.number)
        origin = trial.user_attrs["origin"]
        size = sizes.of(config.arch)
        _set_attrs(trial, config=config.to_dict(), params=size.params, flops=size.flops, worker=WORKER)
        if "params" not in trial.constraints:  # a retry inherits it
            trial.set_constraint("params", size.params - opts.max_params)
        if size.params > opts.max_params:
            trial.set_user_attr("reason", OVER_BUDGET)
            reporter.rejected_arch(trial.number, size.params, opts.max_params)
            raise optuna.TrialPruned(f"{size.params} parameters > {opts.max_params}")
        check_memory(trial, config, opts, splits, reporter)
        checkpoint = checkpoint_path(opts.artifacts, origin)
        try:
            result = _train(trial, config, splits, checkpoint)
        except KeyboardInterrupt:
            trial.set_user_attr("reason", INTERRUPTED)  # the checkpoint stays for the retry
            raise
        except Exception as e:
            _forget(checkpoint)
            trial.set_user_attr("reason", OUT_OF_MEMORY if memory.is_out_of_memory(e) else ERROR)
            trial.set_user_attr("error", f"{type(e).__name__}: {' '.join(str(e).split())}"[:500])
            raise
        _forget(checkpoint)
        _set_attrs(trial, epochs=result.epochs, train_seconds=result.train_seconds,
                   step_seconds=result.step_seconds, images_per_s=result.images_per_s, device=device_name(opts.device),
                   precision=precision.name, epoch_seconds=result.epoch_seconds)
        if result.resumed_epochs:
            trial.set_user_attr("resumed_epochs", result.resumed_epochs)
        if multi:
            trial.set_user_attr("val_history", result.history)
        if result.diverged or result.stopped:
            trial.set_user_attr("reason", DIVERGED if result.diverged else PRUNED)
            raise optuna.TrialPruned()
        if opts.objectives == ("accuracy", "params"):
            return result.val_accuracy, size.params
        if opts.objectives == ("accuracy", "latency"):
            return result.val_accuracy, trial.user_attrs["latency_ms"]
        return result.val_accuracy

    def _train(trial: optuna.Trial, config: Config, splits: Callable, checkpoint: Path | None) -> Result:
        train, val = splits()
        epochs = config.recipe.epochs

        def on_epoch(epoch: int, accuracy: float) -> bool:
            check_stop()
            reporter.epoch(trial.number, epoch, epochs, accuracy)
            if multi:  # Optuna prunes single-objective studies only (see the module docstring)
                return False
            trial.report(accuracy, epoch)
            return epoch < epochs and trial.should_prune()

        def on_end(trainer: Trainer) -> None:
            if "latency" in opts.objectives:
                trial.set_user_attr("latency_ms", latency_ms(trainer.model, opts.device, trainer.precision))
                trial.set_user_attr("latency_batch", LATENCY_BATCH)

        seed = None if opts.seed is None else opts.seed * 100_003 + trial.number
        progress = Progress()  # the reporter reads it while fit trains; no device tensor in it
        reporter.training(trial.number, progress)
        return fit(config, train, val, opts.device, on_epoch, seed=seed, checkpoint=checkpoint,
                   compile=opts.compile, on_end=on_end, progress=progress, precision=precision)

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        if opts.device.type == "cuda":
            torch.cuda.empty_cache()  # gc_after_trial has dropped the trial's tensors by now
        check_stop()
        reason = trial.user_attrs.get("reason")
        if reason in REJECTED:
            state["rejected"] += 1
            state["rejected_in_a_row"] += 1
            if state["rejected_in_a_row"] >= MAX_REJECTIONS_IN_A_ROW:
                state["gave_up"] = True
                study.stop()
            return
        state["rejected_in_a_row"] = 0
        orphans.requeue()
        reporter.study_best(_best_seen(study))  # other workers' trials count too
        if trial.state == TrialState.FAIL:
            state["failed_in_a_row"] += 1
            reporter.failed(trial.number, reason or ERROR, trial.user_attrs.get("error", ""))
            if state["failed_in_a_row"] >= opts.max_failures:
                state["failed_out"] = True
                study.stop()
            return
        state["failed_in_a_row"] = 0
        if is_trained(trial):
            state["trained"] += 1
            accuracy = trial.values[0] if trial.state == TrialState.COMPLETE else last_accuracy(trial)
            reporter.finished(trial.number, reason or "complete", accuracy, trial.user_attrs["params"],
                              trial.user_attrs.get("train_seconds", 0.0))
        if count_trained(study) >= opts.trials:
            study.stop()

    orphans = _Orphans(study, opts.grace)
    orphans.requeue()
    reporter.study_best(_best_seen(study))
    if count_trained(study) < opts.trials:
        # Each trial ends with two full collections (fit's release, Optuna's gc_after_trial, which
        # also catches what a failed trial's traceback held). Over torch's and Optuna's own
        # objects one takes 0.1 to 0.2 s on a CPU; frozen, they are skipped.
        gc.collect()
        gc.freeze()
        try:
            study.optimize(objective, timeout=opts.timeout, callbacks=[after_trial, *callbacks],
                           gc_after_trial=True, catch=(Exception,))
        except KeyboardInterrupt:
            _queue_again(study, state["current"])
            raise
        finally:
            gc.unfreeze()
        _sweep_checkpoints(study, opts.artifacts)
    return RunSummary(count_trained(study), state["trained"], state["rejected"], best_trial(study),
                      state["gave_up"], state["failed_out"])


def check_memory(trial: optuna.Trial, config: Config, opts: RunOptions, splits: Callable[[], tuple[Split, Split]],
                 reporter: Reporter) -> None:
    """Record the trial's estimated training memory (user attr ``memory_bytes``) and, when it
    does not fit what ``opts.device`` offers now (:func:`cerberus.memory.fits`), end it PRUNED
    with ``reason = "over_memory"`` before a model or a batch is allocated. Such a trial carries
    the constraint ``memory``, positive (:func:`cerberus.memory.constraint`), which TPE reads as
    it reads ``params``; a trial that fits carries none, which TPE, summing the positive
    constraints of a trial, takes for feasible, exactly as a negative value. (What fits depends
    on the machine and the moment; a trial's own verdict is what it records.)"""
    train, val = splits()  # loaded once, for the first trial that fits the budget
    need = memory.estimate(config, opts.step_precision, len(train), len(val)).total
    trial.set_user_attr("memory_bytes", need)
    offered = memory.available(opts.device)
    if memory.fits(need, offered):
        return
    trial.set_user_attr("reason", OVER_MEMORY)
    trial.set_user_attr("memory_available_bytes", offered)
    if "memory" not in trial.constraints:  # a retry inherits it
        trial.set_constraint("memory", memory.constraint(need, offered, opts.max_params))
    reporter.rejected_memory(trial.number, need, int(memory.HEADROOM * offered))
    raise optuna.TrialPruned(f"needs ~{need:,} bytes of memory; {opts.device} offers {offered:,}")


def checkpoint_path(artifacts: Path | None, trial_number: int) -> Path | None:
    """Where the running trial ``trial_number`` (the original, for a retry) keeps its state."""
    return None if artifacts is None else artifacts / "checkpoints" / f"trial-{trial_number}.pt"


def _forget(checkpoint: Path | None) -> None:
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)


def _sweep_checkpoints(study: optuna.Study, artifacts: Path | None) -> None:
    """Delete the checkpoints no trial will resume: those of a trial family with nothing
    RUNNING or WAITING (a retry inherits ``origin``), e.g. one killed more than MAX_RETRY times."""
    if artifacts is None or not (artifacts / "checkpoints").is_dir():
        return
    alive = {t.user_attrs.get("origin") for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))}
    for path in (artifacts / "checkpoints").glob("trial-*.pt"):
        if int(path.stem.split("-")[1]) not in alive:
            path.unlink(missing_ok=True)


class _Orphans:
    """Queues the retry that a dying worker could not. Optuna fails a stale trial and queues its
    retry in two writes (``fail_stale_trials``), and Ctrl-C here does the same; a worker killed
    between the two leaves a dead trial that nobody retries (seen once in 20 SIGKILLs of two
    workers at a time). A dead trial failed more than ``grace`` seconds ago (the second write
    follows the first within milliseconds), with no retry run or queued, gets one, through
    Optuna's own retry callback and its limit. Two workers that find the same orphan at the same
    moment may both queue it: a configuration trained twice, nothing lost."""

    def __init__(self, study: optuna.Study, grace: float | None) -> None:
        self.study, self.grace = study, grace
        self.retried: set[int] = set()  # a retry, once queued, stays in the study

    def requeue(self) -> None:
        if self.grace is None:
            return
        now = datetime.now()  # Optuna's timestamps are naive local time
        dead = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                if end_reason(t) in (WORKER_DIED, INTERRUPTED) and t.number not in self.retried
                and len(t.system_attrs.get("retry_history", [])) < MAX_RETRY
                and t.datetime_complete is not None and (now - t.datetime_complete).total_seconds() > self.grace]
        if not dead:  # the usual case: one query of failed trials
            return
        self.retried |= {n for t in self.study.get_trials(deepcopy=False) for n in t.system_attrs.get("retry_history", [])}
        for t in dead:
            if t.number not in self.retried:
                _retry(self.study, t)
                self.retried.add(t.number)


def _retry(study: optuna.Study, trial: FrozenTrial) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, copy.deepcopy(trial))


def _queue_again(study: optuna.Study, number: int | None) -> None:
    """Queue a retry of the trial Ctrl-C stopped, as the heartbeat does for a dead worker's."""
    if number is None:
        return
    trial = study.get_trials(deepcopy=False)[number]
    if trial.state == TrialState.FAIL and trial.user_attrs.get("reason") == INTERRUPTED:
        _retry(study, trial)


def end_reason(trial: FrozenTrial) -> str | None:
    """Why a trial did not complete: its ``reason`` attribute, or ``worker_died`` for a failed
    trial without one (every other way to fail records its reason; a killed worker cannot)."""
    if trial.state == TrialState.FAIL:
        return trial.user_attrs.get("reason") or WORKER_DIED
    return trial.user_attrs.get("reason")


def _set_attrs(trial: optuna.Trial, **attrs: Any) -> None:
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def last_accuracy(trial: FrozenTrial) -> float | None:
    """The last per-epoch validation accuracy a trial recorded (reported, or kept in ``val_history``)."""
    steps, history = trial.intermediate_values, trial.user_attrs.get("val_history")
    if steps:
        return steps[max(steps)]
    return history[-1] if history else None


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


def best_trials(study: optuna.Study, top: int | None = None) -> list[FrozenTrial]:
    """Completed trials, best validation accuracy first (fewer parameters break ties); of a
    multi-objective study only its Pareto front. ``top=None`` is one trial, or the whole front."""
    if len(study.directions) > 1:
        done = study.best_trials
    else:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        top = top or 1
    return sorted(done, key=lambda t: (-t.values[0], t.user_attrs.get("params", 0), t.number))[:top]


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    top = best_trials(study, 1)
    return top[0] if top else None


def _best_seen(study: optuna.Study) -> tuple[float, int] | None:
    """(validation accuracy, trial number) of the study's best trial, as the reporter shows it."""
    best = best_trial(study)
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
        "train_seconds": a.get("train_seconds"),
        "images_per_s": a.get("images_per_s"),
        "device": a.get("device"),
        "config": Config.from_dict(a["config"]).to_dict(),
    }

