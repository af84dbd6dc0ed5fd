"""The step's precision: bf16 autocast with channels-last where the CPU computes bf16 natively
(the check a test can switch), fp32 NCHW where it does not, and the same choice in a trial,
`train` and `bench`; and the CPU space with its course row."""

import json

import optuna
import pytest
import torch

from cerberus import cli, precision, shipped, space as spaces
from cerberus import size
from cerberus.config import COURSE, COURSE_CPU, Config, Recipe
from cerberus.data import synthetic
from cerberus.train import Trainer

from conftest import ROOT, refusal, run_cli

CPU = torch.device("cpu")
INTEL_SPR = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile\n"
AMD_ZEN3 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize("text, native", [(INTEL_SPR, True), (AMD_ZEN3, False), (GRAVITON3, True)],
                         ids=["sapphire-rapids", "zen3", "graviton3"])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, text, native):
    info = tmp_path / "cpuinfo"
    info.write_text(text)
    assert precision.cpu_has_native_bf16(info) is native
    assert precision.cpu_has_native_bf16(tmp_path / "missing") is False  # another OS: the safe side


def test_auto_is_bf16_on_cuda_and_on_a_cpu_with_native_bf16_only():
    assert precision.choose(CPU, "auto", native_bf16=True).name == "bf16"
    assert precision.choose(CPU, "auto", native_bf16=False).name == "fp32"
    assert precision.choose(torch.device("cuda"), "auto", native_bf16=False).name == "bf16"
    assert precision.choose(CPU, "fp32", native_bf16=True).name == "fp32"  # asked for, not overridden
    bf16, fp32 = precision.choose(CPU, "bf16"), precision.choose(CPU, "fp32")
    assert (bf16.memory_format, bf16.dtype, bf16.activation_bytes) == (torch.channels_last, torch.bfloat16, 2)
    assert (fp32.memory_format, fp32.dtype, fp32.activation_bytes) == (torch.contiguous_format, torch.float32, 4)
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32"):
        precision.choose(CPU, "fp16")


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "no-bf16"])
def test_the_trainer_follows_the_cpus_support(monkeypatch, native):
    """Switch the CPU check, then look at a real step: its conv outputs' dtype and the weights' layout."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda cpuinfo=None: native)
    trainer = Trainer(Config(COURSE_CPU.arch, Recipe(batch_size=16)), synthetic(32, seed=0), CPU)
    seen = []
    trainer.model.stem[0].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    trainer.step(next(trainer.batches()))
    weight = trainer.model.layers[0].conv1.weight  # 16 x 16 x 3 x 3: the two layouts differ
    assert trainer.precision.name == ("bf16" if native else "fp32")
    assert seen == [torch.bfloat16 if native else torch.float32]
    assert weight.dtype == torch.float32  # fp32 master weights either way
    assert weight.is_contiguous(memory_format=torch.channels_last) is native and weight.is_contiguous() is not native


def test_bench_reports_its_precision_and_measures_mfu_in_that_dtype(capsys):
    args = ("bench", "--blocks", "1", "--channels", "8", "--device", "cpu", "--steps", "2", "--warmup", "1", "--plain", "--json")
    assert run_cli(*args, "--precision", "fp32") == 0
    r = json.loads(capsys.readouterr().out)
    assert r["precision"] == "fp32" and r["peak_dtype"] == "float32" and r["plain_images_per_s"] > 0 and r["speedup_vs_plain"] > 0
    assert run_cli(*args, "--precision", "bf16") == 0
    r = json.loads(capsys.readouterr().out)
    assert r["precision"] == "bf16" and r["peak_dtype"] == "bfloat16" and 0 < r["mfu"] < 1
    assert "--precision 'fp16' is not a precision; allowed: auto, bf16, fp32" in refusal(capsys, *args, "--precision", "fp16")


def test_a_trial_records_the_precision_it_trained_in(workdir):
    from conftest import cli as run

    r = run("run", "--space", "smoke", "--data", "synthetic", "--device", "cpu", "--trials", "1", "--precision", "fp32",
            cwd=workdir)
    assert r.returncode == 0, r.stderr
    (trial,) = optuna.load_study(study_name="cerberus", storage=f"sqlite:///{workdir}/studies/cerberus.db").trials
    assert trial.user_attrs["precision"] == "fp32" and len(trial.user_attrs["epoch_seconds"]) == 1


def test_the_cpu_space_holds_the_course_row_and_fits_the_budget():
    space = spaces.load(shipped.resolve("cpu", shipped.SPACE, "--space"))
    assert space.params_for(COURSE_CPU)  # the course recipe at this scale is a trial of it
    assert shipped.resolve("seed-cpu", shipped.CONFIG, "--config").read_text().strip() == COURSE_CPU.to_json(indent=2)
    assert size.params(COURSE_CPU.arch) == 309_594 and COURSE_CPU.recipe == spaces.replace_epochs(COURSE, 3).recipe
    draws = spaces.sample_archs(space, 300, seed=0)
    assert max(size.params(a) for a in draws) < 1_500_000  # every draw trains at CPU scale, far under the budget
    assert space.recipe["epochs"].values() == [3]
    known = cli._known_configs(space, ROOT / "search" / "cpu.toml", None, [])
    assert known == [(COURSE_CPU, "seed")]  # the quarter-width course row goes first, by default
    assert cli._known_configs(spaces.load(ROOT / "search" / "default.toml"), ROOT / "search" / "default.toml", None, []) \
        == [(COURSE, "seed")]
