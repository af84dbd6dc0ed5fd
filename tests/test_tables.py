"""cerberus.tables: what `best` and `studies` print."""

import re
import shutil

import pytest
from conftest import refusal, terminal


@pytest.mark.slow
def test_best_on_an_unknown_study_changes_nothing(default_search, tmp_path, monkeypatch, capsys):
    workdir = shutil.copytree(default_search, tmp_path / "w")
    db = workdir / "studies" / "cerberus.db"
    before = db.read_bytes()
    monkeypatch.chdir(workdir)
    err = refusal(capsys, "best", "--study", "other")
    assert "no study named 'other'" in err and "studies there: cerberus" in err
    assert db.read_bytes() == before


@pytest.mark.slow
def test_best_on_an_80_column_terminal_keeps_accuracy_and_parameters_whole(default_search):
    screen = re.sub(r"\x1b\[[0-9;]*m", "", terminal("best", "--top", "2", cwd=default_search, columns=80))
    lines = screen.splitlines()
    assert max(len(line) for line in lines) <= 80, screen
    rows = [line for line in lines if re.match(r"^│\s+\d+ │", line)]
    assert len(rows) == 2, screen
    for row in rows:
        cells = [c.strip() for c in row.strip("│").split("│")]
        assert re.fullmatch(r"[01]\.\d{4}", cells[1]), row  # the accuracy, whole
        assert re.fullmatch(r"[\d,]+", cells[2]), row  # the parameters, whole
    assert "…" not in screen
