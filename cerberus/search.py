"""The write side of a study: the search loop, one named step per concern.

Contract of :class:`Search` (``Search(study, space, opts, reporter).run()``):

* :meth:`Search.configure`: a trial's configuration is sampled from the space, or, for a
  retry (Optuna's retry callback copied its original's attributes, ``origin`` among them), the
  original's, with what the original recorded about how it ended cleared (``OUTCOME_ATTRS``).
* :meth:`Search.measure` records its size (user attrs ``config``, ``params``, ``flops``,
  ``worker``) and the constraint ``params - max_params`` (``Trial.set_constraint``), which TPE
  reads for pruned trials too, so the sampler learns to stay inside the budget.
* :meth:`Search.reject`: over budget, the trial ends PRUNED, ``reason = "over_budget"``: no
  model, no data. Then its training memory is estimated (:mod:`cerberus.memory`, user attr
  ``memory_bytes``); one that cannot fit the device ends PRUNED, ``reason = "over_memory"``,
  untrained, with a positive ``memory`` constraint. Neither counts as trained.
* :meth:`Search.fit` owns the loop over the epochs of a :class:`cerberus.fit.Fit` (the
  ``trainer`` parameter: benchmarks and tests hand in their own). It resumes from the trial's
  checkpoint, reports each epoch's validation accuracy, lets the pruner decide, then saves the
  checkpoint if ``checkpoint_every`` seconds have passed since the last save (never for the
  last epoch, nor for one the pruner cut). Multi-objective trials are
  never pruned (Optuna prunes single-objective studies only, and cutting on accuracy alone would
  cut the small, slow-to-learn nets a front is for); they keep ``val_history``.
* :meth:`Search.record` stores how the trial trained and returns its objective values, or ends
  it PRUNED (``pruned``, ``diverged``). An allocation that fails anyway ends it FAIL
  (``out_of_memory``), any other exception FAIL (``error``, with the message in ``error``).
* Stopping rules are Optuna callbacks (:class:`StopAtTarget`, :class:`StopAfterRejections`,
  :class:`StopAfterFailures`), and so are the reporter (:class:`ReportTrials`) and what keeps
  the study whole when workers die (:mod:`cerberus.liveness`: our own heartbeats where the
  storage keeps none, orphaned retries, dead checkpoints).
* ``trials`` is a target for the *study*: the run stops once the study holds that many trained
  trials (COMPLETE, or PRUNED after training), counting those other workers are training now, so
  K workers do not overshoot by K-1. Rejected architectures do not count, so the same command
  after an interruption trains only the remainder.
* ``stop`` is the Ctrl-C flag: a KeyboardInterrupt can vanish when it lands in a finaliser that
  garbage collection runs (SQLAlchemy has some), so the run also checks the flag after every
  epoch and every trial and raises KeyboardInterrupt itself. The interrupted trial ends FAIL with
  ``reason = "interrupted"``, keeps its checkpoint and is queued again, so the next run resumes it.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from cerberus import checkpoint as checkpoints
from cerberus import data as datasets
from cerberus import memory
from cerberus import size as sizes
from cerberus.config import Config
from cerberus.data import Split
from cerberus.devices import device_name
from cerberus.model import LATENCY_BATCH, latency_ms
from cerberus.precision import Precision, choose
from cerberus.reporter import Reporter
from cerberus.space import Space, set_length
from cerberus.fit import Epoch, Fit, Result, Tally
from cerberus.liveness import NoPulse, Orphans, Pulse, fail_dead_here, queue_again, sweep_checkpoints
from cerberus.storage import MAX_RETRY
from cerberus.study import DEFAULT_PRUNER
from cerberus.trials import (Reason, Snapshot, best_seen, best_trial, count_trained, is_trained, last_accuracy,
                             rejected)

# This process, as the user attr ``worker`` of every trial it runs (the report's timeline lanes):
# the pid keeps two runs on one machine apart, the host name workers on different machines.
WORKER = f"{socket.gethostname()}:{os.getpid()}"
MAX_REJECTIONS_IN_A_ROW = 1000  # a feasible space that the sampler still cannot hit
# Validation images an epoch before a trial's last is scored on, one view each: what the pruner
# reads. The last epoch scores the whole split with the recipe's test-time views: the trial's value.
PROBE_IMAGES = 1000
# What a finished trial records about how it ended; a retry, which inherits them, clears them.
OUTCOME_ATTRS = ("reason", "error", "epochs", "train_flops", "train_seconds", "step_seconds", "first_step_seconds", "images_per_s", "resumed_epochs",
                 "cuda_graph", "epoch_seconds", "val_history", "latency_ms", "latency_batch", "memory_available_bytes")
Splits = Callable[[], tuple[Split, Split]]


@dataclass(frozen=True)
class RunOptions:
    """Everything one worker's search needs besides the study and the space; it round-trips
    through JSON (:meth:`to_json`), which is how ``--workers`` hands it to its processes."""

    trials: int
    max_params: int = 5_000_000
    epochs: int | None = None  # overrides the space's length
    budget: float | None = None  # PFLOP a trial, overriding the space's length
    device: str = "cpu"
    data: str = "cifar10"
    data_dir: str | None = None
    seed: int | None = None
    timeout: float | None = None
    max_failures: int = 5  # failed trials in a row that end the run
    artifacts: str | None = None  # the study's folder; checkpoints go in artifacts/checkpoints
    compile: bool = False  # torch.compile each trial's training forward
    objectives: tuple[str, ...] = ("accuracy",)
    grace: float | None = None  # the storage's heartbeat grace period (seconds); None: heartbeats off
    precision: str = "auto"  # cerberus.precision.PRECISIONS
    pulse: float | None = None  # seconds between this search's own heartbeats, where the storage keeps none
    checkpoint_every: float = 60.0  # seconds between a trial's checkpoints at the least (0: every epoch)
    gpu: int | None = None  # the physical GPU (as --gpus and nvidia-smi number it), recorded with each trial
    cuda_graph: bool = False  # record each trial's step as a CUDA graph (cerberus.graph); eager where it cannot be
    pruner: str = DEFAULT_PRUNER  # one of cerberus.study.PRUNERS

    def __post_init__(self) -> None:  # a torch.device or a Path is accepted, a string is kept
        object.__setattr__(self, "device", str(self.device))
        object.__setattr__(self, "artifacts", None if self.artifacts is None else str(self.artifacts))
        object.__setattr__(self, "objectives", tuple(self.objectives))

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def step_precision(self) -> Precision:
        return choose(self.torch_device, self.precision)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunOptions:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class RunSummary:
    trained: int  # trained trials the study holds now
    trained_now: int
    rejected_now: int
    best: FrozenTrial | None
    gave_up: bool = False  # MAX_REJECTIONS_IN_A_ROW rejections without a trained trial
    failed_out: bool = False  # max_failures failed trials in a row


@dataclass(frozen=True)
class Outcome:
    """What :meth:`Search.fit` hands to :meth:`Search.record`."""

    result: Result
    pruned: bool  # the pruner cut it
    latency_ms: float | None = None


class Search:
    """One worker's search on ``study``; see the module docstring."""

    def __init__(self, study: optuna.Study, space: Space, opts: RunOptions, reporter: Reporter,
                 stop: threading.Event | None = None, splits: Splits | None = None,
                 trainer: Callable[..., Fit] = Fit,
                 callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = ()) -> None:
        self.study, self.space, self.opts, self.reporter = study, space, opts, reporter
        self.stop = stop or threading.Event()
        self.splits = functools.cache(splits or (lambda: datasets.search_splits(opts.data, opts.data_dir)))
        self.trainer, self.extra_callbacks = trainer, list(callbacks)
        self.device, self.precision = opts.torch_device, opts.step_precision
        if self.device.type == "cuda":  # else empty_cache and friends make a context on GPU 0 as well
            torch.cuda.set_device(self.device)
        self.multi = len(opts.objectives) > 1
        self.current: int | None = None  # the trial this worker runs now
        self.snapshot = Snapshot()
        self.orphans = Orphans(study, opts.grace, self.snapshot)
        self.rejections = StopAfterRejections(MAX_REJECTIONS_IN_A_ROW)
        self.failures = StopAfterFailures(opts.max_failures)
        self.report = ReportTrials(reporter, self.snapshot)
        self.pulse = NoPulse() if opts.pulse is None else Pulse(opts.pulse, opts.grace or 3 * opts.pulse, self.snapshot)

    # The steps of a trial, in order.

    def objective(self, trial: optuna.Trial) -> float | tuple[float, float]:
        self.current = trial.number
        trial.set_user_attr("worker", WORKER)  # first: a killed worker's trial is found by it (liveness.fail_dead_here)
        with self.pulse.beating(trial):
            config = self.configure(trial)
            size = self.measure(trial, config)
            self.reject(trial, config, size)
            return self.record(trial, size, self.fit(trial, config))

    def configure(self, trial: optuna.Trial) -> Config:
        inherited = trial.user_attrs
        if "origin" in inherited:  # a retry: Optuna's retry callback copied its original's attributes
            for key in OUTCOME_ATTRS:
                if inherited.get(key) is not None:
                    trial.set_user_attr(key, None)
            return Config.from_dict(inherited["config"])
        trial.set_user_attr("origin", trial.number)
        return set_length(self.space.sample(trial), self.opts.epochs, self.opts.budget)

    def measure(self, trial: optuna.Trial, config: Config) -> sizes.Size:
        size = sizes.of(config.arch)
        for key, value in (("config", config.to_dict()), ("params", size.params), ("flops", size.flops)):
            trial.set_user_attr(key, value)
        if "params" not in trial.constraints:  # a retry inherits it
            trial.set_constraint("params", size.params - self.opts.max_params)
        return size

    def reject(self, trial: optuna.Trial, config: Config, size: sizes.Size) -> None:
        """End the trial PRUNED, untrained, when it is over budget or would not fit in memory."""
        limit = self.opts.max_params
        if size.params > limit:
            trial.set_user_attr("reason", Reason.OVER_BUDGET)
            self.reporter.rejected_arch(trial.number, size.params, limit)
            raise optuna.TrialPruned(f"{size.params} parameters > {limit}")
        train, val = self.splits()  # loaded once, for the first trial that fits the budget
        need = memory.estimate(config, self.precision, len(train), len(val)).total
        trial.set_user_attr("memory_bytes", need)
        offered = memory.available(self.device)
        if memory.fits(need, offered):
            return
        trial.set_user_attr("reason", Reason.OVER_MEMORY)
        trial.set_user_attr("memory_available_bytes", offered)
        if "memory" not in trial.constraints:  # a retry inherits it
            trial.set_constraint("memory", memory.constraint(need, offered, limit))
        self.reporter.rejected_memory(trial.number, need, int(memory.HEADROOM * offered))
        raise optuna.TrialPruned(f"needs ~{need:,} bytes of memory; {self.device} offers {offered:,}")

    def fit(self, trial: optuna.Trial, config: Config) -> Outcome:
        """The epochs of the trial's fit, resumed from its checkpoint; see the module docstring."""
        checkpoint = checkpoints.path_for(self.opts.artifacts, trial.user_attrs["origin"])
        try:
            outcome = self._epochs(trial, config, checkpoint)
        except KeyboardInterrupt:
            trial.set_user_attr("reason", Reason.INTERRUPTED)  # the checkpoint stays for the retry
            raise
        except Exception as e:
            checkpoints.forget(checkpoint)
            trial.set_user_attr("reason", Reason.OUT_OF_MEMORY if memory.is_out_of_memory(e) else Reason.ERROR)
            trial.set_user_attr("error", f"{type(e).__name__}: {' '.join(str(e).split())}"[:500])
            raise
        checkpoints.forget(checkpoint)
        return outcome

    def _epochs(self, trial: optuna.Trial, config: Config, checkpoint: Path | None) -> Outcome:
        train, val = self.splits()
        seed = None if self.opts.seed is None else self.opts.seed * 100_003 + trial.number
        progress = Tally()  # the reporter reads it while the fit trains; no device tensor in it
        self.reporter.training(trial.number, progress)
        pruned = False
        make = functools.partial(self.trainer, config, train, val, self.device, seed=seed, compile=self.opts.compile,
                                 precision=self.precision, tally=progress, cuda_graph=self.opts.cuda_graph, probe=PROBE_IMAGES)
        with self._resumed(trial, make, checkpoint) as fit:
            saved = time.perf_counter()
            for epoch in fit:
                if epoch.diverged:
                    break
                self.reporter.epoch(trial.number, epoch.number, epoch.of, epoch.val_accuracy)
                if self._prunes(trial, epoch):
                    pruned = True
                    break
                # After the pruner has spoken, never for the last epoch (its state is never read),
                # and at most every checkpoint_every seconds: a save stalls the step.
                if (checkpoint is not None and not epoch.restored and epoch.progress < 1
                        and time.perf_counter() - saved >= self.opts.checkpoint_every):
                    checkpoints.save(checkpoint, fit.state())
                    saved = time.perf_counter()
                self.check_stop()
            latency = None
            if "latency" in self.opts.objectives and not fit.diverged:
                latency = latency_ms(fit.trainer.evaluated, self.device, fit.trainer.precision)
            return Outcome(fit.result(), pruned, latency)

    def _resumed(self, trial: optuna.Trial, make: Callable[[], Fit], checkpoint: Path | None) -> Fit:
        """A new fit, resumed from the trial's checkpoint where there is one. A checkpoint that
        cannot be read or does not fit this configuration (a file of another net, text, a
        truncated one) is set aside with a note on the trial (user attr ``checkpoint_discarded``),
        and the trial trains from scratch."""
        fit = make()
        try:
            state = checkpoints.load(checkpoint, self.device)
            if state is not None:
                fit.restore(state)
        except Exception as e:  # checkpoints.Unreadable, or a state of another net or version
            fit.__exit__(None, None, None)
            aside = checkpoints.set_aside(checkpoint)  # type: ignore[arg-type]
            trial.set_user_attr("checkpoint_discarded", f"{aside.name}: {' '.join(str(e).split())}"[:300])
            self.reporter.note(f"trial {trial.number}: its checkpoint could not be resumed ({type(e).__name__}); set "
                               f"aside as {aside.name}, training from scratch")
            fit = make()
        return fit

    def _prunes(self, trial: optuna.Trial, epoch: Epoch) -> bool:
        """Report the epoch at the percent of the trial's steps done (trials of other lengths are
        compared at the same share of their training), and let the pruner decide before the last."""
        if self.multi:  # Optuna prunes single-objective studies only (see the module docstring)
            return False
        trial.report(epoch.val_accuracy, round(100 * epoch.progress))
        return epoch.progress < 1 and trial.should_prune()

    def record(self, trial: optuna.Trial, size: sizes.Size, outcome: Outcome) -> float | tuple[float, float]:
        r = outcome.result
        attrs = {"epochs": r.epochs, "train_flops": r.train_flops, "train_seconds": r.train_seconds, "step_seconds": r.step_seconds,
                 "first_step_seconds": r.first_step_seconds,
                 "images_per_s": r.images_per_s, "device": device_name(self.device), "precision": self.precision.name,
                 "epoch_seconds": r.epoch_seconds, "gpu": self.opts.gpu}
        if r.resumed_epochs:
            attrs["resumed_epochs"] = r.resumed_epochs
        if self.opts.cuda_graph:
            attrs["cuda_graph"] = r.captured  # asked for; whether the step was recorded
        if self.multi:
            attrs["val_history"] = r.history
        if outcome.latency_ms is not None:
            attrs.update(latency_ms=outcome.latency_ms, latency_batch=LATENCY_BATCH)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if r.diverged or outcome.pruned:
            trial.set_user_attr("reason", Reason.DIVERGED if r.diverged else Reason.PRUNED)
            raise optuna.TrialPruned()
        if self.opts.objectives == ("accuracy", "params"):
            return r.val_accuracy, size.params
        if self.opts.objectives == ("accuracy", "latency"):
            return r.val_accuracy, outcome.latency_ms  # type: ignore[return-value]
        if self.opts.objectives == ("accuracy", "flops"):
            return r.val_accuracy, r.train_flops
        return r.val_accuracy

    # The run around the trials.

    def check_stop(self, *_: object) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt

    def callbacks(self) -> list[Callable[[optuna.Study, FrozenTrial], None]]:
        """After each trial, in order: free the device, honour Ctrl-C, then the rules."""
        free = [lambda study, trial: torch.cuda.empty_cache()] if self.device.type == "cuda" else []
        return [*free, self.check_stop, self.rejections, self.pulse, self.orphans, self.report, self.failures,
                StopAtTarget(self.opts.trials, self.snapshot), *self.extra_callbacks]

    def run(self) -> RunSummary:
        """Optimise until the study holds ``opts.trials`` trained trials (or the timeout)."""
        self.pulse.fail_stale(self.study)
        if fail_dead_here(self.study):  # a worker of this machine was killed: resume its trial now
            self.snapshot.changed()
        self.orphans.requeue()
        self.reporter.study_best(best_seen(self.study))
        if count_trained(self.study) < self.opts.trials:
            # Each trial ends with two full collections (the fit's release, Optuna's gc_after_trial,
            # which also catches what a failed trial's traceback held). Over torch's and Optuna's own
            # objects one takes 0.1 to 0.2 s on a CPU; frozen, they are skipped.
            gc.collect()
            gc.freeze()
            try:
                self.study.optimize(self.objective, timeout=self.opts.timeout, callbacks=self.callbacks(),
                                    gc_after_trial=True, catch=(Exception,))
            except KeyboardInterrupt:
                queue_again(self.study, self.current)
                raise
            finally:
                gc.unfreeze()
            sweep_checkpoints(self.study, self.opts.artifacts and Path(self.opts.artifacts), self.opts.grace, MAX_RETRY)
        return RunSummary(count_trained(self.study), self.report.trained, self.rejections.total, best_trial(self.study),
                          self.rejections.gave_up, self.failures.failed_out)


