"""cerberus.augment: each augmentation against its definition, batched on the device with no host sync."""

import math

import pytest
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from cerberus import augment
from cerberus.config import Arch, Augment, Config, Recipe
from cerberus.data import Split
from cerberus.fit import Trainer

NEAREST = InterpolationMode.NEAREST


def torchvision_op(image: torch.Tensor, name: str, m: float) -> torch.Tensor:
    """What torchvision's TrivialAugmentWide does for operation ``name`` at signed fraction ``m``."""
    shear = math.degrees(math.atan(augment.MAX_SHEAR * m))
    shift = int(augment.MAX_TRANSLATE * m)
    affine = dict(angle=0.0, scale=1.0, interpolation=NEAREST, fill=None)
    factor = 1 + augment.MAX_ENHANCE * m
    return {
        "identity": lambda: image,
        "shear_x": lambda: TF.affine(image, translate=[0, 0], shear=[shear, 0.0], center=[0, 0], **affine),
        "shear_y": lambda: TF.affine(image, translate=[0, 0], shear=[0.0, shear], center=[0, 0], **affine),
        "translate_x": lambda: TF.affine(image, translate=[shift, 0], shear=[0.0, 0.0], **affine),
        "translate_y": lambda: TF.affine(image, translate=[0, shift], shear=[0.0, 0.0], **affine),
        "rotate": lambda: TF.rotate(image, augment.MAX_ROTATE * m, interpolation=NEAREST, fill=None),
        "brightness": lambda: TF.adjust_brightness(image, factor),
        "color": lambda: TF.adjust_saturation(image, factor),
        "contrast": lambda: TF.adjust_contrast(image, factor),
        "sharpness": lambda: TF.adjust_sharpness(image, factor),
        "posterize": lambda: TF.posterize(image, 8 - round(abs(m) * (8 - augment.MIN_BITS))),
        "solarize": lambda: TF.solarize(image, 1.0 - abs(m)),
        "autocontrast": lambda: TF.autocontrast(image),
        "equalize": lambda: TF.equalize(image),
    }[name]()


def images(n: int) -> torch.Tensor:
    """Smooth random images in [0, 1], so that geometric ops move visible structure."""
    return torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8), size=32, mode="bilinear")


def _mixed(x, mx, my):
    """From labels that name each image (one class per image), each image's partner and the
    share of itself it kept; and whether its pixels are that mix (mixup) or a box (cutmix)."""
    kept, partner = my.diagonal(), (my - torch.diag(my.diagonal())).argmax(1)
    kinds = set()
    for i in range(len(x)):
        if partner[i] == i or kept[i] in (0, 1):
            continue
        blend = kept[i] * x[i] + (1 - kept[i]) * x[partner[i]]
        from_partner = (mx[i] == x[partner[i]]).all(0) & (mx[i] != x[i]).any(0)
        if torch.allclose(mx[i], blend, atol=1e-6):
            kinds.add("mixup")
        else:  # a box: every pixel is its own or its partner's, the partner's share as the labels say
            assert ((mx[i] == x[i]).all(0) | from_partner).all()
            assert abs(from_partner.float().mean() - (1 - kept[i])) < 1e-6
            kinds.add("cutmix")
    return kinds



@pytest.mark.parametrize("name", augment.TRIVIAL_OPS)
def test_each_operation_equals_torchvisions_at_every_magnitude(name):
    torch.manual_seed(0)
    x = images(4)
    for level in range(0, augment.TRIVIAL_BINS, 3):  # 0, 3, ..., 30: both ends and between
        for sign in (1, -1):
            m = sign * level / (augment.TRIVIAL_BINS - 1)
            mine = augment.trivial_op(name, x, torch.full((4,), sign * level))
            torch.testing.assert_close(mine, torchvision_op(x, name, m), atol=1e-6, rtol=0, msg=f"{name} at {m}")


def test_each_image_keeps_its_own_magnitude():
    x = images(2)
    mine = augment.trivial_op("rotate", x, torch.tensor([15, -6]))  # magnitudes 0.5 and -0.2
    torch.testing.assert_close(mine[1:], torchvision_op(x[1:], "rotate", -0.2))


