"""``cerberus-search`` (also ``python -m cerberus``): run a search, read its best, retrain it,
report, export or browse a study, count a net or time its training.

Bad input of any kind ends in one line on stderr and exit code 2, before any work is done.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from cerberus import __version__, signals
from cerberus.errors import UserError
from cerberus.storage import DEFAULT_STORAGE, DEFAULT_STUDY, check_name

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Find the best small ResNet for CIFAR-10 under a parameter budget, with Optuna.",
)

def _study_name(name: str) -> str:
    check_name(name)
    return name


Study = Annotated[str, typer.Option("--study", callback=_study_name, help="Study name inside the storage (also its folder's name).")]
Storage = Annotated[str, typer.Option("--storage", help="Optuna storage URL (SQLite file, PostgreSQL, ...).")]
MaxParams = Annotated[int, typer.Option("--max-params", help="Parameter budget; larger architectures are rejected untrained.")]
Precision = Annotated[str, typer.Option("--precision", help="auto (bf16 autocast and channels-last on CUDA and on a CPU with native bf16, fp32 elsewhere), bf16 or fp32.")]


def _precision(value: str) -> str:
    from cerberus.precision import PRECISIONS

    if value not in PRECISIONS:
        raise UserError(f"--precision {value!r} is not a precision; allowed: {', '.join(PRECISIONS)}")
    return value


def _graphable(cuda_graph: bool, devices: list) -> None:
    """``--cuda-graph`` asks for CUDA: on any other device it is refused rather than ignored."""
    other = sorted({str(d) for d in devices if d.type != "cuda"})
    if cuda_graph and other:
        raise UserError(f"--cuda-graph records the step on a CUDA device, and this run trains on {', '.join(other)}; "
                        "leave it out, or give --device cuda")


# Commands that import neither torch nor optuna, so that they answer in a fraction of a second.
LIGHT_COMMANDS = ("count",)
# Where a CUDA (or ROCm) driver shows itself; without one, `auto` is the CPU without asking torch.
GPU_DRIVER_FILES = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/kfd")


def _sizing_device(spec: str):  # type: ignore[no-untyped-def]
    """``--device`` for ``count``: the CPU, decided without importing torch when it is asked
    for or when no GPU driver is present; anything else as every command resolves it."""
    if spec == "cpu" or (spec == "auto" and not any(Path(f).exists() for f in GPU_DRIVER_FILES)):
        return "cpu"
    from cerberus.devices import resolve_device

    return resolve_device(spec)


def _positive(name: str, value: int | float | None) -> None:
    if value is not None and value <= 0:
        raise UserError(f"{name} must be positive, got {value}")


def _hint(command: str, study: str, storage: str) -> str:
    """A command line naming ``study`` and ``storage``, quoted so that it can be pasted."""
    return f"cerberus-search {command} --study {shlex.quote(study)} --storage {shlex.quote(storage)}"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cerberus {__version__}")
        raise typer.Exit(0)


@app.callback()
def _app(ctx: typer.Context,
         version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False) -> None:
    """Find the best small ResNet for CIFAR-10 under a parameter budget, with Optuna."""
    if ctx.invoked_subcommand not in LIGHT_COMMANDS:
        _quiet_optuna()


@app.command()
def run(
    trials: Annotated[int, typer.Option(help="Stop when the study holds this many trained trials (rejected ones do not count).")] = 50,
    study: Study = DEFAULT_STUDY,
    storage: Storage = DEFAULT_STORAGE,
    space: Annotated[Optional[str], typer.Option(help="A shipped space by name (default, cpu, seed, smoke, ...) or a space file (TOML). Default: the study's stored space, else default.", show_default=False)] = None,
    max_params: Annotated[Optional[int], typer.Option("--max-params", help="Parameter budget; larger architectures are rejected untrained. Default: the study's, else 5,000,000.", show_default=False)] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs per trial, overriding the space (default: the study's, else the space's).", show_default=False)] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N.")] = "auto",
    data: Annotated[Optional[str], typer.Option(help="cifar10 (downloaded on first use) or synthetic. Default: the study's, else cifar10.", show_default=False)] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Where CIFAR-10 is (or is downloaded to); default ~/.cache/cerberus/data.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for sampling and training (reproducible on CPU).")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Stop starting trials after this many seconds.")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes on this machine (per GPU with --gpus), all on the same study.")] = 1,
    gpus: Annotated[Optional[str], typer.Option(help="Comma-separated CUDA device indices, e.g. 0,1: --workers processes on each.")] = None,
    max_failures: Annotated[int, typer.Option(help="Stop after this many failed trials in a row.")] = 5,
    heartbeat: Annotated[int, typer.Option(help="Seconds between a running trial's heartbeats; silent for 3x that, it is retried.")] = 10,
    checkpoint_every: Annotated[float, typer.Option(help="A running trial saves its state at an epoch's end once this many seconds have passed since its last save (0: every epoch); a killed trial resumes from there.")] = 60.0,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile each trial's training step (pays off only for long trials; see benchmarks/RESULTS.md).")] = False,
    cuda_graph: Annotated[bool, typer.Option("--cuda-graph", help="Record each trial's training step as a CUDA graph after 3 eager steps, replayed from then on (CUDA only; a step that cannot be recorded runs eagerly, with a note).")] = False,
    precision: Precision = "auto",
    objectives: Annotated[Optional[str], typer.Option(help="accuracy, or a Pareto front of accuracy,params or accuracy,latency (no pruning then). Default: the study's, else accuracy.", show_default=False)] = None,
    enqueue_seed: Annotated[Optional[bool], typer.Option("--enqueue-seed/--no-enqueue-seed", help="Train the course project's configuration as the first trial (default: on for the default and cpu spaces).", show_default=False)] = None,
    enqueue: Annotated[Optional[list[Path]], typer.Option(help="JSON file of a configuration (or a list of them, or `best --json` rows) to train early; repeatable.")] = None,
) -> None:
    """Search: sample, budget-check, train and score trials until the study holds --trials trained ones.

    A study stores what defines it (space, epochs, budget, data, objectives): `run --storage URL
    --study NAME` with nothing else joins it from any machine."""
    from cerberus import data as datasets
    from cerberus import loop as searches
    from cerberus import storage as stores
    from cerberus import study as studies
    from cerberus import workers as pool
    from cerberus.devices import resolve_device

    for name, value in (("--trials", trials), ("--max-params", max_params), ("--epochs", epochs), ("--timeout", timeout),
                        ("--workers", workers), ("--max-failures", max_failures), ("--heartbeat", heartbeat)):
        _positive(name, value)
    if checkpoint_every < 0:
        raise UserError(f"--checkpoint-every must be 0 (every epoch) or more seconds, got {checkpoint_every:g}")
    if data is not None and data not in datasets.DATASETS:
        raise UserError(f"--data {data!r} is not a dataset; allowed: {', '.join(datasets.DATASETS)}")
    _precision(precision)
    asked = _request(space, max_params, epochs, data, objectives)
    devices = _worker_devices(device, gpus, workers)
    _graphable(cuda_graph, [resolve_device(d) for d in devices])
    stores.sqlite_path(storage)  # the URL's syntax: cheap, so before the slower checks
    definition = _definition(study, storage, asked)
    search_space = definition.load_space()
    studies.check_budget(search_space, definition.max_params)
    for d in sorted(set(devices)):
        studies.check_memory_floor(search_space, resolve_device(d), definition.data, precision)
    known = _known_configs(search_space, definition.space, enqueue_seed, enqueue or [])
    splits = datasets.search_splits(definition.data, data_dir)  # a missing or broken dataset is refused here
    optuna_study = studies.create_study(study, stores.open_storage(storage, create=True, heartbeat=heartbeat), seed,
                                        definition=definition)
    queued = [label for config, label in known if studies.enqueue(optuna_study, search_space, config, label)]
    if queued:
        typer.echo(f"queued {len(queued)} known configuration(s) to train first: {', '.join(queued)}", err=True)
    done = searches.count_trained(optuna_study)
    typer.echo(f"study {study!r} in {storage}: {done} of {trials} trained trials; {definition.describe()}; "
               f"{len(devices)} worker(s) on {', '.join(sorted({str(resolve_device(d)) for d in devices}))}", err=True)
    opts = searches.RunOptions(trials, definition.max_params, definition.epochs, "cpu", definition.data,
                               str(data_dir) if data_dir else None, seed, timeout, max_failures,
                               stores.artifact_dir(storage, study), compile, definition.objectives,
                               stores.grace_period(heartbeat), precision,
                               pulse=heartbeat if stores.is_proxy(storage) else None, checkpoint_every=checkpoint_every,
                               cuda_graph=cuda_graph)
    if len(devices) > 1:
        jobs = [pool.for_device(pool.Job(study, storage, heartbeat, opts, i), str(resolve_device(d)))
                for i, d in enumerate(devices)]
        code = pool.spawn(jobs)
        _say_where(optuna_study, trials, study, storage, code)
        raise typer.Exit(code)
    here = resolve_device(devices[0])
    opts = dataclasses.replace(opts, device=str(here), gpu=here.index if here.type == "cuda" else None)
    result = _run_one(optuna_study, search_space, opts, lambda: splits, done, None)
    _say_where(optuna_study, trials, study, storage, 0, result)
    _exit_if_stopped_early(result, max_failures)


@app.command(name="worker", hidden=True)
def worker() -> None:
    """One of `run --workers`'s processes: its job (cerberus.workers.Job) comes in the environment."""
    from cerberus import loop as searches
    from cerberus import storage as stores
    from cerberus import study as studies
    from cerberus import workers as pool

    job = pool.Job.from_env()
    optuna_study = studies.create_study(job.study, stores.open_storage(job.storage, create=True, heartbeat=job.heartbeat),
                                        job.options.seed, worker=job.index, objectives=job.options.objectives)
    definition = studies.stored_definition(optuna_study)
    if definition is None:
        raise UserError(f"study {job.study!r} stores no definition; start the workers with `cerberus-search run`")
    done = searches.count_trained(optuna_study)
    result = _run_one(optuna_study, definition.load_space(), job.options, None, done, job.index)
    _exit_if_stopped_early(result, job.options.max_failures)


