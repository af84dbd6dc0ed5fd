"""benchmarks/pruners.py, the replay that chooses a sampler and pruner on learning curves. Here
it runs on a small table made in the test (real configurations of search/cpu.toml, curves of a
known shape), so the replay's accounting is checked; the table it is meant to read is recorded
on a CPU by benchmarks/curves.py."""

import sys

import optuna
import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import pruners  # noqa: E402

from cerberus import space as spaces  # noqa: E402


@pytest.fixture(scope="module")
def table():
    space = spaces.load(ROOT / "search" / "cpu.toml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    curves = []
    for i in range(8):
        trial = study.ask()
        space.sample(trial)
        final = 0.60 + 0.03 * i  # later rows are better, and say so early: a pruner can tell
        curves.append({"params": trial.params, "points": [(p, final * p / 100) for p in (25, 50, 75, 100)],
                       "val_accuracy": final, "test_accuracy": final - 0.01})
    return space, curves


def test_without_a_pruner_the_compute_buys_that_many_trials_and_the_pick_is_a_row(table):
    space, curves = table
    test, trials = pruners.replay(curves, space, "random", "none", compute=4.0, seed=1)
    assert trials == 4 and test in {c["test_accuracy"] for c in curves}


def test_a_pruner_cuts_trials_and_the_same_compute_buys_more_of_them(table):
    space, curves = table
    counts = [pruners.replay(curves, space, "random", "median", compute=6.0, seed=s)[1] for s in range(3)]
    assert max(counts) > 6  # a cut trial costs only the share it trained


def test_the_nearest_recorded_configuration_of_a_recorded_one_is_itself(table):
    space, curves = table
    for c in curves:
        assert min(curves, key=lambda other: pruners.distance(space, c["params"], other["params"])) is c
    assert pruners.distance(space, curves[0]["params"], curves[0]["params"]) == 0
