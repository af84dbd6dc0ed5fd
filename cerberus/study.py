"""A study and what defines it: making one, joining one from any machine, checking what a run asks for.

A study made by cerberus stores its :class:`Definition` (the study user attr ``definition``):
the space (the name it was given, the file's text and its SHA-256), the epochs override, the
parameter budget, the dataset and the objectives. That is what its trials are sampled from and
scored by, so a worker on any machine joins with ``--storage URL --study NAME`` and nothing
else and trains the stored space, even where no copy of the file exists. :func:`settle` turns
what a run names into the study's definition: a run naming a different space (other text),
epochs, budget, dataset or objectives is refused with one line naming the difference, before
anything is written. A study made before definitions were stored gets one from its first run
(whose objectives must still match the ``objectives`` attribute it has stored since then).

:func:`create_study` makes or loads the study for a search and gives this process its sampler
and pruner (Optuna stores neither); :func:`check_budget` and :func:`check_memory_floor` refuse a
space that could only reject trials; :func:`enqueue` queues a known configuration once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cerberus.config import Config, Recipe
from cerberus.errors import UserError

if TYPE_CHECKING:
    import optuna

    from cerberus.space import Space

# The objectives a study can have, the first always validation accuracy, and their directions.
OBJECTIVES = {"accuracy": "maximize", "params": "minimize", "latency": "minimize", "flops": "minimize"}
ALLOWED_OBJECTIVES = ("accuracy", "accuracy,params", "accuracy,latency", "accuracy,flops")
DEFINITION_ATTR = "definition"


PRUNERS = ("median", "percentile", "halving", "hyperband", "none")
DEFAULT_PRUNER = "median"
STARTUP_TRIALS = 10  # random trials before TPE models the space


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """The pruner ``run --pruner`` names. A trial reports its validation accuracy at the percent
    of its steps done (:meth:`cerberus.search.Search.fit`), so every resource below is a share
    of a trial's training, whatever its length; ``median`` and ``percentile`` read the completed
    trials at the very share a trial reached (:class:`cerberus.pruning.SameShare`), since budgeted
    trials end their epochs at different shares. The default (:data:`DEFAULT_PRUNER`) is chosen by
    replaying curves recorded on the CPU (``benchmarks/pruners.py``; benchmarks/RESULTS.md,
    "Sampler and pruner")."""
    import optuna

    from cerberus.pruning import SameShare

    p = optuna.pruners
    return {
        "median": lambda: SameShare(50.0, n_startup_trials=5, n_warmup_steps=30),
        "percentile": lambda: SameShare(25.0, n_startup_trials=5, n_warmup_steps=30),
        "halving": lambda: p.SuccessiveHalvingPruner(min_resource=25, reduction_factor=2),
        "hyperband": lambda: p.HyperbandPruner(min_resource=25, max_resource=100, reduction_factor=2),
        "none": lambda: p.NopPruner(),
    }[name]()


@dataclass(frozen=True)
class Definition:
    """What a study searches: see the module docstring. Round-trips through JSON (``to_dict``)."""

    space: str  # the name the space was given: a shipped name, or the file's path as typed
    space_text: str  # the TOML the trials sample from
    max_params: int = 5_000_000
    epochs: int | None = None  # overrides the space's length: this many epochs a trial
    data: str = "cifar10"
    objectives: tuple[str, ...] = ("accuracy",)
    budget: float | None = None  # overrides the space's length: this many PFLOP a trial

    @property
    def space_digest(self) -> str:
        return hashlib.sha256(self.space_text.encode()).hexdigest()

    def load_space(self) -> Space:
        from cerberus import space as spaces

        return spaces.parse(self.space_text, self.space)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "objectives": list(self.objectives), "space_digest": self.space_digest}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Definition:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in d.items() if k in fields}, "objectives": tuple(d["objectives"])})

    def describe(self) -> str:
        """One line: how ``best`` and ``report`` show it."""
        return (f"space {self.space} (sha256 {self.space_digest[:12]}), {_length(self.epochs, self.budget)}, "
                f"budget {self.max_params:,} params, "
                f"data {self.data}, objectives {','.join(self.objectives)}")


@dataclass(frozen=True)
class Request:
    """What a ``run`` names on its command line; None: not given (the study's, or the default)."""

    space: str | None = None  # as typed
    space_text: str | None = None  # the file it resolves to, read
    max_params: int | None = None
    epochs: int | None = None
    data: str | None = None
    objectives: tuple[str, ...] | None = None
    budget: float | None = None


DEFAULT_SPACE = "default.toml"


def settle(name: str, stored: Definition | None, asked: Request, stored_objectives: tuple[str, ...] | None,
           default_space_text: str) -> Definition:
    """The definition a run searches: the study's, which every value ``asked`` names must
    equal (else a UserError naming the first difference), or, for a study without one, what
    was asked with the defaults filled in."""
    if stored is None:
        objectives = asked.objectives or stored_objectives or ("accuracy",)
        if stored_objectives is not None and objectives != stored_objectives:
            raise UserError(f"study {name!r} was created with --objectives {','.join(stored_objectives)}; run it with those, "
                            f"or give this search another --study")
        return Definition(asked.space or DEFAULT_SPACE, asked.space_text or default_space_text,
                          5_000_000 if asked.max_params is None else asked.max_params, asked.epochs,
                          asked.data or "cifar10", objectives, asked.budget)
    differences = [
        (option, was, now) for option, was, now, given in (
            ("--space", f"{stored.space} (sha256 {stored.space_digest[:12]})",
             f"{asked.space} (sha256 {_digest(asked.space_text)[:12]})", asked.space_text is not None
             and _digest(asked.space_text) != stored.space_digest),
            ("--max-params", f"{stored.max_params:,}", f"{asked.max_params or 0:,}", asked.max_params not in (None, stored.max_params)),
            ("--epochs", _setting(stored.epochs), f"{asked.epochs}",
             asked.epochs not in (None, stored.epochs)),
            ("--budget", _setting(stored.budget), f"{asked.budget:g}" if asked.budget is not None else "",
             asked.budget not in (None, stored.budget)),
            ("--data", stored.data, asked.data, asked.data not in (None, stored.data)),
            ("--objectives", ",".join(stored.objectives), ",".join(asked.objectives or ()),
             asked.objectives not in (None, stored.objectives)),
        ) if given
    ]
    if differences:
        option, was, now = differences[0]
        created = (f"with {option} {was}, not {now}" if was is not None
                   else f"without {option} ({_length(stored.epochs, stored.budget)}), not with {option} {now}")
        raise UserError(f"study {name!r} was created {created}; leave {option} out to join it as it is, or give this "
                        f"search another --study")
    return stored


def _digest(text: str | None) -> str:
    return hashlib.sha256((text or "").encode()).hexdigest()


def _setting(value: int | float | None) -> str | None:
    """A stored --epochs or --budget as the option would say it; None where the study has none."""
    return None if value is None else f"{value:g}"


def _length(epochs: int | None, budget: float | None) -> str:
    """How long a trial trains, in words."""
    if epochs is not None:
        return f"{epochs} epoch{'' if epochs == 1 else 's'}"
    return "the space's length" if budget is None else f"{budget:g} PFLOP a trial"


def stored_definition(study: optuna.Study) -> Definition | None:
    raw = study.user_attrs.get(DEFINITION_ATTR)
    return None if raw is None else Definition.from_dict(raw)


def parse_objectives(text: str) -> tuple[str, ...]:
    if text not in ALLOWED_OBJECTIVES:
        raise UserError(f"--objectives {text!r} is not supported; allowed: {', '.join(ALLOWED_OBJECTIVES)}")
    return tuple(text.split(","))


def create_study(name: str, storage: optuna.storages.BaseStorage, seed: int | None, worker: int = 0,
                 objectives: tuple[str, ...] = ("accuracy",), definition: Definition | None = None,
                 pruner: str = DEFAULT_PRUNER) -> optuna.Study:
    """The study, made on first use, with ``definition`` stored when it has none (its objectives
    are then the definition's). The sampler and pruner are per process (Optuna keeps neither in
    storage); the seed is offset by the trials already there and by the worker's index, so
    neither a resumed run nor a second worker replays the random start-up samples. An existing
    study searched for other objectives is a UserError, and is left as it was."""
    import optuna

    objectives = definition.objectives if definition is not None else objectives
    if name in {s.study_name for s in storage.get_all_studies()}:
        check_ours(optuna.load_study(study_name=name, storage=storage), "run")
    try:  # one process creates the study: it stores the definition, every other one joins it
        study = optuna.create_study(study_name=name, storage=storage, directions=[OBJECTIVES[o] for o in objectives])
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        if definition is not None:
            _check_joined(study, definition)
    stored = study_objectives(study)
    if stored is not None and stored != objectives:
        raise UserError(f"study {name!r} was created with --objectives {','.join(stored)}; run it with those, "
                        f"or give this search another --study")
    check_directions(study, objectives)
    if "objectives" not in study.user_attrs:  # a new study, or one from before they were stored
        study.set_user_attr("objectives", list(objectives))
    if definition is not None and DEFINITION_ATTR not in study.user_attrs:
        study.set_user_attr(DEFINITION_ATTR, definition.to_dict())
    offset = len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(None if seed is None else seed + offset + 7919 * worker)
    study.pruner = make_pruner(pruner)
    return study


def make_sampler(seed: int | None) -> optuna.samplers.BaseSampler:
    """The search's sampler: multivariate TPE after :data:`STARTUP_TRIALS` random trials."""
    import optuna

    with warnings.catch_warnings():
        # group=True is what keeps TPE multivariate across stage counts; it is marked experimental.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=STARTUP_TRIALS)


CREATION_WAIT = 10.0  # seconds a run waits for the process that created a study to store its definition


def _check_joined(study: optuna.Study, definition: Definition) -> None:
    """Refuse (UserError) to join a study that another process created with another definition:
    two runs that create the same new study at the same moment with different spaces (or budgets,
    data, ...). Its creator stores the definition right after creating it; this waits for that."""
    import time

    deadline = time.monotonic() + CREATION_WAIT
    while (raw := study.user_attrs.get(DEFINITION_ATTR)) is None:  # read from the storage each time
        if time.monotonic() > deadline or study.get_trials(deepcopy=False):  # a study from before definitions
            return
        time.sleep(0.1)
    stored = Definition.from_dict(raw)
    mine, theirs = definition.to_dict(), stored.to_dict()
    different = [k for k in ("space_digest", "max_params", "epochs", "budget", "data", "objectives") if mine[k] != theirs[k]]
    if different:
        key = different[0].replace("space_digest", "space").replace("max_params", "max-params")
        raise UserError(f"study {study.study_name!r} was just created by another run with another --{key} "
                        f"({stored.describe()}); leave the options out to join it as it is, or give this search another --study")


def made_by_cerberus(user_attrs: dict[str, Any], trials: list[optuna.trial.FrozenTrial]) -> bool:
    """Whether cerberus made the study with these user attrs and trials: it stores its
    objectives (since they were stored) and its trials their configuration (before that). A
    study with nothing in it yet counts: it may be one that another worker has just created and
    not yet marked, and it has nothing to lose (``run`` checks its directions)."""
    if "objectives" in user_attrs or not trials and not user_attrs:
        return True
    return any("config" in t.user_attrs for t in trials)


def check_directions(study: optuna.Study, objectives: tuple[str, ...]) -> None:
    """Refuse (UserError) a study whose directions are not those of ``objectives`` (an empty
    study that another program made)."""
    directions = [d.name.lower() for d in study.directions]
    if directions != [OBJECTIVES[o] for o in objectives]:
        raise UserError(f"study {study.study_name!r} has the directions {','.join(directions)}, not those of "
                        f"--objectives {','.join(objectives)}; give this search another --study")


def check_ours(study: optuna.Study, command: str) -> None:
    """Refuse (UserError) ``command`` (``run``, ``best``, ``report``) on a study cerberus did not make."""
    if made_by_cerberus(study.user_attrs, study.get_trials(deepcopy=False)):
        return
    directions = ",".join(d.name.lower() for d in study.directions)
    held = f"{len(study.get_trials(deepcopy=False))} trial(s) without a cerberus configuration, direction {directions}"
    instead = ("give this search another --study" if command == "run"
               else "`cerberus-search export` lists its trials, `cerberus-search dashboard` shows them")
    raise UserError(f"study {study.study_name!r} was not made by cerberus ({held}); {command} refuses it: {instead}")


def study_objectives(study: optuna.Study) -> tuple[str, ...] | None:
    """What ``study`` optimises; a one-direction study from before objectives were stored is
    an accuracy search, and a study cerberus did not make has none."""
    import optuna

    stored = study.user_attrs.get("objectives")
    if stored is not None:
        return tuple(stored)
    return ("accuracy",) if study.directions == [optuna.study.StudyDirection.MAXIMIZE] else None


def check_budget(space: Space, max_params: int) -> None:
    from cerberus import size as sizes

    smallest = min(sizes.params(a) for a in space.architectures())
    if smallest > max_params:
        raise UserError(
            f"no architecture in {space.path} fits --max-params {max_params:,}: the smallest has "
            f"{smallest:,} parameters; raise --max-params or allow fewer blocks or narrower widths"
        )


def check_memory_floor(space: Space, device: Any, data: str, precision: str = "auto", workers: int = 1) -> None:
    """Refuse (UserError) a space whose every trial would end ``over_memory`` on ``device``:
    not even its smallest architecture, at its smallest batch and with plain SGD (the least
    state), fits what the device offers now, ``workers`` times over (each worker process on a
    CPU also holds the libraries and its copy of the dataset, :func:`cerberus.memory.worker_process`).
    Such a run would only reject trials, or be killed."""
    from cerberus import data as datasets
    from cerberus import memory
    from cerberus.precision import choose

    batches = space.recipe["batch_size"].values() if "batch_size" in space.recipe else [Recipe.batch_size]
    recipe = Recipe(optimizer="sgd", momentum=0.0, batch_size=int(min(batches)))
    val = datasets.VAL_SIZE[data]
    train = datasets.TRAIN_SIZE[data] - val
    step = choose(device, precision)
    need = min(memory.estimate(Config(a, recipe), step, train, val).total for a in space.architectures())
    offered = memory.available(device)
    if workers > 1:
        each = need + (memory.worker_process(train + val) if step.device_type == "cpu" else 0)
        if not memory.fits(workers * each, offered):
            most = max(1, int(memory.HEADROOM * offered // each))
            raise UserError(f"--workers {workers} on {device}: each worker needs at least {memory.format_bytes(each)} "
                            f"(the smallest trial of {space.path} and its process), {memory.format_bytes(offered)} is "
                            f"available ({memory.HEADROOM:.0%} of it usable); give --workers {most} or fewer")
    if not memory.fits(need, offered):
        raise UserError(
            f"no trial of {space.path} fits the memory of {device}: the smallest architecture at batch "
            f"{recipe.batch_size} needs about {memory.format_bytes(need)}, {memory.format_bytes(offered)} is available "
            f"({memory.HEADROOM:.0%} of it usable); allow fewer blocks, narrower widths or smaller batches"
        )


def check_batches(space: Space, data: str) -> None:
    """Refuse (UserError) a space whose batch could be larger than the training split of ``data``:
    such a trial would take no step at all."""
    from cerberus import data as datasets

    batches = space.recipe["batch_size"].values() if "batch_size" in space.recipe else [Recipe.batch_size]
    train = datasets.TRAIN_SIZE[data] - datasets.VAL_SIZE[data]
    if max(batches) > train:  # type: ignore[operator]
        raise UserError(f"{space.path}: [recipe] batch_size {max(batches):,} is larger than the {train:,} training "
                        f"images of --data {data}; allow smaller batches")


def enqueue(study: optuna.Study, space: Space, config: Config, label: str) -> bool:
    """Queue ``config`` as the study's next trial, unless the same configuration was queued
    before (compared by the parameters it fixes, not by ``label``, so an edited file or another
    folder's file of the same name is queued, and repeating a command queues nothing twice). The
    trial samples the space like any other, with its parameters fixed to ``config``'s (see
    :meth:`Space.params_for`): the sampler learns from it and it trains at the search's epochs.
    Returns whether it queued."""
    params = space.params_for(config)
    for t in study.get_trials(deepcopy=False):
        queued = t.user_attrs.get("enqueued_params")
        # a trial queued before the parameters were stored: its label, and its params once sampled
        legacy = queued is None and t.user_attrs.get("enqueued") == label and t.params in ({}, params)
        if queued == params or legacy:
            return False
    study.enqueue_trial(params, user_attrs={"enqueued": label, "enqueued_params": params})
    return True


def space_name(path: Path) -> str:
    """What a study calls a space file: a shipped file's name (``smoke.toml``), else the path as given."""
    from cerberus import shipped

    return path.name if shipped.is_shipped(path, path.stem, shipped.SPACE) else str(path)
