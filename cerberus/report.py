"""One self-contained HTML page that shows a study: ``cerberus-search report``.

Contract of :func:`render`:

* The page opens offline: plotly.js is embedded once, in ``<head>``; every figure is a
  ``<div class="plot">`` drawn by it. Nothing is fetched from the network.
* It never fails for lack of trials. A plot that needs something the study does not have yet
  (completed trials, two of them, a parameter that varied) is replaced by a ``<p class="note">``
  that says what is missing; a study whose trials were all pruned says so at the top.
* It only reads the study.

Plots come from ``optuna.visualization`` where Optuna draws what is wanted fast enough
(history, parallel coordinates, learning curves). Drawn here: accuracy against parameter
count (it needs cerberus' user attrs: ``params``, the budget, the architecture), the timeline
(one lane per worker, where Optuna's has one per trial) and the importances (Optuna's ranking,
without its plot's hover text, which costs seconds per parameter on thousands of trials).
plotly is imported inside functions: a machine that only runs searches need not have it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import re
import warnings
from collections import Counter
from pathlib import Path
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from cerberus import knobs
from cerberus.config import COURSE, Arch, Augment, Config
from cerberus.train import stored_result
from cerberus.trials import Reason, best_trial, end_reason, is_trained, last_accuracy

if TYPE_CHECKING:
    import plotly.graph_objects as go

DEFAULT_BUDGET = 5_000_000  # run's --max-params default
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


@dataclass
class Counts:
    """How the study's trials ended: ``pruned`` by ``reason`` (``other`` when unset), ``failed``
    by :func:`cerberus.study.end_reason` (``worker_died`` when a killed worker left no reason)."""

    complete: int = 0
    pruned: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    running: int = 0

    @property
    def total(self) -> int:
        return self.complete + sum(self.pruned.values()) + sum(self.failed.values()) + self.running


def count(trials: list[FrozenTrial]) -> Counts:
    c = Counts()
    for t in trials:
        if t.state == TrialState.COMPLETE:
            c.complete += 1
        elif t.state == TrialState.PRUNED:
            c.pruned[t.user_attrs.get("reason") or "other"] += 1  # a retry clears it to None
        elif t.state == TrialState.FAIL:
            c.failed[end_reason(t)] += 1
        else:  # RUNNING or WAITING: a live study
            c.running += 1
    return c


def render(study: optuna.Study, storage: str = "") -> str:
    """The whole page for ``study`` as one HTML string (about 5 MB: mostly plotly.js)."""
    from plotly.offline import get_plotlyjs

    trials = study.get_trials(deepcopy=False)
    counts = count(trials)
    top = f'<div class="top">{_section("Trials", _counts_table(counts))}{_section("Best configuration", _best_table(study))}</div>'
    sections = [top, *(_plot_section(title, slug, draw, study, trials, caption) for title, slug, draw, caption in (
        ("Optimization history", "history", _history, "Validation accuracy of each completed trial, and the best so far."),
        ("Validation accuracy vs parameters", "pareto", _accuracy_vs_params,
         "Trained trials; the Pareto front is the most accurate completed trial at or under each size."),
        ("Hyperparameter importances", "importances", _importances,
         "PED-ANOVA importances (Optuna's default) over the completed trials."),
        ("Parallel coordinates", "parallel", _parallel,
         "Completed trials: each line is one trial's sampled parameters and its accuracy."),
        ("Learning curves", "curves", _curves,
         "Validation accuracy per epoch (as reported to the pruner); pruned trials dotted and grey."),
        ("Timeline", "timeline", _timeline, "When each trial ran, coloured by how it ended."),
    ))]
    title = f"cerberus study {study.study_name}"
    generated = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    where = f" in <code>{html.escape(storage)}</code>" if storage else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<h1>{html.escape(title)}</h1>
<p class="meta">{counts.total} trial(s){where}; report made {generated}.</p>
<p class="meta">{html.escape(_definition(study))}</p>
{_banner(counts)}
{''.join(sections)}
</body></html>
"""


def _definition(study: optuna.Study) -> str:
    from cerberus.study import stored_definition

    definition = stored_definition(study)
    return f"Searches {definition.describe()}." if definition else "No stored definition (made before cerberus stored one)."


