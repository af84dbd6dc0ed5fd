"""cerberus.space: space files parsed, validated and sampled."""

import warnings
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, refusal

from cerberus import bench, space
from cerberus import space as spaces
from cerberus.config import COURSE, MAX_BLOCKS, Arch, Augment, Config, Recipe
from cerberus.errors import UserError


def sample(space: spaces.Space, n: int, seed: int = 0) -> list[Config]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.sample(study.ask()) for _ in range(n)]


CONDITIONAL = """[arch]
stages = 1
blocks = 1
widths = 8
[recipe]
optimizer = ["sgd", "nesterov", "adamw", "adadelta_agc"]
momentum = { low = 0.8, high = 0.95 }
schedule = ["cosine", "step", "onecycle"]
milestones = [[0.5, 0.75], [0.3, 0.6]]
agc_clip = [0.01, 0.02]
warmup = [0.0, 0.1]
[augment]
cutout_holes = [0, 1]
cutout_length = [8, 16]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


BASE = '[arch]\nstages = 2\nblocks = 1\nwidths = 8\n'



def test_search_seed_toml_pins_the_course_config_that_bench_and_enqueue_use():
    pinned = space.load(ROOT / "search" / "seed.toml").sample(optuna.trial.FixedTrial({}))
    assert pinned == COURSE and bench.COURSE_RECIPE == COURSE.recipe


def test_a_space_that_could_be_too_deep_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    deep = tmp_path / "deep.toml"
    deep.write_text("[arch]\nstages = [2, 3]\nblocks = { low = 1, high = 100000 }\nblocks_3 = [1, 400]\nwidths = 8\n")
    err = refusal(capsys, "run", "--space", str(deep), "--data", "synthetic", "--device", "cpu")
    assert "[arch] blocks: up to 200,400 blocks in all (100000+100000+400 over 3 stage(s))" in err
    assert f"more than the {MAX_BLOCKS:,} cerberus builds" in err and not (tmp_path / "studies").exists()
    edge = tmp_path / "edge.toml"  # the largest value of a stepped range is on its grid, not its high end
    edge.write_text(f"[arch]\nstages = 2\nblocks = {{ low = 2, high = {MAX_BLOCKS // 2 + 1}, step = 2 }}\nwidths = 8\n")
    assert spaces.load(edge).arch["blocks"].high == MAX_BLOCKS // 2 + 1  # 2, 4, .. 500: 1,000 blocks at most
    edge.write_text(f"[arch]\nstages = 2\nblocks = {{ low = 1, high = {MAX_BLOCKS // 2 + 1}, step = 2 }}\nwidths = 8\n")
    assert f"up to {MAX_BLOCKS + 2:,} blocks in all" in refusal(capsys, "run", "--space", str(edge), "--data", "synthetic")


def test_params_for_refuses_what_a_space_cannot_express():
    space = spaces.load(ROOT / "search" / "default.toml")
    import dataclasses

    far = dataclasses.replace(COURSE, recipe=dataclasses.replace(COURSE.recipe, lr=50.0))
    with pytest.raises(UserError, match="lr = 50.0, the space allows"):
        space.params_for(far)
    momentum_unused = dataclasses.replace(COURSE, recipe=dataclasses.replace(COURSE.recipe, optimizer="adamw", momentum=0.1))
    assert space.params_for(momentum_unused)["optimizer"] == "adamw"  # a key that does not act is no obstacle


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "{ low = 1e-3, high = inf }", "[0.1, nan]"])
def test_a_space_with_an_infinite_or_nan_number_is_refused_when_read(tmp_path, value):
    from cerberus import space as spaces
    from cerberus.errors import UserError

    path = tmp_path / "s.toml"
    path.write_text(f"[arch]\nstages = 1\nblocks = 1\nwidths = 8\n[recipe]\nlr = {value}\n")
    with pytest.raises(UserError, match=r"\[recipe\] lr: .* is not allowed; allowed: numbers > 0"):
        spaces.load(path)


@pytest.mark.slow
def test_default_space_rejects_under_a_fifth_of_random_architectures():
    archs = spaces.sample_archs(spaces.load(ROOT / "search/default.toml"), 1000, seed=0)
    share = spaces.rejected_fraction(archs, 5_000_000)
    assert 0 < share < 0.20  # most draws train, and the largest still reach past the budget


def test_default_space_holds_the_course_configuration():
    """So that a search can start from the course project's configuration (epochs aside)."""
    params = {"stages": 3, "blocks_1": 3, "blocks_2": 5, "blocks_3": 3, "widths_1": 64, "widths_2": 128,
              "widths_3": 256, "skip_kernel": 1, "optimizer": "sgd", "lr": 0.01, "weight_decay": 5e-4,
              "schedule": "step", "warmup": 0.0, "batch_size": 128, "label_smoothing": 0.0, "tta_flip": False,
              "rotation": 10.0, "cutout_holes": 1, "cutout_length": 8, "mixup_alpha": 0.0, "cutmix_alpha": 0.0,
              "trivial_augment": False, "pool_type": "avg", "stem": "conv", "downsample": "stride", "activation": "relu",
              "conv_init": "torch", "bn_weight": "learned", "bn_momentum": 0.1, "momentum": 0.9, "lr_bias_scale": 1.0,
              "lr_head_scale": 1.0, "ema": 0.0, "tta_shift": False, "crop_padding": 4, "crop_fill": "mean",
              "alternate_flip": False, "residual": True}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # FixedTrial only warns of a value outside a range or choice
        config = spaces.load(ROOT / "search/default.toml").sample(optuna.trial.FixedTrial(params))
    assert spaces.set_length(config, COURSE.recipe.epochs) == COURSE and config.recipe.budget == 1.4


