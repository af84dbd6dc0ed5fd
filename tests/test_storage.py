"""cerberus.storage: storage URLs, files that are not studies, and reading that never writes."""

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, refusal, run_cli


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its sha256: what 'nothing changed' compares."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


READERS = [
    ("best",), ("best", "--json"), ("report", "--out", "{out}/r.html"), ("export", "--out", "{out}/t.csv"), ("studies",),
    ("train", "--trial", "99", "--data", "synthetic", "--device", "cpu"),  # refused after reading the study
]


def _other_program_db(path: Path) -> None:
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE notes (body TEXT)")
        c.execute("INSERT INTO notes VALUES ('mine')")


REFUSED_FILES = {"empty": "is empty (0 bytes), not an Optuna database", "text": "is not a SQLite database",
                 "other": "is a SQLite database of another program", "folder": "is a folder, not a database file",
                 "missing": "no study storage at"}


BAD_NAMES = {"": "is empty", "   ": "is empty", "../../x": "holds a path separator or '..'",
             "/tmp/abs": "holds a path separator or '..'", "a\\b": "holds a path separator", "..": "holds a path separator",
             "x" * 300: "is 300 bytes long"}


RACES = 3


OPEN_AT = """
import sys, time
from cerberus.storage import open_storage
folder, at = sys.argv[1], float(sys.argv[2])
for race in range(int(sys.argv[3])):
    time.sleep(max(0.0, at + race - time.time()))
    open_storage(f"sqlite:///{folder}/new-{race}.db", create=True, heartbeat=1)
"""


@pytest.mark.slow
@pytest.mark.parametrize("args", READERS, ids=lambda a: " ".join(a[:2]))
def test_reading_a_study_changes_no_byte_and_leaves_no_file(finished, tmp_path, capsys, args):
    folder, storage, study = finished
    before = snapshot(folder)
    args = [a.format(out=tmp_path) for a in args]
    code = run_cli(*args, "--storage", storage, *(["--study", study] if args[0] != "studies" else []))
    assert code == (2 if args[0] == "train" else 0), capsys.readouterr()
    assert snapshot(folder) == before  # the file's bytes, and no -wal, -shm or journal beside it


@pytest.mark.slow
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


@pytest.mark.parametrize("name, command", [*((n, "run") for n in BAD_NAMES), ("../../x", "best"), ("", "train")],
                         ids=lambda v: v[:12] if isinstance(v, str) else v)
def test_a_name_that_cannot_be_a_folder_is_refused_and_nothing_is_made(tmp_path, monkeypatch, capsys, name, command):
    words = BAD_NAMES[name]
    monkeypatch.chdir(tmp_path)
    extra = {"run": ("--space", "smoke", "--data", "synthetic"), "best": (), "train": ("--trial", "0")}[command]
    err = refusal(capsys, command, "--study", name, *extra)
    assert words in err and "give a non-empty name without '/'" in err
    assert os.listdir(tmp_path) == []


def test_a_postgresql_url_without_its_driver_says_what_to_install(monkeypatch, capsys):
    for module in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails, as where the driver is not installed
    err = refusal(capsys, "best", "--storage", "postgresql://user@127.0.0.1:9/db")
    assert 'pip install -e ".[postgres]"' in err


@pytest.mark.parametrize("command", ["best", "run"])
def test_a_database_server_that_does_not_answer_is_one_line(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    extra = ("--space", "smoke", "--data", "synthetic") if command == "run" else ()
    err = refusal(capsys, command, "--storage", "postgresql://user@127.0.0.1:9/db", *extra)  # nothing listens on port 9
    assert "cannot open storage postgresql://user@127.0.0.1:9/db" in err and "Connection refused" in err


@pytest.mark.slow
def test_processes_opening_a_new_sqlite_file_at_once_all_succeed(tmp_path):
    """All create Optuna's tables and insert its schema version; before cerberus looked again,
    the losers died with 'table studies already exists' or 'UNIQUE constraint failed:
    alembic_version' (seen when a test polled the file a worker was creating)."""
    at = time.time() + 4  # after every process has imported torch and optuna
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT, str(tmp_path), str(at), str(RACES)], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for _ in range(6)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-600:] for e in errors if e][:1]
    for race in range(RACES):
        assert optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/new-{race}.db").get_all_studies() == []


