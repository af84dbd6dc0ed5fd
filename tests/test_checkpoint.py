"""cerberus.checkpoint: a trial's state saved and loaded safely (weights only), on any machine."""

import pytest
import torch

from cerberus import checkpoint as checkpoints
from cerberus import fit as fits
from cerberus.config import Arch, Config, Recipe
from cerberus.data import synthetic

CPU = torch.device("cpu")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # loading it would create the marker file



def test_a_checkpoint_holds_the_trials_own_gpu_and_restores_on_a_machine_with_fewer(monkeypatch):
    """Saved on cuda:3 of a four-GPU machine, resumed on a one-GPU machine's cuda:0: only the
    trial's own generator is saved and set (CUDA is mocked: this machine has none)."""
    set_calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.full((8,), device.index, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("every GPU's state saved"))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("every GPU's state restored"))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: set_calls.append((state.tolist(), device)))
    saved = fits.rng_state(torch.device("cuda:3"))
    assert saved["device"].tolist() == [3] * 8 and torch.equal(saved["cpu"], torch.get_rng_state())
    fits.set_rng_state(saved, torch.device("cuda:0"))
    assert set_calls == [([3] * 8, torch.device("cuda:0"))]
    fits.set_rng_state(saved, CPU)  # on a CPU, the GPU's state is not needed
    assert len(set_calls) == 1


def test_a_checkpoint_that_would_run_code_is_not_loaded(tmp_path):
    path, marker = tmp_path / "trial-0.pt", tmp_path / "ran"
    torch.save({"model": {}, "evil": _Payload(marker)}, path)
    with pytest.raises(checkpoints.Unreadable, match="Weights only load failed"):
        checkpoints.load(path, CPU)
    assert not marker.exists()


@pytest.mark.parametrize("optimizer, schedule", [("nesterov", "cosine"), ("adamw", "onecycle"), ("sgd", "step"),
                                                 ("adadelta_agc", "cosine")])
def test_every_fit_state_loads_with_weights_only(tmp_path, optimizer, schedule):
    train, val = synthetic(300, seed=1), synthetic(100, seed=2)
    config = Config(Arch((1,), (4,)), Recipe(optimizer=optimizer, schedule=schedule, lr=0.01, epochs=2, batch_size=100))
    path = tmp_path / "trial-0.pt"
    with fits.Fit(config, train, val, CPU, seed=0) as run:
        first = next(iter(run))
        checkpoints.save(path, run.state())
    state = checkpoints.load(path, CPU)
    assert state is not None and state["history"] == [first.val_accuracy]
    with fits.Fit(config, train, val, CPU, seed=1) as resumed:
        resumed.restore(state)
        epochs = list(resumed)
    assert [e.restored for e in epochs] == [True, False] and epochs[0].val_accuracy == first.val_accuracy
