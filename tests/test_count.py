"""cerberus.count and the `count` command: size, memory and fit of one architecture, without torch."""

import json
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, cli, refusal, run_cli

from cerberus import memory
from cerberus.config import COURSE, MAX_BLOCKS, Config, Recipe
from cerberus.precision import choose

CPU = torch.device("cpu")



def test_count_prints_the_seed_architecture(capsys):
    assert run_cli("count", "--blocks", "3,5,3", "--channels", "64,128,256", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == 4_918_602 and out["fits"] is True and out["flops"] > 0
    assert run_cli("count", "--blocks", "3,5,3", "--channels", "64,128,256", "--skip-kernel", "3", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == 5_246_282 and out["fits"] is False


@pytest.mark.slow
def test_count_refuses_a_net_too_deep_to_build_at_once(tmp_path):
    start = time.perf_counter()
    r = cli("count", "--blocks", "100000", "--channels", "8", cwd=tmp_path, timeout=60)
    seconds = time.perf_counter() - start
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"100,000 blocks in all, more than the {MAX_BLOCKS:,} cerberus builds" in r.stderr and not r.stdout
    assert seconds < 20, seconds  # the interpreter and torch's import; before: 8 minutes, then a crash


def test_count_prints_the_memory_a_trial_needs(capsys, monkeypatch):
    args = ("count", "--blocks", "3,5,3", "--channels", "64,128,256", "--device", "cpu")
    assert run_cli(*args, "--json") == 0
    out = json.loads(capsys.readouterr().out)
    expected = memory.estimate(Config(COURSE.arch, Recipe(batch_size=128)), choose(CPU), 45_000, 5_000).total
    assert out["train_memory_bytes"] == expected and out["batch_size"] == 128 and out["memory_device"] == "cpu"
    assert out["fits_memory"] == memory.fits(expected, out["memory_available_bytes"])
    assert run_cli(*args, "--batch-size", "512", "--optimizer", "adam", "--json") == 0
    assert json.loads(capsys.readouterr().out)["train_memory_bytes"] > expected
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "1G")
    assert run_cli(*args) == 0
    text = capsys.readouterr().out
    assert f"fits --max-params 5,000,000; a trial at batch 128 (sgd, {choose(CPU).name}, 45,000 CIFAR-10 images) needs about" in text
    assert f"does NOT fit this machine's cpu (1.00 GiB available under {memory.MEMORY_LIMIT_ENV}" in text
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "lots")
    assert "CERBERUS_MEMORY_LIMIT='lots' is not a memory size" in refusal(capsys, *args)
    monkeypatch.delenv(memory.MEMORY_LIMIT_ENV)
    assert "--optimizer 'lion' is not an optimizer" in refusal(capsys, *args, "--optimizer", "lion")


@pytest.mark.parametrize("args, words", [
    (("--blocks", "1,1,1,1,1,1,1", "--channels", "8,8,8,8,8,8,8"), "7 stages; allowed: 1..6"),
    (("--blocks", "1", "--channels", "8", "--max-params", "-5"), "--max-params must be positive, got -5"),
])
def test_count_refuses_what_run_refuses(capsys, args, words):
    assert words in refusal(capsys, "count", *args)


@pytest.mark.slow
def test_count_and_the_budget_check_never_import_torch():
    """`count` answers without torch and optuna (what keeps it well under a second, cold), and
    so does sizing a space's architectures."""
    code = ("import sys\nfrom cerberus.cli import main\n"
            "sys.argv = ['cerberus-search', 'count', '--blocks', '3,5,3', '--channels', '64,128,256', '--device', 'cpu', '--json']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print(sorted(m for m in ('torch', 'optuna', 'sqlalchemy', 'numpy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    counted, loaded = r.stdout.strip().splitlines()
    assert json.loads(counted)["params"] == 4_918_602 and loaded == "[]"
