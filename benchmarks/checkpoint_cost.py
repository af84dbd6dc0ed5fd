"""What one checkpoint costs a trial: its size and the time a save stalls the step, per optimizer.

    python benchmarks/checkpoint_cost.py [--blocks 3,5,3 --widths 64,128,256] [--device cpu] [--json]

Builds the trial's own :class:`cerberus.fit.Fit` of the course recipe at each optimizer,
runs one epoch of a small synthetic split (so the optimizer has its state), then times
:func:`cerberus.checkpoint.save` of :meth:`Fit.state` five times (the median is printed) into a
temporary folder, and one :func:`cerberus.checkpoint.load`. How often a search saves is the
policy's (``--checkpoint-every``); this is the price of each save.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", default="3,5,3")
    p.add_argument("--widths", default="64,128,256")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    import torch

    from cerberus import checkpoint as checkpoints
    from cerberus.config import COURSE, Arch, Config
    from cerberus.data import synthetic
    from cerberus.fit import Fit

    device = torch.device(a.device)
    arch = Arch(tuple(int(b) for b in a.blocks.split(",")), tuple(int(w) for w in a.widths.split(",")))
    rows = []
    for optimizer in ("nesterov", "adamw", "adadelta"):
        config = Config(arch, dataclasses.replace(COURSE.recipe, optimizer=optimizer, epochs=2, batch_size=128))
        with tempfile.TemporaryDirectory() as tmp, Fit(config, synthetic(256, seed=1), synthetic(128, seed=2), device, seed=0) as fit:
            next(iter(fit))
            path = Path(tmp) / "trial-0.pt"
            seconds = []
            for _ in range(5):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                checkpoints.save(path, fit.state())
                seconds.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            checkpoints.load(path, device)
            rows.append({"optimizer": optimizer, "bytes": path.stat().st_size, "save_ms": 1000 * statistics.median(seconds),
                         "load_ms": 1000 * (time.perf_counter() - t0)})
        print(f"{optimizer}: {rows[-1]['bytes'] / 1e6:.1f} MB, save {rows[-1]['save_ms']:.0f} ms (median of 5), "
              f"load {rows[-1]['load_ms']:.0f} ms", flush=True)
    if a.json:
        print(json.dumps({"device": str(device), "torch": torch.__version__, "blocks": a.blocks, "widths": a.widths, "rows": rows}))


if __name__ == "__main__":
    main()
