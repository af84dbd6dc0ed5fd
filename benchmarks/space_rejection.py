"""How much of a search space the parameter budget rejects.

Samples ``--samples`` configurations from the space the way a search's start-up trials do
(``Space.sample`` driven by Optuna's RandomSampler, so conditional keys and the stage count are
drawn as in a run) and counts the architectures with more than ``--max-params`` parameters
(the count :func:`cerberus.size.params` gives). Prints the rejected fraction and the
quantiles of the parameter count, per stage count too; with ``--flops``, also the quantiles of
the forward FLOPs per image of the architectures that fit (what sizes the epochs of a trial).

    PYTHONPATH=. python benchmarks/space_rejection.py [--space search/default.toml] [--samples 1000] [--seed 0] [--flops]
"""

from __future__ import annotations

import argparse
import sys
import time

import optuna
import torch

from cerberus import space as spaces
from cerberus.errors import UserError
from cerberus.size import flops as count_flops, params as count_params
from cerberus.space import rejected_fraction, sample_archs

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="search/default.toml")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-params", type=int, default=5_000_000)
    parser.add_argument("--flops", action="store_true", help="also FLOPs quantiles (about 40 ms per architecture)")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.max_params < 1:
        print("--samples and --max-params must be integers >= 1", file=sys.stderr)
        return 2
    try:
        space = spaces.load(args.space)
    except UserError as e:
        print(e, file=sys.stderr)
        return 2
    optuna.logging.set_verbosity(optuna.logging.WARNING)
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
        share = rejected_fraction(group, args.max_params, params.__getitem__)
        print(f"  {name:<14} " + _quantiles([params[a] for a in group], 1e6, "M") + f"  {share:>7.1%}  {len(group)}")
    if args.flops:
        fits = [a for a in archs if params[a] <= args.max_params]
        flops = {a: count_flops(a) for a in set(fits)}
        print(f"forward GFLOPs per image, the {len(fits)} that fit: " + _quantiles([flops[a] for a in fits], 1e9, "G"))
    return 0


def _quantiles(values: list[int], unit: float, suffix: str) -> str:
    qs = torch.quantile(torch.tensor(values, dtype=torch.float64), torch.tensor(QUANTILES, dtype=torch.float64))
    return " ".join(f"{q / unit:>5.2f}{suffix}" for q in qs)


if __name__ == "__main__":
    sys.exit(main())
