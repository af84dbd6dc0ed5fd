"""cerberus.data: datasets as uint8 tensors, the honest validation split, and bad files."""

import hashlib
import http.server
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from torchvision.datasets import CIFAR10

from cerberus import data
from cerberus.errors import UserError

PER_BATCH = 1100  # 5 x 1,100 = 5,500 training images: enough to hold out 5,000


def write_layout(root: Path, per_batch: int = PER_BATCH, test: bool = True, key=str) -> Path:
    """A small copy of the official python layout: pickled dicts of uint8 rows and labels.
    ``key=str`` pickles keys as the official archive reads in Python 3 (torchvision's loader
    needs that); ``key=bytes`` as ../shared/data/to_batches.py writes them."""
    out = root / "cifar-10-batches-py"
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + (["test_batch"] if test else [])
    for b, name in enumerate(names):
        labels = [(i + b) % 10 for i in range(per_batch)]
        rows = np.zeros((per_batch, 3072), dtype=np.uint8)
        rows[:, 0] = labels  # the first red pixel carries the label, to check row order
        rows[:, 1:4] = rng.integers(0, 255, (per_batch, 3), dtype=np.uint8)
        with open(out / name, "wb") as f:
            entry = {"batch_label": name.encode(), "labels": labels, "data": rows, "filenames": [b"x.png"] * per_batch}
            pickle.dump({key(k, "ascii") if key is bytes else k: v for k, v in entry.items()}, f, protocol=2)
    with open(out / "batches.meta", "wb") as f:
        pickle.dump({"label_names" if key is str else b"label_names": [b"c%d" % i for i in range(10)]}, f, protocol=2)
    return out


@pytest.fixture
def served_archive(tmp_path, monkeypatch):
    """The layout as torchvision's tarball, on an HTTP server on 127.0.0.1, with torchvision's
    URL and checksums pointed at it (the real ones name the real archive)."""
    src = tmp_path / "src"
    out = write_layout(src)
    archive = tmp_path / "www" / CIFAR10.filename
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(out, arcname="cifar-10-batches-py")
    md5 = lambda p: hashlib.md5(Path(p).read_bytes()).hexdigest()  # noqa: E731

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # torchvision drops its first, probing connection early: a broken pipe, no harm

    handler = lambda *a: Quiet(*a, directory=str(archive.parent))  # noqa: E731
    server = Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(CIFAR10, "url", f"http://127.0.0.1:{server.server_port}/{CIFAR10.filename}")
    monkeypatch.setattr(CIFAR10, "tgz_md5", md5(archive))
    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5(out / n)] for n, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[n, md5(out / n)] for n, _ in CIFAR10.test_list])
    monkeypatch.setitem(CIFAR10.meta, "md5", md5(out / "batches.meta"))
    yield server
    server.shutdown()



@pytest.mark.parametrize("key", [str, bytes])
def test_reads_an_official_layout_without_checksums(tmp_path, key):
    write_layout(tmp_path, key=key)
    train, val = data.search_splits("cifar10", tmp_path)
    assert len(val) == 5000 and len(train) == 5 * PER_BATCH - 5000
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (3, 32, 32)
    for split in (train, val):
        assert torch.equal(split.images[:, 0, 0, 0].long(), split.labels)  # row order intact
    assert torch.bincount(val.labels).tolist() == [500] * 10  # stratified
    test = data.test_split("cifar10", tmp_path)
    assert len(test) == PER_BATCH


def test_search_never_reads_the_test_set(tmp_path):
    out = write_layout(tmp_path)
    (out / "test_batch").write_bytes(b"not a pickle")  # reading it would raise
    train, val = data.search_splits("cifar10", tmp_path)
    assert len(train) + len(val) == 5 * PER_BATCH
    with pytest.raises(UserError, match="test_batch is not a CIFAR-10 batch"):
        data.test_split("cifar10", tmp_path)


def test_validation_split_is_fixed_and_disjoint(tmp_path):
    write_layout(tmp_path)
    idx1 = data.stratified_holdout(torch.arange(5500) % 10, 5000, data.SPLIT_SEED)
    idx2 = data.stratified_holdout(torch.arange(5500) % 10, 5000, data.SPLIT_SEED)
    assert torch.equal(idx1, idx2) and len(set(idx1.tolist())) == 5000


