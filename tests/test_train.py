"""cerberus.train and the `train` command: final models retrained and scored on the test set once."""

import json
import pickle
import re
import shutil
import signal
import statistics
from datetime import datetime

import optuna
import pytest
import torch
from conftest import ROOT, cli, popen, refusal, run_cli
from optuna.trial import TrialState

from cerberus import data as datasets
from cerberus import train as trains
from cerberus.cli import main
from cerberus.config import COURSE, Arch, Config, Recipe
from cerberus.errors import UserError
from cerberus.fit import _stats, evaluate
from cerberus.model import ResNet, measure
from cerberus.reporter import INTERVAL_ENV
from cerberus.trials import best_trial, summary

ON_CPU = ("--data", "synthetic", "--device", "cpu")


TINY = Config(Arch((1,), (8,)), Recipe(optimizer="nesterov", lr=0.05, epochs=1, batch_size=64))


def load(folder, study="cerberus"):
    return optuna.load_study(study_name=study, storage=f"sqlite:///{folder / 'studies' / 'cerberus.db'}")


def snapshot(folder):
    """Everything `train` could change in a study: its attributes and every trial's."""
    study = load(folder)
    return study.user_attrs, [(t.number, t.state, t.value, t.user_attrs) for t in study.get_trials(deepcopy=False)]


@pytest.fixture(scope="module")
def searched(default_search, tmp_path_factory):
    """A smoke study of two trained trials, plus trial 2: failed before it sampled, so no config."""
    root = shutil.copytree(default_search, tmp_path_factory.mktemp("searched") / "w")
    study = load(root)
    study.tell(study.ask(), state=TrialState.FAIL)
    return root


@pytest.fixture
def study_dir(searched, tmp_path):
    """A private copy of the searched folder, for a test that changes it."""
    return shutil.copytree(searched, tmp_path / "w")


