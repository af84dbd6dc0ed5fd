"""cerberus.cli: the command line as a whole: help, version, one-line refusals, lazy imports."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, run_cli


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cerberus-search") is None, reason="package not installed (pip install -e .)")
def test_console_script_is_the_same_app(workdir):
    r = __import__("subprocess").run(["cerberus-search", "count", "--blocks", "3,5,3", "--channels", "64,128,256", "--json"],
                                     cwd=workdir, capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)["params"] == 4_918_602


@pytest.mark.parametrize("args, message", [
    (("run", "--space", "search/nope.toml"), "--space 'search/nope.toml': no such file, and not a shipped name; shipped: cpu, default, seed, smoke"),
    (("run", "--trials", "0"), "--trials must be positive, got 0"),
    (("run", "--trials", "many"), "Invalid value for '--trials'"),
    (("run", "--data", "imagenet"), "--data 'imagenet' is not a dataset; allowed: cifar10, synthetic"),
    (("run", "--device", "tpu"), "--device 'tpu' is not a device; allowed: auto, cpu, cuda, cuda:N"),
    (("run", "--storage", "nonsense"), "--storage 'nonsense' is not a database URL"),
    (("run", "--device", "cpu", "--cuda-graph"), "--cuda-graph records the step on a CUDA device, and this run trains on cpu"),
    (("train", "--config", "seed", "--device", "cpu", "--cuda-graph"), "--cuda-graph records the step on a CUDA device"),
    (("best", "--study", "nope"), "no study storage at studies/cerberus.db"),
    (("count", "--blocks", "3,,3", "--channels", "64,128,256"), "--blocks '3,,3' must be comma-separated positive integers"),
    (("count", "--blocks", "3,5", "--channels", "64,128,256"), "--blocks has 2 stages but --channels has 3"),
])
def test_bad_input_is_one_line_and_exit_2(refused, args, message):
    refused(args, message)


@pytest.mark.slow
def test_the_command_line_imports_no_optuna_sqlalchemy_or_torch_before_a_command_needs_them():
    code = ("import sys, cerberus.cli; print(','.join(m for m in ('torch', 'optuna', 'sqlalchemy', 'numpy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr


def test_no_arguments_print_the_help_and_no_error(capsys):
    assert run_cli() == 0
    said = capsys.readouterr()
    assert said.out.startswith("Usage: cerberus-search [OPTIONS] COMMAND") and "run" in said.out
    assert "error" not in said.err and not said.err.strip()
