"""Shared helpers: the real CLI in a subprocess, in a scratch folder with its own studies/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder like a user's checkout: search/ copied in, no studies/ yet."""
    shutil.copytree(ROOT / "search", tmp_path / "search")
    return tmp_path


def cli(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "cerberus", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def popen(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "cerberus", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
