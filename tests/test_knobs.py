"""cerberus.knobs: every field declared once, and every configuration checked against it whatever its source."""

import dataclasses
import json

import pytest
from conftest import refusal

from cerberus import knobs
from cerberus.config import COURSE, TABLES, Arch, Augment, Config, Recipe
from cerberus.optim import OPTIMIZERS, SCHEDULES


def test_every_field_of_every_table_is_declared_with_a_meaning_and_what_it_allows():
    for cls in TABLES.values():
        declared = {f.name for f in knobs.fields(cls)}
        plain = {f.name for f in dataclasses.fields(cls)} - {"augment"}
        assert declared == plain, cls
        for f in knobs.fields(cls):
            assert f.spec.doc and f.allowed_words() and f.spec.acts.words(f.name)
            if f.default is not dataclasses.MISSING:  # a default is itself allowed
                assert f.spec.allowed.ok(f.default), (cls, f.name)


def test_a_field_read_by_an_optimizer_or_schedule_acts_exactly_under_those():
    for name, entry in OPTIMIZERS.items():
        values = dataclasses.asdict(Recipe(optimizer=name))
        acting = {f.name for f, acts in knobs.acting(Recipe, values) if acts}
        for read in ("momentum", "agc_clip"):
            assert (read in acting) == (read in entry.reads), (name, read)
    for name, entry in SCHEDULES.items():
        values = dataclasses.asdict(Recipe(schedule=name))
        acting = {f.name for f, acts in knobs.acting(Recipe, values) if acts}
        for read in ("milestones", "warmup"):
            assert (read in acting) == (read in entry.reads), (name, read)


def test_an_unknown_optimizer_or_schedule_is_refused_not_guessed():
    with pytest.raises(ValueError, match="recipe.optimizer = 'rmsprop' is not allowed; allowed: sgd, nesterov"):
        Recipe(optimizer="rmsprop")
    with pytest.raises(ValueError, match="recipe.schedule = 'linearish' is not allowed"):
        Recipe(schedule="linearish")


def test_canonical_puts_what_does_not_act_at_its_default():
    r = Recipe(optimizer="adamw", momentum=0.5, schedule="onecycle", warmup=0.3, augment=Augment(cutout_length=4))
    c = knobs.canonical(r)
    assert (c.momentum, c.warmup, c.augment.cutout_length) == (0.9, 0.0, 8)
    assert c.optimizer == "adamw" and c.schedule == "onecycle"


def test_summary_shows_what_acts_and_differs_from_its_default():
    words = COURSE.summary()
    assert words.startswith("blocks 3,5,3 widths 64,128,256 optimizer sgd lr 0.01")
    assert "momentum" not in words  # 0.9 is the default
    assert "cutout_holes 1" in words and "flip" in words and "mixup" not in words
    adam = Config(COURSE.arch, dataclasses.replace(COURSE.recipe, optimizer="adamw", momentum=0.5)).summary()
    assert "momentum" not in adam  # does not act under adamw


def test_an_int_is_taken_for_a_float_and_a_list_for_a_tuple():
    r = Recipe(lr=1, milestones=[0.3, 0.6])
    assert r.lr == 1.0 and isinstance(r.lr, float) and r.milestones == (0.3, 0.6)
    assert Config.from_json(Config(Arch([2], [8]), r).to_json()) == Config(Arch((2,), (8,)), r)


# What a stranger gave `train --config` before each field was checked: it trained, or crashed with
# a traceback, or (a batch larger than the training set) scored an untrained net as the result.
BAD = [
    ({"recipe": {"weight_decay": -0.1}}, "recipe.weight_decay = -0.1 is not allowed; allowed: numbers >= 0"),
    ({"recipe": {"momentum": -0.5}}, "recipe.momentum = -0.5 is not allowed; allowed: numbers in [0, 1)"),
    ({"recipe": {"label_smoothing": 2.0}}, "recipe.label_smoothing = 2.0 is not allowed; allowed: numbers in [0, 1)"),
    ({"recipe": {"augment": {"crop_padding": -4}}}, "augment.crop_padding = -4 is not allowed; allowed: integers 0..16"),
    ({"recipe": {"optimizer": "adadelta_agc", "agc_clip": -0.01}}, "recipe.agc_clip = -0.01 is not allowed"),
    ({"arch": {"blocks": [1] * 10, "widths": [8] * 10}}, "10 stages; allowed: 1..6"),
    ({"recipe": {"augment": {"cutout_holes": 100000}}}, "augment.cutout_holes = 100000 is not allowed; allowed: integers 0..16"),
    ({"recipe": {"batch_size": 0}}, "recipe.batch_size = 0 is not allowed"),
]


@pytest.mark.parametrize("change, words", BAD)
def test_train_config_refuses_each_bad_value_in_one_line_before_training(tmp_path, capsys, change, words):
    config = COURSE.to_dict()
    for table, values in change.items():
        for key, value in values.items():
            if key == "augment":
                config[table]["augment"].update(value)
            else:
                config[table][key] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    err = refusal(capsys, "train", "--config", str(path), "--data", "synthetic", "--out", str(tmp_path / "out"))
    assert words in err
    assert not (tmp_path / "out").exists()


def test_a_batch_larger_than_the_training_set_is_refused_before_training(tmp_path, capsys):
    config = Config(Arch((1,), (8,)), Recipe(batch_size=6000, epochs=1))  # synthetic: 5,000 training images
    path = tmp_path / "big.json"
    path.write_text(config.to_json())
    err = refusal(capsys, "train", "--config", str(path), "--data", "synthetic", "--out", str(tmp_path / "out"))
    assert "batch_size 6,000 is larger than the 5,000 training images" in err
    assert not (tmp_path / "out" / "metrics.json").exists()
