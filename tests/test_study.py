"""cerberus.study: a study's stored definition, its objectives, budget checks and enqueued configurations."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, cli, refusal, run_cli
from optuna.trial import TrialState

from cerberus import space as spaces
from cerberus import storage as stores
from cerberus import study as studies
from cerberus.config import COURSE, Config, Recipe
from cerberus.errors import UserError
from cerberus.space import set_length

SMOKE = ("--space", "search/smoke.toml", "--data", "synthetic", "--device", "cpu")


def load(folder, name="cerberus"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'studies' / 'cerberus.db'}")


@pytest.fixture(scope="module")
def made_once(tmp_path_factory):
    """A smoke study of one trained trial at --epochs 1 and a 200,000 budget, made once."""
    folder = tmp_path_factory.mktemp("made")
    shutil.copytree(ROOT / "search", folder / "search")
    r = cli("run", *SMOKE, "--trials", "1", "--epochs", "1", "--max-params", "200000", cwd=folder)
    assert r.returncode == 0, r.stderr
    return folder


@pytest.fixture
def made(made_once, tmp_path):
    """A folder of its own holding that study (a copy: a test may change it)."""
    shutil.copytree(made_once, tmp_path / "made")
    return tmp_path / "made"


def dominated(a, b):
    """a is dominated by b: accuracy no higher, cost no lower, one strictly."""
    return b[0] >= a[0] and b[1] <= a[1] and (b[0] > a[0] or b[1] < a[1])


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its sha256: what 'nothing changed' compares."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_space(tmp_path, widths="[8, 64]"):
    path = tmp_path / "space.toml"
    path.write_text(f"[arch]\nstages = 1\nblocks = 1\nwidths = {widths}\n[recipe]\nepochs = 1\nbatch_size = 256\nlr = 0.05\n")
    return spaces.load(path)


@pytest.mark.slow
def test_a_new_study_stores_what_defines_it(made):
    d = load(made).user_attrs["definition"]
    text = (made / "search" / "smoke.toml").read_text()
    assert d["space"] == "search/smoke.toml" and d["space_text"] == text
    assert d["space_digest"] == hashlib.sha256(text.encode()).hexdigest()
    assert (d["epochs"], d["max_params"], d["data"], d["objectives"]) == (1, 200_000, "synthetic", ["accuracy"])


@pytest.mark.slow
def test_storage_and_study_alone_join_from_a_folder_without_the_space_file(made, tmp_path):
    """The failure this fixes: a second run without --space used the default space and failed
    five trials in a row. From a folder with no search/ at all, it trains the stored space."""
    elsewhere = tmp_path / "other-machine"
    elsewhere.mkdir()
    url = f"sqlite:///{made / 'studies' / 'cerberus.db'}"
    r = cli("run", "--storage", url, "--study", "cerberus", "--trials", "2", "--device", "cpu", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert "space search/smoke.toml" in r.stderr and "budget 200,000" in r.stderr  # what it joined, said once
    trials = load(made).trials
    assert [t.state for t in trials if t.state == TrialState.FAIL] == []
    trained = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(trained) == 2 and all(t.user_attrs["epochs"] == 1 for t in trained)  # the stored --epochs
    assert all(t.user_attrs["params"] <= 200_000 for t in trained)


@pytest.mark.slow
@pytest.mark.parametrize("option, value, named", [
    ("--space", "search/seed.toml", "--space search/smoke.toml (sha256"),
    ("--space", "default", "--space search/smoke.toml"),
    ("--epochs", "2", "--epochs 1, not 2"),
    ("--budget", "0.01", "without --budget (1 epoch), not with --budget 0.01"),
    ("--max-params", "5000000", "--max-params 200,000, not 5,000,000"),
    ("--data", "cifar10", "--data synthetic, not cifar10"),
    ("--objectives", "accuracy,params", "--objectives accuracy, not accuracy,params"),
])
def test_a_run_that_names_another_definition_is_refused_and_writes_nothing(made, monkeypatch, capsys, option, value, named):
    monkeypatch.chdir(made)
    db = made / "studies" / "cerberus.db"
    before = db.read_bytes()
    args = {"--space": "search/smoke.toml", "--epochs": "1", "--max-params": "200000", "--data": "synthetic"}
    args[option] = value
    if option == "--budget":  # a length instead of the study's --epochs, not beside it
        del args["--epochs"]
    flat = [x for kv in args.items() for x in kv]
    if option == "--objectives":
        flat += [option, value]
    err = refusal(capsys, "run", *flat, "--device", "cpu", "--trials", "3")
    assert named in err and "leave" in err and "another --study" in err
    assert db.read_bytes() == before


@pytest.mark.slow
def test_a_copy_of_the_space_under_another_name_is_the_same_space(made):
    shutil.copy(made / "search" / "smoke.toml", made / "mine.toml")
    r = cli("run", "--space", "mine.toml", "--epochs", "1", "--max-params", "200000", "--data", "synthetic",
            "--device", "cpu", "--trials", "2", cwd=made)
    assert r.returncode == 0, r.stderr
    assert load(made).user_attrs["definition"]["space"] == "search/smoke.toml"  # stored once, as first named


@pytest.mark.slow
def test_a_study_from_before_definitions_gets_one_from_its_first_run(workdir):
    url = f"sqlite:///{workdir / 'studies' / 'cerberus.db'}"
    (workdir / "studies").mkdir()
    old = optuna.create_study(study_name="cerberus", storage=url, direction="maximize")
    old.set_user_attr("objectives", ["accuracy"])  # what runs stored before this change
    r = cli("run", *SMOKE, "--trials", "1", cwd=workdir)
    assert r.returncode == 0, r.stderr
    d = load(workdir).user_attrs["definition"]
    assert d["space"] == "search/smoke.toml" and d["data"] == "synthetic" and d["epochs"] is None


@pytest.mark.slow
def test_best_report_and_export_show_the_definition(made, monkeypatch, capsys):
    monkeypatch.chdir(made)
    assert run_cli("best") == 0
    assert "space search/smoke.toml (sha256" in capsys.readouterr().out
    assert run_cli("report", "--out", "r.html") == 0
    html = (made / "r.html").read_text()
    assert "search/smoke.toml" in html and "200,000" in html
    assert run_cli("export", "--out", "t.json") == 0
    rows = json.loads((made / "t.json").read_text())
    assert rows[0]["study_space"] == "search/smoke.toml" and rows[0]["study_max_params"] == 200_000


@pytest.mark.slow
def test_accuracy_params_front_then_best_lists_it_and_other_objectives_are_refused(workdir, monkeypatch, capsys):
    r = cli("run", *SMOKE, "--trials", "3", "--seed", "1", "--study", "mo", "--objectives", "accuracy,params", cwd=workdir)
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
                              ("accuracy,speed", "allowed: accuracy, accuracy,params, accuracy,latency, accuracy,flops")):
        assert words in refusal(capsys, "run", *SMOKE, "--trials", "9", "--study", "mo", "--objectives", objectives)
    assert len(load(workdir, "mo").trials) == before


def test_the_course_config_enqueued_into_the_default_space_trains_at_its_length(tmp_path):
    space = spaces.load(ROOT / "search" / "default.toml")
    study = studies.create_study("s", stores.open_storage(f"sqlite:///{tmp_path / 's.db'}", create=True), seed=0)
    assert studies.enqueue(study, space, COURSE, "seed") and not studies.enqueue(study, space, COURSE, "seed")
    trial = study.ask()
    sampled = space.sample(trial)
    assert trial.user_attrs["enqueued"] == "seed"
    assert set_length(sampled, COURSE.recipe.epochs) == COURSE and sampled.recipe.budget == 1.4  # the space's 1.4 PFLOP


@pytest.mark.parametrize("command", ["best", "report", "run"])
def test_a_study_cerberus_did_not_make_is_refused_and_unchanged(plain_optuna, monkeypatch, capsys, command):
    folder, url = plain_optuna
    monkeypatch.chdir(folder)
    before = snapshot(folder)
    extra = ("--space", "smoke", "--data", "synthetic", "--device", "cpu", "--trials", "1") if command == "run" else ()
    err = refusal(capsys, command, "--storage", url, "--study", "plain", *extra)
    assert "study 'plain' was not made by cerberus (3 trial(s) without a cerberus configuration, direction minimize)" in err
    assert snapshot(folder) == before


def test_run_refuses_an_empty_study_whose_direction_is_not_its_objectives(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    optuna.create_study(study_name="empty", storage="sqlite:///e.db", direction="minimize")
    before = snapshot(tmp_path)
    err = refusal(capsys, "run", "--storage", "sqlite:///e.db", "--study", "empty", "--space", "smoke", "--data", "synthetic")
    assert "has the directions minimize, not those of --objectives accuracy" in err
    assert snapshot(tmp_path) == before


def test_a_space_whose_every_trial_would_be_over_memory_is_refused_at_once(tmp_path, monkeypatch, capsys):
    """The issue's space of 1,000 blocks (4.67M parameters, inside the budget; over 30 GiB a trial
    even in bf16): `run` refuses it before any trial, instead of rejecting trial after trial."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "deep.toml").write_text("[arch]\nstages = 1\nblocks = 1000\nwidths = 16\n")
    monkeypatch.setenv("CERBERUS_MEMORY_LIMIT", "16G")  # the same verdict on any machine up to that size
    err = refusal(capsys, "run", "--space", "deep.toml", "--data", "synthetic", "--device", "cpu")
    assert "no trial of deep.toml fits the memory of cpu: the smallest architecture at batch 128 needs about" in err
    assert os.listdir(tmp_path) == ["deep.toml"]
    monkeypatch.setenv("CERBERUS_MEMORY_LIMIT", "1M")
    assert "smoke.toml fits the memory of cpu" in refusal(capsys, "run", "--space", "smoke", "--data", "synthetic", "--device", "cpu")