def _exit_if_stopped_early(result, max_failures: int) -> None:  # type: ignore[no-untyped-def]
    from cerberus.loop import MAX_REJECTIONS_IN_A_ROW

    if result.gave_up:
        typer.echo(f"stopped: {MAX_REJECTIONS_IN_A_ROW} architectures in a row were over budget or over memory; narrow the space, raise --max-params, or free memory", err=True)
        raise typer.Exit(1)
    if result.failed_out:
        typer.echo(f"stopped: {max_failures} trials failed in a row (see their 'error' attribute); fix the cause and run the same command again", err=True)
        raise typer.Exit(1)


def _request(space: str | None, max_params: int | None, epochs: int | None, data: str | None, objectives: str | None):  # type: ignore[no-untyped-def]
    """What this `run` names, the space file resolved and read (a bad value is refused here)."""
    from cerberus import shipped
    from cerberus import study as studies
    from cerberus.errors import read_text

    text = name = None
    if space is not None:
        path = shipped.resolve(space, shipped.SPACE, "--space")
        text, name = read_text(path, f"space file {path}"), studies.space_name(path)
    goals = None if objectives is None else studies.parse_objectives(objectives)
    return studies.Request(name, text, max_params, epochs, data, goals)


def _definition(name: str, url: str, asked):  # type: ignore[no-untyped-def]
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