def _failure(capsys, *args) -> str:
    """What a command that the world defeats prints: exit 1, one line, no traceback."""
    code = run_cli(*args)
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (args, code, err)
    return err


@pytest.mark.slow
def test_on_a_full_disk_reads_leave_no_file_and_writes_end_in_one_line(finished, full_disk, capsys, monkeypatch):
    """A study on a full tmpfs: best, export --json and studies read it and leave no -wal or -shm;
    report and export to it, and a search of it, end in one line and exit 1, the study unchanged."""
    folder, storage, study = finished
    disk, fill = full_disk
    shutil.copy(folder / "smoke.db", disk / "smoke.db")
    fill()
    url = f"sqlite:///{disk / 'smoke.db'}"
    before = snapshot(disk)
    assert run_cli("best", "--study", study, "--storage", url) == 0
    assert run_cli("studies", "--storage", url, "--json") == 0
    capsys.readouterr()
    assert snapshot(disk) == before  # no -wal, no -shm, not a byte changed
    assert "no space left on the device" in _failure(capsys, "report", "--study", study, "--storage", url,
                                                     "--out", str(disk / "report.html"))
    assert "no space left on the device" in _failure(capsys, "export", "--study", study, "--storage", url,
                                                     "--out", str(disk / "trials.csv"))
    assert snapshot(disk) == before  # the half-written report and export are gone
    monkeypatch.chdir(ROOT)
    err = _failure(capsys, "run", "--space", "search/smoke.toml", "--data", "synthetic", "--device", "cpu",
                   "--trials", "1", "--storage", f"sqlite:///{disk / 'new.db'}")
    assert "disk that holds the study is full" in err and not (disk / "new.db").exists()


@pytest.mark.slow
def test_a_damaged_database_is_one_line_for_every_command_and_stays_as_it_was(finished, capsys, monkeypatch):
    folder, storage, study = finished
    db = folder / "smoke.db"
    with open(db, "r+b") as f:  # a page in the middle overwritten, as a bad sector or a torn copy leaves it
        f.seek(3 * 4096)
        f.write(b"\xff" * 3000)
    damaged = db.read_bytes()
    url = f"sqlite:///{db}"
    monkeypatch.chdir(folder)
    for args in (("best", "--study", study), ("export", "--study", study, "--out", str(folder / "t.csv")),
                 ("run", "--study", study, "--trials", "3")):
        assert "database file is damaged" in _failure(capsys, *args, "--storage", url)
    assert db.read_bytes() == damaged and not (folder / "t.csv").exists()


def test_a_read_in_a_process_that_holds_a_writer_keeps_the_writers_file_whole(tmp_path):
    """Python's open() and close() of the file used to drop the writer's SQLite locks, so a
    second process deleted the -wal under it and this process then read a 'malformed' database
    (https://www.sqlite.org/howtocorrupt.html, 2.2): seen as `run` in a test after a `run` there."""
    from cerberus import storage as stores

    url = f"sqlite:///{tmp_path / 'a.db'}"
    writer = stores.open_storage(url)
    optuna.create_study(study_name="here", storage=writer).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    holder = sqlite3.connect(tmp_path / "a.db")  # a connection of this process, as a pooled one of Optuna's
    holder.execute("SELECT count(*) FROM trials").fetchone()
    with stores.reading(url):
        pass
    other = ("import optuna; from cerberus.storage import open_storage; "
             f"optuna.create_study(study_name='there', storage=open_storage({url!r}))"
             ".optimize(lambda t: t.suggest_float('x', 0, 1), n_trials=2)")
    subprocess.run([sys.executable, "-c", other], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    with stores.reading(url) as storage:
        assert len(optuna.load_study(study_name="there", storage=storage).trials) == 2
    assert len(optuna.load_study(study_name="here", storage=writer).trials) == 1
    assert holder.execute("SELECT count(*) FROM trials").fetchone() == (3,)
