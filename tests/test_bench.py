"""cerberus.bench and the `bench` command: the figures it promises, its baselines, its operation count."""

import dataclasses
import json
import math

import pytest
import torch
from conftest import cli, refusal, run_cli

from cerberus import bench, precision, size
from cerberus.config import COURSE, Augment, Config

# The course net at a sixteenth of its widths: the same operations a step, a fraction of the time.
NARROW = Config(dataclasses.replace(COURSE.arch, widths=(8, 16, 32)), COURSE.recipe)
HEAVY = Config(NARROW.arch, dataclasses.replace(COURSE.recipe, optimizer="adadelta_agc", lr=1.0, augment=Augment(
    crop_padding=4, flip=True, trivial_augment=True, mixup_alpha=0.2, cutmix_alpha=1.0)))



@pytest.mark.slow
def test_baseline_runs_the_course_loop_and_reports_the_ratio(tmp_path, capsys):
    assert run_cli("bench", "--device", "cpu", "--blocks", "1,1", "--channels", "8,16", "--batch-size", "16",
                   "--steps", "3", "--baseline") == 0
    out = capsys.readouterr().out
    assert "baseline (course project loop" in out and "speedup" in out
    assert "the same course loop fed from batches on the device (no augmentation, fp32)" in out
    j = cli("bench", "--device", "cpu", "--blocks", "1,1", "--channels", "8,16", "--batch-size", "16",
            "--steps", "3", "--baseline", "--json", cwd=tmp_path)
    out = json.loads(j.stdout)
    assert out["baseline_images_per_s"] > 0
    assert abs(out["speedup"] - out["images_per_s"] / out["baseline_images_per_s"]) < 1e-9
    assert out["device_baseline_images_per_s"] > 0 and out["baseline_precision"] == out["device_baseline_precision"] == "fp32"
    assert abs(out["speedup_vs_device_baseline"] - out["images_per_s"] / out["device_baseline_images_per_s"]) < 1e-9
    assert out["cuda_graph"] is False and out["captured"] is False


def test_bad_bench_input_is_one_line_and_exit_2(capsys):
    for args, words in ((["--blocks", "3,5", "--channels", "64"], "--blocks has 2 stages"),
                        (["--steps", "0"], "--steps must be at least 1"),
                        (["--data", "mnist"], "allowed: cifar10, synthetic"),
                        (["--cuda-graph"], "--cuda-graph records the step on a CUDA device, and this run trains on cpu")):
        assert words in refusal(capsys, "bench", "--device", "cpu", *args)


@pytest.mark.slow
def test_matmul_peak_is_a_positive_rate_in_the_step_dtype():
    # bf16 on a CPU without native bf16 is emulated (under 1 GFLOP/s on the CI's AMD EPYC), so
    # only fp32 has a floor every x86-64 CPU clears; bf16 must still be a finite positive rate
    for dtype, floor in ((torch.float32, 1e9), (torch.bfloat16, 1e6)):
        flops, name = bench.matmul_peak(torch.device("cpu"), dtype)
        assert floor < flops < math.inf and name == str(dtype).removeprefix("torch.")


@pytest.mark.slow
def test_bench_reports_its_precision_and_measures_mfu_in_that_dtype(capsys):
    args = ("bench", "--blocks", "1", "--channels", "8", "--device", "cpu", "--steps", "2", "--warmup", "1", "--plain", "--json")
    assert run_cli(*args, "--precision", "fp32") == 0
    r = json.loads(capsys.readouterr().out)
    assert r["precision"] == "fp32" and r["peak_dtype"] == "float32" and r["plain_images_per_s"] > 0 and r["speedup_vs_plain"] > 0
    assert run_cli(*args, "--precision", "bf16") == 0
    r = json.loads(capsys.readouterr().out)
    assert r["precision"] == "bf16" and r["peak_dtype"] == "bfloat16" and r["mfu"] > 0
    if precision.cpu_has_native_bf16():  # an emulated bf16 matmul is no peak: oneDNN's convs may beat it
        assert r["mfu"] < 1
    assert "--precision 'fp16' is not a precision; allowed: auto, bf16, fp32" in refusal(capsys, *args, "--precision", "fp16")


@pytest.mark.slow
def test_bench_prints_the_promised_figures_and_counts_the_operations_of_the_step_it_timed(tmp_path, capsys):
    for name, config in (("heavy", HEAVY), ("course", NARROW)):
        (tmp_path / f"{name}.json").write_text(config.to_json())
    assert run_cli("bench", "--config", str(tmp_path / "heavy.json"), "--steps", "1", "--warmup", "1", "--device", "cpu",
                   "--json") == 0
    heavy = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    r = cli("bench", "--config", str(tmp_path / "course.json"), "--steps", "2", "--warmup", "1", "--device", "cpu",
            "--json", cwd=tmp_path)  # a fresh process, as a user runs it
    assert r.returncode == 0, r.stderr
    course = json.loads(r.stdout)
    assert course["device"] == "cpu" and course["params"] == size.params(NARROW.arch) and course["depth"] == 24
    for key in ("images_per_s", "ms_per_step", "mfu", "peak_mem_bytes", "peak_tflops", "tflops", "flops_per_image"):
        assert course[key] > 0, key
    assert "baseline_images_per_s" not in course and "speedup" not in course
    assert heavy["config"]["recipe"]["optimizer"] == "adadelta_agc" and Config.from_dict(course["config"]) == NARROW
    assert course["aten_ops_per_step"] <= 803  # no higher than before
    assert heavy["aten_ops_per_step"] <= 1_200  # 2,611 before: per-tensor clipping and Adadelta, TrivialAugment per group


def test_a_zero_batch_or_one_that_cannot_fit_is_refused_not_replaced(capsys, monkeypatch):
    assert "--batch-size must be at least 1, got 0" in refusal(capsys, "bench", "--batch-size", "0", "--device", "cpu")
    monkeypatch.setenv("CERBERUS_MEMORY_LIMIT", "600M")
    err = refusal(capsys, "bench", "--batch-size", "2048", "--device", "cpu", "--steps", "1", "--warmup", "1")
    assert "a step at batch 2048 needs about" in err and "give a smaller --batch-size" in err