def test_enqueue_compares_configurations_not_file_names(tmp_path):
    study = optuna.create_study(direction="maximize")
    space = spaces.load(ROOT / "search" / "default.toml")
    edited = Config(COURSE.arch, Recipe(**{**COURSE.recipe.__dict__, "lr": 0.05}))
    assert studies.enqueue(study, space, COURSE, "mine.json")
    assert studies.enqueue(study, space, edited, "mine.json")  # the same name, edited: queued
    assert not studies.enqueue(study, space, COURSE, "other/mine.json")  # the same content elsewhere: not again
    assert not studies.enqueue(study, space, edited, "copy.json")
    assert len(study.trials) == 2


def test_a_budget_nothing_meets_is_refused_up_front(tmp_path):
    space = write_space(tmp_path)
    with pytest.raises(UserError, match="no architecture in .* fits --max-params 1,000: the smallest has 1,506"):
        studies.check_budget(space, 1_000)
    studies.check_budget(space, 1_506)


def test_a_budget_is_part_of_the_definition_and_excludes_epochs(tmp_path, capsys):
    from cerberus import study as studies

    stored = studies.Definition("s.toml", "[arch]", budget=0.05)
    assert "0.05 PFLOP a trial" in stored.describe()
    assert studies.settle("s", stored, studies.Request(budget=0.05), None, "") == stored
    with pytest.raises(UserError, match="created with --budget 0.05, not 0.1"):
        studies.settle("s", stored, studies.Request(budget=0.1), None, "")
    assert studies.Definition.from_dict({k: v for k, v in stored.to_dict().items() if k != "budget"}).budget is None  # older ones
    err = refusal(capsys, "run", "--space", "smoke", "--data", "synthetic", "--epochs", "2", "--budget", "0.1",
                  "--storage", f"sqlite:///{tmp_path / 'x.db'}")
    assert "give --epochs or --budget, not both" in err and not (tmp_path / "x.db").exists()
    assert "--pruner 'asha' is not a pruner; allowed: median, percentile, halving, hyperband, none" in refusal(
        capsys, "run", "--space", "smoke", "--data", "synthetic", "--pruner", "asha", "--storage", f"sqlite:///{tmp_path / 'x.db'}")


@pytest.mark.slow
def test_two_runs_that_create_one_study_at_once_with_different_spaces_have_one_winner(workdir):
    """Both used to proceed, and the study ended with trials of two definitions."""
    other = (workdir / "search" / "smoke.toml").read_text().replace("widths = [8, 16]", "widths = [4, 12]")
    (workdir / "other.toml").write_text(other)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [subprocess.Popen([sys.executable, "-m", "cerberus", "run", "--space", space, "--data", "synthetic",
                              "--device", "cpu", "--trials", "2"], cwd=workdir, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for space in ("search/smoke.toml", "other.toml")]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "another --study" in loser and "Traceback" not in loser and len(loser.strip().splitlines()) == 1
    study = load(workdir)
    widths = {w for t in study.trials if "config" in t.user_attrs for w in t.user_attrs["config"]["arch"]["widths"]}
    stored = study.user_attrs["definition"]["space"]
    assert widths <= ({8, 16} if stored == "search/smoke.toml" else {4, 12}), (stored, widths)
