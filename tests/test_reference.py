"""cerberus.reference: docs/reference.md and `--help` come from the same declarations."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT

from cerberus import knobs, reference
from cerberus.config import TABLES


def test_the_committed_reference_is_what_the_declarations_say():
    committed = (ROOT / "docs" / "reference.md").read_text()
    assert committed == reference.render(), "docs/reference.md is stale: python -m cerberus.reference > docs/reference.md"


def test_every_option_and_every_field_is_in_the_reference():
    import typer

    from cerberus.cli import app

    text = reference.render()
    for name, command in typer.main.get_command(app).commands.items():
        if not command.hidden:
            assert f"`cerberus-search {name}`" in text
            for param in command.params:
                assert f"`{param.opts[0]}`" in text, (name, param.opts)
    for cls in TABLES.values():
        for f in knobs.fields(cls):
            assert f"| `{f.name}` |" in text and f.spec.doc in text


@pytest.mark.slow
def test_help_on_an_80_column_terminal_keeps_its_descriptions_readable():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    out = subprocess.run([sys.executable, "-m", "cerberus", "run", "--help"], env=env, capture_output=True, text=True,
                         timeout=60).stdout
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "<bool>" not in out
    # descriptions start at a fixed column and run to the edge, not squeezed into a narrow column
    described = [line for line in lines if line.startswith("  --trials")]
    assert described and "Stop when the study holds this many trained" in out
