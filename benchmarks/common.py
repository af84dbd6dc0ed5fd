"""What the benchmark scripts share: the checkout's root and the environment of a child process."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

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


def machine() -> dict[str, Any]:
    """What a recorded figure was measured with: the CPU by name (``platform.processor()`` is empty
    on Linux), its cores and bf16, the versions and the checkout's commit."""
    import optuna
    import torch

    import cerberus
    from cerberus.precision import cpu_has_native_bf16

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                 platform.processor() or platform.machine())
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"cpu": model, "cores": os.cpu_count(), "native_bf16": cpu_has_native_bf16(), "python": platform.python_version(),
            "torch": torch.__version__, "optuna": optuna.__version__, "cerberus": cerberus.__version__, "commit": commit}
