"""A percentile pruner that compares trials at the same share of their training.

A trial reports its validation accuracy at the percent of its steps done
(:meth:`cerberus.search.Search.fit`). With a budget in FLOPs, a wide net trains fewer epochs than
a narrow one, so their epochs end at different percents (52 and 79, say). Optuna's
``MedianPruner`` and ``PercentilePruner`` compare a report only with the reports of other trials
*at the same step*, so such trials never meet and are never cut (replayed on the curves recorded on the CPU,
``benchmarks/RESULTS.md``, "Sampler and pruner", Optuna's median pruner cut almost nothing).

Contract of :class:`SameShare`: it prunes as Optuna's ``PercentilePruner`` does (no decision
before ``n_startup_trials`` completed trials or below ``n_warmup_steps`` percent; a trial whose
reports are all NaN is cut; otherwise it is cut when its best report so far is worse than the
``percentile``-th best of the others), except that each completed trial's value at the step is
read off its reports by linear interpolation between the two that enclose the step. A completed
trial whose first report comes after the step says nothing there and is left out.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import optuna

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial


class SameShare(optuna.pruners.BasePruner):
    """Cut a trial that falls behind the ``percentile``-th best of the completed trials (50: the
    median), each read at the same percent of its training: see the module docstring."""

    def __init__(self, percentile: float = 50.0, n_startup_trials: int = 5, n_warmup_steps: int = 30) -> None:
        if not 0 <= percentile <= 100:
            raise ValueError(f"percentile must be in 0..100, not {percentile}")
        self.percentile, self.n_startup_trials, self.n_warmup_steps = percentile, n_startup_trials, n_warmup_steps

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(completed) < max(1, self.n_startup_trials):
            return False
        values = [v for v in trial.intermediate_values.values() if not math.isnan(v)]
        if not values:
            return True
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        others = [v for t in completed if (v := at_step(t.intermediate_values, step)) is not None and not math.isnan(v)]
        if not others:
            return False
        if maximize:
            return max(values) < float(np.percentile(others, 100 - self.percentile))
        return min(values) > float(np.percentile(others, self.percentile))


def at_step(reports: dict[int, float], step: int) -> float | None:
    """The value of a trial's reports at ``step``, linear between the two reports around it; None
    when the step comes before its first report or after its last."""
    steps = sorted(reports)
    if not steps or not steps[0] <= step <= steps[-1]:
        return None
    return float(np.interp(step, steps, [reports[s] for s in steps]))
