"""cerberus.shipped: the spaces and configurations that come with cerberus, found by name anywhere."""

from pathlib import Path

from conftest import ROOT


def test_a_shipped_name_and_the_default_space_resolve_anywhere(tmp_path, monkeypatch):
    from cerberus import shipped

    monkeypatch.chdir(tmp_path)  # no search/ here
    assert shipped.resolve("default", shipped.SPACE, "--space").read_text() == (ROOT / "search" / "default.toml").read_text()
    assert shipped.resolve("seed", shipped.CONFIG, "--config").name == "seed.json"
    (tmp_path / "mine.toml").write_text("[arch]\nstages = 1\nblocks = 1\nwidths = 8\n")
    assert shipped.resolve("mine.toml", shipped.SPACE, "--space") == Path("mine.toml")
