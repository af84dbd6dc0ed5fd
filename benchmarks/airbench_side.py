"""airbench's 94% recipe beside cerberus's shipped fast configuration, on the same data and GPU.

airbench (``pip install airbench``: 0.1.8, CUDA only; the GPU machine's ``setup.sh`` installs its
wheel) is run as published: ``warmup94()`` then ``train94()``, its own timing and 6-view
test-time augmentation, on the CIFAR-10 in ``--data-dir`` (written as the ``train.pt`` and
``test.pt`` its loader reads, since the machine cannot download). cerberus runs
``train --config fast`` on the same images. Each prints one JSON line: seconds and test accuracy.
On the shared JPEG copy both accuracies are JPEG-copy figures, not CIFAR-10 results.

    python benchmarks/airbench_side.py --data-dir /tmp/cifar10 --runs 1 [--budget 1.4]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from common import child_env


def airbench(data_dir: Path, work: Path, runs: int) -> list[dict[str, float]]:
    """``runs`` runs of airbench94 as published, in ``work`` (where its loader looks for ``cifar10/``)."""
    import torch

    from cerberus.data import test_split, train_split

    folder = work / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for name, split in (("train.pt", train_split("cifar10", data_dir)), ("test.pt", test_split("cifar10", data_dir))):
        if not (folder / name).exists():  # its layout: uint8 images N x 32 x 32 x 3
            torch.save({"images": split.images.permute(0, 2, 3, 1).contiguous(), "labels": split.labels,
                        "classes": classes}, folder / name)
    os.chdir(work)
    import airbench as ab

    ab.warmup94()
    rows = []
    for run in range(runs):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            ab.train94(run=run)
        last = [line for line in printed.getvalue().splitlines() if "eval" in line][-1]
        cells = [c.strip() for c in last.strip("|").split("|")]
        numbers = [float(c) for c in cells if re.fullmatch(r"\d+\.\d+", c)]
        rows.append({"run": run, "tta_test_accuracy": numbers[-2], "seconds": numbers[-1]})  # its last two columns
        print(json.dumps({"recipe": "airbench94", **rows[-1]}), flush=True)
    return rows


def cerberus(data_dir: Path, budget: float | None, device: str) -> None:
    out = Path(f"/tmp/cerberus-fast-{budget or 'shipped'}-{time.time():.0f}")
    command = [sys.executable, "-m", "cerberus", "train", "--config", "fast", "--seeds", "1", "--device", device,
               "--data-dir", str(data_dir), "--out", str(out), "--json", *(["--budget", str(budget)] if budget else [])]
    r = subprocess.run(command, capture_output=True, text=True, env=child_env())
    if r.returncode != 0:
        print(json.dumps({"recipe": "cerberus fast", "budget": budget, "error": r.stderr[-500:]}), flush=True)
        return
    m = json.loads(r.stdout)
    print(json.dumps({"recipe": "cerberus fast", "budget_pflop": m["train_flops"] / 1e15, "test_accuracy": m["test_accuracy"],
                      "seconds": m["train_seconds"], "device": m["device"], "precision": m["precision"]}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--runs", type=int, default=1, help="airbench runs after its warm-up run")
    p.add_argument("--budget", type=float, action="append", help="also cerberus fast at these PFLOP (repeatable)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--skip-airbench", action="store_true")
    a = p.parse_args()
    data_dir = a.data_dir.resolve()
    cerberus(data_dir, None, a.device)
    for budget in a.budget or []:
        cerberus(data_dir, budget, a.device)
    if not a.skip_airbench:
        airbench(data_dir, Path("/tmp/airbench-side"), a.runs)


if __name__ == "__main__":
    main()
