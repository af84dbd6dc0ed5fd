"""cerberus.size: the closed-form size against the meta-device oracle."""

import random

import pytest
import torch

from cerberus import augment, memory, size
from cerberus import fit as fits
from cerberus.config import COURSE, MAX_STAGES, Arch, Augment, Config, Recipe
from cerberus.data import synthetic
from cerberus.model import measure
from cerberus.precision import choose
from cerberus.size import norms
from cerberus.size import params as count_params

CPU = torch.device("cpu")


FP32, BF16_CUDA = choose(CPU, "fp32"), choose("cuda")


FAST = dict(stem="whiten", downsample="pool", activation="gelu", conv_init="identity", bn_weight="frozen",
            bn_momentum=0.4, pool_type="max")  # airbench's choices
ARCHS = [Arch((1,), (8,)), Arch((2, 2), (16, 32), skip_kernel=3), Arch((1, 1, 1), (8, 16, 32), conv_kernel=5, pool=2),
         Arch((1,) * 6, (8, 8, 16, 16, 32, 32)), Arch((2, 1), (16, 16)), COURSE.arch,
         Arch((1, 1, 1), (8, 16, 16), **FAST), Arch((2, 1), (8, 16), downsample="pool", skip_kernel=3),
         Arch((1, 2), (16, 16), stem="whiten"), Arch((1, 1), (8, 8), activation="gelu", pool_type="max", pool=2),
         Arch((1, 1, 1), (8, 16, 16), residual=False, **FAST), Arch((2, 1), (8, 16), residual=False)]


ORACLE_ARCHS = 80  # ~0.1 s each on the meta device, forward and backward; benchmarks/size_oracle.py checks 10,000


def random_arch(rng: random.Random) -> Arch:
    """Any stage count, kernel, pool and choice of the family."""
    stem, downsample = rng.choice(["conv", "whiten"]), rng.choice(["stride", "pool"])
    most = MAX_STAGES if downsample == "stride" else 5 - (stem == "whiten")  # a pool halves 32 to 1 in 5 stages, 31 in 4
    stages = rng.randint(1, most)
    arch = Arch((1,) * stages, (1,) * stages, stem=stem, downsample=downsample)
    return Arch(
        blocks=tuple(rng.choice([1, 1, 2, 3]) for _ in range(stages)),
        widths=tuple(rng.randint(1, 48) for _ in range(stages)),  # equal neighbours too: no projection
        conv_kernel=rng.choice([1, 3, 5, 7]),
        skip_kernel=rng.choice([1, 3]),
        pool=rng.randint(0, arch.final_map_size),
        pool_type=rng.choice(["avg", "max"]), stem=stem, downsample=downsample,
        activation=rng.choice(["relu", "gelu"]), bn_weight=rng.choice(["learned", "frozen"]),
        residual=rng.random() < 0.8,
    )



@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"{a.blocks}x{a.widths}")
def test_the_closed_form_counts_the_model_exactly(arch):
    """Parameters as the model has them, and the maps a real fp32 training step saves for backward."""
    assert count_params(arch) == measure(arch).params
    if arch == COURSE.arch:
        return  # its step is the slow one; the small nets cover every kind of block
    batch = 8
    trainer = fits.Trainer(Config(arch, Recipe(batch_size=batch, augment=Augment(crop_padding=2, flip=True))),
                               synthetic(2 * batch, seed=1), CPU, precision=FP32)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    idx = next(trainer.batches())
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        x, y = augment.apply(trainer.train.images[idx].float() / 255, trainer.eye[trainer.train.labels[idx]],
                             trainer.recipe.augment, trainer.mean, trainer.std)
        torch.nn.functional.cross_entropy(trainer.model(x), y).backward()
    weights = {p.untyped_storage().data_ptr() for p in [*trainer.model.parameters(), *trainer.model.buffers()]}
    maps = sum(n for ptr, n in saved.items() if ptr not in weights)
    counted = 4 * (sum(size * n for size, n in memory.saved_maps(arch, batch)) + memory.IMAGE * batch) \
        + 8 * sum(size * n for size, n in memory.saved_indices(arch, batch))
    # what the closed form leaves out: BatchNorm's batch statistics (per channel), the logits and loss
    assert counted <= maps <= counted + 4 * batch * 10 * 4 + 8 * norms(arch)[1], (maps, counted)


@pytest.mark.slow
def test_closed_form_equals_the_meta_device_count_on_random_architectures():
    rng = random.Random(15)
    archs = [random_arch(rng) for _ in range(ORACLE_ARCHS)]
    assert {(a.stem, a.downsample, a.activation, a.pool_type) for a in archs} == {
        (s, d, a, p) for s in ("conv", "whiten") for d in ("stride", "pool") for a in ("relu", "gelu") for p in ("avg", "max")}
    assert {len(a.blocks) for a in archs} == set(range(1, MAX_STAGES + 1))
    assert {(a.conv_kernel, a.skip_kernel, a.pool == 0) for a in archs} == {(k, s, g) for k in (1, 3, 5, 7) for s in (1, 3)
                                                                            for g in (True, False)}
    for arch in archs:
        assert size.of(arch) == measure(arch), arch


@pytest.mark.parametrize("arch", [Arch((3, 5, 3), (64, 128, 256)), Arch((3, 5, 3), (64, 128, 256), skip_kernel=3),
                                  Arch((3, 5, 3), (16, 32, 64)), Arch((200,), (16,)), Arch((1,) * 6, (4,) * 6, pool=1)],
                         ids=["course", "course-skip3", "quarter", "deep", "six-stages"])
def test_known_nets(arch):
    assert size.of(arch) == measure(arch)


def test_the_course_nets_sizes():
    assert size.params(Arch((3, 5, 3), (64, 128, 256))) == 4_918_602
    assert size.params(Arch((3, 5, 3), (16, 32, 64))) == 309_594
