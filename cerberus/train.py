"""The final models: one configuration retrained on the whole training set, scored on the test set.

This is ``cerberus-search train`` (:func:`command`), and the only code that reads the test set.
Contract of :func:`run`:

* The configuration comes from a trial of a study (its ``config`` user attribute,
  :func:`from_trial`) or from a JSON file (:func:`from_file`); everything about it, the
  output folder included (:func:`check_out`), is checked before any data is read.
* Both datasets are read once, before any training: the training set whole (train +
  validation, ``data.train_split``) and the test set (``data.test_split``), so a missing or
  corrupt test batch is reported before hours of training, not after.
* Seed ``s`` (``s = F .. F+seeds-1``, ``F`` the first seed, 0 unless given) trains
  ``ResNet(config.arch)`` with ``config.recipe`` from ``torch.manual_seed(s)``, with no
  evaluation during training, and is scored on the test set once, after its last epoch (with
  the recipe's test-time views). Its weights are written to ``OUT/seed-<s>.pt`` (a CPU state
  dict) as soon as it is scored.
* After the last seed, ``OUT/config.json`` (the configuration trained, ``--epochs`` applied)
  and then ``OUT/metrics.json`` are written, each atomically: a run stopped midway leaves no
  ``metrics.json``, so a folder that holds one holds a finished result, and ``train`` refuses
  to write over it.
* With a trial, the study records the result for that trial (:func:`record`): Optuna 5
  refuses to change a finished trial's attributes, so they are *study* user attributes keyed
  by the trial number, read back by :func:`stored_result`.

A seed whose loss turns NaN or infinite is not scored (``diverged``, no weights); the mean and
the sample standard deviation (n - 1; null for a single scored seed) are over the scored seeds.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import torch

from cerberus import data as datasets
from cerberus import outfile
from cerberus.config import Config, read_configs
from cerberus.errors import UserError, one_length, positive
from cerberus import size as sizes
from cerberus.precision import Precision, choose
from cerberus.reporter import Ticker, duration, interval_seconds
from cerberus.space import set_length
from cerberus.devices import device_name
from cerberus.fit import Fit, Tally

METRICS, CONFIG = "metrics.json", "config.json"
# Study user attributes holding a trial's final result; the key is "<name>:<trial number>".
STUDY_ATTRS = ("test_accuracy", "test_accuracy_std", "test_seeds", "test_epochs")


@dataclass(frozen=True)
class Source:
    """The configuration to retrain and where it came from (a trial, or a file)."""

    config: Config
    study: str | None = None
    trial: int | None = None
    val_accuracy: float | None = None  # the trial's validation accuracy, when it completed
    config_file: str | None = None


@dataclass(frozen=True)
class Options:
    seeds: int
    device: torch.device
    data: str
    data_dir: str | None
    out: Path
    storage: str | None = None  # recorded in metrics.json with the study
    precision: str = "auto"  # cerberus.precision.PRECISIONS
    cuda_graph: bool = False  # record each seed's step as a CUDA graph (cerberus.graph)
    first_seed: int = 0  # seeds first_seed .. first_seed + seeds - 1: one machine each, folders merged by hand
    compile: bool = False  # the training forward through torch.compile (its first step holds the compilation)


def from_trial(study: optuna.Study, number: int) -> Source:
    """Trial ``number``'s configuration; a trial that does not exist or has none is refused."""
    trials = study.get_trials(deepcopy=False)
    match = [t for t in trials if t.number == number]
    if not match:
        span = f"trials 0..{len(trials) - 1}" if trials else "no trials"
        raise UserError(f"--trial {number}: study {study.study_name!r} has no such trial ({span})")
    trial = match[0]
    if "config" not in trial.user_attrs:
        raise UserError(f"--trial {number} ({trial.state.name}) has no configuration: it never started sampling; "
                        f"choose a trial that `cerberus-search best` lists")
    try:
        config = Config.from_dict(trial.user_attrs["config"])
    except (ValueError, TypeError) as e:
        raise UserError(f"--trial {number}: its stored configuration is not valid ({e})") from None
    # values[0], validation accuracy, is every cerberus study's first objective (a study of two has no .value)
    value = trial.values[0] if trial.state == optuna.trial.TrialState.COMPLETE else None
    return Source(config, study=study.study_name, trial=number, val_accuracy=value)


