"""cerberus.pruning.SameShare: the median (or percentile) rule read at the same share of each
trial's training, the completed trials' curves interpolated between their reports."""

import math

import optuna
import pytest

from cerberus.pruning import SameShare, at_step
from cerberus.study import make_pruner

COMPLETE = optuna.trial.TrialState.COMPLETE


def study_with(curves: list[dict[int, float]], pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """A study whose completed trials reported these curves (percent: accuracy)."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for curve in curves:
        study.add_trial(optuna.trial.create_trial(state=COMPLETE, value=curve[max(curve)], intermediate_values=curve,
                                                  distributions={}, params={}))
    return study


def decide(study: optuna.Study, reports: dict[int, float]) -> bool:
    trial = study.ask()
    for step, value in reports.items():
        trial.report(value, step)
    return trial.should_prune()


# Epochs that end at other shares than the running trial's: 52% never meets 50% or 79%.
CURVES = [{50: 0.60, 100: 0.80}, {25: 0.40, 75: 0.70, 100: 0.85}, {79: 0.75, 100: 0.82}, {33: 0.5, 66: 0.6, 100: 0.7},
          {40: 0.62, 80: 0.72, 100: 0.78}]


def test_a_curve_is_read_between_its_reports_and_not_before_its_first():
    assert at_step(CURVES[0], 50) == 0.60
    assert at_step(CURVES[0], 75) == pytest.approx(0.70)
    assert at_step(CURVES[1], 52) == pytest.approx(0.40 + 0.30 * 27 / 50)
    assert at_step(CURVES[2], 52) is None and at_step({10: 0.1}, 20) is None


def test_the_median_at_the_same_share_cuts_a_trial_that_optunas_median_never_compares():
    # At 52%: trial 0 reads 0.608, trial 1 0.562, trial 3 0.5 + 0.1 * 19 / 33 = 0.5576, trial 4
    # 0.62 + 0.1 * 12 / 40 = 0.65; trial 2 has not reported yet. Their median is 0.585.
    assert decide(study_with(CURVES, SameShare(50.0)), {52: 0.58}) is True
    assert decide(study_with(CURVES, SameShare(50.0)), {52: 0.59}) is False
    assert decide(study_with(CURVES, optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=30)), {52: 0.3}) is False
    assert decide(study_with(CURVES, make_pruner("median")), {52: 0.58}) is True  # what `run` uses


def test_the_percentile_keeps_the_top_share_as_optunas_does():
    # 25: a trial must reach the 75th percentile of the others (0.608, 0.562, 0.5576, 0.65): 0.6185.
    assert decide(study_with(CURVES, SameShare(25.0)), {52: 0.61}) is True
    assert decide(study_with(CURVES, SameShare(25.0)), {52: 0.62}) is False


def test_no_decision_before_the_start_up_trials_or_the_warm_up_and_a_nan_trial_is_cut():
    assert decide(study_with(CURVES[:4], SameShare(50.0)), {52: 0.0}) is False  # 4 completed of 5
    assert decide(study_with(CURVES, SameShare(50.0)), {20: 0.0}) is False  # under 30%
    assert decide(study_with(CURVES, SameShare(50.0)), {52: math.nan}) is True
    assert decide(study_with(CURVES, SameShare(50.0)), {40: 0.3, 52: 0.99}) is False  # its best so far counts


def test_a_minimised_value_is_cut_when_above():
    study = optuna.create_study(direction="minimize", pruner=SameShare(50.0, n_startup_trials=1))
    study.add_trial(optuna.trial.create_trial(state=COMPLETE, value=1.0, intermediate_values={0: 3.0, 100: 1.0},
                                              distributions={}, params={}))
    assert decide(study, {50: 2.5}) is True and decide(study, {50: 1.5}) is False
