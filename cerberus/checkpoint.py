"""Where a running trial keeps its state between epochs, so that its retry resumes instead of restarting.

A trial's checkpoint is ``<study folder>/checkpoints/trial-<origin>.pt``, named for the trial
that first sampled the configuration (a retry inherits ``origin``), and holds what
:meth:`cerberus.train.Fit.state` returns: tensors and plain numbers only. It is written
atomically (:func:`cerberus.outfile.write_atomic`), read back with ``weights_only=True`` (a
file in a shared folder runs no code when loaded), and one that cannot be read is treated as
absent: the retry trains from scratch.

:func:`sweep` deletes what no trial will resume: the checkpoint of a trial family with nothing
running, queued or still retryable, and ``.tmp`` files that a killed writer left.
"""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cerberus import outfile

if TYPE_CHECKING:
    import optuna

FOLDER = "checkpoints"
STALE_TMP_SECONDS = 600  # a .tmp this old is no write in progress (a checkpoint takes well under a second)


def path_for(artifacts: Path | None, origin: int) -> Path | None:
    """Where trial ``origin`` (the original, for a retry) keeps its state; None: no checkpoints."""
    return None if artifacts is None else Path(artifacts) / FOLDER / f"trial-{origin}.pt"


def save(path: Path, state: dict[str, Any]) -> None:
    import torch

    outfile.write_atomic(path, lambda tmp: torch.save(state, tmp))  # a kill mid-write leaves the previous one whole


def load(path: Path | None, device: Any) -> dict[str, Any] | None:
    """The state saved at ``path``, its tensors on ``device``; None when there is none or it
    cannot be read as a checkpoint (truncated, foreign, or holding more than tensors and numbers)."""
    import torch

    if path is None or not path.exists():
        return None
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError):
        return None


def forget(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


def sweep(study: optuna.Study, artifacts: Path | None, grace: float | None, max_retry: int) -> None:
    """Delete the checkpoints no trial will resume, and stray ``.tmp`` files.

    A family keeps its checkpoint while one of its trials is RUNNING or WAITING, and while its
    last trial is a failure that may still be retried (killed or interrupted, fewer than
    ``max_retry`` retries, none queued yet): a dead worker's trial whose retry another worker
    has yet to queue (:class:`cerberus.loop.Orphans`) resumes from it."""
    from optuna.trial import TrialState

    from cerberus.trials import RESUMABLE, end_reason

    folder = None if artifacts is None else Path(artifacts) / FOLDER
    if folder is None or not folder.is_dir():
        return
    keep: set[int] = set()
    latest: dict[int, Any] = {}
    for t in study.get_trials(deepcopy=False):
        origin = t.user_attrs.get("origin", t.number)
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            keep.add(origin)
        if origin not in latest or t.number > latest[origin].number:
            latest[origin] = t
    for origin, t in latest.items():
        if t.state == TrialState.FAIL and end_reason(t) in RESUMABLE and len(t.system_attrs.get("retry_history", [])) < max_retry:
            keep.add(origin)
    for path in folder.glob("trial-*.pt"):
        if _origin(path) not in keep:
            path.unlink(missing_ok=True)
    old = time.time() - max(grace or 0.0, STALE_TMP_SECONDS)
    for path in folder.glob(".*.tmp"):
        if path.stat().st_mtime < old:
            path.unlink(missing_ok=True)


def _origin(path: Path) -> int | None:
    try:
        return int(path.stem.split("-")[1])
    except (IndexError, ValueError):
        return None