def from_file(path: Path) -> Source:
    """A configuration from JSON: a Config object (``config.json``, ``Config.to_json``), a row of
    ``best --json`` (an object whose ``config`` is one), or that command's list holding one row."""
    configs = read_configs(path, "--config")
    if len(configs) != 1:
        raise UserError(f"--config {path} holds a list of {len(configs)} rows; keep one row of `best --json` "
                        f"(or one Config object)")
    config = configs[0]
    return Source(config, config_file=str(path))


def default_out(artifacts: Path, source: Source) -> Path:
    """``<study folder>/final/trial-<N>`` for a trial, ``.../final/<file stem>`` for a file, so
    the winner and the seed recipe's comparison row sit side by side and neither overwrites the other."""
    name = f"trial-{source.trial}" if source.trial is not None else Path(source.config_file or "config").stem
    return artifacts / "final" / name


def check_out(out: Path) -> None:
    """Refuse a folder that holds a finished result, is a file, or cannot be created or written."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    if (out / METRICS).exists():
        raise UserError(f"--out {out} already holds a finished result ({METRICS}); give another --out or delete it")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK):
        raise UserError(f"--out {out}: cannot write to {existing}; choose another --out")


@dataclass(frozen=True)
class SeedResult:
    seed: int
    test_accuracy: float | None  # None: the loss diverged and the model was not scored
    train_seconds: float  # the whole seed: its set-up, every step, and its scoring on the test set
    images_per_s: float
    epochs: int
    weights: str | None  # file name inside OUT
    cuda_graph: bool = False  # its steps replayed a CUDA graph (train --cuda-graph on CUDA, recorded without error)
    step_seconds: float = 0.0  # its training steps alone, the first one included
    test_seconds: float = 0.0  # scoring the test set, with the recipe's test-time views


def run(source: Source, epochs: int | None, opts: Options, say: Callable[[str], None],
        stop: threading.Event | None = None, budget: float | None = None) -> dict[str, Any]:
    """Retrain ``source.config`` (with ``epochs`` or ``budget`` if given) for each seed, write OUT, return metrics.

    ``say`` gets the progress lines: one as each seed starts and ends, one at each epoch's end
    (speed, the seed's time left and, after the first seed, the whole command's), and one more
    whenever :func:`cerberus.reporter.interval_seconds` pass within an epoch with nothing said.
    ``stop`` (the Ctrl-C flag) is checked between seeds, where a KeyboardInterrupt swallowed by a
    finaliser during cleanup would otherwise go unnoticed.
    """
    config = set_length(source.config, epochs, budget)
    train, test = datasets.train_split(opts.data, opts.data_dir), datasets.test_split(opts.data, opts.data_dir)
    if config.recipe.batch_size > len(train):
        raise UserError(f"the configuration's batch_size {config.recipe.batch_size:,} is larger than the {len(train):,} "
                        f"training images of --data {opts.data}; give a configuration with a smaller batch")
    what = f"trial {source.trial} of study {source.study!r}" if source.trial is not None else source.config_file
    say(f"train: {what}, {opts.seeds} seed(s), {opts.data} train + validation, test set scored once per seed, "
        f"into {opts.out}")
    precision = choose(opts.device, opts.precision)
    results: list[SeedResult] = []
    for position, seed in enumerate(range(opts.first_seed, opts.first_seed + opts.seeds), 1):
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt
        plan = sizes.plan(config, len(train))
        say(f"seed {seed} ({position} of {opts.seeds}): training {plan.epochs} epoch(s), {plan.flops / 1e15:.3g} PFLOP, "
            f"on {len(train):,} images "
            f"({opts.device}, {precision.name}){_eta(results, opts.seeds - position + 1)}")
        watch = _SeedWatch(seed, position, opts.seeds, results, say)
        results.append(_one_seed(config, train, test, seed, opts, precision, watch))
        r = results[-1]
        scored = "diverged, not scored" if r.test_accuracy is None else f"test accuracy {r.test_accuracy:.4f}"
        say(f"seed {seed} ({position} of {opts.seeds}): {scored}, {r.train_seconds:.1f} s")
    metrics = _metrics(source, config, results, opts, precision, len(train), len(test))
    _write(opts.out / CONFIG, config.to_json(indent=2).encode())
    _write(opts.out / METRICS, json.dumps(metrics, indent=2).encode())
    return metrics


def command(trial: int | None, config: str | None, study: str, storage: str, epochs: int | None, budget: float | None, seeds: int,
            first_seed: int, out: Path | None, device: str, data: str, data_dir: Path | None, precision: str, compile: bool,
            cuda_graph: bool, as_json: bool) -> int:
    """The whole ``train`` command: check everything, retrain, record, print; its exit code
    (1 when no seed was scored). Progress goes to stderr, the result to stdout."""
    from cerberus import launch, shipped
    from cerberus import signals
    from cerberus import storage as stores
    from cerberus.devices import resolve_device
    from cerberus.precision import check_precision

    if (trial is None) == (config is None):
        raise UserError("give exactly one of --trial N (a trial of --study) or --config FILE.json")
    positive("--seeds", seeds)
    if not 0 <= first_seed <= 2**32 - seeds:
        raise UserError(f"--first-seed {first_seed} with --seeds {seeds}: the seeds must lie in 0..{2**32 - 1}")
    one_length(epochs, budget)
    if data not in datasets.DATASETS:
        raise UserError(f"--data {data!r} is not a dataset; allowed: {', '.join(datasets.DATASETS)}")
    check_precision(precision)
    interval_seconds()  # $CERBERUS_PROGRESS_SECONDS, read now rather than as the first seed starts
    resolved = resolve_device(device)
    launch.check_graphable(cuda_graph, [resolved])
    if trial is not None:
        with stores.read_study(study, storage) as optuna_study:
            source = from_trial(optuna_study, trial)
    else:
        source = from_file(shipped.resolve(config, shipped.CONFIG, "--config"))  # type: ignore[arg-type]
    out = out or default_out(stores.artifact_dir(storage, study), source)
    check_out(out)
    opts = Options(seeds, resolved, data, str(data_dir) if data_dir else None, out, storage, precision, cuda_graph, first_seed, compile)
    try:
        metrics = run(source, epochs, opts, launch.say, signals.STOP, budget)
    except KeyboardInterrupt:
        launch.say(f"interrupted ({signals.name()}): nothing recorded ({out / METRICS} not written, the study unchanged); "
                   f"run the same command to train again from seed {first_seed}")
        return signals.exit_code()
    if trial is not None:
        record(optuna.load_study(study_name=study, storage=stores.open_storage(storage)), trial, metrics)
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        print(result_line(metrics, out))
    return 1 if metrics["test_accuracy"] is None else 0


def result_line(metrics: dict[str, Any], out: Path) -> str:
    """The one line ``train`` prints on stdout: the mean test accuracy over the scored seeds."""
    std, n = metrics["test_accuracy_std"], metrics["test_seeds"]
    mean = "none scored" if metrics["test_accuracy"] is None else f"{metrics['test_accuracy']:.4f}"
    spread = f" ± {std:.4f} (sample std, {n} seeds)" if std is not None else f" ({n} seed{'' if n == 1 else 's'})"
    epochs = metrics["epochs"]
    return (f"test accuracy {mean}{spread if metrics['test_accuracy'] is not None else ''}, {metrics['params']:,} params, "
            f"{epochs} epoch{'' if epochs == 1 else 's'}; {out}")


def _eta(results: list[SeedResult], left: int) -> str:
    if not results:
        return ""
    seconds = statistics.fmean(r.train_seconds for r in results) * left
    return f", about {seconds / 60:.0f} min left" if seconds >= 120 else f", about {seconds:.0f} s left"


class _SeedWatch:
    """The progress lines of one seed, read from its fit's host-side counter (no host sync):
    :meth:`epoch_end` at each epoch's end, and the ticker's line within an epoch."""

    def __init__(self, seed: int, position: int, seeds: int, done: list[SeedResult], say: Callable[[str], None]) -> None:
        self.done, self._say = list(done), say
        self.name = f"seed {seed} ({position} of {seeds})"
        self.left = seeds - position  # seeds still to start after this one
        self.tally = Tally()
        self.ticker = Ticker(interval_seconds(), self._tick)

    def epoch_end(self) -> None:
        p = self.tally
        self._say(f"{self.name} epoch {p.epoch}/{p.epochs}{self._speed(p)}")
        self.ticker.touch()

    def _tick(self) -> None:
        p = self.tally
        if p.epoch_started is not None:  # within an epoch; the epoch's end has a line of its own
            self._say(f"{self.name} epoch {p.epoch}/{p.epochs} "
                      f"step {p.step}/{p.steps_per_epoch}{self._speed(p)}")

    def _speed(self, p: Tally) -> str:
        rate, left = p.images_per_s(), p.seconds_left()
        if rate is None or left is None:
            return ""
        text = f": {rate:,.0f} img/s, seed ~{duration(left)} left"
        if self.done:  # the seeds still to start take as long as the finished ones did, on average
            later = statistics.fmean(r.train_seconds for r in self.done) * self.left
            text += f", all seeds ~{duration(left + later)} left"
        return text


def _one_seed(config: Config, train: datasets.Split, test: datasets.Split, seed: int, opts: Options, precision: Precision,
              watch: _SeedWatch) -> SeedResult:
    weights, accuracy, test_seconds = f"seed-{seed}.pt", None, 0.0
    with watch.ticker, Fit(config, train, None, opts.device, seed=seed, compile=opts.compile, precision=precision,
                           tally=watch.tally, cuda_graph=opts.cuda_graph) as fit:
        for epoch in fit:
            if not epoch.diverged:
                watch.epoch_end()
        if not fit.diverged:
            scored = time.perf_counter()
            accuracy = fit.trainer.evaluate(test)
            test_seconds = time.perf_counter() - scored
            buffer = io.BytesIO()
            torch.save(fit.trainer.weights(), buffer)
            _write(opts.out / weights, buffer.getvalue())
        result = fit.result()
    return SeedResult(seed, accuracy, result.train_seconds, result.images_per_s, result.epochs,
                      weights if accuracy is not None else None, result.captured,
                      result.step_seconds + result.first_step_seconds, test_seconds)


def _metrics(source: Source, config: Config, results: list[SeedResult], opts: Options, precision: Precision,
             train_images: int, test_images: int) -> dict[str, Any]:
    accuracies = [r.test_accuracy for r in results if r.test_accuracy is not None]
    size, plan = sizes.of(config.arch), sizes.plan(config, train_images)
    return {
        "test_accuracy": statistics.fmean(accuracies) if accuracies else None,
        "test_accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
        "test_seeds": len(accuracies),
        "seeds": [dataclasses.asdict(r) for r in results],
        "params": size.params,
        "flops": size.flops,
        "epochs": plan.epochs,
        "train_flops": plan.flops,  # per seed: forward and backward of every step
        "train_seconds": sum(r.train_seconds for r in results),
        "device": device_name(opts.device),
        "precision": precision.name,
        "compiled": opts.compile,
        "data": opts.data,
        "train_images": train_images,
        "test_images": test_images,
        "study": source.study,
        "storage": opts.storage if source.study is not None else None,
        "trial": source.trial,
        "val_accuracy": source.val_accuracy,
        "config_file": source.config_file,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }


def _write(path: Path, content: bytes) -> None:
    outfile.write_atomic(path, lambda tmp: tmp.write_bytes(content))  # a reader sees the old file or the whole new one


def record(study: optuna.Study, trial: int, metrics: dict[str, Any]) -> None:
    """Store the final result of ``trial`` in the study (nothing when no seed was scored)."""
    if metrics["test_accuracy"] is None:
        return
    values = (metrics["test_accuracy"], metrics["test_accuracy_std"], metrics["test_seeds"], metrics["epochs"])
    for name, value in zip(STUDY_ATTRS, values):
        study.set_user_attr(f"{name}:{trial}", value)


def stored_result(study: optuna.Study, trial: int) -> dict[str, Any] | None:
    """What :func:`record` stored for ``trial``: ``test_accuracy`` (the mean over seeds),
    ``test_accuracy_std``, ``test_seeds``, ``test_epochs``; None if it was never retrained."""
    attrs = study.user_attrs
    if f"test_accuracy:{trial}" not in attrs:
        return None
    return {name: attrs.get(f"{name}:{trial}") for name in STUDY_ATTRS}
