"""Trials per hour on one GPU with K worker processes at once (issue 3, "use the whole GPU").

For each K in ``--workers`` (default 1,2,4), runs the real command line

    cerberus-search run --space SPACE --epochs E --trials N --workers K --device cuda:0 \\
        --study workers-K --storage sqlite:///<tmp>/workers.db --seed 0 --no-enqueue-seed

in a fresh SQLite file, and prints the wall time and trained trials per hour of each run, and
the ratio to K = 1. Same space, epochs and trial count for every K; each run's study is new, so
the TPE samples differ only by the workers' seed offsets.

    python benchmarks/gpu_workers.py --data-dir /tmp/cifar10 --trials 12 --epochs 3 [--workers 1,2,4] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import optuna

from common import ROOT, child_env


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1,2,4")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--space", default=str(ROOT / "search" / "default.toml"))
    p.add_argument("--data", default="cifar10")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in map(int, a.workers.split(",")):
            storage = f"sqlite:///{tmp}/workers.db"
            cmd = [sys.executable, "-m", "cerberus", "run", "--space", a.space, "--epochs", str(a.epochs),
                   "--trials", str(a.trials), "--workers", str(k), "--device", a.device, "--data", a.data,
                   "--study", f"workers-{k}", "--storage", storage, "--seed", "0", "--no-enqueue-seed"]
            if a.data_dir:
                cmd += ["--data-dir", a.data_dir]
            t0 = time.perf_counter()
            done = subprocess.run(cmd, cwd=tmp, env=child_env(), capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            if done.returncode != 0:
                sys.exit(f"K={k}: exit {done.returncode}\n{done.stderr[-2000:]}")
            trials = optuna.load_study(study_name=f"workers-{k}", storage=storage).get_trials(deepcopy=False)
            trained = sum(t.state.name in ("COMPLETE", "PRUNED") and t.user_attrs.get("reason") != "over_budget" for t in trials)
            r = {"workers": k, "seconds": seconds, "trained": trained, "trials_per_hour": 3600 * trained / seconds}
            r["vs_first"] = r["trials_per_hour"] / (rows[0] if rows else r)["trials_per_hour"]
            rows.append(r)
            print(f"workers {k}: {trained} trained trials in {seconds:.0f} s = {r['trials_per_hour']:.1f} trials/hour "
                  f"({r['vs_first']:.2f}x workers {rows[0]['workers']})", flush=True)  # a row as soon as it is measured
    if a.json:
        print(json.dumps({"device": a.device, "epochs": a.epochs, "space": a.space, "rows": rows}))


if __name__ == "__main__":
    main()
