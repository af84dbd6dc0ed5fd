"""Where a running trial keeps its state between epochs, so that its retry resumes instead of restarting.

A trial's checkpoint is ``<study folder>/checkpoints/trial-<origin>.pt``, named for the trial
that first sampled the configuration (a retry inherits ``origin``), and holds what
:meth:`cerberus.fit.Fit.state` returns: tensors and plain numbers only. It is written
atomically (:func:`cerberus.outfile.write_atomic`), read back with ``weights_only=True`` (a
file in a shared folder runs no code when loaded), and one that cannot be read is treated as
absent: the retry trains from scratch. Which checkpoints are dead is the business of
:mod:`cerberus.liveness`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cerberus import outfile

FOLDER = "checkpoints"
DISCARDED = ".discarded"
STALE_TMP_SECONDS = 600  # a .tmp this old is no write in progress (a checkpoint takes well under a second)


def path_for(artifacts: Path | None, origin: int) -> Path | None:
    """Where trial ``origin`` (the original, for a retry) keeps its state; None: no checkpoints."""
    return None if artifacts is None else Path(artifacts) / FOLDER / f"trial-{origin}.pt"


def save(path: Path, state: dict[str, Any]) -> None:
    import torch

    outfile.write_atomic(path, lambda tmp: torch.save(state, tmp))  # a kill mid-write leaves the previous one whole


class Unreadable(Exception):
    """A checkpoint that cannot be read as one: truncated, foreign, text, or holding more than
    tensors and numbers."""


def load(path: Path | None, device: Any) -> dict[str, Any] | None:
    """The state saved at ``path``, its tensors on ``device``; None when there is none; an
    :class:`Unreadable` one raises (the caller sets it aside, :func:`set_aside`)."""
    import torch

    if path is None or not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch.load of a foreign file raises what its parser meets: pickle, index, value errors
        raise Unreadable(f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from None
    if not isinstance(state, dict):
        raise Unreadable(f"it holds a {type(state).__name__}, not a trial's state")
    return state


def set_aside(path: Path) -> Path:
    """Keep a checkpoint that could not be resumed beside the others as ``trial-N.pt.discarded``
    (where nothing resumes it, and a person can look at it); the trial trains from scratch."""
    aside = path.with_name(path.name + DISCARDED)
    path.replace(aside)
    return aside


def forget(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)
