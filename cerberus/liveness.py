"""Liveness: what keeps a search whole when workers die, hang or are stopped.

Optuna fails a trial whose heartbeat went stale and queues its retry (``RetryHeartbeatStaleTrialCallback``),
which resumes from the trial's checkpoint; this module adds what Optuna leaves out:

* :class:`Pulse`: heartbeats of our own where the storage keeps none (the gRPC proxy): a thread
  writes the running trial's user attr ``alive`` (Unix time) every ``interval`` seconds, and a
  trial silent for ``grace`` seconds is failed by the next worker that finishes a trial and
  queued again. (Clocks of the workers' machines are compared: keep them in sync, as NTP does.)
  :class:`NoPulse` is its null object, where the storage keeps heartbeats itself.
* :class:`Orphans`: the retry that a dying worker could not queue.
* :func:`queue_again`: the retry of a trial that Ctrl-C stopped.
* :func:`fail_dead_here`: the retry of a trial whose worker on this machine was killed, at once.
* :func:`sweep_checkpoints`: deleting the checkpoints that no trial will resume.

The callbacks here run after every trial, as Optuna callbacks, beside the search's stopping rules.
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from cerberus import checkpoint as checkpoints
from cerberus.storage import MAX_RETRY
from cerberus.trials import RESUMABLE, Reason, Snapshot, deaths, end_reason, rejected


class Orphans:
    """Queues the retry that a dying worker could not. Optuna fails a stale trial and queues its
    retry in two writes (``fail_stale_trials``), and Ctrl-C here does the same; a worker killed
    between the two leaves a dead trial that nobody retries (seen once in 20 SIGKILLs of two
    workers at a time). A dead trial failed more than ``grace`` seconds ago (the second write
    follows the first within milliseconds), with no retry run or queued, gets one, through
    Optuna's own retry callback and its limit. Two workers that find the same orphan at the same
    moment may both queue it: a configuration trained twice, nothing lost."""

    def __init__(self, study: optuna.Study, grace: float | None, snapshot: Snapshot) -> None:
        self.study, self.grace, self.snapshot = study, grace, snapshot
        self.retried: set[int] = set()  # a retry, once queued, stays in the study

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not rejected(trial):
            self.requeue(self.snapshot(study, trial))

    def requeue(self, trials: list[FrozenTrial] | None = None) -> None:
        if self.grace is None:
            return
        trials = self.study.get_trials(deepcopy=False) if trials is None else trials
        now = datetime.now()  # Optuna's timestamps are naive local time
        dead = [t for t in trials if t.state == TrialState.FAIL
                and end_reason(t) in RESUMABLE and t.number not in self.retried
                and t.datetime_complete is not None and (now - t.datetime_complete).total_seconds() > self.grace
                and deaths(t, trials) < MAX_RETRY]
        if not dead:  # the usual case
            return
        self.retried |= {n for t in trials for n in t.system_attrs.get("retry_history", [])}
        for t in dead:
            if t.number not in self.retried:
                retry(self.study, t, max_retry=None)  # its deaths were counted above
                self.retried.add(t.number)
        self.snapshot.changed()


class NoPulse:
    """The storage keeps heartbeats itself (or none are wanted): nothing to do."""

    @contextlib.contextmanager
    def beating(self, trial: optuna.Trial) -> Iterator[None]:
        yield

    def fail_stale(self, study: optuna.Study, trials: list[FrozenTrial] | None = None) -> None:
        pass

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        pass


class Pulse(NoPulse):
    """Heartbeats in a user attr, for a storage that keeps none (see the module docstring)."""

    def __init__(self, interval: float, grace: float, snapshot: Snapshot) -> None:
        self.interval, self.grace, self.snapshot = interval, grace, snapshot

    @contextlib.contextmanager
    def beating(self, trial: optuna.Trial) -> Iterator[None]:
        done = threading.Event()

        def beat() -> None:
            while True:
                try:
                    trial.set_user_attr("alive", time.time())  # the first at once: a retry inherits an old one
                except Exception:  # the storage is gone (the trial's own writes will say so): stop beating
                    return
                if done.wait(self.interval):
                    return

        thread = threading.Thread(target=beat, name="cerberus-pulse", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def fail_stale(self, study: optuna.Study, trials: list[FrozenTrial] | None = None) -> None:
        """Fail every RUNNING trial silent for ``grace`` seconds and queue its retry."""
        now = time.time()
        trials = study.get_trials(deepcopy=False) if trials is None else trials
        stale = [t.number for t in trials if t.state == TrialState.RUNNING
                 and now - max(t.user_attrs.get("alive", 0.0), t.datetime_start.timestamp() if t.datetime_start else 0.0) > self.grace]
        if stale:
            self.snapshot.changed()
        for number in stale:
            study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            failed = study.get_trials(deepcopy=False)[number]
            if failed.state == TrialState.FAIL and failed.user_attrs.get("reason") is None:
                retry(study, failed)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not rejected(trial):
            self.fail_stale(study, self.snapshot(study, trial))


def fail_dead_here(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> int:
    """Fail every RUNNING trial whose worker ran on this machine and is gone (its process no
    longer exists), and queue its retry, which resumes from its checkpoint; the number failed.
    Optuna's heartbeat would do the same after three silent heartbeats, but a run started again
    at once after a kill would meanwhile count the dead trial as one another worker is training,
    and stop one short. A trial of another machine is left to the heartbeat."""
    host = socket.gethostname()
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    dead = [t for t in trials if t.state == TrialState.RUNNING and _gone(t.user_attrs.get("worker", ""), host)]
    for t in dead:
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        failed = study.get_trials(deepcopy=False)[t.number]
        if failed.state == TrialState.FAIL and failed.user_attrs.get("reason") is None:
            retry(study, failed)
    return len(dead)


def _gone(worker: str, host: str) -> bool:
    """Whether ``worker`` (``host:pid``, a trial's user attr) is a process of this machine that has exited."""
    name, _, pid = worker.rpartition(":")
    if name != host or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def retry(study: optuna.Study, trial: FrozenTrial, max_retry: int | None = MAX_RETRY) -> None:
    """Queue ``trial`` again (Optuna's retry callback: the same parameters, its retry history and
    origin), unless its :func:`cerberus.trials.deaths` reach ``max_retry``; None: always. Also
    the storage's heartbeat callback (cerberus.storage)."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    if max_retry is not None and deaths(trial, study.get_trials(deepcopy=False)) >= max_retry:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=None)(study, copy.deepcopy(trial))


def queue_again(study: optuna.Study, number: int | None) -> None:
    """Queue a retry of the trial Ctrl-C stopped, as the heartbeat does for a dead worker's. A
    person stopping a run says nothing against the trial, so this counts no retries: the retry
    limit is for trials whose workers keep dying."""
    if number is None:
        return
    trial = study.get_trials(deepcopy=False)[number]
    if trial.state == TrialState.FAIL and trial.user_attrs.get("reason") == Reason.INTERRUPTED:
        retry(study, trial, max_retry=None)


def sweep_checkpoints(study: optuna.Study, artifacts: Path | None, grace: float | None, max_retry: int) -> None:
    """Delete the checkpoints no trial will resume, and stray ``.tmp`` files (a checkpoint set
    aside, ``.discarded``, stays for a person to look at).

    A family keeps its checkpoint while one of its trials is RUNNING or WAITING, and while its
    last trial is a failure that may still be retried (killed or interrupted, fewer than
    ``max_retry`` deaths before it, none queued yet): a dead worker's trial whose retry another worker
    has yet to queue (:class:`cerberus.search.Orphans`) resumes from it."""
    folder = None if artifacts is None else Path(artifacts) / checkpoints.FOLDER
    if folder is None or not folder.is_dir():
        return
    keep: set[int] = set()
    latest: dict[int, Any] = {}
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        origin = t.user_attrs.get("origin", t.number)
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            keep.add(origin)
        if origin not in latest or t.number > latest[origin].number:
            latest[origin] = t
    for origin, t in latest.items():
        if t.state == TrialState.FAIL and end_reason(t) in RESUMABLE and deaths(t, trials) < max_retry:
            keep.add(origin)
    for path in folder.glob("trial-*.pt"):
        if _origin(path) not in keep:
            path.unlink(missing_ok=True)
    old = time.time() - max(grace or 0.0, checkpoints.STALE_TMP_SECONDS)
    for path in folder.glob(".*.tmp"):
        if path.stat().st_mtime < old:
            path.unlink(missing_ok=True)


def _origin(path: Path) -> int | None:
    try:
        return int(path.stem.split("-")[1])
    except (IndexError, ValueError):
        return None
