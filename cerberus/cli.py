"""``cerberus-search`` (also ``python -m cerberus``): each command's options, and a call into the
module that does its work.

Bad input of any kind ends in one line on stderr and exit code 2, before any work is done.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from cerberus import __version__, signals
from cerberus.errors import Failure, UserError, world_failure
from cerberus.storage import DEFAULT_STORAGE, DEFAULT_STUDY, check_name
from cerberus.study import DEFAULT_PRUNER, PRUNERS

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Find the best small ResNet for CIFAR-10 under a parameter budget, with Optuna.")

# Commands that import neither torch nor optuna, so that they answer in a fraction of a second.
LIGHT_COMMANDS = ("count",)


def _study_name(name: str) -> str:
    check_name(name)
    return name


# Options that several commands share, declared once.
Study = Annotated[str, typer.Option("--study", callback=_study_name, help="Study name inside the storage (also its folder's name).")]
Storage = Annotated[str, typer.Option("--storage", help="Optuna storage URL (SQLite file, PostgreSQL, grpc://HOST:PORT).")]
Device = Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N.")]
DataDir = Annotated[Optional[Path], typer.Option(help="Where CIFAR-10 is (or is downloaded to); default ~/.cache/cerberus/data.")]
Precision = Annotated[str, typer.Option(help="auto (bf16 on CUDA and on a CPU with native bf16, fp32 elsewhere), bf16 or fp32.")]
CudaGraph = Annotated[bool, typer.Option("--cuda-graph", help="Record the training step as a CUDA graph after 3 eager steps and replay it (CUDA only; eager, with a note, where it cannot be recorded).")]
Compile = Annotated[bool, typer.Option("--compile", help="Run the training forward through torch.compile (pays off only for long runs: the first step holds the compilation).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table or a line.")]
ConfigFile = Annotated[Optional[str], typer.Option("--config", help="A configuration: a shipped one by name (seed, seed-cpu, ...), a Config JSON file or a `best --json` row.")]
Blocks = Annotated[str, typer.Option(help="BasicBlocks per stage, e.g. 3,5,3.")]
Channels = Annotated[str, typer.Option(help="Width of each stage, e.g. 64,128,256.")]
ConvKernel = Annotated[int, typer.Option(help="Kernel of the stem and block convs (F).")]
SkipKernel = Annotated[int, typer.Option(help="Kernel of projection shortcuts (K): 1 or 3.")]
Pool = Annotated[int, typer.Option(help="Average-pool kernel over the last map (P); 0 = global.")]


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
    max_params: Annotated[Optional[int], typer.Option(help="Parameter budget; larger architectures are rejected untrained. Default: the study's, else 5,000,000.", show_default=False)] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs per trial, overriding the space's length. Default: the study's, else the space's.", show_default=False)] = None,
    budget: Annotated[Optional[float], typer.Option(help="Training PFLOP per trial (forward and backward), overriding the space's length: each trial's steps follow from its network and batch. Default: the study's, else the space's.", show_default=False)] = None,
    device: Device = "auto",
    data: Annotated[Optional[str], typer.Option(help="cifar10 (downloaded on first use) or synthetic. Default: the study's, else cifar10.", show_default=False)] = None,
    data_dir: DataDir = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for sampling and training (reproducible on CPU).")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Stop starting trials after this many seconds.")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes on this machine (per GPU with --gpus), all on the same study.")] = 1,
    gpus: Annotated[Optional[str], typer.Option(help="Comma-separated CUDA device indices, e.g. 0,1: --workers processes on each.")] = None,
    max_failures: Annotated[int, typer.Option(help="Stop after this many failed trials in a row.")] = 5,
    heartbeat: Annotated[int, typer.Option(help="Seconds between a running trial's heartbeats; silent for 3x that, it is retried.")] = 10,
    checkpoint_every: Annotated[float, typer.Option(help="Seconds between a running trial's checkpoints, at epoch ends (0: every epoch); a killed trial resumes from there.")] = 60.0,
    compile: Compile = False,
    cuda_graph: CudaGraph = False,
    precision: Precision = "auto",
    objectives: Annotated[Optional[str], typer.Option(help="accuracy, or a Pareto front of accuracy,params, accuracy,latency or accuracy,flops (training FLOPs; no pruning then). Default: the study's, else accuracy.", show_default=False)] = None,
    pruner: Annotated[str, typer.Option(help=f"{', '.join(PRUNERS)}: what stops trials that fall behind, compared at the same share of their training.")] = DEFAULT_PRUNER,
    enqueue_seed: Annotated[Optional[bool], typer.Option("--enqueue-seed/--no-enqueue-seed", help="Train the course project's configuration first (default: on for the default and cpu spaces).", show_default=False)] = None,
    enqueue: Annotated[Optional[list[Path]], typer.Option(help="JSON file of a configuration (or a list, or `best --json` rows) to train early; repeatable.")] = None,
) -> None:
    """Search: sample, budget-check, train and score trials until the study holds --trials trained ones.

    A study stores what defines it (space, epochs, budget, data, objectives): `run --storage URL
    --study NAME` with nothing else joins it from any machine."""
    from cerberus import launch

    asked = launch.Asked(trials, study, storage, space, max_params, epochs, budget, device, data, data_dir, seed, timeout, workers,
                         gpus, max_failures, heartbeat, checkpoint_every, compile, cuda_graph, precision, objectives,
                         pruner, enqueue_seed, tuple(enqueue or ()))
    raise typer.Exit(launch.run(asked))


@app.command(name="worker", hidden=True)
def worker() -> None:
    """One of `run --workers`'s processes: its job comes in the environment."""
    from cerberus import launch

    raise typer.Exit(launch.work())