def _banner(c: Counts) -> str:
    if c.total == 0:
        return '<p class="banner">This study has no trials yet.</p>'
    if c.complete == 0:
        return (f'<p class="banner">No trial has completed: all {c.total} trial(s) ended as '
                f'{_describe(c)}. Plots that need completed trials are left out.</p>')
    return ""


def _describe(c: Counts) -> str:
    labels = {Reason.OVER_BUDGET: "over budget", Reason.OVER_MEMORY: "over memory", Reason.PRUNED: "pruned by the pruner", Reason.DIVERGED: "diverged", "other": "pruned (no reason)"}
    parts = [f"{n} {labels.get(r, r)}" for r, n in sorted(c.pruned.items())]
    parts += [f"{sum(c.failed.values())} failed"] * bool(c.failed) + [f"{c.running} running"] * bool(c.running)
    return ", ".join(parts)


def _counts_table(c: Counts) -> str:
    rows = [("completed", c.complete), ("pruned: over budget (never trained)", c.pruned[Reason.OVER_BUDGET]),
            ("pruned: over memory (never trained)", c.pruned[Reason.OVER_MEMORY]),
            ("pruned: by the pruner", c.pruned[Reason.PRUNED]), ("pruned: diverged", c.pruned[Reason.DIVERGED])]
    rows += [(f"pruned: {r}", n) for r, n in sorted(c.pruned.items()) if r not in (Reason.OVER_BUDGET, Reason.OVER_MEMORY, Reason.PRUNED, Reason.DIVERGED)]
    rows.append(("failed", sum(c.failed.values())))
    rows += [(f"failed: {r.replace('_', ' ')}", n) for r, n in sorted(c.failed.items())]
    rows += [("running or waiting", c.running), ("total", c.total)]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:,}</td></tr>" for k, v in rows)
    return f'<table class="counts">{body}</table>'


def _best_table(study: optuna.Study) -> str:
    t = best_trial(study)
    if t is None:
        return '<p class="note">No completed trial yet.</p>'
    a = t.user_attrs
    rows: list[tuple[str, Any]] = [
        ("trial", t.number), ("validation accuracy", f"{t.values[0]:.4f}"), ("parameters", f"{a.get('params', 0):,}"),
        ("MFLOPs per image", f"{a.get('flops', 0) / 1e6:,.1f}"), ("epochs", a.get("epochs")),
        ("training PFLOP", "" if a.get("train_flops") is None else f"{a['train_flops'] / 1e15:.4g}"),
        ("train seconds", _num(a.get("train_seconds"))), ("images/s", _num(a.get("images_per_s"))),
        ("device", a.get("device")), ("worker", a.get("worker")),
    ]
    final = stored_result(study, t.number)
    if final is not None:
        std = final["test_accuracy_std"]
        rows.append(("test accuracy (train)", f"{final['test_accuracy']:.4f}" + (f" ± {std:.4f}" if std is not None else "")
                     + f", {final['test_seeds']} seed(s), {final['test_epochs']} epoch{'' if final['test_epochs'] == 1 else 's'}"))
    config = Config.from_dict(a["config"])
    # One row per part, as `best` shows it (what acts and differs from its default); export has every value.
    rows += [("architecture", " \u00b7 ".join(knobs.summary(config.arch))),
             ("recipe", " \u00b7 ".join(knobs.summary(dataclasses.replace(config.recipe, augment=Augment())))),
             ("augment", " \u00b7 ".join(knobs.summary(config.recipe.augment)) or "none")]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f'<table class="best">{body}</table>'


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:,.1f}"


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>\n"


PlotFn = Callable[[optuna.Study, list[FrozenTrial]], "go.Figure | str"]


def _plot_section(title: str, slug: str, draw: PlotFn, study: optuna.Study, trials: list[FrozenTrial],
                  caption: str) -> str:
    """A figure, or the note ``draw`` returned instead (a str says why there is no plot)."""
    fig = draw(study, trials)
    if isinstance(fig, str):
        return _section(title, f'<p class="note">{html.escape(fig)}</p>')
    fig.update_layout(title=None, margin={"t": 30, "b": 50, "l": 60, "r": 20}, template="plotly_white")
    div = fig.to_html(full_html=False, include_plotlyjs=False, config=PLOT_CONFIG,
                      default_height="460px", div_id=f"plot-{slug}")
    return _section(title, f'<p class="caption">{html.escape(caption)}</p><div class="plot">{div}</div>')