def _known_configs(search_space, space: str, enqueue_seed: bool | None, files: list[Path]) -> list:  # type: ignore[no-untyped-def]
    """(config, label) pairs to queue: the course project's unless switched off (by default only
    for the default and cpu spaces: at full width, or at the quarter width the space holds),
    then each file's; every one is checked against the space now."""
    from cerberus.config import COURSE, COURSE_CONFIGS, read_configs

    if enqueue_seed is None:  # the shipped spaces, or the user's copies of them
        enqueue_seed = Path(space).stem in ("default", "cpu")
    seed = next((c for c in COURSE_CONFIGS if _expresses(search_space, c)), COURSE)
    known = [(seed, "seed")] if enqueue_seed else []
    for path in files:
        configs = read_configs(path, "--enqueue")
        known += [(c, f"{path.name}#{i}" if len(configs) > 1 else path.name) for i, c in enumerate(configs)]
    for config, label in known:
        try:
            search_space.params_for(config)
        except UserError as e:
            raise UserError(f"--enqueue{'-seed' if label == 'seed' else ' ' + label}: {e}") from None
    return known


def _expresses(search_space, config) -> bool:  # type: ignore[no-untyped-def]
    try:
        search_space.params_for(config)
    except UserError:
        return False
    return True


def _worker_devices(device: str, gpus: str | None, workers: int) -> list[str]:
    """One device spec per worker process: --workers on --device, or --workers on each of --gpus."""
    from cerberus.devices import resolve_device

    if gpus is None:
        resolve_device(device)
        return [device] * workers
    indices = _int_list("--gpus", gpus, minimum=0)
    for i in indices:
        resolve_device(f"cuda:{i}")
    return [f"cuda:{i}" for i in indices for _ in range(workers)]


def _run_one(optuna_study, search_space, opts, splits, done, index):  # type: ignore[no-untyped-def]
    """This process as one worker, with Ctrl-C or SIGTERM turned into a clean stop (exit 130 or 143)."""
    from cerberus import loop as searches
    from cerberus.progress import Reporter

    try:
        with Reporter(opts.trials, done, prefix="" if index is None else f"[w{index}] ") as reporter:
            return searches.run(optuna_study, search_space, opts, reporter, signals.STOP, splits)
    except KeyboardInterrupt:
        if index is None:
            left = opts.trials - searches.count_trained(optuna_study)
            typer.echo(f"interrupted ({signals.name()}): the study holds {opts.trials - left} of {opts.trials} trained trials; "
                       f"run the same command to train the other {left} (the stopped trial resumes from its last epoch)", err=True)
        raise typer.Exit(signals.exit_code()) from None