def write_cifar_layout(root, per_batch=40, test=100):
    """A CIFAR-10 folder in the official python layout, with synthetic images: small, so a
    search and a final training on it take a second."""
    folder = root / datasets.BATCHES
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        split = datasets.synthetic(test if name == "test_batch" else per_batch, seed=10 + i)
        batch = {b"data": split.images.reshape(len(split), -1).numpy(), b"labels": split.labels.tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    return root


LEFT = r"~\d[\d hmins]* left"  # "~42 s left", "~3 min 05 s left" on a slow machine



@pytest.mark.slow
def test_train_a_trial_writes_weights_config_and_metrics_and_records_them_on_the_study(study_dir, monkeypatch, capsys):
    best = summary(best_trial(load(study_dir)))  # the row `best --json` prints
    n = best["trial"]
    r = cli("train", "--trial", str(n), "--seeds", "2", "--epochs", "1", *ON_CPU, "--json", cwd=study_dir)
    assert r.returncode == 0, r.stderr
    out = study_dir / "studies" / "cerberus" / "final" / f"trial-{n}"
    metrics = json.loads(r.stdout)
    assert metrics == json.loads((out / "metrics.json").read_text())
    assert re.search(r"seed 0 \(1 of 2\): training 1 epoch\(s\), [0-9.e-]+ PFLOP, on 5,000 images", r.stderr), r.stderr
    assert "Traceback" not in r.stderr

    config = Config.from_json((out / "config.json").read_text())
    assert config == Config.from_dict(best["config"])  # the smoke space trains 1 epoch, so --epochs 1 changes nothing
    assert metrics["params"] == best["params"] == measure(config.arch).params and metrics["flops"] == best["flops"]
    assert (metrics["study"], metrics["trial"], metrics["val_accuracy"], metrics["config_file"]) == ("cerberus", n, best["val_accuracy"], None)
    assert (metrics["epochs"], metrics["device"], metrics["data"]) == (1, "cpu", "synthetic")
    assert (metrics["train_images"], metrics["test_images"]) == (5000, 1000)  # train + validation; the test set
    assert datetime.fromisoformat(metrics["date"]).tzinfo is not None

    seeds = metrics["seeds"]
    assert [s["seed"] for s in seeds] == [0, 1] and all(s["epochs"] == 1 and s["train_seconds"] > 0 for s in seeds)
    assert [s["cuda_graph"] for s in seeds] == [False, False]  # not asked for, and no CUDA here
    accuracies = [s["test_accuracy"] for s in seeds]
    assert metrics["test_accuracy"] == pytest.approx(statistics.fmean(accuracies))
    assert metrics["test_accuracy_std"] == pytest.approx(statistics.stdev(accuracies)) and metrics["test_seeds"] == 2

    # Each figure is the test accuracy of the weights saved beside it.
    train, test = datasets.train_split("synthetic"), datasets.test_split("synthetic")
    mean, std = _stats(train.images)
    weights = []
    for s in seeds:
        model = ResNet(config.arch)
        model.load_state_dict(torch.load(out / s["weights"], weights_only=True), strict=True)
        assert evaluate(model, test, mean, std, tta_flip=config.recipe.tta_flip) == s["test_accuracy"]
        weights.append(model.state_dict())
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # two seeds, two models

    assert trains.stored_result(load(study_dir), n) == {
        "test_accuracy": metrics["test_accuracy"], "test_accuracy_std": metrics["test_accuracy_std"],
        "test_seeds": 2, "test_epochs": 1}
    before, written = snapshot(study_dir), (out / "metrics.json").read_bytes()
    monkeypatch.chdir(study_dir)
    with pytest.raises(SystemExit) as again:
        main(["train", "--trial", str(n), *ON_CPU])
    assert again.value.code == 2 and "already holds a finished result" in capsys.readouterr().err
    assert snapshot(study_dir) == before and (out / "metrics.json").read_bytes() == written


@pytest.mark.slow
def test_train_a_config_file_says_each_seed_once_prints_one_result_and_needs_no_study(workdir):
    (workdir / "tiny.json").write_text(TINY.to_json())
    r = cli("train", "--config", "tiny.json", "--seeds", "1", *ON_CPU, cwd=workdir)
    assert r.returncode == 0, r.stderr
    (mean_line,) = r.stdout.splitlines()  # the result, once; each seed's score is a progress line on stderr
    assert mean_line.startswith("test accuracy ") and "±" not in mean_line and "(1 seed)" in mean_line
    assert ", 1 epoch;" in mean_line  # not "1 epochs"
    assert len([line for line in r.stderr.splitlines() if "test accuracy" in line]) == 1
    out = workdir / "studies" / "cerberus" / "final" / "tiny"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy_std"] is None and metrics["test_seeds"] == 1  # no spread from one seed
    assert (metrics["study"], metrics["trial"], metrics["config_file"]) == (None, None, "tiny.json")
    assert Config.from_json((out / "config.json").read_text()) == TINY and (out / "seed-0.pt").exists()
    assert not (workdir / "studies" / "cerberus.db").exists()


def test_a_config_file_may_be_a_best_json_row_or_its_list_of_one(tmp_path):
    row = {"trial": 3, "val_accuracy": 0.5, "config": TINY.to_dict()}
    for content in (TINY.to_dict(), row, [row]):
        (tmp_path / "c.json").write_text(json.dumps(content))
        assert trains.from_file(tmp_path / "c.json").config == TINY
    (tmp_path / "c.json").write_text(json.dumps([row, row]))
    with pytest.raises(UserError, match="holds a list of 2 rows"):
        trains.from_file(tmp_path / "c.json")


def test_search_seed_json_is_the_course_config():
    assert Config.from_json((ROOT / "search" / "seed.json").read_text()) == COURSE


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    ((), "give exactly one of --trial N (a trial of --study) or --config FILE.json"),
    (("--trial", "0", "--config", "search/seed.json"), "give exactly one of --trial N"),
    (("--trial", "9"), "--trial 9: study 'cerberus' has no such trial (trials 0..2)"),
    (("--trial", "2"), "--trial 2 (FAIL) has no configuration"),
    (("--trial", "0", "--study", "nope"), "no study named 'nope'"),
    (("--trial", "0", "--seeds", "0"), "--seeds must be positive, got 0"),
    (("--trial", "0", "--first-seed", "-1"), "--first-seed -1 with --seeds 3: the seeds must lie in 0..4294967295"),
    (("--trial", "0", "--first-seed", str(2**32 - 2)), "--first-seed 4294967294 with --seeds 3: the seeds must lie in"),
    (("--trial", "0", "--epochs", "0"), "--epochs must be positive, got 0"),
    (("--trial", "0", "--epochs", "2", "--budget", "0.1"), "give --epochs or --budget, not both"),
    (("--config", "broken.json"), "--config broken.json is not JSON (Expecting property name"),
    (("--config", "unknown.json"), "--config unknown.json: config.recipe: unknown key 'nope'; allowed:"),
    (("--config", "missing.json"), "--config 'missing.json': no such file, and not a shipped name; shipped: fast, seed, seed-cpu"),
    (("--config", "search/seed.json", "--data", "imagenet"), "--data 'imagenet' is not a dataset"),
])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(searched, monkeypatch, capsys, args, message):
    # In-process: the same typer app and error path as a subprocess, without ~3 s of imports per case.
    (searched / "broken.json").write_text("{arch: 1}")
    (searched / "unknown.json").write_text(json.dumps({**COURSE.to_dict(), "recipe": {**COURSE.to_dict()["recipe"], "nope": 1}}))
    monkeypatch.chdir(searched)
    before = snapshot(searched)
    assert message in refusal(capsys, "train", *ON_CPU, *args)
    assert not (searched / "studies" / "cerberus" / "final").exists()
    assert snapshot(searched) == before