def test_seed_space_pins_the_course_recipe():
    (config,) = sample(spaces.load(ROOT / "search/seed.toml"), 1)
    assert config == Config(
        Arch((3, 5, 3), (64, 128, 256), conv_kernel=3, skip_kernel=1, pool=0),
        Recipe(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, schedule="step",
               milestones=(0.4, 0.75), epochs=200, batch_size=128,
               augment=Augment(crop_padding=4, flip=True, rotation=10.0, cutout_holes=1, cutout_length=8)),
    )
    # Milestones 0.4 and 0.75 of 200 epochs are the course project's epochs 80 and 150.
    assert [m * 200 for m in config.recipe.milestones] == [80, 150]


def test_default_samples_stay_inside_the_space():
    space = spaces.load(ROOT / "search/default.toml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(100):
        trial = study.ask()
        c = space.sample(trial)
        assert len(c.arch.blocks) in (3, 4)
        assert all(1 <= b <= 5 for b in c.arch.blocks)
        assert f"blocks_{len(c.arch.blocks)}" in trial.params
        study.tell(trial, 0.0)


def test_a_key_is_sampled_only_where_it_acts(tmp_path):
    space = spaces.load(write(tmp_path, CONDITIONAL))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(100):
        trial = study.ask()
        c = space.sample(trial)
        assert ("momentum" in trial.params) == (c.recipe.optimizer in ("sgd", "nesterov"))
        assert ("milestones" in trial.params) == (c.recipe.schedule == "step")
        assert ("agc_clip" in trial.params) == (c.recipe.optimizer == "adadelta_agc")
        assert ("warmup" in trial.params) == (c.recipe.schedule != "onecycle")
        assert ("cutout_length" in trial.params) == (c.recipe.augment.cutout_holes > 0)
        study.tell(trial, 0.0)


@pytest.mark.parametrize("text, message", [
    (BASE + "depth = 3\n", r"\[arch\] depth: unknown key; allowed: activation, blocks, .*conv_kernel"),
    (BASE + '[recipe]\noptimizer = "rmsprop"\n', r"\[recipe\] optimizer: 'rmsprop' is not allowed; allowed: sgd, nesterov, adam, adamw, adadelta, adadelta_agc"),
    (BASE + "[recipe]\nlr = { low = 0.1, high = 0.01 }\n", r"\[recipe\] lr: range low 0.1 must be below high 0.01"),
    (BASE + "[recipe]\nlr = { low = 0, high = 1, log = true }\n", r"\[recipe\] lr: .*not allowed; allowed: numbers > 0"),
    (BASE + "[recipe]\nepochs = []\n", r"\[recipe\] epochs: empty list of choices"),
    (BASE + '[recipe]\nepochs = "ten"\n', r"\[recipe\] epochs: 'ten' is not allowed; allowed: integers >= 1"),
    (BASE + "[recipe]\nbatch_size = 12.5\n", r"\[recipe\] batch_size: 12.5 is not allowed"),
    (BASE + "[augment]\nflip = 1\n", r"\[augment\] flip: 1 is not allowed; allowed: true or false"),
    (BASE + '[augment]\ntrivial_augment = "wide"\n', r"\[augment\] trivial_augment: 'wide' is not allowed; allowed: true or false"),
    (BASE + "[training]\n", r"unknown table \[training\]; allowed: \[arch\], \[recipe\], \[augment\]"),
    ("[arch]\nstages = [2, 3]\nblocks_1 = 1\nblocks_2 = 1\nwidths = 8\n", r"\[arch\] blocks: missing for stage 3"),
    (BASE + "blocks_5 = 2\n", r"\[arch\] blocks_5: stage 5 does not exist"),
    (BASE + "pool = 17\n", r"\[arch\] pool: 17 is larger than the last map \(16x16 with 2 stages\)"),
    (BASE + "skip_kernel = [1, 2]\n", r"\[arch\] skip_kernel: 2 is not allowed; allowed: 1 or 3"),
    (BASE + "[recipe]\nmilestones = [0.8, 0.4]\n", r"\[recipe\] milestones: .*increasing fractions"),
    (BASE + "[recipe]\nepochs = { low = 1, high = 5, stride = 2 }\n", r"unknown range key 'stride'; allowed: low, high, log, step"),
    ("[arch]\nblocks = 1\n", r"\[arch\] stages: missing"),
    ("[arch\n", r"not valid TOML"),
])
def test_wrong_files_name_file_key_and_what_is_allowed(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(UserError, match=message) as err:
        spaces.load(path)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        spaces.load(tmp_path / "nope.toml")


def test_shipped_spaces_load():
    for name in ("default", "seed", "smoke"):
        spaces.load(ROOT / "search" / f"{name}.toml")