def _completed(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE]


def _history(study: optuna.Study, trials: list[FrozenTrial]) -> go.Figure | str:
    if not _completed(trials):
        return "No completed trial yet."
    from optuna.visualization import plot_optimization_history

    fig = plot_optimization_history(study, target=_target(study), target_name="validation accuracy")
    return fig.update_layout(yaxis_title="validation accuracy", xaxis_title="trial")


def _importances(study: optuna.Study, trials: list[FrozenTrial]) -> go.Figure | str:
    done = _completed(trials)
    if len(done) < 2:
        return f"Needs at least 2 completed trials; the study has {len(done)}."
    # Importance is defined over parameters every completed trial sampled and that took more than
    # one value; without one, Optuna would draw an empty chart.
    common = set.intersection(*(set(t.params) for t in done))
    varied = sorted(p for p in common if len({repr(t.params[p]) for t in done}) > 1)
    if not varied:
        return "No parameter sampled by every completed trial took more than one value yet."
    import plotly.graph_objects as go

    # The bars are drawn here: plot_param_importances spends seconds per parameter on its hover
    # text for a study of thousands of trials (it copies every trial for each), the ranking itself
    # takes a tenth of a second.
    # PED-ANOVA ranks parameters by how they reach *low* targets: accuracy goes in negated (and
    # Optuna's reminder of that, printed whenever a target is given, is not for the user).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
        importances = optuna.importance.get_param_importances(study, params=varied, target=_target(study, -1.0))
    ranked = sorted(importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in ranked], y=[k for k, _ in ranked], orientation="h",
                           text=[f"{v:.2f}" if v >= 0.01 else "<0.01" for _, v in ranked], textposition="outside",
                           hovertemplate="%{y}: %{x:.3f}<extra></extra>", marker={"color": "#636efa"}))
    return fig.update_layout(xaxis={"title": "importance (sums to 1)"}, yaxis={"title": "parameter"},
                             height=max(300, 60 + 28 * len(ranked)))


def _parallel(study: optuna.Study, trials: list[FrozenTrial]) -> go.Figure | str:
    done = _completed(trials)
    if not done or not any(t.params for t in done):
        return "No completed trial with sampled parameters yet."
    from optuna.visualization import plot_parallel_coordinate

    return plot_parallel_coordinate(study, target=_target(study), target_name="validation accuracy")


def _target(study: optuna.Study, sign: float = 1.0) -> Callable[[FrozenTrial], float] | None:
    """What Optuna's plots read: the objective (None) of a one-objective study; of a two-objective
    one, which they refuse without a target, the first, validation accuracy, times ``sign``."""
    return None if len(study.directions) == 1 else (lambda t: sign * t.values[0])


def _curves(study: optuna.Study, trials: list[FrozenTrial]) -> go.Figure | str:
    if any("val_history" in t.user_attrs for t in trials):
        return _histories(trials)
    states = {t.number: t.state for t in trials if t.intermediate_values}
    if not states:
        return "No trial has reported a validation accuracy yet."
    from optuna.visualization import plot_intermediate_values

    fig = plot_intermediate_values(study)
    for trace in fig.data:  # Optuna names them "Trial<N>" and styles every state alike
        number = int(re.sub(r"\D", "", trace.name))
        if states.get(number) == TrialState.PRUNED:
            trace.update(line={"dash": "dot", "color": "#999999"}, marker={"color": "#999999"},
                         opacity=0.7, name=f"Trial{number} (pruned)")
    # Trials report at the percent of their steps done (cerberus.search), so trials of other lengths line up.
    return fig.update_layout(xaxis_title="percent of the trial's training", yaxis_title="validation accuracy")


