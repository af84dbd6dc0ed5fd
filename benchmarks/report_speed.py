"""How long ``cerberus-search report`` takes on a large study, and how long Chromium takes to draw it.

Builds a SQLite study of N trials shaped like a real search (tests/fake_studies.py: a third
over budget, a third pruned, some diverged or failed, 4 workers, 15 epochs of curves), then
times the real command in a fresh process, as a person runs it, R times::

    python benchmarks/report_speed.py --trials 2000 [--repeat 3] [--db /tmp/report_speed.db]

Prints one line per run and the page's size; with Chromium installed, also the time from
opening the file to every plot drawn. Building the study is not timed (add_trials: ~40 s).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, child_env  # benchmarks/ is sys.path[0] when run as a script
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import optuna  # noqa: E402

import chromium  # noqa: E402
import fake_studies  # noqa: E402

DRAWN = """Array.from(document.querySelectorAll('.plot .js-plotly-plot'))
             .every(d => d.querySelector('.main-svg') && d.getBoundingClientRect().height > 0)"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--db", type=Path, default=Path(tempfile.gettempdir()) / "report_speed.db")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    args.db.unlink(missing_ok=True)
    url, name = f"sqlite:///{args.db}", "speed"
    start = time.perf_counter()
    fake_studies.create(url, name, fake_studies.search(args.trials))
    print(f"built {args.trials} trials in {url} in {time.perf_counter() - start:.1f} s (not timed)")
    print(f"python {platform.python_version()}, optuna {optuna.__version__}, {os.cpu_count()} CPUs, {platform.machine()}")

    out = args.db.with_suffix(".html")
    env = child_env()
    for i in range(args.repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cerberus", "report", "--study", name, "--storage", url, "--out", str(out)],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        print(f"run {i + 1}: report of {args.trials} trials in {time.perf_counter() - start:.2f} s "
              f"(whole command: start-up, imports, reading the study, plots, writing)")
    print(f"page: {out.stat().st_size / 1e6:.1f} MB")

    if chromium.find() is None:
        print("chromium not installed: drawing not timed")
        return
    start = time.perf_counter()
    with chromium.Page(out.resolve().as_uri(), timeout=300) as page:
        while not page.evaluate(DRAWN):
            time.sleep(0.05)
        took = time.perf_counter() - start
        if page.errors:
            raise SystemExit(f"console errors: {page.errors}")
    print(f"chromium: opened and drew every plot in {took:.2f} s (browser start-up included)")


if __name__ == "__main__":
    main()
