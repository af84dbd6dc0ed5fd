"""cerberus.model: the ResNet family, and its meta-device oracle."""

import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cerberus.config import Arch
from cerberus.model import ResNet, measure

SEED = Arch((3, 5, 3), (64, 128, 256))


def real_params(arch: Arch) -> int:
    return sum(p.numel() for p in ResNet(arch).parameters())


def random_arch(rng: random.Random) -> Arch:
    stages = rng.randint(1, 5)
    conv = rng.choice([1, 3, 5])
    final = max(1, 32 >> (stages - 1))
    return Arch(
        blocks=tuple(rng.randint(1, 3) for _ in range(stages)),
        widths=tuple(rng.choice([4, 8, 12, 16, 24]) for _ in range(stages)),
        conv_kernel=conv,
        skip_kernel=rng.choice([1, 3]),
        pool=rng.choice([0, *range(1, final + 1)]),
    )



def test_seed_resnet24_is_exactly_the_course_projects_size():
    assert measure(SEED).params == 4_918_602
    assert real_params(SEED) == 4_918_602
    assert measure(Arch((3, 5, 3), (64, 128, 256), skip_kernel=3)).params == 5_246_282
    assert SEED.depth == 24


@pytest.mark.slow
def test_measure_equals_the_real_module_on_many_random_architectures():
    rng = random.Random(0)
    for _ in range(40):
        arch = random_arch(rng)
        model = ResNet(arch)
        assert measure(arch).params == sum(p.numel() for p in model.parameters()), arch
        with FlopCounterMode(display=False) as counter:
            out = model.eval()(torch.zeros(1, 3, 32, 32))
        assert out.shape == (1, 10)
        assert measure(arch).flops == counter.get_total_flops(), arch


@pytest.mark.parametrize("stages", [1, 2, 3, 4, 5, 6])
def test_any_number_of_stages_builds_and_runs(stages):
    arch = Arch(tuple([1] * stages), tuple([8] * stages))
    assert ResNet(arch)(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_structure_matches_the_family_definition():
    model = ResNet(Arch((2, 2), (16, 32), pool=4))
    blocks = list(model.layers)
    assert len(blocks) == 4
    assert len(blocks[0].shortcut) == 0  # same shape: identity
    assert blocks[2].conv1.stride == (2, 2) and len(blocks[2].shortcut) == 2  # projection + BN
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert model.linear.in_features == 32 * 4 * 4  # 16x16 map, pool 4 -> 4x4 x 32 channels


def test_invalid_architectures_are_refused():
    with pytest.raises(ValueError):
        Arch((3, 5), (64,))
    with pytest.raises(ValueError):
        Arch((3,), (64,), skip_kernel=2)
    with pytest.raises(ValueError):
        Arch((1, 1, 1), (8, 8, 8), pool=9)  # last map is 8x8