def test_corrupt_batch_is_one_clear_error(tmp_path):
    out = write_layout(tmp_path)
    (out / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(UserError, match="data_batch_3 is not a CIFAR-10 batch"):
        data.search_splits("cifar10", tmp_path)


def test_downloads_through_torchvision_when_missing(tmp_path, served_archive):
    target = tmp_path / "cache"
    train, val = data.search_splits("cifar10", target)
    assert (target / "cifar-10-batches-py" / "data_batch_5").exists()
    assert len(train) + len(val) == 5 * PER_BATCH
    assert len(CIFAR10(str(target), train=True)) == 5 * PER_BATCH  # torchvision reads what it fetched


def test_download_failure_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(CIFAR10, "url", "http://127.0.0.1:9/nothing.tar.gz")  # port 9: discard, closed
    with pytest.raises(UserError, match="could not be downloaded there.*--data synthetic"):
        data.search_splits("cifar10", tmp_path / "empty")


def test_synthetic_is_deterministic_and_balanced():
    a, b = data.synthetic(1000, seed=1), data.synthetic(1000, seed=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.bincount(a.labels).tolist() == [100] * 10
    train, val = data.search_splits("synthetic")
    assert len(val) == 500 and len(train) == 4500


@pytest.mark.slow
def test_the_weakest_smoke_net_learns_synthetic_data_well_above_chance_in_its_one_epoch():
    """The smoke space's narrowest net at its lowest learning rate, the worst of the 50 runs of
    benchmarks/smoke_learnability.py (every architecture x 5 seeds): chance is 0.1."""
    import torch

    from cerberus import shipped
    from cerberus import space as spaces
    from cerberus.data import search_splits
    from cerberus.fit import fit

    space = spaces.load(shipped.resolve("smoke", shipped.SPACE, "--space"))
    params = {"stages": 1, "widths_1": 8, "skip_kernel": 1, "optimizer": "adamw", "lr": 0.003,
              "crop_padding": 2, "flip": True}
    config = space.sample(optuna.trial.FixedTrial(params))
    assert config.recipe.epochs == 1 and config.arch.widths == (8,)
    train, val = search_splits("synthetic")
    for seed in (0, 1):
        assert fit(config, train, val, torch.device("cpu"), seed=seed).val_accuracy > 0.4


def _rewrite(path: Path, change) -> None:
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    change(batch)
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def _labels(n: int, first: int) -> list[int]:
    return [first] + [(i % 10) for i in range(1, n)]


WRONG = [
    ("data_batch_3", lambda b: b.update(labels=_labels(len(b["labels"]), 12)), "data_batch_3 holds a label of 12; CIFAR-10's labels are the integers 0..9"),
    ("data_batch_1", lambda b: b.update(data=np.asarray(b["data"]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)),
     "data_batch_1: its data has shape (1100, 32, 32, 3); the official layout is (N, 3072)"),
    ("test_batch", lambda b: b.update(data=np.zeros((0, 3072), np.uint8), labels=[]), "test_batch holds no image"),
    ("test_batch", lambda b: b.update(labels=_labels(len(b["labels"]), -1)), "test_batch holds a label of -1"),
    ("data_batch_2", lambda b: b.update(data=np.asarray(b["data"], dtype=np.float32) / 255),
     "data_batch_2: its data is float32; the official layout holds bytes, 0..255"),
]


@pytest.mark.parametrize("name, change, words", WRONG, ids=["label-12", "hwc-layout", "empty-test", "test-label", "floats"])
def test_a_wrong_dataset_is_refused_in_one_line_before_any_training(tmp_path, capsys, name, change, words):
    """Each batch is checked in full as it is read: what `run` (its training batches) and `train`
    (its test batch too) read before any training."""
    from conftest import refusal

    root = write_layout(tmp_path)
    _rewrite(root / name, change)
    command = ["train", "--config", "seed", "--seeds", "1", "--device", "cpu"] if name == "test_batch" else \
        ["run", "--space", "smoke", "--device", "cpu", "--trials", "1", "--storage", f"sqlite:///{tmp_path / 's.db'}"]
    err = refusal(capsys, *command, "--data-dir", str(tmp_path), *(["--out", str(tmp_path / "out")] if name == "test_batch" else []))
    assert words in err
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "out").exists()  # nothing made, nothing trained
