"""One row per trial, as a pandas DataFrame and a csv, parquet or json file: ``cerberus-search export``.

Columns, in order (a fixed schema: a column whose value no trial has is empty, not missing):

``trial, state, reason, val_accuracy, last_val_accuracy, test_accuracy, params, flops,
latency_ms, stages, blocks, widths, epochs, train_flops, train_seconds, step_seconds, images_per_s, device, worker,
datetime_start, datetime_complete, duration_s, config``, then the study's definition, the same on
every row (``study_space, study_space_digest, study_epochs, study_budget, study_max_params, study_data,
study_objectives``: :class:`cerberus.study.Definition`; empty for a study made before it was
stored), then ``params_<name>`` for every sampled Optuna parameter (Optuna's own naming, as in
``Study.trials_dataframe``).

``state`` is Optuna's (COMPLETE, PRUNED, FAIL, RUNNING, WAITING); ``reason`` says why a
trial did not complete (:func:`cerberus.trials.end_reason`: over_budget, over_memory, pruned, diverged for
PRUNED; interrupted, out_of_memory, error, worker_died for FAIL). ``val_accuracy`` is the objective of a
completed trial (the first objective, in a two-objective study); ``last_val_accuracy`` the last
per-epoch value any trained trial recorded.
``blocks`` and ``widths`` are JSON lists (``[3,5,3]``): a string in every format, which no
reader mistakes for a number (a one-stage ``1`` would be);
``config`` is the trial's whole Config as JSON (``Config.from_json`` reads it back).
``params`` is the parameter count; ``params_<name>`` are sampled values. ``test_accuracy`` is
what ``cerberus-search train --trial N`` recorded for the trial (the mean over its seeds; see
:func:`cerberus.train.stored_result`); the other columns come from the trial's user attrs of
those names, where it has them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from cerberus.errors import UserError
from cerberus.train import stored_result
from cerberus.trials import end_reason, last_accuracy

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("csv", "parquet", "json")
DATES = ["datetime_start", "datetime_complete"]  # readers of csv and json must be told these are dates
COLUMNS = ("trial", "state", "reason", "val_accuracy", "last_val_accuracy", "test_accuracy", "params", "flops",
           "latency_ms", "stages", "blocks", "widths", "epochs", "train_flops", "train_seconds", "step_seconds", "images_per_s", "device", "worker",
           "datetime_start", "datetime_complete", "duration_s", "config")
DEFINITION_COLUMNS = ("study_space", "study_space_digest", "study_epochs", "study_budget", "study_max_params", "study_data",
                      "study_objectives")


FLOATS = ("val_accuracy", "last_val_accuracy", "test_accuracy", "latency_ms", "train_seconds", "step_seconds",
          "images_per_s", "duration_s")


def frame(study: optuna.Study) -> pd.DataFrame:
    """The study's trials, one row each, in trial order, with :data:`COLUMNS` then ``params_*``."""
    import pandas as pd

    trials = study.get_trials(deepcopy=False)
    finals = {t.number: stored_result(study, t.number) or {} for t in trials}
    rows = [_row(t, finals[t.number]) for t in trials]
    names = sorted({p for t in trials for p in t.params})
    df = pd.DataFrame(rows, columns=[*COLUMNS, *(f"params_{p}" for p in names)])
    for i, (col, value) in enumerate(_definition(study).items()):  # the same on every row: what the study searches
        df.insert(len(COLUMNS) + i, col, float("nan") if value is None else value)  # empty, as csv and json read it back
    for col in DATES:
        df[col] = pd.to_datetime(df[col])
    for col in FLOATS:  # a column no trial filled is still a number column, as every reader reads it back
        df[col] = pd.to_numeric(df[col]).astype(float)
    return df


def _definition(study: optuna.Study) -> dict[str, Any]:
    from cerberus.study import stored_definition

    d = stored_definition(study)
    if d is None:
        return dict.fromkeys(DEFINITION_COLUMNS)
    return {"study_space": d.space, "study_space_digest": d.space_digest, "study_epochs": d.epochs, "study_budget": d.budget,
            "study_max_params": d.max_params, "study_data": d.data, "study_objectives": ",".join(d.objectives)}


