"""`cerberus-search bench`: the real command, on the CPU, with tiny step counts."""

import json

import optuna
import torch

from cerberus import bench, space
from cerberus.config import COURSE
from conftest import ROOT, cli, refusal, run_cli


def test_bench_json_on_cpu_prints_the_promised_figures(tmp_path):
    r = cli("bench", "--device", "cpu", "--steps", "2", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["device"] == "cpu" and out["params"] == 4_918_602 and out["depth"] == 24  # the seed's ResNet-24
    assert out["flops_per_image"] > 0.5e9  # about 0.56 GMACs, counted as 2 FLOPs each
    for key in ("images_per_s", "ms_per_step", "mfu", "peak_mem_bytes", "peak_tflops", "tflops"):
        assert out[key] > 0, key
    assert "baseline_images_per_s" not in out and "speedup" not in out


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


def test_search_seed_toml_pins_the_course_config_that_bench_and_enqueue_use():
    pinned = space.load(ROOT / "search" / "seed.toml").sample(optuna.trial.FixedTrial({}))
    assert pinned == COURSE and bench.COURSE_RECIPE == COURSE.recipe


def test_matmul_peak_is_a_positive_rate_in_the_step_dtype():
    for dtype in (torch.float32, torch.bfloat16):
        flops, name = bench.matmul_peak(torch.device("cpu"), dtype)
        assert flops > 1e9 and name == str(dtype).removeprefix("torch.")
