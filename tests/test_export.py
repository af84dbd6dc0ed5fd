"""cerberus.export and the `export` command: one row per trial in csv, parquet or json."""

import json
import sys

import fake_studies
import pandas as pd
import pytest
from conftest import cli, refusal, run_cli

from cerberus import export
from cerberus import train as trains
from cerberus.config import Arch
from cerberus.trials import end_reason

READ = {
    "csv": lambda p: pd.read_csv(p, parse_dates=export.DATES),
    "json": lambda p: pd.read_json(p, precise_float=True).assign(**{d: lambda df, d=d: pd.to_datetime(df[d]) for d in export.DATES}),
    "parquet": pd.read_parquet,
}


@pytest.fixture(scope="module")
def fake_db(tmp_path_factory):
    """A SQLite study with every way a trial ends, a one-stage net and a trial `train` has tested."""
    trials = fake_studies.search(24, seed=4, archs=8)
    trials += [fake_studies.trial(24, arch=Arch((1,), (32,))), fake_studies.trial(25),
               fake_studies.trial(26, ending="diverged")]
    url = f"sqlite:///{tmp_path_factory.mktemp('export') / 'fake.db'}"
    study = fake_studies.create(url, "fake", trials)
    trains.record(study, 25, {"test_accuracy": 0.9123, "test_accuracy_std": 0.001, "test_seeds": 3, "epochs": 15})
    return url, study


def _value(x):
    """A cell as Python: an empty cell is None whatever the format's idea of empty."""
    return None if pd.isna(x) else x


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_export_round_trips_through_pandas(fake_db, tmp_path, fmt):
    url, study = fake_db
    out = tmp_path / f"trials.{fmt}"
    assert run_cli("export", "--study", "fake", "--storage", url, "--format", fmt, "--out", str(out)) == 0
    back = READ[fmt](out)
    pd.testing.assert_frame_equal(back, export.frame(study), check_dtype=False)

    trials = study.trials
    assert len(back) == len(trials) and list(back["trial"]) == [t.number for t in trials]
    for t, row in zip(trials, back.to_dict("records")):
        a = t.user_attrs
        assert row["state"] == t.state.name and _value(row["reason"]) == end_reason(t)
        assert row["params"] == a["params"] and row["flops"] == a["flops"] and row["worker"] == a["worker"]
        assert json.loads(row["blocks"]) == a["config"]["arch"]["blocks"]
        assert json.loads(row["widths"]) == a["config"]["arch"]["widths"]
        assert _value(row["val_accuracy"]) == (t.values[0] if t.state.name == "COMPLETE" else None)
        assert _value(row["test_accuracy"]) == (0.9123 if t.number == 25 else None)
        assert _value(row["epochs"]) == a.get("epochs") and _value(row["images_per_s"]) == a.get("images_per_s")
        assert {k[len("params_"):]: v for k, v in row.items() if k.startswith("params_") and _value(v) is not None} == t.params
    assert back["reason"].value_counts().to_dict().keys() >= {"over_budget", "pruned", "diverged", "error", "worker_died"}


@pytest.mark.slow
def test_export_of_a_smoke_study_by_the_real_command(smoke_study):
    folder, storage, study = smoke_study
    r = cli("export", "--study", study, "--storage", storage, cwd=folder)
    assert r.returncode == 0, r.stderr
    out = folder / "studies" / study / "trials.csv"  # the default --out
    assert f"2 trials of study 'demo' written to {out.relative_to(folder)}" in r.stdout
    df = READ["csv"](out)
    assert list(df["state"]) == ["COMPLETE", "COMPLETE"] and df["reason"].isna().all()
    assert (df["device"] == "cpu").all() and (df["epochs"] == 1).all() and df["worker"].notna().all()
    assert df["val_accuracy"].between(0, 1).all() and (df["params"] > 0).all()
    assert {"params_lr", "params_optimizer", "params_stages"} <= set(df.columns)


def test_parquet_without_pyarrow_is_one_line_and_exit_2(fake_db, tmp_path, monkeypatch, capsys):
    url, _ = fake_db
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    out = tmp_path / "t.parquet"
    assert run_cli("export", "--study", "fake", "--storage", url, "--format", "parquet", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err == "error: --format parquet needs pyarrow: pip install pyarrow (or use --format csv or json)\n"
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (("--format", "xlsx"), "error: --format 'xlsx' is not a format; allowed: csv, parquet, json\n"),
    (("--study", "nope"), "error: no study named 'nope' in "),
])
def test_bad_input_is_one_line_and_exit_2(fake_db, tmp_path, capsys, args, message):
    url, _ = fake_db
    assert run_cli("export", "--study", "fake", "--storage", url, "--out", str(tmp_path / "t"), *args) == 2
    assert capsys.readouterr().err.startswith(message)
    assert list(tmp_path.iterdir()) == []


def test_export_shows_what_a_plain_optuna_study_holds(plain_optuna, monkeypatch, capsys):
    folder, url = plain_optuna
    monkeypatch.chdir(folder)
    assert run_cli("export", "--storage", url, "--study", "plain", "--out", "t.json") == 0
    rows = json.loads((folder / "t.json").read_text())
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3 and all(0 <= r["params_x"] <= 1 for r in rows)
    assert run_cli("studies", "--storage", url, "--json") == 0
    (row,) = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert row == {"study": "plain", "trials": 3, "complete": 3, "pruned": 0, "failed": 0, "running": 0,
                   "waiting": 0, "directions": ["minimize"], "cerberus": False}


@pytest.mark.slow
def test_export_takes_its_format_from_the_extension_and_refuses_a_clash(finished, tmp_path, capsys):
    folder, storage, study = finished
    assert run_cli("export", "--storage", storage, "--study", study, "--out", str(tmp_path / "x.json")) == 0
    assert [r["trial"] for r in json.loads((tmp_path / "x.json").read_text())] == [0, 1]
    err = refusal(capsys, "export", "--storage", storage, "--study", study, "--out", str(tmp_path / "y.json"), "--format", "csv")
    assert "--format csv contradicts --out" in err and not (tmp_path / "y.json").exists()


def test_a_format_in_capitals_is_the_same_format(fake_db, tmp_path):
    url, study = fake_db
    out = tmp_path / "T.CSV"
    assert run_cli("export", "--study", "fake", "--storage", url, "--format", "CSV", "--out", str(out)) == 0
    assert pd.read_csv(out).shape[0] == len(study.trials)
