"""What the benchmark scripts share: the checkout's root and the environment of a child process."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    """This environment with the checkout first on PYTHONPATH, keeping what is already there: on
    the GPU machine, the folder where ``.device/setup.sh`` installed optuna. Unbuffered, so a
    child stopped by a time limit has printed every row it finished."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT), "PYTHONUNBUFFERED": "1"}


class Sized:
    """A split's stand-in where only its length is read (the memory check), for benchmarks
    whose trainer trains nothing."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


SEARCH_SIZES = (Sized(45_000), Sized(5_000))  # CIFAR-10's search split: train, validation
