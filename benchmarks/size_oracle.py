"""The closed form of cerberus.size against its oracle (cerberus.model.measure, the meta-device
count) on many random architectures, and how long each takes per architecture.

Draws ``--archs`` architectures as tests/test_size.py does (1 to 6 stages, 1 to 3 blocks per
stage, widths 1 to 48, kernels 1/3/5/7, skip kernels 1/3, every pool), compares parameters and
forward FLOPs, and prints the count of equal ones, the first difference if any, and the median
microseconds of the closed form and of the oracle, plus the budget check of the default space's
draws (what a trial pays before it is rejected or trained).

    python benchmarks/size_oracle.py [--archs 10000] [--seed 0] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

from common import ROOT

sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from cerberus import size, space  # noqa: E402
from cerberus.model import measure  # noqa: E402
from test_size import random_arch  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    rng = random.Random(a.seed)
    closed, oracle, equal, first = [], [], 0, None
    for _ in range(a.archs):
        arch = random_arch(rng)
        t0 = time.perf_counter()
        mine = size.of(arch)
        t1 = time.perf_counter()
        theirs = measure(arch)
        t2 = time.perf_counter()
        closed.append(t1 - t0)
        oracle.append(t2 - t1)
        if mine == theirs:
            equal += 1
        elif first is None:
            first = {"arch": str(arch), "closed_form": mine, "oracle": theirs}
    drawn = space.sample_archs(space.load(ROOT / "search" / "default.toml"), 1000, seed=a.seed)
    check = []
    for arch in drawn:
        t0 = time.perf_counter()
        size.params(arch) <= 5_000_000
        check.append(time.perf_counter() - t0)
    out = {"archs": a.archs, "equal": equal, "first_difference": first,
           "closed_form_us_median": 1e6 * statistics.median(closed), "oracle_ms_median": 1e3 * statistics.median(oracle),
           "budget_check_us_median": 1e6 * statistics.median(check), "budget_check_us_max": 1e6 * max(check)}
    print(f"{equal:,} of {a.archs:,} random architectures equal (parameters and FLOPs); closed form "
          f"{out['closed_form_us_median']:.1f} us median, oracle {out['oracle_ms_median']:.1f} ms median; budget check of "
          f"1,000 default-space draws {out['budget_check_us_median']:.1f} us median, {out['budget_check_us_max']:.1f} us max")
    if first:
        print(f"first difference: {first}")
    if a.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