def _say_where(optuna_study, trials, study, storage, code, result=None) -> None:  # type: ignore[no-untyped-def]
    from cerberus import trials as records
    from cerberus import workers as pool

    if code in pool.STOPPED:
        left = trials - records.count_trained(optuna_study)
        typer.echo(f"interrupted: run the same command to train the other {left} trial(s)", err=True)
        return
    held = records.count_trained(optuna_study)
    if result is not None:
        typer.echo(f"trained {result.trained_now} trial(s) this run, rejected {result.rejected_now} "
                   f"architecture(s) untrained (over budget or memory); the study holds {held} of {trials} trained trials", err=True)
    else:
        typer.echo(f"the study holds {held} of {trials} trained trials", err=True)
    front = records.best_trials(optuna_study)
    see = f"(see `{_hint('best', study, storage)}`)"
    if len(front) > 1 or front and len(optuna_study.directions) > 1:
        typer.echo(f"Pareto front: {len(front)} trial(s), the most accurate trial {front[0].number} at val accuracy "
                   f"{front[0].values[0]:.4f} {see}", err=True)
    elif front:
        typer.echo(f"best: trial {front[0].number}, val accuracy {front[0].values[0]:.4f}, {front[0].user_attrs['params']:,} params "
                   f"{see}", err=True)


