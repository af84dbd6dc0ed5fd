"""How much of a search space the parameter budget rejects.

Samples ``--samples`` configurations from the space the way a search's start-up trials do
(``Space.sample`` driven by Optuna's RandomSampler, so conditional keys and the stage count are
drawn as in a run) and counts the architectures with more than ``--max-params`` parameters
(the count :func:`cerberus.model.measure` gives). Prints the rejected fraction and the
quantiles of the parameter count, per stage count too.

    PYTHONPATH=. python benchmarks/space_rejection.py [--space search/default.toml] [--samples 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from cerberus import space as spaces
from cerberus.errors import UserError
from cerberus.space import rejected_fraction, sample_archs
from cerberus.model import count_params

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="search/default.toml")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-params", type=int, default=5_000_000)
    args = parser.parse_args(argv)
    if args.samples < 1 or args.max_params < 1:
        print("--samples and --max-params must be integers >= 1", file=sys.stderr)
        return 2
    try:
        space = spaces.load(args.space)
    except UserError as e:
        print(e, file=sys.stderr)
        return 2
    start = time.perf_counter()
    archs = sample_archs(space, args.samples, args.seed)
    params = {a: count_params(a) for a in set(archs)}
    seconds = time.perf_counter() - start
    print(f"{args.space}: {args.samples} samples (RandomSampler, seed {args.seed}), "
          f"{len(params)} distinct architectures, {seconds:.1f} s")
    print(f"rejected (> {args.max_params:,} parameters): {rejected_fraction(archs, args.max_params, params.__getitem__):.1%}")
    groups = {"all": archs} | {f"{s} stages": [a for a in archs if len(a.blocks) == s]
                                for s in sorted({len(a.blocks) for a in archs})}
    print("params quantiles " + " ".join(f"{q:>6.0%}" for q in QUANTILES) + "  rejected   n")
    for name, group in groups.items():
        counts = torch.tensor([params[a] for a in group], dtype=torch.float64)
        qs = torch.quantile(counts, torch.tensor(QUANTILES, dtype=torch.float64))
        share = rejected_fraction(group, args.max_params, params.__getitem__)
        print(f"  {name:<14} " + " ".join(f"{q / 1e6:>5.2f}M" for q in qs) + f"  {share:>7.1%}  {len(group)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