@pytest.mark.slow
def test_ctrl_c_exits_130_and_records_nothing(study_dir):
    before = snapshot(study_dir)
    proc = popen("train", "--trial", "0", "--seeds", "3", "--epochs", "50", *ON_CPU, cwd=study_dir)
    while "training" not in (line := proc.stderr.readline()):  # seed 0 is training
        assert line, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted (Ctrl-C): nothing recorded" in err and "Traceback" not in err, err
    assert not (study_dir / "studies" / "cerberus" / "final" / "trial-0" / "metrics.json").exists()
    assert snapshot(study_dir) == before


@pytest.mark.slow
def test_run_and_best_never_read_the_test_set_and_train_reads_it_once(tmp_path, monkeypatch, capsys):
    data_dir = write_cifar_layout(tmp_path / "data")
    monkeypatch.setitem(datasets.VAL_SIZE, "cifar10", 50)  # the layout holds 200 training images, not 50,000
    files, test_splits = [], []
    read_batches, test_split = datasets.read_batches, datasets.test_split

    def spy_read(root, names):  # the one reader of CIFAR-10 files
        files.extend(names)
        return read_batches(root, names)

    def spy_test(*args):
        test_splits.append(args)
        return test_split(*args)

    monkeypatch.setattr(datasets, "read_batches", spy_read)
    monkeypatch.setattr(datasets, "test_split", spy_test)
    shutil.copytree(ROOT / "search", tmp_path / "search")
    monkeypatch.chdir(tmp_path)
    cifar = ("--data", "cifar10", "--data-dir", str(data_dir), "--device", "cpu")

    def command(*args):
        with pytest.raises(SystemExit) as exit:
            main(list(args))
        assert exit.value.code == 0, capsys.readouterr().err

    command("run", "--space", "search/smoke.toml", *cifar, "--trials", "2")
    command("best", "--json")
    capsys.readouterr()
    assert "data_batch_5" in files  # the spy sits on the path the search reads through
    assert "test_batch" not in files and test_splits == []
    files.clear()
    command("train", "--trial", "0", "--seeds", "2", *cifar, "--json")
    metrics = json.loads(capsys.readouterr().out)
    assert files.count("test_batch") == 1 and len(test_splits) == 1  # read once, scored once per seed
    assert (metrics["train_images"], metrics["test_images"], metrics["test_seeds"]) == (200, 100, 2)


