"""cerberus.graph: the training step recorded as a CUDA graph, and its eager fallback."""

import contextlib
import dataclasses
import io

import pytest
import torch

from cerberus import graph as graphs
from cerberus.config import COURSE, Arch, Augment, Config
from cerberus.data import synthetic
from cerberus.fit import Trainer

CPU = torch.device("cpu")


CONFIG = Config(Arch((1,), (8,)), dataclasses.replace(COURSE.recipe, batch_size=32, augment=Augment(
    crop_padding=4, flip=True, trivial_augment=True, mixup_alpha=0.2, cutmix_alpha=1.0)))


class FakeCuda:
    """What Graphed calls in torch.cuda. A "graph" remembers the Graphed it belongs to and
    replays by running its step on its static indices into its static loss, as a real graph
    rewrites the memory it recorded; recording runs nothing, as a real capture launches nothing."""

    def __init__(self, monkeypatch, fail=None):
        self.replays, self.recorded, self.side = 0, 0, 0
        self.owner = None
        fake = self

        class Graph:
            def replay(self):
                fake.replays += 1
                fake.owner.loss.copy_(fake.owner.compute(fake.owner.idx))

        @contextlib.contextmanager
        def graph(g):
            fake.recorded += 1
            with torch.random.fork_rng():  # a capture draws nothing for real
                yield
            if fail is not None:
                raise fail

        @contextlib.contextmanager
        def stream(s):
            fake.side += 1
            yield

        class Stream:
            def __init__(self, device=None):
                pass

            def wait_stream(self, other):
                pass

        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
        monkeypatch.setattr(torch.cuda, "graph", graph)
        monkeypatch.setattr(torch.cuda, "stream", stream)
        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)


def _losses(trainer, steps):
    batches = [idx for _, idx in zip(range(steps), trainer.batches())]
    return [trainer.step(idx).clone() for idx in batches]


def _graphed(trainer, out=None):
    trainer.run = graphs.Graphed(trainer._compute, CPU, out=out)
    return trainer.run



def test_a_graphed_step_warms_up_records_once_and_replays_with_each_new_batch(monkeypatch):
    fake = FakeCuda(monkeypatch)
    torch.manual_seed(0)
    eager = Trainer(CONFIG, synthetic(256, seed=1), CPU)
    want = _losses(eager, 7)
    torch.manual_seed(0)
    trainer = Trainer(CONFIG, synthetic(256, seed=1), CPU)
    fake.owner = _graphed(trainer)
    got = _losses(trainer, 7)
    assert fake.side == graphs.WARMUP and fake.recorded == 1 and fake.replays == 7 - graphs.WARMUP
    assert trainer.run.captured
    # the same batches, draws and updates as the eager step: the indices reach the graph's
    # input, and the optimizer steps on the grads each replay wrote
    for a, b in zip(want, got):
        torch.testing.assert_close(a, b)
    for p, q in zip(eager.model.parameters(), trainer.model.parameters()):
        torch.testing.assert_close(p, q)


def test_a_step_that_cannot_be_recorded_says_so_once_and_trains_eagerly(monkeypatch):
    fake = FakeCuda(monkeypatch, fail=RuntimeError("operation not permitted when stream is capturing\nmore"))
    torch.manual_seed(0)
    eager = Trainer(CONFIG, synthetic(256, seed=1), CPU)
    want = _losses(eager, 6)
    torch.manual_seed(0)
    trainer = Trainer(CONFIG, synthetic(256, seed=1), CPU)
    out = io.StringIO()
    fake.owner = _graphed(trainer, out)
    got = _losses(trainer, 6)
    assert out.getvalue() == ("note: CUDA graph capture failed (RuntimeError: operation not permitted when stream "
                              "is capturing); this run trains eagerly\n")
    assert fake.recorded == 1 and fake.replays == 0 and not trainer.run.captured
    for a, b in zip(want, got):
        torch.testing.assert_close(a, b)


def test_only_a_cuda_device_gets_a_graph():
    assert isinstance(graphs.wrap(lambda idx: idx, CPU, capture=True), graphs.Eager)
    assert isinstance(graphs.wrap(lambda idx: idx, torch.device("cuda:0"), capture=True), graphs.Graphed)
    assert isinstance(graphs.wrap(lambda idx: idx, torch.device("cuda:0"), capture=False), graphs.Eager)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_recorded_step_trains_as_the_eager_one():
    cuda = torch.device("cuda")
    losses = {}
    for capture in (False, True):
        torch.manual_seed(0)
        trainer = Trainer(CONFIG, synthetic(256, seed=1).to(cuda), cuda, cuda_graph=capture)
        losses[capture] = torch.stack(_losses(trainer, 8)).cpu()
        assert trainer.run.captured == capture
    torch.testing.assert_close(losses[True], losses[False], rtol=2e-2, atol=2e-2)