def run(study: optuna.Study, space: Space, opts: RunOptions, reporter: Reporter, stop: threading.Event | None = None,
        splits: Splits | None = None, callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
        trainer: Callable[..., Fit] = Fit) -> RunSummary:
    """``Search(...).run()``: optimise until the study holds ``opts.trials`` trained trials."""
    return Search(study, space, opts, reporter, stop, splits, trainer, callbacks).run()


# Stopping rules and the other callbacks, each called after every trial.

class StopAfterRejections:
    """Stop after ``limit`` architectures in a row were rejected untrained (``gave_up``)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.total, self.in_a_row, self.gave_up = limit, 0, 0, False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not rejected(trial):
            self.in_a_row = 0
            return
        self.total += 1
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            self.gave_up = True
            study.stop()


class StopAfterFailures:
    """Stop after ``limit`` failed trials in a row (``failed_out``); rejections do not break the row."""

    def __init__(self, limit: int) -> None:
        self.limit, self.in_a_row, self.failed_out = limit, 0, False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if rejected(trial):
            return
        self.in_a_row = self.in_a_row + 1 if trial.state == TrialState.FAIL else 0
        if self.in_a_row >= self.limit:
            self.failed_out = True
            study.stop()


class StopAtTarget:
    """Stop once the study's trained trials and those other workers are training now reach
    ``target``. A trial being trained is a RUNNING one that got past the rejections (it has
    ``memory_bytes``); if it fails, its worker goes on, so the target is still met. A trial
    whose worker on this machine is gone is no such trial: it is failed and queued again first
    (:func:`cerberus.liveness.fail_dead_here`), for this run to train."""

    def __init__(self, target: int, snapshot: Snapshot) -> None:
        self.target, self.snapshot = target, snapshot

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if rejected(trial):
            return
        trials = self.snapshot(study, trial)
        if fail_dead_here(study, trials):
            self.snapshot.changed()
            trials = self.snapshot(study, trial)
        training = sum(t.state == TrialState.RUNNING and "memory_bytes" in t.user_attrs for t in trials)
        if count_trained(study, trials) + training >= self.target:
            study.stop()


class ReportTrials:
    """The reporter's lines for each trial that was not rejected, and the study's best so far
    (other workers' trials count too); ``trained`` counts this run's trained trials."""

    def __init__(self, reporter: Reporter, snapshot: Snapshot) -> None:
        self.reporter, self.snapshot, self.trained = reporter, snapshot, 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if rejected(trial):
            return
        self.reporter.study_best(best_seen(study, self.snapshot(study, trial)))
        reason = trial.user_attrs.get("reason")
        if trial.state == TrialState.FAIL:
            self.reporter.failed(trial.number, reason or Reason.ERROR, trial.user_attrs.get("error", ""))
        elif is_trained(trial):
            self.trained += 1
            accuracy = trial.values[0] if trial.state == TrialState.COMPLETE else last_accuracy(trial)
            self.reporter.finished(trial.number, reason or "complete", accuracy, trial.user_attrs["params"],
                                   trial.user_attrs.get("train_seconds", 0.0))