def _histories(trials: list[FrozenTrial]) -> go.Figure:
    """The curves of a two-objective study, which reports nothing to Optuna (it does not prune):
    each trial keeps its per-epoch accuracy in the user attr ``val_history``."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for t in trials:
        history = t.user_attrs.get("val_history")
        if history:
            fig.add_trace(go.Scatter(x=list(range(1, len(history) + 1)), y=history, mode="lines+markers",
                                     name=f"Trial{t.number}"))
    return fig.update_layout(xaxis_title="epoch", yaxis_title="validation accuracy")


def _timeline(study: optuna.Study, trials: list[FrozenTrial]) -> go.Figure | str:
    """One lane per worker (user attr ``worker``), one bar per trial, coloured by how it ended.
    Optuna's ``plot_timeline`` has a lane per trial, which says nothing about the workers."""
    started = [t for t in trials if t.datetime_start]
    if not started:
        return "No trial has started yet."
    import plotly.graph_objects as go

    now = dt.datetime.now()
    groups: dict[str, list[FrozenTrial]] = {}
    for t in started:
        groups.setdefault(_ending(t), []).append(t)
    fig = go.Figure()
    for ending, ts in sorted(groups.items(), key=lambda kv: list(ENDING_COLORS).index(kv[0])):
        ends = [t.datetime_complete or now for t in ts]
        fig.add_trace(go.Bar(
            orientation="h", name=ending, marker={"color": ENDING_COLORS[ending]},
            base=[t.datetime_start.isoformat() for t in ts],
            # A date axis measures bar lengths in milliseconds; 1 s minimum keeps instant rejections visible.
            x=[max(1000.0, (e - t.datetime_start).total_seconds() * 1000) for t, e in zip(ts, ends)],
            y=[str(t.user_attrs.get("worker", "not recorded")) for t in ts],
            text=[f"trial {t.number}: {ending}, {(e - t.datetime_start).total_seconds():,.0f} s" for t, e in zip(ts, ends)],
            hoverinfo="text", textposition="none"))
    return fig.update_layout(barmode="overlay", xaxis={"type": "date", "title": "time"},
                             yaxis={"title": "worker", "type": "category", "categoryorder": "category descending"},
                             legend={"orientation": "h", "y": -0.2})


# How a trial ended, as the timeline's legend names it, with its colour.
ENDING_COLORS = {"complete": "#1f77b4", "pruned": "#9e9e9e", "over budget": "#e6b800", "over memory": "#ff7f0e", "diverged": "#9467bd",
                 "failed": "#d62728", "running": "#2ca02c"}


def _ending(t: FrozenTrial) -> str:
    if t.state == TrialState.COMPLETE:
        return "complete"
    if t.state == TrialState.PRUNED:
        return {Reason.OVER_BUDGET: "over budget", Reason.OVER_MEMORY: "over memory", Reason.DIVERGED: "diverged"}.get(t.user_attrs.get("reason"), "pruned")
    return "failed" if t.state == TrialState.FAIL else "running"


def _accuracy_vs_params(study: optuna.Study, trials: list[FrozenTrial]) -> go.Figure | str:
    import plotly.graph_objects as go

    trained = [t for t in trials if is_trained(t) and "params" in t.user_attrs and _accuracy(t) is not None]
    if not trained:
        return "No trained trial yet."
    done = [t for t in trained if t.state == TrialState.COMPLETE]
    pruned = [t for t in trained if t.state != TrialState.COMPLETE]
    fig = go.Figure()

    def points(ts: list[FrozenTrial], name: str, marker: dict) -> None:
        if ts:
            fig.add_trace(go.Scatter(x=[t.user_attrs["params"] for t in ts], y=[_accuracy(t) for t in ts],
                                     mode="markers", name=name, marker=marker,
                                     text=[_hover(t) for t in ts], hoverinfo="text"))

    points(done, "completed", {"color": "#1f77b4", "size": 8})
    points(pruned, "pruned / diverged (last epoch)", {"color": "#aaaaaa", "size": 7, "symbol": "x"})
    front = _pareto(done)
    if front:
        fig.add_trace(go.Scatter(x=[t.user_attrs["params"] for t in front], y=[t.values[0] for t in front],
                                 mode="lines+markers", line_shape="hv", name="Pareto front",
                                 line={"color": "#d62728"}, marker={"color": "#d62728", "size": 9},
                                 text=[_hover(t) for t in front], hoverinfo="text"))
    ys = [_accuracy(t) for t in trained]
    lo, hi = min(0.0, *ys), max(1.0, *ys)
    budgets = _budgets(trials)
    for budget, label in budgets.items():  # a vertical line as a trace: unambiguous on a log axis
        fig.add_trace(go.Scatter(x=[budget, budget], y=[lo, hi], mode="lines", name=label,
                                 line={"color": "black", "dash": "dash"}, hoverinfo="name"))
    ref = [t for t in trained if _arch(t) == COURSE.arch]
    if ref:
        points(ref, "course ResNet-24 (4,918,602)", {"color": "#ff7f0e", "size": 16, "symbol": "star"})
    sizes = [t.user_attrs["params"] for t in trained] + list(budgets)
    log = max(sizes) / max(1, min(sizes)) > 20
    return fig.update_layout(xaxis={"title": "parameters", "type": "log" if log else "linear"},
                             yaxis={"title": "validation accuracy"}, legend={"orientation": "h", "y": -0.2})


