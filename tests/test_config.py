"""cerberus.config: the configuration objects, their JSON round trip and their checks."""


import optuna
import pytest
from conftest import ROOT, refusal

from cerberus import space as spaces
from cerberus.config import Arch, Config, Recipe


def sample(space: spaces.Space, n: int, seed: int = 0) -> list[Config]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.sample(study.ask()) for _ in range(n)]



@pytest.mark.parametrize("text, words", [
    ('{"recipe": {}}', "config: missing key 'arch'; required: arch, recipe"),
    ('{"arch": {"blocks": [1]}, "recipe": {}}', "config.arch: missing key 'widths'; required: blocks, widths"),
    ('{"arch": {"blocks": [1], "widths": [8]}, "recipe": {"lr": Infinity}}', "config.recipe.lr: expected a finite number"),
])
def test_a_config_file_missing_a_key_is_refused_in_its_own_words(tmp_path, capsys, text, words):
    path = tmp_path / "c.json"
    path.write_text(text)
    err = refusal(capsys, "train", "--config", str(path), "--data", "synthetic", "--device", "cpu", "--out", str(tmp_path / "o"))
    assert words in err and "Traceback" not in err and "positional argument" not in err


def test_config_round_trips_through_json():
    for config in sample(spaces.load(ROOT / "search/default.toml"), 50):
        assert Config.from_json(config.to_json()) == config


def test_config_json_refuses_unknown_keys_and_wrong_types():
    good = Config(Arch((1,), (8,)), Recipe()).to_dict()
    with pytest.raises(ValueError, match="unknown key 'depth'"):
        Config.from_dict({**good, "arch": {**good["arch"], "depth": 3}})
    with pytest.raises(ValueError, match="expected an integer"):
        Config.from_dict({**good, "arch": {**good["arch"], "pool": "global"}})