@app.command()
def best(
    study: Study = DEFAULT_STUDY,
    storage: Storage = DEFAULT_STORAGE,
    top: Annotated[Optional[int], typer.Option(help="How many trials to list (default: 1, or the whole Pareto front).", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list, best first.")] = False,
) -> None:
    """The best completed trials (of a multi-objective study, its Pareto front): architecture,
    recipe, parameters, validation accuracy."""
    from cerberus import storage as stores
    from cerberus import study as studies
    from cerberus import trials as records

    _positive("--top", top)
    with stores.read_study(study, storage) as loaded:
        studies.check_ours(loaded, "best")
        trials = records.best_trials(loaded, top)
        rows = [records.summary(t) for t in trials]
        front = len(loaded.directions) > 1
        definition = studies.stored_definition(loaded)
    if not as_json:
        typer.echo(f"study {study!r}: {definition.describe() if definition else 'no stored definition (made before cerberus stored one)'}")
    if _printed_as_json_or_none(rows, as_json, f"study {study!r} has no completed trial yet"):
        return
    from rich.table import Table

    latency = any(r["latency_ms"] is not None for r in rows)
    table = Table(title=f"{'Pareto front' if front else 'best'} of study {study!r} ({storage})")
    for col in ("trial", "val acc", "params", "MFLOPs", *(["latency ms"] if latency else []), "blocks", "widths", "F/K/P", "optimizer", "lr", "schedule", "epochs", "batch", "augment"):
        table.add_column(col, justify="right" if col in ("trial", "val acc", "params", "MFLOPs", "latency ms", "lr", "epochs", "batch") else "left")
    for r in rows:
        a, rc = r["config"]["arch"], r["config"]["recipe"]
        table.add_row(
            str(r["trial"]), f"{r['val_accuracy']:.4f}", f"{r['params']:,}", f"{r['flops'] / 1e6:.0f}",
            *([f"{r['latency_ms']:.2f}" if r["latency_ms"] is not None else "-"] if latency else []),
            ",".join(map(str, a["blocks"])), ",".join(map(str, a["widths"])),
            f"{a['conv_kernel']}/{a['skip_kernel']}/{a['pool'] or 'global'}",
            rc["optimizer"], f"{rc['lr']:.3g}", rc["schedule"], str(r["epochs"]), str(rc["batch_size"]),
            _augment_text(rc["augment"]),
        )
    _console().print(table)


def _printed_as_json_or_none(rows: list[dict], as_json: bool, none: str) -> bool:
    """Print ``rows`` as a JSON list, or the line ``none`` when there are none; whether that
    was all there is to print (else the caller prints its table)."""
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    elif not rows:
        typer.echo(none)
    return as_json or not rows


def _console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console.width = 200  # a pipe or a log file: do not squeeze the table to 80 columns
    return console


@app.command()
def report(
    study: Study = DEFAULT_STUDY,
    storage: Storage = DEFAULT_STORAGE,
    out: Annotated[Optional[Path], typer.Option(help="HTML file to write; default studies/<study>/report.html (the study's folder).")] = None,
) -> None:
    """One self-contained HTML page of the study: plots, trial counts, the best configuration."""
    from cerberus import outfile
    from cerberus import report as reports
    from cerberus import storage as stores
    from cerberus import study as studies

    with stores.read_study(study, storage) as optuna_study:
        studies.check_ours(optuna_study, "report")
        path = out or stores.artifact_dir(storage, study) / "report.html"
        outfile.check_writable(path)
        page = reports.render(optuna_study, storage)
        count = len(optuna_study.get_trials(deepcopy=False))
    outfile.write_atomic(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    typer.echo(f"report of study {study!r} ({count} trials) written to {path}")


@app.command()
def export(
    study: Study = DEFAULT_STUDY,
    storage: Storage = DEFAULT_STORAGE,
    fmt: Annotated[Optional[str], typer.Option("--format", help="csv, parquet (needs pyarrow) or json; default: --out's extension, else csv.", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option(help="File to write; default studies/<study>/trials.<format>.")] = None,
) -> None:
    """One row per trial (state, reason, parameters, size, accuracy, timing, worker) as csv, parquet or json."""
    from cerberus import export as exports
    from cerberus import outfile
    from cerberus import storage as stores

    fmt = exports.choose_format(fmt, out)
    with stores.read_study(study, storage) as optuna_study:
        path = out or stores.artifact_dir(storage, study) / f"trials.{fmt}"
        outfile.check_writable(path)
        df = exports.frame(optuna_study)
    outfile.write_atomic(path, lambda tmp: exports.write(df, tmp, fmt))
    typer.echo(f"{len(df)} trials of study {study!r} written to {path}")


@app.command()
def proxy(
    storage: Storage = DEFAULT_STORAGE,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 for workers on other machines.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 13000,
) -> None:
    """Optuna's gRPC storage proxy in front of --storage, until Ctrl-C: workers on many machines
    then run with --storage grpc://HOST:PORT and share its one database connection pool."""
    from cerberus import storage as stores

    if not 0 < port <= 65535:
        raise UserError(f"--port must be 1..65535, got {port}")
    backend = stores.proxy_backend(storage, host, port)
    typer.echo(f"storage proxy for {storage} on grpc://{host}:{port} (Ctrl-C stops it); workers: "
               f"cerberus-search run --storage grpc://{host}:{port} --study NAME", err=True)
    try:
        stores.serve_proxy(backend, host, port, sqlite=stores.sqlite_path(storage) is not None)
    except KeyboardInterrupt:
        typer.echo(f"proxy stopped ({signals.name()}); workers using it wait for it (or fail) until it is back", err=True)
        raise typer.Exit(signals.exit_code()) from None


@app.command(name="studies")
def list_studies(
    storage: Storage = DEFAULT_STORAGE,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """The studies in a storage, with their trials by state; read-only."""
    from cerberus import storage as stores

    with stores.reading(storage) as store:
        rows = [_study_row(store, s) for s in sorted(store.get_all_studies(), key=lambda s: s.study_name)]
    if _printed_as_json_or_none(rows, as_json, f"no studies in {storage}"):
        return
    from rich.table import Table

    table = Table(title=f"studies in {storage}")
    for col in ("study", "trials", "complete", "pruned", "failed", "running", "waiting", "directions", "cerberus"):
        table.add_column(col, justify="left" if col in ("study", "directions", "cerberus") else "right")
    for r in rows:
        table.add_row(r["study"], *(str(r[k]) for k in ("trials", "complete", "pruned", "failed", "running", "waiting")),
                      ",".join(r["directions"]), "yes" if r["cerberus"] else "no")
    _console().print(table)


def _study_row(storage, summary) -> dict:  # type: ignore[no-untyped-def]
    """One study's line of ``studies``: its trials by state, directions, and whether cerberus made it."""
    from optuna.trial import TrialState

    from cerberus import storage as stores

    trials = storage.get_all_trials(storage.get_study_id_from_name(summary.study_name), deepcopy=False)
    states = [t.state for t in trials]
    counts = {s.name.lower(): states.count(s) for s in
              (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)}
    counts["failed"] = counts.pop("fail")
    return {"study": summary.study_name, "trials": len(trials), **counts,
            "directions": [d.name.lower() for d in summary.directions],
            "cerberus": stores.made_by_cerberus(summary.user_attrs, trials)}


@app.command()
def dashboard(
    study: Study = DEFAULT_STUDY,
    storage: Storage = DEFAULT_STORAGE,
    port: Annotated[int, typer.Option(help="Port to listen on; 0 picks a free one.")] = 8080,
    host: Annotated[str, typer.Option(help="Address to listen on; 127.0.0.1 keeps it on this machine.")] = "127.0.0.1",
) -> None:
    """optuna-dashboard on the study's storage, read-only, until Ctrl-C."""
    from cerberus import dashboard as dashboards
    from cerberus import storage as stores

    if not 0 <= port <= 65535:
        raise UserError(f"--port must be 0..65535, got {port}")
    if stores.is_proxy(storage):
        raise UserError(f"dashboard --storage {storage}: optuna-dashboard reads the database itself, not through the "
                        f"proxy; give it the --storage the proxy serves")
    with stores.reading(storage) as store:
        stores.check_study(store, study, storage)
        dashboards.serve(store, study, host, port,
                         lambda url: typer.echo(f"optuna-dashboard of study {study!r} ({storage}), read-only: {url}  (Ctrl-C stops it)"),
                         signals.STOP)


def _augment_text(aug: dict) -> str:
    parts = []
    if aug["crop_padding"]:
        parts.append(f"crop{aug['crop_padding']}")
    if aug["flip"]:
        parts.append("flip")
    if aug["rotation"]:
        parts.append(f"rot{aug['rotation']:g}")
    if aug["cutout_holes"]:
        parts.append(f"cutout{aug['cutout_holes']}x{aug['cutout_length']}")
    if aug["mixup_alpha"]:
        parts.append(f"mixup{aug['mixup_alpha']:g}")
    if aug["cutmix_alpha"]:
        parts.append(f"cutmix{aug['cutmix_alpha']:g}")
    if aug["trivial_augment"]:
        parts.append("trivialaugment")
    return " ".join(parts) or "none"


def _int_list(option: str, text: str, minimum: int = 1) -> tuple[int, ...]:
    kind = "positive integers, e.g. 3,5,3" if minimum == 1 else "integers >= 0, e.g. 0,1"
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{option} {text!r} must be comma-separated {kind}") from None
    if not values or min(values) < minimum or len(set(values)) != len(values) and minimum == 0:
        raise UserError(f"{option} {text!r} must be comma-separated {kind}")
    return values


def _arch(blocks: str, channels: str, conv_kernel: int, skip_kernel: int, pool: int):  # type: ignore[no-untyped-def]
    """The architecture that ``count`` and ``bench`` are given on the command line."""
    from cerberus.config import MAX_STAGES, Arch

    b, c = _int_list("--blocks", blocks), _int_list("--channels", channels)
    if len(b) != len(c):
        raise UserError(f"--blocks has {len(b)} stages but --channels has {len(c)}; give one value per stage to each")
    if len(b) > MAX_STAGES:
        raise UserError(f"--blocks has {len(b)} stages; allowed: 1..{MAX_STAGES} (32x32 halves to 1x1 at the sixth)")
    try:
        return Arch(b, c, conv_kernel, skip_kernel, pool)
    except ValueError as e:
        raise UserError(str(e)) from None


@app.command()
def count(
    blocks: Annotated[str, typer.Option(help="BasicBlocks per stage, e.g. 3,5,3.")],
    channels: Annotated[str, typer.Option(help="Width of each stage, e.g. 64,128,256.")],
    conv_kernel: Annotated[int, typer.Option(help="Kernel of the stem and block convs (F).")] = 3,
    skip_kernel: Annotated[int, typer.Option(help="Kernel of projection shortcuts (K): 1 or 3.")] = 1,
    pool: Annotated[int, typer.Option(help="Average-pool kernel over the last map (P); 0 = global.")] = 0,
    max_params: MaxParams = 5_000_000,
    batch_size: Annotated[int, typer.Option(help="Images per training step, for the memory estimate.")] = 128,
    optimizer: Annotated[str, typer.Option(help="The optimizer whose state the memory estimate counts.")] = "sgd",
    device: Annotated[str, typer.Option(help="Where the memory estimate is for: auto (CUDA when present), cpu, cuda or cuda:N.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Parameters and FLOPs per image of one architecture, the memory a trial of it needs, and
    whether it fits the budget and this machine."""
    from cerberus import memory
    from cerberus import size as sizes
    from cerberus.config import OPTIMIZERS, Config, Recipe
    from cerberus.precision import choose

    _positive("--max-params", max_params)
    _positive("--batch-size", batch_size)
    if optimizer not in OPTIMIZERS:
        raise UserError(f"--optimizer {optimizer!r} is not an optimizer; allowed: {', '.join(OPTIMIZERS)}")
    arch = _arch(blocks, channels, conv_kernel, skip_kernel, pool)
    where = _sizing_device(device)
    offered = memory.available(where)
    images = memory.CIFAR10_SEARCH
    step = choose(where)
    need = memory.estimate(Config(arch, Recipe(optimizer=optimizer, batch_size=batch_size)), step, *images).total
    size = sizes.of(arch)
    fits, fits_memory = size.params <= max_params, memory.fits(need, offered)
    if as_json:
        typer.echo(json.dumps({"params": size.params, "flops": size.flops, "fits": fits, "max_params": max_params,
                               "train_memory_bytes": need, "memory_available_bytes": offered, "fits_memory": fits_memory,
                               "memory_device": str(where), "precision": step.name, "batch_size": batch_size, "optimizer": optimizer,
                               "depth": arch.depth, "arch": {"blocks": list(arch.blocks), "widths": list(arch.widths), "conv_kernel": conv_kernel,
                                                            "skip_kernel": skip_kernel, "pool": pool}}))
        return
    verdict = "fits" if fits else "does NOT fit"
    room = (f"fits this machine's {where}" if fits_memory else f"does NOT fit this machine's {where}") + (
        f" ({memory.format_bytes(offered)} available{' under ' + memory.MEMORY_LIMIT_ENV if memory.memory_limit() == offered else ''}, "
        f"{memory.HEADROOM:.0%} of it usable)")
    typer.echo(f"ResNet-{arch.depth} blocks {blocks} widths {channels}: {size.params:,} parameters, "
               f"{size.flops / 1e6:,.1f} MFLOPs per image; {verdict} --max-params {max_params:,}; a trial at batch "
               f"{batch_size} ({optimizer}, {step.name}, {images[0]:,} CIFAR-10 images) needs about {memory.format_bytes(need)}: {room}")


@app.command()
def bench(
    blocks: Annotated[str, typer.Option(help="BasicBlocks per stage (default: the seed's ResNet-24).")] = "3,5,3",
    channels: Annotated[str, typer.Option(help="Width of each stage.")] = "64,128,256",
    conv_kernel: Annotated[int, typer.Option(help="Kernel of the stem and block convs (F).")] = 3,
    skip_kernel: Annotated[int, typer.Option(help="Kernel of projection shortcuts (K): 1 or 3.")] = 1,
    pool: Annotated[int, typer.Option(help="Average-pool kernel over the last map (P); 0 = global.")] = 0,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step (default: 128, or the --config's).", show_default=False)] = None,
    config: Annotated[Optional[str], typer.Option(help="Time this whole configuration (its architecture and recipe) instead of the course recipe on --blocks/--channels: a shipped one by name (seed), a Config JSON file or a `best --json` row.")] = None,
    steps: Annotated[int, typer.Option(help="Timed training steps.")] = 50,
    warmup: Annotated[int, typer.Option(help="Untimed steps first (at least 1: allocation, autotuning, compilation).")] = 2,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N.")] = "auto",
    data: Annotated[str, typer.Option(help="synthetic or cifar10.")] = "synthetic",
    data_dir: Annotated[Optional[Path], typer.Option(help="Where CIFAR-10 is (or is downloaded to); default ~/.cache/cerberus/data.")] = None,
    plain: Annotated[bool, typer.Option("--plain", help="Also time a plain fp32 NCHW PyTorch loop (one batch, no augmentation) and print the ratio.")] = False,
    baseline: Annotated[bool, typer.Option("--baseline", help="Also time the course project's loop (per-image transforms, DataLoader) and print the ratio.")] = False,
    compile: Annotated[bool, typer.Option("--compile", help="Run the training forward through torch.compile.")] = False,
    cuda_graph: Annotated[bool, typer.Option("--cuda-graph", help="Record the step as a CUDA graph after 3 eager steps (CUDA only): the warm-up then has at least 4 steps, so every timed step is a replay.")] = False,
    precision: Precision = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Training speed of one architecture: images/s, FLOPs, MFU against a matmul peak measured now, peak memory."""
    from cerberus import bench as benches
    from cerberus.devices import resolve_device

    arch, timed = _arch(blocks, channels, conv_kernel, skip_kernel, pool), None
    if config is not None:
        from cerberus import final as finals
        from cerberus import shipped

        timed = finals.from_file(shipped.resolve(config, shipped.CONFIG, "--config")).config
        arch, batch_size = timed.arch, batch_size or timed.recipe.batch_size
        timed = dataclasses.replace(timed, recipe=dataclasses.replace(timed.recipe, batch_size=batch_size))
    options = benches.Options(batch_size or 128, steps, warmup, resolve_device(device), data, data_dir, baseline, compile,
                              _precision(precision), plain, timed, cuda_graph)
    _graphable(cuda_graph, [options.device])
    loops = [name for name, on in (("the plain loop", plain), ("the course loop", baseline)) if on]
    typer.echo(f"bench: ResNet-{arch.depth} on {options.device}, {warmup} warm-up + {steps} timed steps"
               f"{' and the same for ' + ' and '.join(loops) if loops else ''}", err=True)
    result = benches.run(arch, options)
    typer.echo(json.dumps(result) if as_json else benches.report(result))


@app.command()
def train(
    trial: Annotated[Optional[int], typer.Option(help="Retrain this trial of --study (see `best`).")] = None,
    config: Annotated[Optional[str], typer.Option(help="Retrain this configuration: a shipped one by name (seed), a Config JSON file or a `best --json` row.")] = None,
    study: Study = DEFAULT_STUDY,
    storage: Storage = DEFAULT_STORAGE,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs per seed, overriding the configuration's.")] = None,
    seeds: Annotated[int, typer.Option(help="Train seeds 0..S-1, each scored once on the test set.")] = 3,
    out: Annotated[Optional[Path], typer.Option(help="Folder for weights, config.json, metrics.json; default <study folder>/final/trial-N (or /<config file stem>).")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N.")] = "auto",
    data: Annotated[str, typer.Option(help="cifar10 (downloaded on first use) or synthetic.")] = "cifar10",
    data_dir: Annotated[Optional[Path], typer.Option(help="Where CIFAR-10 is (or is downloaded to); default ~/.cache/cerberus/data.")] = None,
    precision: Precision = "auto",
    cuda_graph: Annotated[bool, typer.Option("--cuda-graph", help="Record each seed's training step as a CUDA graph after 3 eager steps (CUDA only; eager, with a note, where it cannot be recorded).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics.json.")] = False,
) -> None:
    """Final models: retrain one configuration on train + validation per seed, score each once on the test set."""
    import optuna

    from cerberus import data as datasets
    from cerberus import final as finals
    from cerberus import shipped
    from cerberus import storage as stores
    from cerberus.devices import resolve_device

    if (trial is None) == (config is None):
        raise UserError("give exactly one of --trial N (a trial of --study) or --config FILE.json")
    _positive("--seeds", seeds)
    _positive("--epochs", epochs)
    if data not in datasets.DATASETS:
        raise UserError(f"--data {data!r} is not a dataset; allowed: {', '.join(datasets.DATASETS)}")
    _precision(precision)
    resolved = resolve_device(device)
    _graphable(cuda_graph, [resolved])
    if trial is not None:
        with stores.read_study(study, storage) as optuna_study:
            source = finals.from_trial(optuna_study, trial)
    else:
        source = finals.from_file(shipped.resolve(config, shipped.CONFIG, "--config"))
    out = out or finals.default_out(stores.artifact_dir(storage, study), source)
    finals.check_out(out)
    opts = finals.Options(seeds, resolved, data, str(data_dir) if data_dir else None, out, storage, precision, cuda_graph)
    say = lambda line: typer.echo(line, err=True)  # noqa: E731
    what = f"trial {trial} of study {study!r}" if trial is not None else str(config)
    say(f"train: {what}, {seeds} seed(s), {data} train + validation, test set scored once per seed, into {out}")
    try:
        metrics = finals.run(source, epochs, opts, say, signals.STOP)
    except KeyboardInterrupt:
        say(f"interrupted ({signals.name()}): nothing recorded ({out / finals.METRICS} not written, the study unchanged); "
            f"run the same command to train again from seed 0")
        raise typer.Exit(signals.exit_code()) from None
    if trial is not None:
        finals.record(optuna.load_study(study_name=study, storage=stores.open_storage(storage)), trial, metrics)
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
    else:
        for s in metrics["seeds"]:
            score = "diverged" if s["test_accuracy"] is None else f"test accuracy {s['test_accuracy']:.4f}"
            typer.echo(f"seed {s['seed']}: {score} ({s['epochs']} epochs, {s['train_seconds']:.1f} s)")
        std = metrics["test_accuracy_std"]
        mean = "none scored" if metrics["test_accuracy"] is None else f"{metrics['test_accuracy']:.4f}"
        typer.echo(f"test accuracy {mean}" + (f" ± {std:.4f} (sample std, {metrics['test_seeds']} seeds)" if std is not None else "")
                   + f", {metrics['params']:,} params; {out}")
    if metrics["test_accuracy"] is None:
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> None:
    """Entry point: Typer's app with every usage or input error reduced to one line, exit 2."""
    command = typer.main.get_command(app)
    with signals.handling():
        try:
            code = command.main(args=argv, prog_name="cerberus-search", standalone_mode=False)
        except (typer.Abort, KeyboardInterrupt):  # a signal outside a search or a retraining
            sys.exit(signals.exit_code())
        except typer.Exit as e:
            sys.exit(e.exit_code)
        except typer.TyperException as e:  # usage errors: unknown option, a value of the wrong type
            _fail(e.format_message())
        except UserError as e:
            _fail(str(e))
    sys.exit(code if isinstance(code, int) else 0)


def _quiet_optuna() -> None:
    """cerberus reports trials itself: keep Optuna's warnings, drop its per-trial lines and the
    traceback it logs for a trial stopped by Ctrl-C (the run says how to resume instead)."""
    import logging

    import optuna

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("optuna %(levelname)s: %(message)s"))
    # A trial stopped by a signal is logged twice: with its KeyboardInterrupt, then as "failed with
    # value None"; `run` says itself that it stopped and how to resume.
    handler.addFilter(lambda r: not (r.exc_info and isinstance(r.exc_info[1], KeyboardInterrupt))
                      and not r.getMessage().endswith("failed with value None."))
    optuna.logging.disable_default_handler()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").addHandler(handler)


def _fail(message: str) -> None:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(2)
