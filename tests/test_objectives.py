"""Multi-objective searches and known configurations queued into a study: real CLI, real SQLite."""

import json

import optuna
import pytest
from optuna.trial import TrialState

from cerberus import space as spaces
from cerberus import storage as stores
from cerberus import study as studies
from cerberus.config import COURSE, Config
from cerberus.errors import UserError
from cerberus.space import replace_epochs
from conftest import ROOT, cli, refusal, run_cli

SMOKE = ("--space", "search/smoke.toml", "--data", "synthetic", "--device", "cpu")


def load(workdir, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'studies' / 'cerberus.db'}")


def dominated(a, b):
    """a is dominated by b: accuracy no higher, cost no lower, one strictly."""
    return b[0] >= a[0] and b[1] <= a[1] and (b[0] > a[0] or b[1] < a[1])


def test_accuracy_params_front_then_best_lists_it_and_other_objectives_are_refused(workdir, monkeypatch, capsys):
    r = cli("run", *SMOKE, "--trials", "4", "--seed", "1", "--study", "mo", "--objectives", "accuracy,params", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "Pareto front:" in r.stderr
    study = load(workdir, "mo")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.user_attrs["objectives"] == ["accuracy", "params"]
    done = study.get_trials(states=(TrialState.COMPLETE,))
    for t in done:  # no pruning: every epoch kept as an attribute instead of a report
        assert t.values[1] == t.user_attrs["params"] and t.intermediate_values == {}
        assert t.user_attrs["val_history"][-1] == t.values[0]

    rows = json.loads(cli("best", "--study", "mo", "--json", cwd=workdir).stdout)
    front = [(row["val_accuracy"], row["params"]) for row in rows]
    everyone = [tuple(t.values) for t in done]
    assert front and all(not dominated(f, o) for f in front for o in everyone)  # nothing beats a front member
    assert all(any(dominated(o, f) or o == f for f in front) for o in everyone)  # and the front covers the rest
    assert [row["val_accuracy"] for row in rows] == sorted((row["val_accuracy"] for row in rows), reverse=True)
    monkeypatch.chdir(workdir)  # the rest in-process: the same app, without seconds of imports
    assert run_cli("best", "--study", "mo") == 0
    assert "Pareto front of study 'mo'" in capsys.readouterr().out

    before = len(study.trials)
    for objectives, words in (("accuracy", "created with --objectives accuracy,params"),
                              ("accuracy,flops", "allowed: accuracy, accuracy,params, accuracy,latency")):
        assert words in refusal(capsys, "run", *SMOKE, "--trials", "9", "--study", "mo", "--objectives", objectives)
    assert len(load(workdir, "mo").trials) == before


def test_latency_objective_is_measured_on_the_device_per_trial(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)  # in this process: the same app, without seconds of imports
    assert run_cli("run", *SMOKE, "--trials", "2", "--study", "lat", "--objectives", "accuracy,latency") == 0
    complete = load(workdir, "lat").get_trials(states=(TrialState.COMPLETE,))
    assert complete
    for t in complete:
        assert t.values[1] == t.user_attrs["latency_ms"] > 0 and t.user_attrs["latency_batch"] == 256
    capsys.readouterr()
    assert run_cli("best", "--study", "lat", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(row["latency_ms"] > 0 for row in rows)


def test_a_best_row_enqueued_from_a_file_is_trained_first_and_only_once(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)  # in this process but for the first `b` run: the same app, fewer imports
    assert run_cli("run", *SMOKE, "--trials", "1", "--seed", "3", "--study", "a") == 0
    capsys.readouterr()
    assert run_cli("best", "--study", "a", "--json") == 0
    row = json.loads(capsys.readouterr().out)[0]
    (workdir / "known.json").write_text(json.dumps(row))
    r = cli("run", *SMOKE, "--trials", "2", "--study", "b", "--enqueue", "known.json", cwd=workdir)
    assert r.returncode == 0 and "queued 1 known configuration(s)" in r.stderr, r.stderr
    assert run_cli("run", *SMOKE, "--trials", "3", "--study", "b", "--enqueue", "known.json") == 0
    assert "queued" not in capsys.readouterr().err  # the second run does not queue it again
    trials = load(workdir, "b").trials
    assert [t.user_attrs.get("enqueued") for t in trials] == ["known.json", None, None]
    assert Config.from_dict(trials[0].user_attrs["config"]) == Config.from_dict(row["config"])


def test_bad_enqueue_input_is_one_line_exit_2_and_changes_nothing(workdir, monkeypatch, capsys):
    (workdir / "broken.json").write_text("{not json")
    (workdir / "wrong.json").write_text(json.dumps({"arch": {"blocks": [1]}, "recipe": {}, "colour": 1}))
    for args, words in ((["--enqueue-seed"], "--enqueue-seed: search/smoke.toml cannot express this configuration: stages = 3, the space allows 1, 2"),
                        (["--enqueue", "missing.json"], "--enqueue missing.json does not exist"),
                        (["--enqueue", "broken.json"], "--enqueue broken.json is not JSON"),
                        (["--enqueue", "wrong.json"], "unknown key 'colour'")):
        monkeypatch.chdir(workdir)
        assert words in refusal(capsys, "run", *SMOKE, "--trials", "1", *args)
    assert not (workdir / "studies" / "cerberus.db").exists()  # refused before any storage


def test_the_course_config_enqueued_into_the_default_space_trains_at_its_epochs(tmp_path):
    space = spaces.load(ROOT / "search" / "default.toml")
    study = studies.create_study("s", stores.open_storage(f"sqlite:///{tmp_path / 's.db'}", create=True), seed=0)
    assert studies.enqueue(study, space, COURSE, "seed") and not studies.enqueue(study, space, COURSE, "seed")
    trial = study.ask()
    sampled = space.sample(trial)
    assert trial.user_attrs["enqueued"] == "seed"
    assert sampled == replace_epochs(COURSE, sampled.recipe.epochs) and sampled.recipe.epochs < COURSE.recipe.epochs


def test_params_for_refuses_what_a_space_cannot_express():
    space = spaces.load(ROOT / "search" / "default.toml")
    import dataclasses

    far = dataclasses.replace(COURSE, recipe=dataclasses.replace(COURSE.recipe, lr=50.0))
    with pytest.raises(UserError, match="lr = 50.0, the space allows"):
        space.params_for(far)
    momentum_unused = dataclasses.replace(COURSE, recipe=dataclasses.replace(COURSE.recipe, optimizer="adamw", momentum=0.1))
    assert space.params_for(momentum_unused)["optimizer"] == "adamw"  # a key that does not act is no obstacle
