"""GPU memory after each of N trials (issues 3 and 5: memory after trial 20 equals trial 1).

Runs ``--trials`` real trials of ``search/smoke.toml`` (or ``--space``) through
``cerberus.search.run`` on a CUDA device with synthetic data, in one process, and prints
``torch.cuda.memory_allocated`` and ``memory_reserved`` after every trial, then the growth
from the first trial to the last. Needs CUDA.

    python benchmarks/cuda_memory.py --trials 20 [--space search/default.toml --epochs 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import optuna
import torch

from cerberus import data as datasets
from cerberus import space as spaces
from cerberus import storage as stores
from cerberus import search as searches
from cerberus import study as studies
from cerberus.devices import resolve_device
from cerberus.reporter import Reporter

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--space", default=str(ROOT / "search" / "smoke.toml"))
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    device = resolve_device(a.device)
    if device.type != "cuda":
        raise SystemExit("this benchmark measures CUDA memory: give --device cuda or cuda:N")
    splits = datasets.search_splits("synthetic")
    space = spaces.load(a.space)
    rows = []

    def measure(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        torch.cuda.synchronize(device)
        rows.append({"trial": trial.number, "allocated": torch.cuda.memory_allocated(device),
                     "reserved": torch.cuda.memory_reserved(device)})

    with tempfile.TemporaryDirectory() as tmp:
        study = studies.create_study("memory", stores.open_storage(f"sqlite:///{tmp}/m.db", create=True), seed=0)
        opts = searches.RunOptions(a.trials, epochs=a.epochs, device=device, data="synthetic", seed=0)
        with Reporter(a.trials, 0) as reporter:
            searches.run(study, space, opts, reporter, splits=lambda: splits, callbacks=[measure])
    for r in rows:
        print(f"after trial {r['trial']}: {r['allocated'] / 2**20:.1f} MiB allocated, {r['reserved'] / 2**20:.1f} MiB reserved")
    growth = rows[-1]["allocated"] - rows[0]["allocated"]
    print(f"{torch.cuda.get_device_name(device)}: allocated after the last trial minus after the first: {growth / 2**20:+.1f} MiB")
    if a.json:
        print(json.dumps({"device": torch.cuda.get_device_name(device), "rows": rows, "growth_bytes": growth}))


if __name__ == "__main__":
    main()
