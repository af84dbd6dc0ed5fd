"""Many worker processes writing one study: lock errors, lost or doubled trials, throughput.

    python benchmarks/storage_stress.py --storage sqlite:///stress.db --workers 8 --trials 400 [--readers 2] [--plain]

Each worker is a separate process that asks for trials and writes what a cerberus trial
writes (a config and six other user attributes, a constraint, three intermediate values, the
result), until the study holds ``--trials`` finished trials. ``--plain`` opens the storage
the way Optuna does by default instead of through ``cerberus.storage.open_storage``, for the
comparison. Prints one JSON object: errors seen by workers, trials recorded, duplicate
numbers, seconds.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time

import optuna


def _storage(url: str, plain: bool):
    if plain:
        return optuna.storages.RDBStorage(url)
    from cerberus.storage import open_storage

    return open_storage(url, create=True, heartbeat=10)


def _worker(url: str, study: str, target: int, plain: bool, errors: mp.Queue) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        s = optuna.load_study(study_name=study, storage=_storage(url, plain))
    except Exception as e:  # the storage could not even be opened
        errors.put(f"load: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
        return
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        trial.set_user_attr("config", {"arch": {"blocks": [3, 5, 3]}, "recipe": {"lr": x}})
        for key in ("params", "flops", "epochs", "train_seconds", "images_per_s", "device"):
            trial.set_user_attr(key, 1)
        trial.set_constraint("params", -1.0)
        for step in range(3):
            trial.report(x * step, step)
        return x

    def enough(study: optuna.Study, _trial: object) -> None:
        if len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))) >= target:
            study.stop()

    while True:  # as cerberus does: an error in one trial does not end the worker
        try:
            s.optimize(objective, callbacks=[enough])
            return
        except Exception as e:
            errors.put(f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
            if errors.qsize() > 50:
                return


def _reader(url: str, study: str, stop: mp.Event, errors: mp.Queue) -> None:
    """What a dashboard does: read the whole study again and again, through plain Optuna."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    while not stop.is_set():
        try:
            optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)
        except Exception as e:
            errors.put(f"reader {type(e).__name__}: {' '.join(str(e).split())[:200]}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage", required=True)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--trials", type=int, default=400)
    p.add_argument("--plain", action="store_true")
    p.add_argument("--readers", type=int, default=0, help="processes reading the study meanwhile, as a dashboard does")
    args = p.parse_args(argv)
    study = "stress"
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    optuna.create_study(study_name=study, storage=_storage(args.storage, args.plain), load_if_exists=True)
    ctx = mp.get_context("spawn")
    errors: mp.Queue = ctx.Queue()
    start = time.perf_counter()
    procs = [ctx.Process(target=_worker, args=(args.storage, study, args.trials, args.plain, errors)) for _ in range(args.workers)]
    stop = ctx.Event()
    readers = [ctx.Process(target=_reader, args=(args.storage, study, stop, errors)) for _ in range(args.readers)]
    for proc in procs + readers:
        proc.start()
    for proc in procs:
        proc.join()
    seconds = time.perf_counter() - start
    stop.set()
    for proc in readers:
        proc.join()
    seen = []
    while not errors.empty():
        seen.append(errors.get())
    trials = optuna.load_study(study_name=study, storage=args.storage).get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    finished = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    result = {
        "storage": args.storage.split("://")[0], "plain": args.plain, "workers": args.workers, "readers": args.readers,
        "target": args.trials, "complete": len(finished), "trials": len(trials),
        "unfinished": len(trials) - len(finished), "duplicate_numbers": len(numbers) - len(set(numbers)),
        "errors": len(seen), "first_errors": seen[:3], "seconds": round(seconds, 1),
        "trials_per_s": round(len(finished) / seconds, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