def _accuracy(t: FrozenTrial) -> float | None:
    """The final accuracy of a completed trial, the last recorded epoch of a pruned one."""
    if t.state == TrialState.COMPLETE:
        return t.values[0]
    return last_accuracy(t)


def _pareto(done: list[FrozenTrial]) -> list[FrozenTrial]:
    """Completed trials that no other trial beats with as few parameters or fewer."""
    front: list[FrozenTrial] = []
    for t in sorted(done, key=lambda t: (t.user_attrs["params"], -t.values[0])):
        if not front or t.values[0] > front[-1].values[0]:
            front.append(t)
    return front


def _budgets(trials: list[FrozenTrial]) -> dict[int, str]:
    """The --max-params of the runs that made the study, each with its legend: every trial
    stores ``params - budget`` as its constraint, so the budget is recovered without a separate
    record; a study without one shows the default budget, saying so."""
    found = {int(t.user_attrs["params"] - t.constraints["params"])
             for t in trials if "params" in t.user_attrs and "params" in t.constraints}
    if not found:
        return {DEFAULT_BUDGET: f"budget {DEFAULT_BUDGET:,} (the default; not recorded)"}
    return {b: f"budget {b:,}" for b in sorted(found)}


def _arch(t: FrozenTrial) -> Arch | None:
    # Straight from the stored dict: Config.from_dict's type checks cost a second per 2,000 trials.
    try:
        a = t.user_attrs["config"]["arch"]
        return Arch(tuple(a["blocks"]), tuple(a["widths"]), a["conv_kernel"], a["skip_kernel"], a["pool"])
    except (KeyError, TypeError, ValueError):
        return None


def _hover(t: FrozenTrial) -> str:
    arch = _arch(t)
    shape = f"<br>blocks {','.join(map(str, arch.blocks))} widths {','.join(map(str, arch.widths))}" if arch else ""
    state = "" if t.state == TrialState.COMPLETE else f" ({t.user_attrs.get('reason', 'pruned')})"
    return f"trial {t.number}{state}<br>{t.user_attrs['params']:,} params<br>val acc {_accuracy(t):.4f}{shape}"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin: 1.5em 0 0.3em; }
.meta, .caption { color: #666; margin: 0.2em 0; } .note { color: #8a6d00; font-style: italic; }
.banner { background: #fff4d6; border: 1px solid #e0c060; padding: 0.6em 1em; }
table { border-collapse: collapse; } th, td { padding: 2px 12px 2px 0; text-align: left; font-size: 0.92em; }
th { font-weight: 600; color: #444; white-space: nowrap; vertical-align: top; }
td { font-variant-numeric: tabular-nums; } table.best td { max-width: 38em; }
.top { display: flex; flex-wrap: wrap; column-gap: 4em; }
.plot { border: 1px solid #eee; }
"""


def command(study: str, storage: str, out: Path | None) -> None:
    """The ``report`` command: the page written atomically, after the study was read (read-only)."""
    from cerberus import outfile
    from cerberus import storage as stores
    from cerberus import study as studies

    with stores.read_study(study, storage) as optuna_study:
        studies.check_ours(optuna_study, "report")
        path = out or stores.artifact_dir(storage, study) / "report.html"
        outfile.check_writable(path)
        page = render(optuna_study, storage)
        count = len(optuna_study.get_trials(deepcopy=False))
    outfile.write_atomic(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    print(f"report of study {study!r} ({count} trials) written to {path}")
