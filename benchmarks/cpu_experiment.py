"""The CPU experiment: a real search at CPU scale against the course recipe, side by side.

Runs the committed CLI end to end on CIFAR-10 (on this project's machines, the JPEG copy of
``../shared/data``: its figures are "CIFAR-10 JPEG copy" figures, never plain CIFAR-10 ones):

1. ``run --space cpu --trials 30`` (the search; its first trial is the course recipe on the
   course block counts at the space's quarter width, ``search/seed-cpu.json``);
2. ``train --trial <best> --seeds 3``;
3. ``train --config seed-cpu --seeds 3``: the course recipe on the course blocks (3,5,3) at
   widths 16,32,64, the space's epochs;
4. ``train --config <the best trial's architecture with the course recipe> --seeds 3``, which
   separates what the recipe won from what the architecture won;
5. the share of the search's wall time outside training steps (``benchmarks/overhead.py``);
6. time to accuracy: the wall time until the best trial first reached the course trial's final
   validation accuracy, over the course trial's own time, both as the search measured them
   (user attr ``epoch_seconds``: the fit's wall time at each epoch's end, evaluation included);
7. ``train --config seed-cpu --seeds 3 --precision fp32``: row 3 in fp32 NCHW, to show that the
   bf16 fast path keeps accuracy within the seed spread.

Each step prints its row as it finishes and the summary (JSON) is written after each step, to
``--summary``. It is rerunnable: ``run`` trains only what the study still lacks, and a row
whose ``metrics.json`` exists is read, not trained again (delete ``--out`` to start over).

    python ../shared/data/to_batches.py /tmp/cifar
    python benchmarks/cpu_experiment.py --data-dir /tmp/cifar --summary benchmarks/cpu_experiment.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import ROOT, child_env, machine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None, help="folder holding cifar-10-batches-py/")
    p.add_argument("--data", default="cifar10", help="cifar10, or synthetic to try the script in a minute or two")
    p.add_argument("--out", type=Path, default=Path("/tmp/cerberus-cpu-experiment"))
    p.add_argument("--summary", type=Path, default=None, help="JSON file for the figures (default: OUT/summary.json)")
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="the search's --seed")
    p.add_argument("--skip-fp32", action="store_true", help="leave out step 7 (a regression rerun of the search needs it not)")
    a = p.parse_args()
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary_path = (a.summary or out / "summary.json").resolve()
    storage = f"sqlite:///{out / 'cpu.db'}"
    common = ["--data", a.data, *(["--data-dir", a.data_dir] if a.data_dir else []), "--device", "cpu"]
    summary: dict[str, Any] = {"machine": machine(), "commands": {}, "data": a.data, "data_dir": a.data_dir}

    def save() -> None:
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")

    search = ["run", "--space", "cpu", "--trials", str(a.trials), "--study", "cpu", "--storage", storage,
              "--seed", str(a.seed), *common]
    summary["commands"]["search"] = command_line(search)
    seconds = cli(search, out)
    best = json.loads(cli_output(["best", "--study", "cpu", "--storage", storage, "--json"], out))[0]
    summary["search"] = {"wall_s_this_call": seconds, "best_trial": best["trial"], "best_val_accuracy": best["val_accuracy"],
                         "best_params": best["params"], "best_config": best["config"], **study_figures(storage)}
    say(f"search: {summary['search']['trained']} trained trials ({summary['search']['pruned']} pruned) in "
        f"{summary['search']['wall_s'] / 60:.1f} min of study wall time; best trial {best['trial']} "
        f"val {best['val_accuracy']:.4f}, {best['params']:,} params")
    save()

    from cerberus.config import COURSE_CPU, Config

    course_on_best = out / "course-on-best.json"
    arch = Config.from_dict(best["config"]).arch
    course_on_best.write_text(dataclasses.replace(COURSE_CPU, arch=arch).to_json(indent=2))
    rows = {
        "best": ["train", "--trial", str(best["trial"]), "--study", "cpu", "--storage", storage],
        "course": ["train", "--config", "seed-cpu"],
        "course_recipe_on_best_arch": ["train", "--config", str(course_on_best)],
    }
    for name, args in rows.items():
        summary[name] = train_row(name, [*args, "--seeds", str(a.seeds), *common], out, summary)
        save()

    overhead = json.loads(subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--storage", storage, "--study", "cpu", "--json"],
        capture_output=True, text=True, check=True, env=child_env()).stdout.strip().splitlines()[-1])
    summary["overhead"] = overhead
    say(f"overhead: {overhead['overhead']:.1%} of {overhead['wall_s']:.0f} s outside training steps")
    summary["time_to_accuracy"] = time_to_accuracy(storage, best["trial"])
    t = summary["time_to_accuracy"]
    say(f"time to the course trial's final val {t['target']:.4f}: best trial {t['best_s']:.1f} s "
        f"(epoch {t['best_epoch']}), course trial {t['course_s']:.1f} s: ratio {t['ratio']:.3f}")
    save()

    if a.skip_fp32:
        say(f"summary: {summary_path}")
        return
    summary["course_fp32"] = train_row("course_fp32", ["train", "--config", "seed-cpu", "--seeds", str(a.seeds),
                                                       "--precision", "fp32", *common], out, summary)
    save()
    say(f"summary: {summary_path}")


def train_row(name: str, args: list[str], out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    folder = out / name
    args = [*args, "--out", str(folder)]
    summary["commands"][name] = command_line(args)
    metrics_file = folder / "metrics.json"
    seconds = None if metrics_file.exists() else cli(args, out)  # a finished row is read, not retrained
    m = json.loads(metrics_file.read_text())
    row = {"test_accuracy": m["test_accuracy"], "test_accuracy_std": m["test_accuracy_std"], "seeds": m["test_seeds"],
           "params": m["params"], "epochs": m["epochs"], "train_seconds": m["train_seconds"],
           "precision": m.get("precision"), "wall_s_this_call": seconds,
           "per_seed": [s["test_accuracy"] for s in m["seeds"]]}
    std = "" if row["test_accuracy_std"] is None else f" ± {row['test_accuracy_std']:.4f}"
    say(f"{name}: test {row['test_accuracy']:.4f}{std} over {row['seeds']} seeds, {row['params']:,} params, "
        f"{row['epochs']} epochs, {row['train_seconds']:.0f} s training in all ({row['precision']})")
    return row


def study_figures(storage: str) -> dict[str, Any]:
    from optuna.trial import TrialState

    from cerberus.storage import read_study
    from cerberus.trials import is_trained

    with read_study("cpu", storage) as study:
        trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_complete and t.datetime_start]
    trained = [t for t in trials if is_trained(t)]
    wall = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    return {"trials": len(trials), "trained": len(trained), "wall_s": wall,
            "pruned": sum(t.state == TrialState.PRUNED for t in trained),
            "rejected": len(trials) - len(trained)}


def time_to_accuracy(storage: str, best: int) -> dict[str, Any]:
    from cerberus.config import COURSE_CPU, Config
    from cerberus.space import set_length
    from cerberus.storage import read_study

    with read_study("cpu", storage) as study:
        trials = study.get_trials(deepcopy=False)
    course = next(t for t in trials if "config" in t.user_attrs and t.values
                  and set_length(Config.from_dict(t.user_attrs["config"]), COURSE_CPU.recipe.epochs) == COURSE_CPU)
    top = next(t for t in trials if t.number == best)
    history = [top.intermediate_values[e] for e in sorted(top.intermediate_values)]
    target = course.values[0]
    reached = next((i for i, acc in enumerate(history) if acc >= target), None)
    course_s = course.user_attrs["epoch_seconds"][-1]
    best_s = None if reached is None else top.user_attrs["epoch_seconds"][reached]
    return {"target": target, "course_trial": course.number, "course_s": course_s, "best_trial": best,
            "best_epoch": None if reached is None else reached + 1, "best_s": best_s,
            "ratio": None if best_s is None else best_s / course_s}


def cli(args: list[str], cwd: Path) -> float:
    say(f"$ {command_line(args)}")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cerberus", *args], cwd=cwd, check=True, env=child_env())
    return time.perf_counter() - t0


def cli_output(args: list[str], cwd: Path) -> str:
    return subprocess.run([sys.executable, "-m", "cerberus", *args], cwd=cwd, check=True, env=child_env(),
                          capture_output=True, text=True).stdout


def command_line(args: list[str]) -> str:
    return "cerberus-search " + " ".join(args)


def say(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    main()
