"""cerberus.precision: bf16 where the hardware computes it, fp32 elsewhere."""

import pytest
import torch

from cerberus import precision
from cerberus.config import COURSE_CPU, Config, Recipe
from cerberus.data import synthetic
from cerberus.fit import Trainer

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
    fp32_layout = torch.contiguous_format if precision.cpu_has_avx512() else torch.channels_last
    assert (fp32.memory_format, fp32.dtype, fp32.activation_bytes) == (fp32_layout, torch.float32, 4)
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
    last = native or not precision.cpu_has_avx512()
    assert weight.is_contiguous(memory_format=torch.channels_last) is last and weight.is_contiguous() is not last


def test_fp32_on_a_cpu_is_channels_last_unless_the_cpu_has_avx512(monkeypatch):
    """NCHW was faster on an AVX-512 Xeon, channels-last on an AVX2 EPYC (benchmarks/RESULTS.md)."""
    for avx512, layout in ((True, torch.contiguous_format), (False, torch.channels_last)):
        monkeypatch.setattr(precision, "cpu_has_avx512", lambda: avx512)
        assert precision.choose(CPU, "fp32").memory_format == layout
        assert precision.choose(CPU, "bf16").memory_format == torch.channels_last
        assert precision.choose(torch.device("cuda"), "fp32").memory_format == torch.contiguous_format
