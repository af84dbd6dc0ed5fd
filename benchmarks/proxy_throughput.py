"""Many cerberus workers on one study, directly or through the gRPC storage proxy: trials/s, errors, lost or doubled trials.

    python benchmarks/proxy_throughput.py --storage sqlite:////tmp/p.db --workers 8 --trials 200 [--proxy]

Each worker is a process running cerberus's own search (:class:`cerberus.search.Search`: a
one-parameter space, every attribute and constraint a trial records, three epochs reported to
the pruner) with an instant trainer in place of training, so what is measured is the storage: each
worker trains ``--trials`` trials' worth of the study's target (the study's target is
``workers * trials``). With ``--proxy`` the script starts ``cerberus-search proxy`` in front of
``--storage`` on a free loopback port and the workers use ``grpc://127.0.0.1:PORT``, with
cerberus's own heartbeats (``pulse``). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

from common import ROOT, SEARCH_SIZES

sys.path.insert(0, str(ROOT / "tests"))
from proxies import start_proxy  # noqa: E402  (a test helper: the tests start their proxies the same way)

# One sampled parameter: what is measured is what every trial writes, not the sampler.
SPACE = """
[arch]
stages = 1
blocks = 1
widths = 8
[recipe]
lr = { low = 0.001, high = 0.1, log = true }
epochs = 3
"""


class InstantFit:
    """:class:`cerberus.fit.Fit`'s contract as the search uses it, in no time: a rising curve."""

    def __init__(self, config, train, val, device, seed=None, **_):  # type: ignore[no-untyped-def]
        self.epochs, self.history, self.diverged = config.recipe.epochs, [], False

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __iter__(self):  # type: ignore[no-untyped-def]
        from cerberus.fit import Epoch

        for e in range(1, self.epochs + 1):
            self.history.append(0.1 + 0.2 * e + 0.01 * (hash(id(self)) % 7))
            yield Epoch(e, self.history[-1], 0.0, progress=e / self.epochs, of=self.epochs)

    def result(self):  # type: ignore[no-untyped-def]
        from cerberus.fit import Result

        return Result(self.history[-1], len(self.history), 0.0, 0.0, history=list(self.history))


def _worker(url: str, target: int, index: int, errors) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    import optuna
    from rich.console import Console

    from cerberus import search as searches
    from cerberus import space as spaces
    from cerberus import storage as stores
    from cerberus import study as studies
    from cerberus.reporter import Reporter

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = spaces.parse(SPACE, "one-parameter space")
    opts = searches.RunOptions(trials=target, max_params=5_000_000, data="synthetic", grace=30.0,
                               pulse=10.0 if stores.is_proxy(url) else None)
    try:
        study = studies.create_study("proxy", stores.open_storage(url, create=True, heartbeat=10), seed=index, worker=index)
        with Reporter(target, 0, console=Console(quiet=True)) as reporter:
            searches.run(study, space, dataclasses.replace(opts), reporter, splits=lambda: SEARCH_SIZES,
                         trainer=InstantFit)
    except Exception as e:
        errors.put(f"worker {index}: {type(e).__name__}: {' '.join(str(e).split())[:300]}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage", required=True, help="the database (the proxy's, with --proxy)")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--trials", type=int, default=200, help="trained trials per worker")
    p.add_argument("--proxy", action="store_true")
    args = p.parse_args(argv)
    import optuna

    from cerberus.trials import is_trained

    proxy, url = start_proxy(args.storage) if args.proxy else (None, args.storage)
    try:
        ctx = mp.get_context("spawn")
        errors = ctx.Queue()
        target = args.workers * args.trials
        start = time.perf_counter()
        procs = [ctx.Process(target=_worker, args=(url, target, i, errors)) for i in range(args.workers)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        seconds = time.perf_counter() - start
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(30)
    seen = []
    while not errors.empty():
        seen.append(errors.get())
    trials = optuna.load_study(study_name="proxy", storage=args.storage).get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    states = [t.state.name for t in trials]
    trained = sum(is_trained(t) for t in trials)
    result = {
        "storage": args.storage.split("://")[0], "proxy": args.proxy, "workers": args.workers, "target": target,
        "trained": trained, "trials": len(trials), "failed": states.count("FAIL"),
        "unfinished": states.count("RUNNING") + states.count("WAITING"),
        "duplicate_numbers": len(numbers) - len(set(numbers)), "errors": len(seen), "first_errors": seen[:3],
        "exit_codes": [p.exitcode for p in procs], "seconds": round(seconds, 1), "trials_per_s": round(len(trials) / seconds, 1),
        "trained_per_s": round(trained / seconds, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
