"""The latent bugs a review found, each pinned by a test that failed before its fix."""

import ast
import json
import os
import subprocess
import sys
import time
import tomllib

import optuna
import pytest
import torch
from optuna.trial import TrialState

from cerberus import checkpoint as checkpoints
from cerberus import final as finals
from cerberus import loop as searches
from cerberus import space as spaces
from cerberus import study as studies
from cerberus import train as training
from cerberus.config import COURSE, Arch, Config, Recipe
from cerberus.data import synthetic
from cerberus.progress import Reporter
from conftest import ROOT

CPU = torch.device("cpu")


def test_train_reads_a_trial_of_a_two_objective_study():
    study = optuna.create_study(directions=["maximize", "minimize"])
    config = Config(Arch((1,), (8,)), Recipe(epochs=1))
    study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, values=[0.61, 1234.0],
                                              user_attrs={"config": config.to_dict(), "params": 1234}))
    source = finals.from_trial(study, 0)  # raised: trial.value is not there with two objectives
    assert source.val_accuracy == 0.61 and source.config == config


def test_a_checkpoint_holds_the_trials_own_gpu_and_restores_on_a_machine_with_fewer(monkeypatch):
    """Saved on cuda:3 of a four-GPU machine, resumed on a one-GPU machine's cuda:0: only the
    trial's own generator is saved and set (CUDA is mocked: this machine has none)."""
    set_calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.full((8,), device.index, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("every GPU's state saved"))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("every GPU's state restored"))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: set_calls.append((state.tolist(), device)))
    saved = training.rng_state(torch.device("cuda:3"))
    assert saved["device"].tolist() == [3] * 8 and torch.equal(saved["cpu"], torch.get_rng_state())
    training.set_rng_state(saved, torch.device("cuda:0"))
    assert set_calls == [([3] * 8, torch.device("cuda:0"))]
    training.set_rng_state(saved, CPU)  # on a CPU, the GPU's state is not needed
    assert len(set_calls) == 1


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # loading it would create the marker file


def test_a_checkpoint_that_would_run_code_is_not_loaded(tmp_path):
    path, marker = tmp_path / "trial-0.pt", tmp_path / "ran"
    torch.save({"model": {}, "evil": _Payload(marker)}, path)
    assert checkpoints.load(path, CPU) is None and not marker.exists()


@pytest.mark.parametrize("optimizer, schedule", [("nesterov", "cosine"), ("adamw", "onecycle"), ("sgd", "step"),
                                                 ("adadelta_agc", "cosine")])
def test_every_fit_state_loads_with_weights_only(tmp_path, optimizer, schedule):
    train, val = synthetic(300, seed=1), synthetic(100, seed=2)
    config = Config(Arch((1,), (4,)), Recipe(optimizer=optimizer, schedule=schedule, lr=0.01, epochs=2, batch_size=100))
    path = tmp_path / "trial-0.pt"
    with training.Fit(config, train, val, CPU, seed=0) as run:
        first = next(iter(run))
        checkpoints.save(path, run.state())
    state = checkpoints.load(path, CPU)
    assert state is not None and state["history"] == [first.val_accuracy]
    with training.Fit(config, train, val, CPU, seed=1) as resumed:
        resumed.restore(state)
        epochs = list(resumed)
    assert [e.restored for e in epochs] == [True, False] and epochs[0].val_accuracy == first.val_accuracy


def _trial(study, state, origin, **attrs):
    study.add_trial(optuna.trial.create_trial(state=state, values=[0.5] if state == TrialState.COMPLETE else None,
                                              user_attrs={"origin": origin, **attrs}))


