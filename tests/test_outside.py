"""What the world does to cerberus: a real wheel installed elsewhere, files that are not studies,
studies and names cerberus did not make, and the small inputs users get wrong."""

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import optuna
import pytest

from conftest import ROOT, refusal, run_cli


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its sha256: what 'nothing changed' compares."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# 1. Installed anywhere.

def test_the_wheel_ships_search_and_runs_a_shipped_space_from_an_empty_folder(tmp_path):
    """Build the wheel from a copy of the sources, install it (not editable) into a fresh
    environment, and use it from a folder with nothing in it."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "cerberus", "search"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, src / name)
    shutil.rmtree(src / "cerberus" / "__pycache__", ignore_errors=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("cerberus-*.whl")
    shipped = {n.split("cerberus/search/")[1] for n in zipfile.ZipFile(wheel).namelist() if "cerberus/search/" in n}
    assert shipped == {p.name for p in (ROOT / "search").iterdir() if p.is_file()}  # every file of search/

    env_dir = tmp_path / "venv"  # the dependencies come from this interpreter; cerberus from the wheel only
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env_dir)], check=True)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = lambda *args: subprocess.run([str(env_dir / "bin" / "cerberus-search"), *args], cwd=empty, env=env,  # noqa: E731
                                       capture_output=True, text=True, timeout=300)
    where = subprocess.run([str(py), "-c", "import cerberus; print(cerberus.__file__)"], cwd=empty, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(env_dir)), where  # the installed copy, not the checkout

    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("cerberus "), version
    r = run("run", "--space", "smoke", "--data", "synthetic", "--device", "cpu", "--trials", "1")
    assert r.returncode == 0, r.stderr
    assert "the study holds 1 of 1 trained trials" in r.stderr and (empty / "studies" / "cerberus.db").exists()
    # `train --config seed` finds the shipped seed.json: the refusal is about --out, checked after it.
    (empty / "taken").write_text("")
    r = run("train", "--config", "seed", "--out", "taken", "--device", "cpu", "--data", "synthetic")
    assert r.returncode == 2 and r.stderr == "error: --out taken is a file; give a folder\n", r.stderr
    r = run("run", "--space", "nope", "--data", "synthetic")
    assert r.returncode == 2 and "shipped: cpu, default, seed, smoke" in r.stderr


def test_a_shipped_name_and_the_default_space_resolve_anywhere(tmp_path, monkeypatch):
    from cerberus import shipped

    monkeypatch.chdir(tmp_path)  # no search/ here
    assert shipped.resolve("default", shipped.SPACE, "--space").read_text() == (ROOT / "search" / "default.toml").read_text()
    assert shipped.resolve("seed", shipped.CONFIG, "--config").name == "seed.json"
    (tmp_path / "mine.toml").write_text("[arch]\nstages = 1\nblocks = 1\nwidths = 8\n")
    assert shipped.resolve("mine.toml", shipped.SPACE, "--space") == Path("mine.toml")


# 2. Reading never writes.

@pytest.fixture
def finished(smoke_study, tmp_path):
    """A copy of a finished smoke study: (folder, storage URL, study), its file in WAL mode with
    no -wal or -shm beside it, as a search leaves it."""
    folder, storage, study = smoke_study
    copy = shutil.copytree(folder / "studies", tmp_path / "studies")
    assert sorted(p.name for p in copy.iterdir() if p.is_file()) == ["smoke.db"]
    return copy, f"sqlite:///{copy / 'smoke.db'}", study


READERS = [
    ("best",), ("best", "--json"), ("report", "--out", "{out}/r.html"), ("export", "--out", "{out}/t.csv"), ("studies",),
    ("train", "--trial", "99", "--data", "synthetic", "--device", "cpu"),  # refused after reading the study
]


@pytest.mark.parametrize("args", READERS, ids=lambda a: " ".join(a[:2]))
def test_reading_a_study_changes_no_byte_and_leaves_no_file(finished, tmp_path, capsys, args):
    folder, storage, study = finished
    before = snapshot(folder)
    args = [a.format(out=tmp_path) for a in args]
    code = run_cli(*args, "--storage", storage, *(["--study", study] if args[0] != "studies" else []))
    assert code == (2 if args[0] == "train" else 0), capsys.readouterr()
    assert snapshot(folder) == before  # the file's bytes, and no -wal, -shm or journal beside it


def test_a_study_on_a_read_only_file_or_folder_can_still_be_read(finished, tmp_path, capsys):
    folder, storage, study = finished
    db = folder / "smoke.db"
    before = snapshot(folder)
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not possible here: cannot make a file read-only for root")
    try:
        assert run_cli("best", "--json", "--storage", storage, "--study", study) == 0
        assert json.loads(capsys.readouterr().out)[0]["trial"] in (0, 1)
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)
    assert snapshot(folder) == before
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount a read-only folder here")
    try:
        assert run_cli("studies", "--storage", f"sqlite:///{mount / 'smoke.db'}") == 0
        assert study in capsys.readouterr().out
        assert run_cli("best", "--storage", f"sqlite:///{mount / 'smoke.db'}", "--study", study) == 0
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    assert snapshot(folder) == before


def _other_program_db(path: Path) -> None:
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE notes (body TEXT)")
        c.execute("INSERT INTO notes VALUES ('mine')")


REFUSED_FILES = {"empty": "is empty (0 bytes), not an Optuna database", "text": "is not a SQLite database",
                 "other": "is a SQLite database of another program", "folder": "is a folder, not a database file",
                 "missing": "no study storage at"}


# Every kind of file with `best`, and every reading command with the two kinds Optuna would have
# written to (a 0-byte file it makes a database of, another program's it adds tables to).
@pytest.mark.parametrize("kind, command", [*((k, "best") for k in REFUSED_FILES),
                                           *((k, c) for k in ("empty", "other") for c in ("report", "export", "studies", "dashboard"))])
def test_a_file_that_is_not_a_study_is_refused_and_left_as_it_was(tmp_path, monkeypatch, capsys, kind, command):
    words = REFUSED_FILES[kind]
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "x.db"
    {"empty": lambda: path.write_bytes(b""), "text": lambda: path.write_text("hello\n"),
     "other": lambda: _other_program_db(path), "folder": path.mkdir, "missing": lambda: None}[kind]()
    before = snapshot(tmp_path)
    assert words in refusal(capsys, command, "--storage", "sqlite:///x.db")
    assert snapshot(tmp_path) == before and sorted(os.listdir(tmp_path)) == (["x.db"] if kind != "missing" else [])


def test_run_adds_no_tables_to_another_programs_database(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _other_program_db(tmp_path / "x.db")
    before = snapshot(tmp_path)
    assert "of another program" in refusal(capsys, "run", "--space", "smoke", "--data", "synthetic", "--storage", "sqlite:///x.db")
    assert snapshot(tmp_path) == before


# 3. Studies and names cerberus did not make.

@pytest.fixture
def plain_optuna(tmp_path):
    """A study made by plain Optuna, minimising, three trials; (folder, URL)."""
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    study = optuna.create_study(study_name="plain", storage=url, direction="minimize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=3)
    del study
    return tmp_path, url


@pytest.mark.parametrize("command", ["best", "report", "run"])
def test_a_study_cerberus_did_not_make_is_refused_and_unchanged(plain_optuna, monkeypatch, capsys, command):
    folder, url = plain_optuna
    monkeypatch.chdir(folder)
    before = snapshot(folder)
    extra = ("--space", "smoke", "--data", "synthetic", "--device", "cpu", "--trials", "1") if command == "run" else ()
    err = refusal(capsys, command, "--storage", url, "--study", "plain", *extra)
    assert "study 'plain' was not made by cerberus (3 trial(s) without a cerberus configuration, direction minimize)" in err
    assert snapshot(folder) == before


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


BAD_NAMES = {"": "is empty", "   ": "is empty", "../../x": "holds a path separator or '..'",
             "/tmp/abs": "holds a path separator or '..'", "a\\b": "holds a path separator", "..": "holds a path separator",
             "x" * 300: "is 300 bytes long"}


@pytest.mark.parametrize("name, command", [*((n, "run") for n in BAD_NAMES), ("../../x", "best"), ("", "train")],
                         ids=lambda v: v[:12] if isinstance(v, str) else v)
def test_a_name_that_cannot_be_a_folder_is_refused_and_nothing_is_made(tmp_path, monkeypatch, capsys, name, command):
    words = BAD_NAMES[name]
    monkeypatch.chdir(tmp_path)
    extra = {"run": ("--space", "smoke", "--data", "synthetic"), "best": (), "train": ("--trial", "0")}[command]
    err = refusal(capsys, command, "--study", name, *extra)
    assert words in err and "give a non-empty name without '/'" in err
    assert os.listdir(tmp_path) == []


def test_hints_quote_a_name_so_it_can_be_pasted(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_cli("run", "--space", "smoke", "--data", "synthetic", "--device", "cpu", "--trials", "1",
                   "--study", "my study") == 0
    assert "cerberus-search best --study 'my study' --storage sqlite:///studies/cerberus.db" in capsys.readouterr().err
    assert "studies there: 'my study'" in refusal(capsys, "best", "--study", "other")


# 7. Small ones.

def test_a_postgresql_url_without_its_driver_says_what_to_install(monkeypatch, capsys):
    for module in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails, as where the driver is not installed
    err = refusal(capsys, "best", "--storage", "postgresql://user@127.0.0.1:9/db")
    assert 'pip install -e ".[postgres]"' in err


def test_export_takes_its_format_from_the_extension_and_refuses_a_clash(finished, tmp_path, capsys):
    folder, storage, study = finished
    assert run_cli("export", "--storage", storage, "--study", study, "--out", str(tmp_path / "x.json")) == 0
    assert [r["trial"] for r in json.loads((tmp_path / "x.json").read_text())] == [0, 1]
    err = refusal(capsys, "export", "--storage", storage, "--study", study, "--out", str(tmp_path / "y.json"), "--format", "csv")
    assert "--format csv contradicts --out" in err and not (tmp_path / "y.json").exists()


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "{ low = 1e-3, high = inf }", "[0.1, nan]"])
def test_a_space_with_an_infinite_or_nan_number_is_refused_when_read(tmp_path, value):
    from cerberus import space as spaces
    from cerberus.errors import UserError

    path = tmp_path / "s.toml"
    path.write_text(f"[arch]\nstages = 1\nblocks = 1\nwidths = 8\n[recipe]\nlr = {value}\n")
    with pytest.raises(UserError, match=r"\[recipe\] lr: .* is not allowed; allowed: numbers > 0"):
        spaces.load(path)


@pytest.mark.parametrize("args, words", [
    (("--blocks", "1,1,1,1,1,1,1", "--channels", "8,8,8,8,8,8,8"), "7 stages; allowed: 1..6"),
    (("--blocks", "1", "--channels", "8", "--max-params", "-5"), "--max-params must be positive, got -5"),
])
def test_count_refuses_what_run_refuses(capsys, args, words):
    assert words in refusal(capsys, "count", *args)


@pytest.mark.parametrize("text, words", [
    ('{"recipe": {}}', "config: missing key 'arch'; required: arch, recipe"),
    ('{"arch": {"blocks": [1]}, "recipe": {}}', "config.arch: missing key 'widths'; required: blocks, widths"),
    ('{"arch": {"blocks": [1], "widths": [8]}, "recipe": {"lr": Infinity}}', "config.recipe.lr: expected a finite number"),
])
def test_a_config_file_missing_a_key_is_refused_in_its_own_words(tmp_path, capsys, text, words):
    path = tmp_path / "c.json"
    path.write_text(text)
    err = refusal(capsys, "train", "--config", str(path), "--data", "synthetic", "--device", "cpu", "--out", str(tmp_path / "o"))
    assert words in err and "Traceback" not in err and "positional argument" not in err


def test_run_refuses_an_empty_study_whose_direction_is_not_its_objectives(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    optuna.create_study(study_name="empty", storage="sqlite:///e.db", direction="minimize")
    before = snapshot(tmp_path)
    err = refusal(capsys, "run", "--storage", "sqlite:///e.db", "--study", "empty", "--space", "smoke", "--data", "synthetic")
    assert "has the directions minimize, not those of --objectives accuracy" in err
    assert snapshot(tmp_path) == before


def test_the_weakest_smoke_net_learns_synthetic_data_well_above_chance_in_its_one_epoch():
    """The smoke space's narrowest net at its lowest learning rate, the worst of the 50 runs of
    benchmarks/smoke_learnability.py (every architecture x 5 seeds): chance is 0.1."""
    import torch

    from cerberus import shipped
    from cerberus import space as spaces
    from cerberus.data import search_splits
    from cerberus.train import fit

    space = spaces.load(shipped.resolve("smoke", shipped.SPACE, "--space"))
    params = {"stages": 1, "widths_1": 8, "skip_kernel": 1, "optimizer": "adamw", "lr": 0.003,
              "crop_padding": 2, "flip": True}
    config = space.sample(optuna.trial.FixedTrial(params))
    assert config.recipe.epochs == 1 and config.arch.widths == (8,)
    train, val = search_splits("synthetic")
    for seed in (0, 1):
        assert fit(config, train, val, torch.device("cpu"), seed=seed).val_accuracy > 0.4


@pytest.mark.parametrize("command", ["best", "run"])
def test_a_database_server_that_does_not_answer_is_one_line(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    extra = ("--space", "smoke", "--data", "synthetic") if command == "run" else ()
    err = refusal(capsys, command, "--storage", "postgresql://user@127.0.0.1:9/db", *extra)  # nothing listens on port 9
    assert "cannot open storage postgresql://user@127.0.0.1:9/db" in err and "Connection refused" in err


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
