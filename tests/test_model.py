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


FAST = dict(stem="whiten", downsample="pool", activation="gelu", conv_init="identity", bn_weight="frozen",
            bn_momentum=0.4, pool_type="max")


def test_the_whitening_stem_whitens_the_patches_it_was_fitted_on():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(3, 3, generator=g)
    images = torch.einsum("ij,njhw->nihw", mix, torch.randn(200, 3, 32, 32, generator=g))  # correlated channels
    images = images + images.roll(1, dims=3)  # and neighbouring pixels
    model = ResNet(Arch((1,), (8,), stem="whiten"))
    model.whiten(images)
    w = model.stem.conv.weight
    assert w.shape == (24, 3, 2, 2) and not w.requires_grad and model.stem.conv.bias.requires_grad
    assert torch.equal(w[12:], -w[:12])  # each filter and its negative
    out = torch.nn.functional.conv2d(images, w[:12])  # no bias: the whitened patches
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = flat.T @ flat / len(flat)
    assert torch.allclose(covariance, torch.eye(12), atol=0.02)


def test_identity_init_passes_channels_through_and_shrinks_the_head():
    model = ResNet(Arch((1, 1), (8, 16), conv_init="identity"))
    conv = model.layers[1].conv1  # 8 -> 16
    x = torch.randn(2, 8, 6, 6)
    assert torch.allclose(torch.nn.functional.conv2d(x, conv.weight[:8], padding=1), x)  # filter i passes channel i
    assert conv.weight[8:].abs().sum() > 0  # the rest keep torch's init
    assert model.linear.weight.std().item() == pytest.approx(1 / 16, rel=0.25)  # std 1/inputs


def test_the_fast_choices_build_the_shapes_they_promise():
    arch = Arch((1, 1, 1), (16, 32, 32), **FAST)
    model = ResNet(arch)
    maps = []
    for block in model.layers:
        block.register_forward_hook(lambda m, a, out: maps.append(out.shape[-1]))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert maps == [15, 7, 3] == [side for _, side in arch.sides]  # 31 after the 2x2 stem, each stage pools
    block = model.layers[0]
    assert isinstance(block.pool, torch.nn.MaxPool2d) and block.conv1.stride == (1, 1)
    assert block.act is torch.nn.functional.gelu and isinstance(model.pool, torch.nn.MaxPool2d)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(not n.weight.requires_grad and n.momentum == 0.4 for n in norms)
    same = model.layers[2].shortcut  # 32 -> 32 at half the map: a max-pool alone
    assert len(same) == 1 and isinstance(same[0], torch.nn.MaxPool2d)


def test_measure_counts_a_training_step_as_a_real_one_does():
    """The meta-device count of a forward and backward equals FlopCounterMode on a real step."""
    for arch in (Arch((1, 1), (8, 16)), Arch((1, 1, 1), (8, 16, 16), **FAST)):
        model = ResNet(arch).train()
        with FlopCounterMode(display=False) as counter:
            model(torch.randn(4, 3, 32, 32)).sum().backward()
        assert measure(arch).train_flops == counter.get_total_flops() // 4