def test_the_sweep_keeps_a_dead_trials_checkpoint_until_its_retry_and_removes_stray_tmp_files(tmp_path):
    study = optuna.create_study(direction="maximize")
    _trial(study, TrialState.COMPLETE, 0)
    _trial(study, TrialState.FAIL, 1)  # killed: no reason; its retry is still to be queued (grace)
    _trial(study, TrialState.FAIL, 2, reason="error")  # failed for good: nothing will resume it
    folder = tmp_path / checkpoints.FOLDER
    folder.mkdir()
    for n in range(3):
        (folder / f"trial-{n}.pt").write_bytes(b"x")
    old, fresh = folder / ".trial-1.pt.abc.tmp", folder / ".trial-1.pt.def.tmp"
    old.write_bytes(b"x")
    fresh.write_bytes(b"x")
    past = time.time() - checkpoints.STALE_TMP_SECONDS - 5
    os.utime(old, (past, past))
    checkpoints.sweep(study, tmp_path, grace=30, max_retry=2)
    assert sorted(p.name for p in folder.iterdir()) == [fresh.name, "trial-1.pt"]


def test_a_retry_clears_what_its_original_recorded_about_how_it_ended(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"], storage=optuna.storages.InMemoryStorage())
    space = spaces.load(ROOT / "search" / "smoke.toml")
    trial = study.ask()
    config = space.sample(trial)
    for key, value in {"origin": trial.number, "config": config.to_dict(), "val_history": [0.1, 0.2],
                       "latency_ms": 3.5, "latency_batch": 256, "reason": "interrupted"}.items():
        trial.set_user_attr(key, value)
    study.tell(trial, state=TrialState.FAIL)
    searches.retry(study, study.trials[0])
    retry = study.ask()
    assert retry.user_attrs["val_history"] == [0.1, 0.2]  # what Optuna's retry callback copies
    with Reporter(1, 0) as reporter:
        search = searches.Search(study, space, searches.RunOptions(trials=1, objectives=("accuracy", "latency")), reporter)
        assert search.configure(retry) == config
    for key in ("val_history", "latency_ms", "latency_batch", "reason"):
        assert retry.user_attrs[key] is None


def test_enqueue_compares_configurations_not_file_names(tmp_path):
    study = optuna.create_study(direction="maximize")
    space = spaces.load(ROOT / "search" / "default.toml")
    edited = Config(COURSE.arch, Recipe(**{**COURSE.recipe.__dict__, "lr": 0.05}))
    assert studies.enqueue(study, space, COURSE, "mine.json")
    assert studies.enqueue(study, space, edited, "mine.json")  # the same name, edited: queued
    assert not studies.enqueue(study, space, COURSE, "other/mine.json")  # the same content elsewhere: not again
    assert not studies.enqueue(study, space, edited, "copy.json")
    assert len(study.trials) == 2


def test_every_third_party_import_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {d.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower()
                for d in project["dependencies"] + [x for extra in project["optional-dependencies"].values() for x in extra]}
    names = {"optuna_dashboard": "optuna-dashboard", "psycopg": "psycopg", "pyarrow": "pyarrow", "grpc": "grpcio", "PIL": "pillow"}
    imported = set()
    for path in (ROOT / "cerberus").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m not in ("cerberus", "__future__")}
    assert {names.get(m, m) for m in third_party} <= declared, third_party


def test_no_function_is_longer_than_80_lines():
    long = [(path.name, node.name, node.end_lineno - node.lineno + 1)
            for path in (ROOT / "cerberus").glob("*.py") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80]
    assert long == []


def test_the_command_line_imports_no_optuna_sqlalchemy_or_torch_before_a_command_needs_them():
    code = ("import sys, cerberus.cli; print(','.join(m for m in ('torch', 'optuna', 'sqlalchemy', 'numpy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr


def test_worker_options_round_trip_through_json():
    opts = searches.RunOptions(trials=7, max_params=123, epochs=2, device=torch.device("cpu"), data="synthetic",
                               data_dir="/d", seed=4, timeout=9.5, max_failures=2, artifacts=ROOT / "x", compile=True,
                               objectives=("accuracy", "params"), grace=30, precision="fp32", pulse=10)
    assert searches.RunOptions.from_json(opts.to_json()) == opts
    assert {f for f in json.loads(opts.to_json())} == {f.name for f in __import__("dataclasses").fields(opts)}
