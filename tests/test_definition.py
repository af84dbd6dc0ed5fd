"""A study carries its definition: join by name from anywhere, refuse a run that differs. Real CLI, real SQLite."""

import hashlib
import json
import shutil

import optuna
import pytest
from optuna.trial import TrialState

from conftest import ROOT, cli, refusal, run_cli

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


def test_a_new_study_stores_what_defines_it(made):
    d = load(made).user_attrs["definition"]
    text = (made / "search" / "smoke.toml").read_text()
    assert d["space"] == "search/smoke.toml" and d["space_text"] == text
    assert d["space_digest"] == hashlib.sha256(text.encode()).hexdigest()
    assert (d["epochs"], d["max_params"], d["data"], d["objectives"]) == (1, 200_000, "synthetic", ["accuracy"])


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


@pytest.mark.parametrize("option, value, named", [
    ("--space", "search/seed.toml", "--space search/smoke.toml (sha256"),
    ("--space", "default", "--space search/smoke.toml"),
    ("--epochs", "2", "--epochs 1, not 2"),
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
    flat = [x for kv in args.items() for x in kv]
    if option == "--objectives":
        flat += [option, value]
    err = refusal(capsys, "run", *flat, "--device", "cpu", "--trials", "3")
    assert named in err and "leave" in err and "another --study" in err
    assert db.read_bytes() == before


def test_a_copy_of_the_space_under_another_name_is_the_same_space(made):
    shutil.copy(made / "search" / "smoke.toml", made / "mine.toml")
    r = cli("run", "--space", "mine.toml", "--epochs", "1", "--max-params", "200000", "--data", "synthetic",
            "--device", "cpu", "--trials", "2", cwd=made)
    assert r.returncode == 0, r.stderr
    assert load(made).user_attrs["definition"]["space"] == "search/smoke.toml"  # stored once, as first named


def test_a_study_from_before_definitions_gets_one_from_its_first_run(workdir):
    url = f"sqlite:///{workdir / 'studies' / 'cerberus.db'}"
    (workdir / "studies").mkdir()
    old = optuna.create_study(study_name="cerberus", storage=url, direction="maximize")
    old.set_user_attr("objectives", ["accuracy"])  # what runs stored before this change
    r = cli("run", *SMOKE, "--trials", "1", cwd=workdir)
    assert r.returncode == 0, r.stderr
    d = load(workdir).user_attrs["definition"]
    assert d["space"] == "search/smoke.toml" and d["data"] == "synthetic" and d["epochs"] is None


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
