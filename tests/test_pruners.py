"""benchmarks/pruners.py, the replay that chooses a sampler and pruner on learning curves. Here
it runs on a small table made in the test (real configurations of search/cpu.toml, curves of a
known shape), so the replay's accounting is checked; the table it is meant to read is recorded
on a CPU by benchmarks/curves.py."""

import json
import sys

import optuna
import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import pruners  # noqa: E402

from cerberus import space as spaces  # noqa: E402
from cerberus.study import DEFAULT_PRUNER, PRUNERS  # noqa: E402


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
    counts = [pruners.replay(curves, space, "random", "median", compute=10.0, seed=s)[1] for s in range(3)]
    assert max(counts) > 10  # a cut trial costs only the share it trained


def test_the_nearest_recorded_configuration_of_a_recorded_one_is_itself(table):
    space, curves = table
    for c in curves:
        assert min(curves, key=lambda other: pruners.distance(space, c["params"], other["params"])) is c
    assert pruners.distance(space, curves[0]["params"], curves[0]["params"]) == 0


# The table benchmarks/curves.py recorded on the CPU, and what benchmarks/pruners.py made of it.
RECORDED = ROOT / "benchmarks" / "curves.json"
REPLAYED = ROOT / "benchmarks" / "pruners.json"


def test_the_recorded_curves_are_unpruned_trials_of_the_cpu_space_at_its_budget():
    from cerberus.config import Config

    table = json.loads(RECORDED.read_text())
    space = spaces.load(ROOT / "search" / "cpu.toml")
    assert table["data"] == "cifar10 (JPEG copy)" and len(table["curves"]) >= 8
    for c in table["curves"]:
        config = Config.from_dict(c["config"])  # a valid configuration, checked as every trial is
        assert [config.recipe.budget] == [table["budget"]] == space.recipe["budget"].values()
        percents = [p for p, _ in c["points"]]
        assert percents == sorted(percents) and percents[-1] == 100 and c["val_accuracy"] == c["points"][-1][1]
        assert 0 <= c["test_accuracy"] <= 1 and 0.9 < c["train_flops"] / (table["budget"] * 1e15) <= 1.0
    first = Config.from_dict(table["curves"][0]["config"])  # the shipped fast configuration, enqueued first
    assert first.arch == Config.from_json((ROOT / "search" / "fast.json").read_text()).arch


def test_a_study_replayed_on_the_recorded_curves_picks_a_recorded_configuration():
    curves = json.loads(RECORDED.read_text())["curves"]
    space = spaces.load(ROOT / "search" / "cpu.toml")
    tests = {c["test_accuracy"] for c in curves}
    for pruner in ("none", DEFAULT_PRUNER):
        test, trials = pruners.replay(curves, space, "tpe", pruner, compute=12.0, seed=0)
        assert test in tests and trials >= 12


def test_the_default_pruner_is_the_one_the_replay_of_the_recorded_curves_chose():
    """The search's sampler with each pruner, on the recorded curves (benchmarks/pruners.json):
    the default's pick retrains better than with no pruner, by more than twice its standard
    error, and no other pruner's is better than the default's by more than twice theirs."""
    result = json.loads(REPLAYED.read_text())
    assert result["curves"] == len(json.loads(RECORDED.read_text())["curves"]) and result["repeats"] >= 100
    default = result["pairs"][f"tpe+{DEFAULT_PRUNER}"]
    assert default["gain"] > 2 * default["gain_stderr"]
    for name in PRUNERS:
        better, stderr = pruners.gain(result["pairs"][f"tpe+{name}"]["picks"], default["picks"])
        assert better <= 2 * stderr, name


def test_the_replays_table_fits_an_80_column_terminal():
    lines = pruners.table(json.loads(REPLAYED.read_text())).splitlines()
    assert len(lines) == 3 + 10 and max(map(len, lines)) <= 80, lines