def _row(t: FrozenTrial, final: dict[str, Any]) -> dict[str, Any]:
    a = t.user_attrs
    arch = a.get("config", {}).get("arch", {})
    end = t.datetime_complete
    return {
        "trial": t.number,
        "state": t.state.name,
        "reason": end_reason(t),
        "val_accuracy": t.values[0] if t.state == TrialState.COMPLETE else None,
        "last_val_accuracy": last_accuracy(t),
        "test_accuracy": final.get("test_accuracy"),
        "params": a.get("params"),
        "flops": a.get("flops"),
        "latency_ms": a.get("latency_ms"),
        "stages": len(arch["blocks"]) if "blocks" in arch else None,
        "blocks": _list(arch.get("blocks")),
        "widths": _list(arch.get("widths")),
        "epochs": a.get("epochs"),
        "train_flops": a.get("train_flops"),
        "train_seconds": a.get("train_seconds"),
        "step_seconds": a.get("step_seconds"),
        "images_per_s": a.get("images_per_s"),
        "device": a.get("device"),
        "worker": a.get("worker"),
        "datetime_start": t.datetime_start,
        "datetime_complete": end,
        "duration_s": (end - t.datetime_start).total_seconds() if end and t.datetime_start else None,
        "config": json.dumps(a["config"], sort_keys=True) if "config" in a else None,
        **{f"params_{k}": v for k, v in t.params.items()},
    }


def _list(values: list[int] | None) -> str | None:
    return None if values is None else json.dumps(list(values), separators=(",", ":"))


def choose_format(fmt: str | None, out: Path | None) -> str:
    """The format to write: ``--format``, else ``--out``'s extension when it names one, else
    csv. A ``--format`` that contradicts ``--out``'s extension is refused, as is (see
    :func:`check_format`) one this build cannot write."""
    suffix = out.suffix.lstrip(".").lower() if out is not None else ""
    named = suffix if suffix in FORMATS else None
    fmt = None if fmt is None else fmt.lower()  # CSV is csv, as a file's extension is either
    if fmt is not None and named is not None and fmt != named:
        raise UserError(f"--format {fmt} contradicts --out {out}; give --out a .{fmt} name or drop --format")
    chosen = fmt or named or "csv"
    check_format(chosen)
    return chosen


def check_format(fmt: str) -> None:
    """UserError for a format this build cannot write (unknown, or parquet without pyarrow)."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not a format; allowed: {', '.join(FORMATS)}")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401  (pandas writes parquet through it)
        except ImportError:
            raise UserError("--format parquet needs pyarrow: pip install pyarrow (or use --format csv or json)") from None


def write(df: pd.DataFrame, path: Path, fmt: str) -> None:
    """``df`` to ``path`` in ``fmt``, every float to its last digit. pandas reads it back as
    the same frame with::

        pd.read_csv(path, parse_dates=DATES)
        pd.read_parquet(path)
        df = pd.read_json(path, precise_float=True); df[DATES] = df[DATES].apply(pd.to_datetime)

    json is a list of one object per trial, dates in ISO 8601, empty cells ``null``.
    """
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "parquet":
        df.to_parquet(path, index=False)
    else:  # not DataFrame.to_json: it rounds floats to 10 digits
        records = df.astype(object).where(df.notna(), None).to_dict("records")
        path.write_text(json.dumps(records, indent=1, default=lambda ts: ts.isoformat(timespec="microseconds")), encoding="utf-8")


def command(study: str, storage: str, fmt: str | None, out: Path | None) -> None:
    """The ``export`` command: every trial to ``out`` (default: the study's folder), atomically."""
    from cerberus import outfile
    from cerberus import storage as stores

    fmt = choose_format(fmt, out)
    with stores.read_study(study, storage) as optuna_study:
        path = out or stores.artifact_dir(storage, study) / f"trials.{fmt}"
        outfile.check_writable(path)
        df = frame(optuna_study)
    outfile.write_atomic(path, lambda tmp: write(df, tmp, fmt))
    print(f"{len(df)} trials of study {study!r} written to {path}")
