"""cerberus.devices: which device a command trains on, and CUDA asked for where there is none."""

import pytest
import torch
from conftest import refusal

SMOKE = ("--space", "search/smoke.toml", "--data", "synthetic", "--device", "cpu")


@pytest.fixture
def refused(workdir, monkeypatch, capsys):
    """``refused(args, message)``: the command, in this process (the same app, without seconds
    of imports; a real process is checked above), exits 2 with one line and creates nothing."""
    monkeypatch.chdir(workdir)

    def check(args, message):
        assert message in refusal(capsys, *args)
        assert not (workdir / "studies").exists()

    return check



@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda(refused):
    refused(("run", *SMOKE[:4], "--device", "cuda"), "CUDA is not available on this machine")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpus_without_cuda(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    assert "CUDA is not available" in refusal(capsys, "run", *SMOKE, "--gpus", "0,1")
    assert not (workdir / "studies").exists()