@app.command()
def best(
    study: Study = DEFAULT_STUDY,
    storage: Storage = DEFAULT_STORAGE,
    top: Annotated[Optional[int], typer.Option(help="How many trials to list (default: 1, or the whole Pareto front).", show_default=False)] = None,
    as_json: AsJson = False,
) -> None:
    """The best completed trials (of a two-objective study, its Pareto front): accuracy, size, configuration."""
    from cerberus import tables

    tables.best(study, storage, top, as_json)


@app.command()
def report(
    study: Study = DEFAULT_STUDY,
    storage: Storage = DEFAULT_STORAGE,
    out: Annotated[Optional[Path], typer.Option(help="HTML file to write; default studies/<study>/report.html (the study's folder).")] = None,
) -> None:
    """One self-contained HTML page of the study: plots, trial counts, the best configuration."""
    from cerberus import report as reports

    reports.command(study, storage, out)


@app.command()
def export(
    study: Study = DEFAULT_STUDY,
    storage: Storage = DEFAULT_STORAGE,
    fmt: Annotated[Optional[str], typer.Option("--format", help="csv, parquet (needs pyarrow) or json; default: --out's extension, else csv.", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option(help="File to write; default studies/<study>/trials.<format>.")] = None,
) -> None:
    """One row per trial (state, reason, parameters, size, accuracy, timing, worker) as csv, parquet or json."""
    from cerberus import export as exports

    exports.command(study, storage, fmt, out)


@app.command()
def proxy(
    storage: Storage = DEFAULT_STORAGE,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 for workers on other machines.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 13000,
) -> None:
    """Optuna's gRPC storage proxy in front of --storage, until Ctrl-C: workers on many machines
    then run with --storage grpc://HOST:PORT and share its one database connection pool."""
    from cerberus import storage as stores

    raise typer.Exit(stores.proxy_command(storage, host, port))


@app.command(name="studies")
def list_studies(storage: Storage = DEFAULT_STORAGE, as_json: AsJson = False) -> None:
    """The studies in a storage, with their trials by state; read-only."""
    from cerberus import tables

    tables.studies(storage, as_json)


@app.command()
def dashboard(
    study: Study = DEFAULT_STUDY,
    storage: Storage = DEFAULT_STORAGE,
    port: Annotated[int, typer.Option(help="Port to listen on; 0 picks a free one.")] = 8080,
    host: Annotated[str, typer.Option(help="Address to listen on; 127.0.0.1 keeps it on this machine.")] = "127.0.0.1",
) -> None:
    """optuna-dashboard on the study's storage, read-only, until Ctrl-C."""
    from cerberus import dashboard as dashboards

    dashboards.command(study, storage, host, port)


@app.command()
def count(
    blocks: Blocks,
    channels: Channels,
    conv_kernel: ConvKernel = 3,
    skip_kernel: SkipKernel = 1,
    pool: Pool = 0,
    max_params: Annotated[int, typer.Option(help="Parameter budget to check it against.")] = 5_000_000,
    batch_size: Annotated[int, typer.Option(help="Images per training step, for the memory estimate.")] = 128,
    optimizer: Annotated[str, typer.Option(help="The optimizer whose state the memory estimate counts.")] = "sgd",
    device: Annotated[str, typer.Option(help="Where the memory estimate is for: auto (CUDA when present), cpu, cuda or cuda:N.")] = "auto",
    as_json: AsJson = False,
) -> None:
    """Parameters and FLOPs per image of one architecture, the memory a trial of it needs, and
    whether it fits the budget and this machine."""
    from cerberus import count as counts

    arch = counts.arch_from_options(blocks, channels, conv_kernel, skip_kernel, pool)
    counts.command(arch, max_params, batch_size, optimizer, device, as_json)


@app.command()
def bench(
    blocks: Blocks = "3,5,3",
    channels: Channels = "64,128,256",
    conv_kernel: ConvKernel = 3,
    skip_kernel: SkipKernel = 1,
    pool: Pool = 0,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step (default: 128, or the --config's).", show_default=False)] = None,
    config: ConfigFile = None,
    steps: Annotated[int, typer.Option(help="Timed training steps.")] = 50,
    warmup: Annotated[int, typer.Option(help="Untimed steps first (at least 1: allocation, autotuning, compilation).")] = 2,
    device: Device = "auto",
    data: Annotated[str, typer.Option(help="synthetic or cifar10.")] = "synthetic",
    data_dir: DataDir = None,
    plain: Annotated[bool, typer.Option("--plain", help="Also time a plain fp32 NCHW PyTorch loop (one batch, no augmentation) and print the ratio.")] = False,
    baseline: Annotated[bool, typer.Option("--baseline", help="Also time the course project's loop (per-image transforms, DataLoader) and print the ratio.")] = False,
    compile: Compile = False,
    cuda_graph: CudaGraph = False,
    precision: Precision = "auto",
    as_json: AsJson = False,
) -> None:
    """Training speed of one architecture (the course recipe on --blocks/--channels, or a whole
    --config): images/s, FLOPs, MFU against a matmul peak measured now, peak memory."""
    from cerberus import bench as benches
    from cerberus import count as counts
    from cerberus.devices import resolve_device
    from cerberus.precision import check_precision

    arch = counts.arch_from_options(blocks, channels, conv_kernel, skip_kernel, pool)
    options = benches.Options(batch_size, steps, warmup, resolve_device(device), data, data_dir, baseline, compile,
                              check_precision(precision), plain, None, cuda_graph)
    benches.command(arch, config, options, as_json)


@app.command()
def train(
    trial: Annotated[Optional[int], typer.Option(help="Retrain this trial of --study (see `best`).")] = None,
    config: ConfigFile = None,
    study: Study = DEFAULT_STUDY,
    storage: Storage = DEFAULT_STORAGE,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs per seed, overriding the configuration's length.")] = None,
    budget: Annotated[Optional[float], typer.Option(help="Training PFLOP per seed, overriding the configuration's length.")] = None,
    seeds: Annotated[int, typer.Option(help="Train seeds F..F+S-1 (F is --first-seed), each scored once on the test set.")] = 3,
    first_seed: Annotated[int, typer.Option(help="The first seed F, so that several machines can each train other seeds, each into its own --out.")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Folder for weights, config.json, metrics.json; default <study folder>/final/trial-N (or /<config file stem>).")] = None,
    device: Device = "auto",
    data: Annotated[str, typer.Option(help="cifar10 (downloaded on first use) or synthetic.")] = "cifar10",
    data_dir: DataDir = None,
    precision: Precision = "auto",
    compile: Compile = False,
    cuda_graph: CudaGraph = False,
    as_json: AsJson = False,
) -> None:
    """Final models: retrain one configuration on train + validation per seed, score each once on the test set."""
    from cerberus import train as trains

    raise typer.Exit(trains.command(trial, config, study, storage, epochs, budget, seeds, first_seed, out, device, data, data_dir,
                                    precision, compile, cuda_graph, as_json))


def main(argv: list[str] | None = None) -> None:
    """Entry point: Typer's app with every usage or input error reduced to one line, exit 2."""
    command = typer.main.get_command(app)
    with signals.handling():
        try:
            code = command.main(args=argv, prog_name="cerberus-search", standalone_mode=False)
        except typer.TyperException as e:
            if type(e).__name__ != "NoArgsIsHelpError":  # usage errors: unknown option, a value of the wrong type
                _fail(e.format_message())
            print(e.format_message())  # no arguments at all: the help, which is all there is to say
            sys.exit(0)
        except (typer.Abort, KeyboardInterrupt):  # a signal outside a search or a retraining
            sys.exit(signals.exit_code())
        except typer.Exit as e:
            sys.exit(e.exit_code)
        except UserError as e:
            _fail(str(e))
        except Failure as e:
            _fail(str(e), code=1)
        except Exception as e:  # the world's fault (a full disk, a damaged file, a proxy gone): one line, exit 1
            line = world_failure(e)
            if line is None:
                raise
            _fail(line, code=1)
    sys.exit(code if isinstance(code, int) else 0)


def _quiet_optuna() -> None:
    """cerberus reports trials itself: keep Optuna's warnings, drop its per-trial lines and the
    traceback it logs for a trial stopped by Ctrl-C (the run says how to resume instead)."""
    import logging

    import optuna

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("optuna %(levelname)s: %(message)s"))
    handler.addFilter(lambda r: not (r.exc_info and isinstance(r.exc_info[1], KeyboardInterrupt))
                      and not r.getMessage().endswith("failed with value None."))
    optuna.logging.disable_default_handler()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").addHandler(handler)


def _fail(message: str, code: int = 2) -> None:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(code)
