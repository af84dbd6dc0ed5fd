"""A search at the frontier on this CPU, and its pick at the fast configuration's length.

1. ``run --space cpu --trials 16`` (0.06 PFLOP a trial, its first trial ``search/fast.json``);
2. the share of the search's wall time outside training steps (``benchmarks/overhead.py``), and
   how many trials it trained, pruned and rejected;
3. ``train --seeds 3`` of the search's best at 0.283 PFLOP, with the fast configuration's
   test-time views (the search scores one view), beside the rows of ``benchmarks/frontier.py``:
   ``search/fast.json`` and the course recipe at the same FLOPs.

Rerunnable: ``run`` trains only what the study still lacks, and a retraining whose
``metrics.json`` exists is read, not trained again. On this project's machines the data is the
CIFAR-10 JPEG copy: its figures are "CIFAR-10 JPEG copy" figures, never plain CIFAR-10 ones.

    python benchmarks/search_frontier.py --data-dir /tmp/cifar --out /tmp/frontier

The whole pipeline in under a minute, to try the script (nothing it prints is a result):

    python benchmarks/search_frontier.py --space smoke --data synthetic --trials 3 --retrain-budget 0.0005 --seeds 2 --out /tmp/sf
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import ROOT, child_env
from frontier import at, run_row

AIRBENCH_ON_THIS_CPU = 0.9080  # airbench94_muon as published, this machine's bf16 CPU, JPEG copy: 90.71% and 90.89%


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/")
    p.add_argument("--out", type=Path, default=Path("/tmp/frontier"))
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--space", default="cpu", help="the space searched (smoke, with --data synthetic, to try the script)")
    p.add_argument("--data", default="cifar10")
    p.add_argument("--retrain-budget", type=float, default=0.283, help="training PFLOP of each retrained seed")
    p.add_argument("--seeds", type=int, default=3)
    a = p.parse_args()
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{out / 'cpu-search.db'}"
    data = ["--data", a.data, *(["--data-dir", a.data_dir] if a.data_dir else [])]
    search = [sys.executable, "-m", "cerberus", "run", "--space", a.space, "--trials", str(a.trials), "--study", "cpu",
              "--storage", storage, "--seed", str(a.seed), "--device", "cpu", *data]
    subprocess.run(search, check=True, env=child_env())
    overhead = json.loads(subprocess.run([sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--storage", storage,
                                          "--study", "cpu", "--json"], check=True, capture_output=True, text=True,
                                         env=child_env()).stdout.splitlines()[-1])
    best = json.loads(subprocess.run([sys.executable, "-m", "cerberus", "best", "--study", "cpu", "--storage", storage,
                                      "--json"], check=True, capture_output=True, text=True, env=child_env()).stdout)[0]
    fast = json.loads((ROOT / "search" / "fast.json").read_text())
    views = {k: fast["recipe"][k] for k in ("tta_flip", "tta_shift")}
    pick = at(best["config"], a.retrain_budget)
    pick["recipe"].update(views)
    summary = {"command": " ".join(search[1:]), "overhead": overhead, "best_trial": best["trial"],
               "best_val_accuracy": best["val_accuracy"],
               "pick": run_row(f"search-pick-{a.retrain_budget:g}", pick, a.seeds, out, data),
               "airbench94_muon_on_this_cpu": AIRBENCH_ON_THIS_CPU}
    frontier = json.loads((out / "frontier.json").read_text()) if (out / "frontier.json").exists() else {}
    for name in ("fast-0.283", "course-0.283"):
        summary[name] = next((g[name] for g in frontier.values() if isinstance(g, dict) and name in g), None)
    (out / "search-frontier.json").write_text(json.dumps(summary, indent=2) + "\n")
    r = summary["pick"]
    print(f"search: best trial {best['trial']} (val {best['val_accuracy']:.4f}); its pick at {a.retrain_budget:g} PFLOP: test "
          f"{r['test_accuracy']:.4f} ± {r['test_accuracy_std'] or 0:.4f} over {r['seeds']} seeds; outside training steps "
          f"{overhead['overhead']:.1%} of the search's wall time", flush=True)


if __name__ == "__main__":
    main()