def test_the_final_training_set_is_train_plus_validation():
    train, val = datasets.search_splits("synthetic")
    whole = datasets.train_split("synthetic")

    def rows(split):
        return sorted(zip(split.images.flatten(1).sum(1).tolist(), split.labels.tolist()))

    assert len(whole) == len(train) + len(val) and rows(whole) == sorted(rows(train) + rows(val))


def test_a_diverged_seed_is_reported_unscored_without_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datasets, "train_split", lambda *args: datasets.synthetic(256, seed=1))  # a second, not three
    wild = Config(TINY.arch, Recipe(optimizer="sgd", lr=1e12, epochs=1, batch_size=64))
    (tmp_path / "wild.json").write_text(wild.to_json())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        main(["train", "--config", "wild.json", "--seeds", "1", *ON_CPU])
    said = capsys.readouterr()
    assert exit.value.code == 1 and said.out.startswith("test accuracy none scored") and "diverged, not scored" in said.err
    out = tmp_path / "studies" / "cerberus" / "final" / "wild"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] is None and metrics["test_seeds"] == 0 and metrics["seeds"][0]["weights"] is None
    assert not (out / "seed-0.pt").exists()


@pytest.mark.slow
def test_train_prints_a_line_per_epoch_of_each_seed_from_the_first_seed_given(tmp_path, monkeypatch, capsys):
    config = Config(Arch((1,), (8,)), Recipe(optimizer="nesterov", lr=0.05, epochs=2, batch_size=64))
    (tmp_path / "tiny.json").write_text(config.to_json())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(INTERVAL_ENV, "0.3")
    args = ("--seeds", "2", "--first-seed", "4", "--data", "synthetic", "--device", "cpu", "--out", "out")
    assert run_cli("train", "--config", "tiny.json", *args) == 0
    lines = capsys.readouterr().err.splitlines()
    ends = [line for line in lines if re.match(rf"seed \d \(\d of 2\) epoch \d/2: [\d,]+ img/s, seed {LEFT}", line)]
    assert [line.split(":")[0] for line in ends] == [
        "seed 4 (1 of 2) epoch 1/2", "seed 4 (1 of 2) epoch 2/2", "seed 5 (2 of 2) epoch 1/2", "seed 5 (2 of 2) epoch 2/2"], lines
    assert "all seeds" not in ends[0] and re.search(rf", all seeds {LEFT}$", ends[2]), ends  # after the first seed
    assert any(re.match(r"seed [45] \(\d of 2\) epoch [12]/2 step \d+/78", line) for line in lines), lines
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [s["seed"] for s in metrics["seeds"]] == [4, 5] and sorted(p.name for p in (tmp_path / "out").glob("*.pt")) == [
        "seed-4.pt", "seed-5.pt"]


def test_train_reads_a_trial_of_a_two_objective_study():
    study = optuna.create_study(directions=["maximize", "minimize"])
    config = Config(Arch((1,), (8,)), Recipe(epochs=1))
    study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, values=[0.61, 1234.0],
                                              user_attrs={"config": config.to_dict(), "params": 1234}))
    source = trains.from_trial(study, 0)  # raised: trial.value is not there with two objectives
    assert source.val_accuracy == 0.61 and source.config == config


@pytest.mark.slow
def test_train_compile_runs_each_seeds_training_forward_through_torch_compile(tmp_path, monkeypatch, capsys):
    compiled = []
    real = torch.compile

    def spy(model, *args, **kwargs):
        compiled.append(type(model).__name__)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    (tmp_path / "tiny.json").write_text(TINY.to_json())
    monkeypatch.chdir(tmp_path)
    assert run_cli("train", "--config", "tiny.json", "--seeds", "1", "--compile", "--out", "out", *ON_CPU) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert compiled == ["ResNet"] and metrics["compiled"] is True and metrics["test_accuracy"] is not None
    assert "test accuracy" in capsys.readouterr().out
