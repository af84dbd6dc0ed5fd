"""``cerberus-search run`` from its command line to its last line: set a search up, run its
workers, say where it stands.

:func:`run` does everything that can refuse the run before anything is written (every option,
the space, the study's stored definition, the budget and memory floors, the dataset, the known
configurations to queue), then makes or joins the study, queues those configurations, and runs
one worker in this process or ``--workers`` worker processes (:mod:`cerberus.workers`, each
calling :func:`work`). It returns the exit code: 0, 1 when the search gave up (too many
rejections or failures in a row), 128 + N when signal N stopped it.
"""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cerberus import signals
from cerberus.errors import UserError, int_list, one_length, positive
from cerberus.study import DEFAULT_PRUNER

if TYPE_CHECKING:
    import optuna

    from cerberus.search import RunOptions, RunSummary
    from cerberus.space import Space
    from cerberus.study import Definition, Request


MAX_HEARTBEAT = 3600  # seconds: a dead worker's trial waits three of them for its retry


def say(line: str) -> None:
    """A line on stderr: whole in a log, so that it greps; on a terminal, wrapped between words
    (the terminal's own wrap cut "synthetic" in two at 80 columns)."""
    if sys.stderr.isatty():
        line = textwrap.fill(line, shutil.get_terminal_size().columns, break_long_words=False, break_on_hyphens=False)
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Asked:
    """What a ``run`` command line says, as typed (None: not given); ``cerberus-search run
    --help`` tells each option's meaning."""

    trials: int = 50
    study: str = "cerberus"
    storage: str = "sqlite:///studies/cerberus.db"
    space: str | None = None
    max_params: int | None = None
    epochs: int | None = None
    budget: float | None = None
    device: str = "auto"
    data: str | None = None
    data_dir: Path | None = None
    seed: int | None = None
    timeout: float | None = None
    workers: int = 1
    gpus: str | None = None
    max_failures: int = 5
    heartbeat: int = 10
    checkpoint_every: float = 60.0
    compile: bool = False
    cuda_graph: bool = False
    precision: str = "auto"
    objectives: str | None = None
    pruner: str = DEFAULT_PRUNER
    enqueue_seed: bool | None = None
    enqueue: tuple[Path, ...] = ()


def run(asked: Asked) -> int:
    """The whole ``run`` command (see the module docstring); its exit code."""
    from cerberus import data as datasets
    from cerberus import storage as stores
    from cerberus import study as studies
    from cerberus import workers as pool
    from cerberus.devices import resolve_device
    from cerberus.search import RunOptions, count_trained

    check_options(asked)
    devices = worker_devices(asked.device, asked.gpus, asked.workers)
    resolved = [resolve_device(d) for d in devices]
    check_graphable(asked.cuda_graph, resolved)
    stores.sqlite_path(asked.storage)  # the URL's syntax: cheap, so before the slower checks
    definition = _definition(asked.study, asked.storage, _request(asked))
    space = definition.load_space()
    studies.check_budget(space, definition.max_params)
    studies.check_batches(space, definition.data)
    for d in sorted(set(resolved), key=str):
        studies.check_memory_floor(space, d, definition.data, asked.precision, workers=resolved.count(d))
    known = known_configs(space, definition.space, asked.enqueue_seed, list(asked.enqueue))
    splits = datasets.search_splits(definition.data, asked.data_dir)  # a missing or broken dataset is refused here
    study = studies.create_study(asked.study, stores.open_storage(asked.storage, create=True, heartbeat=asked.heartbeat),
                                 asked.seed, definition=definition, pruner=asked.pruner)
    queued = [label for config, label in known if studies.enqueue(study, space, config, label)]
    if queued:
        say(f"queued {len(queued)} known configuration(s) to train first: {', '.join(queued)}")
    done = count_trained(study)
    say(f"study {asked.study!r} in {asked.storage}: {done} of {asked.trials} trained trials; {definition.describe()}; "
        f"{len(devices)} worker(s) on {', '.join(sorted({str(d) for d in resolved}))}")
    opts = RunOptions(asked.trials, definition.max_params, definition.epochs, definition.budget, "cpu", definition.data,
                      str(asked.data_dir) if asked.data_dir else None, asked.seed, asked.timeout, asked.max_failures,
                      stores.artifact_dir(asked.storage, asked.study), asked.compile, definition.objectives,
                      stores.grace_period(asked.heartbeat), asked.precision,
                      pulse=asked.heartbeat if stores.is_proxy(asked.storage) else None,
                      checkpoint_every=asked.checkpoint_every, cuda_graph=asked.cuda_graph, pruner=asked.pruner)
    if len(devices) > 1:
        jobs = [pool.for_device(pool.Job(asked.study, asked.storage, asked.heartbeat, opts, i), str(d))
                for i, d in enumerate(resolved)]
        code = pool.spawn(jobs)
        _say_where(study, asked, code)
        return code
    here = resolved[0]
    opts = dataclasses.replace(opts, device=str(here), gpu=here.index if here.type == "cuda" else None)
    result = _run_here(study, space, opts, lambda: splits, done, None)
    _say_where(study, asked, 0, result)
    return _stopped_early(result, asked.max_failures)