def test_trivial_augment_keeps_shape_and_range_and_changes_most_images():
    torch.manual_seed(0)
    x = images(140)
    out = augment.trivial_augment(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    changed = (out - x).abs().flatten(1).amax(1) > 1e-6
    # identity (1 in 14) and the zero-magnitude bins leave an image as it was; the rest move it
    assert 0.75 < changed.float().mean() < 1


def test_trivial_augment_is_deterministic_under_a_seed():
    x = images(64)
    torch.manual_seed(5)
    a = augment.trivial_augment(x)
    torch.manual_seed(5)
    b = augment.trivial_augment(x)
    torch.manual_seed(6)
    c = augment.trivial_augment(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_trivial_augment_has_no_host_sync():
    # The meta device has no data: anything that reads values on the host (nonzero, item, a
    # boolean-mask index) fails there, so running through is proof there is none.
    x = torch.empty(64, 3, 32, 32, device="meta")
    with pytest.raises(NotImplementedError):
        torch.nonzero(x > 0)  # the probe itself: a sync does fail on meta
    assert augment.trivial_augment(x).shape == x.shape


def test_trivial_augment_works_on_batches_smaller_than_the_number_of_operations():
    torch.manual_seed(0)
    assert augment.trivial_augment(images(3)).shape == (3, 3, 32, 32)


def test_apply_normalises_after_trivial_augment():
    torch.manual_seed(0)
    x, y = images(16), torch.eye(10)[torch.arange(16) % 10]
    mean, std = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25)
    plain, _ = augment.apply(x, y, Augment(), mean, std)
    torch.testing.assert_close(plain, (x - mean) / std)
    torch.manual_seed(1)
    out, labels = augment.apply(x, y, Augment(trivial_augment=True), mean, std)
    torch.manual_seed(1)
    torch.testing.assert_close(out, (augment.trivial_augment(x) - mean) / std)
    assert torch.equal(labels, y)


def test_a_training_step_runs_with_trivial_augment():
    images_u8 = (images(64) * 255).to(torch.uint8)
    train = Split(images_u8, torch.arange(64) % 10)
    config = Config(Arch((1,), (8,)), Recipe(batch_size=32, augment=Augment(crop_padding=4, flip=True, trivial_augment=True)))
    trainer = Trainer(config, train, torch.device("cpu"))
    assert all(torch.isfinite(trainer.step(idx)) for idx in trainer.batches())


def test_a_mixed_batch_gives_each_image_its_own_operation_as_torchvision_does():
    """The batched pass with every operation present at once: image i, in the group of
    operation k at bin b, equals torchvision's operation k at b's magnitude."""
    torch.manual_seed(3)
    n = 2 * len(augment.TRIVIAL_OPS) + 5
    x, bins = images(n), torch.randint(0, 2 * augment.TRIVIAL_BINS, (n,))
    sizes = tuple(n // 14 + (i < n % 14) for i in range(14))
    out = augment._operations(x, bins, sizes)
    names = [name for name, size in zip(augment.TRIVIAL_OPS, sizes) for _ in range(size)]
    for i, (name, b) in enumerate(zip(names, bins.tolist())):
        expected = torchvision_op(x[i : i + 1], name, augment._magnitude(b))
        torch.testing.assert_close(out[i : i + 1], expected, atol=1e-6, rtol=0, msg=f"image {i}: {name} at bin {b}")


def test_the_two_halves_of_the_bins_are_the_two_signs_of_each_level():
    mags = [augment._magnitude(b) for b in range(2 * augment.TRIVIAL_BINS)]
    assert sorted(abs(m) for m in mags) == sorted(2 * [level / 30 for level in range(31)])
    assert mags[:31] == [-level / 30 for level in range(30, -1, -1)] and mags[31:] == [level / 30 for level in range(31)]


def test_trivial_augment_is_a_fixed_few_operations_per_batch():
    """266 operations a batch when each operation ran on its own group (a GPU kernel each);
    one warp, one blend and one pass per other kind now, whatever the batch size."""
    from cerberus import opcount

    for n in (128, 512):
        x = images(n)
        augment.trivial_augment(x)  # the tables are built once per batch shape
        assert opcount.count(lambda: augment.trivial_augment(x)) <= 60


def test_augmentations_keep_shape_and_move_pixels():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 32, 32)
    for out in (augment.crop(x, 4), augment.flip(x), augment.rotate(x, 10), augment.cutout(x, 2, 8)):
        assert out.shape == x.shape and not torch.equal(out, x)
    # crop is a pure translation: each output pixel is an input pixel or padding
    shifted = augment.crop(x, 4)
    assert set(shifted.unique().tolist()) <= set(x.unique().tolist()) | {0.0}
    # cutout zeroes at most holes * length^2 pixels per channel, and at least some
    zeros = (augment.cutout(x, 1, 8)[:, 0] == 0).flatten(1).sum(1)
    assert zeros.max() <= 64 and zeros.sum() > 0


def test_mixing_blends_or_pastes_the_shuffled_batch_as_its_labels_say():
    n = 32
    x, y = torch.rand(n, 3, 32, 32), torch.eye(n)
    for mixup, cutmix, want in ((1.0, 0.0, {"mixup"}), (0.0, 1.0, {"cutmix"}), (1.0, 1.0, {"mixup", "cutmix"})):
        seen = set()
        for seed in range(8):
            torch.manual_seed(seed)
            mx, my = augment.mix(x, y, mixup, cutmix)
            assert mx.shape == x.shape and torch.allclose(my.sum(1), torch.ones(n))
            seen |= _mixed(x, mx, my)
        assert seen == want, (mixup, cutmix)


def test_a_reflected_crop_shifts_the_image_and_mirrors_its_edge():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float).view(2, 3, 8, 8)
    torch.manual_seed(0)
    out = augment.crop(x, 2, "reflect")
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(2):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)  # one of the 25 shifts, edges reflected
    assert not torch.equal(augment.crop(x, 2, "reflect"), augment.crop(x, 2, "mean"))


def test_alternating_flips_flip_each_image_in_every_other_epoch():
    train = Split(torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8), torch.arange(64) % 10)
    config = Config(Arch((1,), (4,)), Recipe(batch_size=64, augment=Augment(flip=True, alternate_flip=True)))
    trainer = Trainer(config, train, torch.device("cpu"))
    seen = []
    for _ in range(3):
        idx = next(trainer.batches())
        seen.append((trainer.sides[idx] ^ trainer.odd)[idx.argsort()])  # image order
    assert 16 < seen[0].sum() < 48  # a random half first
    assert torch.equal(seen[1], ~seen[0]) and torch.equal(seen[2], seen[0])  # then all the other way, and back
