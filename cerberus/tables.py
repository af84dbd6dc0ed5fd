"""The tables ``best`` and ``studies`` print: rich tables on a terminal, JSON with ``--json``.

The columns a user came for (trial, accuracy, parameters) never fold or shrink, whatever the
terminal's width; the configuration is one column of short words
(:meth:`cerberus.config.Config.summary`) that folds onto as many lines as it needs, so a new
field of the configuration shows up here without a change to this module.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from cerberus.errors import positive

PIPE_WIDTH = 200  # a pipe or a log file: no terminal to fit


def console() -> Console:
    out = Console()
    if not out.is_terminal:
        out.width = PIPE_WIDTH
    return out


def printed_as_json_or_none(rows: list[dict[str, Any]], as_json: bool, none: str) -> bool:
    """Print ``rows`` as a JSON list, or the line ``none`` when there are none; whether that
    was all there is to print (else the caller prints its table)."""
    if as_json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(none)
    return as_json or not rows


def best(study: str, storage: str, top: int | None, as_json: bool) -> None:
    """The ``best`` command: the study's best trials (a two-objective study's Pareto front)."""
    from cerberus import storage as stores
    from cerberus import study as studies
    from cerberus import trials as records
    from cerberus.config import Config

    positive("--top", top)
    with stores.read_study(study, storage) as loaded:
        studies.check_ours(loaded, "best")
        rows = [records.summary(t) for t in records.best_trials(loaded, top)]
        front = len(loaded.directions) > 1
        definition = studies.stored_definition(loaded)
    if not as_json:
        said = definition.describe() if definition else "no stored definition (made before cerberus stored one)"
        console().print(f"study {study!r}: {said}", markup=False, highlight=False)
    if printed_as_json_or_none(rows, as_json, f"study {study!r} has no completed trial yet"):
        return
    latency = any(r["latency_ms"] is not None for r in rows)
    table = Table(title=f"{'Pareto front' if front else 'best'} of study {study!r} ({storage})")
    for name in ("trial", "val acc", "params", "train PFLOP", *(["latency ms"] if latency else [])):
        table.add_column(name, justify="right", no_wrap=True, min_width=len(name))
    table.add_column("configuration", overflow="fold", ratio=1, min_width=12)
    for r in rows:
        trained = "-" if r["train_flops"] is None else f"{r['train_flops'] / 1e15:.3g}"  # trials from before it was recorded
        table.add_row(str(r["trial"]), f"{r['val_accuracy']:.4f}", f"{r['params']:,}", trained,
                      *([f"{r['latency_ms']:.2f}" if r["latency_ms"] is not None else "-"] if latency else []),
                      Config.from_dict(r["config"]).summary())
    console().print(table)


def studies(storage: str, as_json: bool) -> None:
    """The ``studies`` command: what a storage holds, read-only."""
    from cerberus import storage as stores

    with stores.reading(storage) as store:
        rows = [_study_row(store, s) for s in sorted(store.get_all_studies(), key=lambda s: s.study_name)]
    if printed_as_json_or_none(rows, as_json, f"no studies in {storage}"):
        return
    table = Table(title=f"studies in {storage}")
    for col in ("study", "trials", "complete", "pruned", "failed", "running", "waiting", "directions", "cerberus"):
        left = col in ("study", "directions", "cerberus")
        table.add_column(col, justify="left" if left else "right", no_wrap=col != "study", overflow="fold")
    for r in rows:
        table.add_row(r["study"], *(str(r[k]) for k in ("trials", "complete", "pruned", "failed", "running", "waiting")),
                      ",".join(r["directions"]), "yes" if r["cerberus"] else "no")
    console().print(table)


def _study_row(storage: Any, summary: Any) -> dict[str, Any]:
    """One study's line of ``studies``: its trials by state, directions, and whether cerberus made it."""
    from optuna.trial import TrialState

    from cerberus.study import made_by_cerberus

    trials = storage.get_all_trials(storage.get_study_id_from_name(summary.study_name), deepcopy=False)
    states = [t.state for t in trials]
    counts = {s.name.lower(): states.count(s) for s in
              (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)}
    counts["failed"] = counts.pop("fail")
    return {"study": summary.study_name, "trials": len(trials), **counts,
            "directions": [d.name.lower() for d in summary.directions],
            "cerberus": made_by_cerberus(summary.user_attrs, trials)}