def check_options(asked: Asked) -> None:
    """Refuse (UserError) every option of ``asked`` that is wrong on its own, before anything is read."""
    from cerberus import data as datasets
    from cerberus import study as studies
    from cerberus.precision import check_precision
    from cerberus.reporter import interval_seconds

    for name, value in (("--trials", asked.trials), ("--max-params", asked.max_params), ("--timeout", asked.timeout),
                        ("--workers", asked.workers), ("--max-failures", asked.max_failures), ("--heartbeat", asked.heartbeat)):
        positive(name, value)
    one_length(asked.epochs, asked.budget)
    if asked.heartbeat > MAX_HEARTBEAT:
        raise UserError(f"--heartbeat {asked.heartbeat} is longer than {MAX_HEARTBEAT} s; a dead worker's trial waits "
                        f"three heartbeats for its retry: give 1..{MAX_HEARTBEAT}")
    if not asked.checkpoint_every >= 0:  # `not >=` refuses nan too
        raise UserError(f"--checkpoint-every must be 0 (every epoch) or more seconds, got {asked.checkpoint_every:g}")
    if asked.seed is not None and not 0 <= asked.seed < 2**32:
        raise UserError(f"--seed {asked.seed} is out of range; allowed: 0..{2**32 - 1}")
    if asked.data is not None and asked.data not in datasets.DATASETS:
        raise UserError(f"--data {asked.data!r} is not a dataset; allowed: {', '.join(datasets.DATASETS)}")
    check_precision(asked.precision)
    if asked.pruner not in studies.PRUNERS:
        raise UserError(f"--pruner {asked.pruner!r} is not a pruner; allowed: {', '.join(studies.PRUNERS)}")
    interval_seconds()  # $CERBERUS_PROGRESS_SECONDS, read now rather than as the first trial starts


def work() -> int:
    """One of ``run --workers``'s processes: its job (:class:`cerberus.workers.Job`) comes in
    the environment; it joins the study as a worker on another machine would."""
    from cerberus import storage as stores
    from cerberus import study as studies
    from cerberus import workers as pool
    from cerberus.search import count_trained

    job = pool.Job.from_env()
    study = studies.create_study(job.study, stores.open_storage(job.storage, create=True, heartbeat=job.heartbeat),
                                 job.options.seed, worker=job.index, objectives=job.options.objectives,
                                 pruner=job.options.pruner)
    definition = studies.stored_definition(study)
    if definition is None:
        raise UserError(f"study {job.study!r} stores no definition; start the workers with `cerberus-search run`")
    result = _run_here(study, definition.load_space(), job.options, None, count_trained(study), job.index)
    return _stopped_early(result, job.options.max_failures)


def check_graphable(cuda_graph: bool, devices: list[Any]) -> None:
    """``--cuda-graph`` asks for CUDA: on any other device it is refused rather than ignored."""
    other = sorted({str(d) for d in devices if d.type != "cuda"})
    if cuda_graph and other:
        raise UserError(f"--cuda-graph records the step on a CUDA device, and this run trains on {', '.join(other)}; "
                        "leave it out, or give --device cuda")


def worker_devices(device: str, gpus: str | None, workers: int) -> list[str]:
    """One device spec per worker process: --workers on --device, or --workers on each of --gpus."""
    from cerberus import workers as pool
    from cerberus.devices import resolve_device

    if gpus is None:
        cores = pool.cores()
        if resolve_device(device).type == "cpu" and workers > cores:
            raise UserError(f"--workers {workers} on a CPU of {cores} core(s): each worker trains on its share of the "
                            f"cores, and more workers than cores only fight over them; allowed: 1..{cores}")
        return [device] * workers
    indices = int_list("--gpus", gpus, minimum=0)
    for i in indices:
        resolve_device(f"cuda:{i}")
    return [f"cuda:{i}" for i in indices for _ in range(workers)]


def _request(asked: Asked) -> Request:
    """What this run names, the space file resolved and read (a bad value is refused here)."""
    from cerberus import shipped
    from cerberus import study as studies
    from cerberus.errors import read_text

    text = name = None
    if asked.space is not None:
        path = shipped.resolve(asked.space, shipped.SPACE, "--space")
        text, name = read_text(path, f"space file {path}"), studies.space_name(path)
    goals = None if asked.objectives is None else studies.parse_objectives(asked.objectives)
    return studies.Request(name, text, asked.max_params, asked.epochs, asked.data, goals, asked.budget)


