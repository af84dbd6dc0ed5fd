"""cerberus.devices: which device a command trains on, and CUDA asked for where there is none."""

import pytest
import torch
from conftest import refusal

SMOKE = ("--space", "search/smoke.toml", "--data", "synthetic", "--device", "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda(refused):
    refused(("run", *SMOKE[:4], "--device", "cuda"), "CUDA is not available on this machine")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpus_without_cuda(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    assert "CUDA is not available" in refusal(capsys, "run", *SMOKE, "--gpus", "0,1")
    assert not (workdir / "studies").exists()
