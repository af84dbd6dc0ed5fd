"""How much of a search's wall time is not training steps (target: at most 5%), and how its trials ended.

Reads a finished study (one worker) and prints, over its trained trials: the wall time from
the first trial's start to the last one's end, the training steps' share of it (user attr
``step_seconds``, timed by ``cerberus.fit.Fit`` around the steps alone), and the rest, split
into what lies inside trials (sampling, model set-up, per-epoch evaluation, storage writes)
and between them (callbacks, garbage collection, the next trial's creation).

    python benchmarks/overhead.py --storage sqlite:///studies/cerberus.db --study cerberus [--json]
"""

from __future__ import annotations

import argparse
import json

import optuna

from cerberus.trials import end_reason, is_trained, rejected


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--storage", default="sqlite:///studies/cerberus.db")
    p.add_argument("--study", default="cerberus")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    trials = [t for t in optuna.load_study(study_name=a.study, storage=a.storage).get_trials(deepcopy=False)
              if t.datetime_complete is not None and t.datetime_start is not None]
    if not any(is_trained(t) for t in trials):
        raise SystemExit(f"study {a.study!r} has no trained trial")
    wall = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    inside = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials)
    steps = sum(t.user_attrs.get("step_seconds", 0.0) for t in trials if is_trained(t))
    out = {"study": a.study, "trials": len(trials), "trained": sum(map(is_trained, trials)), "wall_s": wall,
           "step_s": steps, "overhead": 1 - steps / wall, "inside_trials_s": inside - steps, "between_trials_s": wall - inside,
           "pruned": sum(end_reason(t) == "pruned" for t in trials), "rejected": sum(map(rejected, trials)),
           "failed": sum(t.state.name == "FAIL" for t in trials)}
    print(f"{out['trained']} trained of {out['trials']} finished trials: {wall:.1f} s wall, {steps:.1f} s training steps; "
          f"overhead {out['overhead']:.1%} ({out['inside_trials_s']:.1f} s inside trials: sampling, set-up, evaluation, "
          f"storage; {out['between_trials_s']:.1f} s between trials)")
    if a.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
