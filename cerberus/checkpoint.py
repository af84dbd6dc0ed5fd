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

import pickle
from pathlib import Path
from typing import Any

from cerberus import outfile

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