def _definition(name: str, url: str, asked: Request) -> Definition:
    """The study's definition for this run (:func:`cerberus.study.settle`), read without writing:
    an existing SQLite file is opened read-only, and a study cerberus did not make is refused."""
    from cerberus import shipped
    from cerberus import storage as stores
    from cerberus import study as studies

    stored = objectives = None
    with stores.peeking(url) as storage:
        if storage is not None and name in {s.study_name for s in storage.get_all_studies()}:
            import optuna

            existing = optuna.load_study(study_name=name, storage=storage)
            studies.check_ours(existing, "run")
            stored, objectives = studies.stored_definition(existing), studies.study_objectives(existing)
            if stored is None:
                studies.check_directions(existing, asked.objectives or objectives or ("accuracy",))
    default = (shipped.folder() / studies.DEFAULT_SPACE).read_text()
    return studies.settle(name, stored, asked, objectives, default)


def known_configs(space: Space, space_name: str, enqueue_seed: bool | None, files: list[Path]) -> list[tuple[Any, str]]:
    """(config, label) pairs to queue: the seed unless switched off (by default only for the
    default and cpu spaces): the shipped fast configuration where the space holds it, else the
    course project's, at full width or at the quarter width the space holds; then each file's.
    Every one is checked against the space now."""
    from cerberus import shipped
    from cerberus.config import COURSE, COURSE_CONFIGS, read_configs

    if enqueue_seed is None:  # the shipped spaces, or the user's copies of them
        enqueue_seed = Path(space_name).stem in ("default", "cpu")
    (fast,) = read_configs(shipped.folder() / "fast.json", "the shipped fast.json")
    seeds = [(fast, "fast.json"), *((c, "seed") for c in COURSE_CONFIGS)]
    seed = next((s for s in seeds if _expresses(space, s[0])), (COURSE, "seed"))
    known = [seed] if enqueue_seed else []
    for path in files:
        configs = read_configs(path, "--enqueue")
        known += [(c, f"{path.name}#{i}" if len(configs) > 1 else path.name) for i, c in enumerate(configs)]
    for config, label in known:
        try:
            space.params_for(config)
        except UserError as e:
            raise UserError(f"--enqueue{'-seed' if (config, label) == seed else ' ' + label}: {e}") from None
    return known


def _expresses(space: Space, config: Any) -> bool:
    try:
        space.params_for(config)
    except UserError:
        return False
    return True


def _run_here(study: optuna.Study, space: Space, opts: RunOptions, splits: Callable[[], Any] | None, done: int,
              index: int | None) -> RunSummary:
    """This process as one worker; Ctrl-C or SIGTERM ends it with the exit code of that signal."""
    from cerberus import search as searches
    from cerberus.reporter import Reporter

    try:
        with Reporter(opts.trials, done, prefix="" if index is None else f"[w{index}] ") as reporter:
            return searches.run(study, space, opts, reporter, signals.STOP, splits)
    except KeyboardInterrupt:
        if index is None:
            left = opts.trials - searches.count_trained(study)
            say(f"interrupted ({signals.name()}): the study holds {opts.trials - left} of {opts.trials} trained trials; "
                f"run the same command to train the other {left} (the stopped trial resumes from its last epoch)")
        raise SystemExit(signals.exit_code()) from None


def _stopped_early(result: RunSummary, max_failures: int) -> int:
    from cerberus.search import MAX_REJECTIONS_IN_A_ROW

    if result.gave_up:
        say(f"stopped: {MAX_REJECTIONS_IN_A_ROW} architectures in a row were over budget or over memory; narrow the "
            f"space, raise --max-params, or free memory")
        return 1
    if result.failed_out:
        say(f"stopped: {max_failures} trials failed in a row (see their 'error' attribute); fix the cause and run the "
            f"same command again")
        return 1
    return 0


def hint(command: str, study: str, storage: str) -> str:
    """A command line naming ``study`` and ``storage``, quoted so that it can be pasted."""
    return f"cerberus-search {command} --study {shlex.quote(study)} --storage {shlex.quote(storage)}"


def _say_where(study: optuna.Study, asked: Asked, code: int, result: RunSummary | None = None) -> None:
    from cerberus import trials as records
    from cerberus import workers as pool

    trials = asked.trials
    if code in pool.STOPPED:
        left = trials - records.count_trained(study)
        say(f"interrupted: run the same command to train the other {left} trial(s)")
        return
    held = records.count_trained(study)
    if result is not None:
        say(f"trained {result.trained_now} trial(s) this run, rejected {result.rejected_now} architecture(s) untrained "
            f"(over budget or memory); the study holds {held} of {trials} trained trials")
    else:
        say(f"the study holds {held} of {trials} trained trials")
    front = records.best_trials(study)
    see = f"(see `{hint('best', asked.study, asked.storage)}`)"
    if len(front) > 1 or front and len(study.directions) > 1:
        say(f"Pareto front: {len(front)} trial(s), the most accurate trial {front[0].number} at val accuracy "
            f"{front[0].values[0]:.4f} {see}")
    elif front:
        say(f"best: trial {front[0].number}, val accuracy {front[0].values[0]:.4f}, "
            f"{front[0].user_attrs['params']:,} params {see}")
