"""Datasets as uint8 tensors, and the split that keeps the search honest.

``search_splits(name, data_dir)`` returns (train, validation): the validation split is held
out of the *training* set, stratified by class, with a fixed seed, so every trial, worker and
machine scores on the same 5,000 CIFAR-10 images. ``train_split`` is the whole training set
(the union of those two, all 50,000 images), which the final retraining trains on. The test set
is read by ``test_split`` alone, which only ``cerberus-search train`` calls.

Images stay ``uint8`` tensors of shape (N, 3, 32, 32) from disk to the training loop (no PIL),
so the trainer can move a whole split to the GPU once and augment batches there.

CIFAR-10 is read from the official python layout (``DATA_DIR/cifar-10-batches-py/``) without
checking the official MD5 sums, so any faithful copy works; when that folder is missing,
torchvision downloads the original into ``DATA_DIR`` first.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cerberus.errors import UserError

DATASETS = ("cifar10", "synthetic")
BATCHES = "cifar-10-batches-py"
VAL_SIZE = {"cifar10": 5000, "synthetic": 500}
TRAIN_SIZE = {"cifar10": 50000, "synthetic": 5000}  # the whole training set, validation included
SPLIT_SEED = 0  # never a flag: every worker must hold out the same images
NUM_CLASSES = 10
IMAGE_VALUES = 3 * 32 * 32


def default_data_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "cerberus" / "data"


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8, (N, 3, 32, 32)
    labels: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    def head(self, n: int) -> Split:
        """The first ``n`` images (views, no copy)."""
        return Split(self.images[:n], self.labels[:n])


def search_splits(name: str, data_dir: str | Path | None = None) -> tuple[Split, Split]:
    """(train, validation) for searching: both out of the training set, never the test set."""
    full = _train_set(name, Path(data_dir) if data_dir else default_data_dir())
    val_idx = stratified_holdout(full.labels, VAL_SIZE[name], SPLIT_SEED)
    keep = torch.ones(len(full), dtype=torch.bool)
    keep[val_idx] = False
    return Split(full.images[keep], full.labels[keep]), Split(full.images[val_idx], full.labels[val_idx])


def train_split(name: str, data_dir: str | Path | None = None) -> Split:
    """The whole training set, validation images included: what a final model trains on."""
    return _train_set(name, Path(data_dir) if data_dir else default_data_dir())


def test_split(name: str, data_dir: str | Path | None = None) -> Split:
    """The test set. Only ``cerberus-search train`` may call this, once per command."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    if name == "synthetic":
        return synthetic(1000, seed=2)
    return read_batches(_cifar_root(data_dir), ["test_batch"])


def stratified_holdout(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Indices of ``size`` items, the same share of every class, chosen by ``seed``."""
    classes = torch.unique(labels)
    per_class = size // len(classes)
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in classes:
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) <= per_class:
            raise UserError(f"class {int(c)} has {len(idx)} images, too few to hold out {per_class} for validation")
        picked.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.cat(picked).sort().values


def _train_set(name: str, data_dir: Path) -> Split:
    if name == "synthetic":
        return synthetic(TRAIN_SIZE[name], seed=1)
    if name == "cifar10":
        return read_batches(_cifar_root(data_dir), [f"data_batch_{i}" for i in range(1, 6)])
    raise UserError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")


def _cifar_root(data_dir: Path) -> Path:
    root = data_dir / BATCHES
    if not (root / "data_batch_1").exists():
        _download(data_dir)
    return root


def _download(data_dir: Path) -> None:
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        # What CIFAR10(download=True) does, minus parsing all 60,000 images a second time.
        download_and_extract_archive(CIFAR10.url, str(data_dir), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
    except Exception as e:  # network, disk, integrity: all end the same way for the user
        raise UserError(
            f"CIFAR-10 is not in {data_dir} and could not be downloaded there ({type(e).__name__}: {e}); "
            f"put the official python layout {BATCHES}/ in --data-dir, or use --data synthetic"
        ) from None


def read_batches(root: Path, files: list[str]) -> Split:
    """Read pickled batches of the official python layout (no checksum test), each checked in full
    before it is used (:func:`_checked`): a batch that is not what the layout says is a UserError
    that names the file and what is wrong, before any training."""
    images, labels = [], []
    for f in files:
        path = root / f
        try:
            with open(path, "rb") as fh:
                raw = pickle.load(fh, encoding="bytes")
            # The official (Python 2) pickles give bytes keys here; copies written by Python 3 may use str.
            batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}
            data, ys = np.asarray(batch["data"]), np.asarray(batch["labels"])
        except FileNotFoundError:
            raise UserError(f"{path} is missing; {root} must hold data_batch_1..5 and test_batch of the official layout") from None
        except Exception as e:
            raise UserError(f"{path} is not a CIFAR-10 batch ({type(e).__name__}: {e}); re-download it or point --data-dir elsewhere") from None
        data, ys = _checked(path, data, ys)
        images.append(torch.from_numpy(data))
        labels.append(torch.from_numpy(ys))
    split = Split(torch.cat(images), torch.cat(labels))
    missing = sorted(set(range(NUM_CLASSES)) - set(torch.unique(split.labels).tolist()))
    if missing:
        raise UserError(f"{', '.join(files)} in {root} hold no image of class {missing[0]}; CIFAR-10 has images of "
                        f"every class 0..{NUM_CLASSES - 1}")
    return split


def _checked(path: Path, data: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A batch's images as uint8 (N, 3, 32, 32) and labels as int64, refused (UserError) unless
    the images are the official layout, N rows of 3,072 bytes (red plane, green, blue; an
    (N, 32, 32, 3) array is another layout, which would train on scrambled images), and every
    label is one of the 10 classes."""
    if data.ndim != 2 or data.shape[1] != IMAGE_VALUES:
        raise UserError(f"{path}: its data has shape {data.shape}; the official layout is (N, {IMAGE_VALUES}): one row "
                        f"of 3,072 bytes per image, the red, green and blue 32x32 planes in turn")
    if data.dtype != np.uint8 and not (np.issubdtype(data.dtype, np.integer) and data.size and 0 <= data.min() and data.max() <= 255):
        raise UserError(f"{path}: its data is {data.dtype}; the official layout holds bytes, 0..255")
    if labels.ndim != 1 or len(labels) != len(data):
        raise UserError(f"{path} holds {len(data)} images but {labels.size} labels")
    if not len(data):
        raise UserError(f"{path} holds no image; re-download it or point --data-dir elsewhere")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= NUM_CLASSES:  # type: ignore[operator]
        wrong = next(v for v in labels.tolist() if not (isinstance(v, int) and 0 <= v < NUM_CLASSES))
        raise UserError(f"{path} holds a label of {wrong!r}; CIFAR-10's labels are the integers 0..{NUM_CLASSES - 1}")
    return data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32), labels.astype(np.int64)


def synthetic(n: int, seed: int) -> Split:
    """``n`` images of 10 classes: a class colour under a grating of a class orientation, with
    random phase, contrast and noise. A small conv net beats chance on it within one epoch."""
    g = torch.Generator().manual_seed(seed)
    palette = torch.Generator().manual_seed(0)  # classes look the same in every split
    colours = torch.rand(10, 3, 1, 1, generator=palette)
    angles = torch.arange(10) * torch.pi / 10
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=g)]
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    a = angles[labels].view(-1, 1, 1)
    phase = torch.rand(n, 1, 1, generator=g) * 2 * torch.pi
    grating = torch.sin(2 * torch.pi / 8 * (xx * torch.cos(a) + yy * torch.sin(a)) + phase)
    contrast = 0.15 + 0.2 * torch.rand(n, 1, 1, 1, generator=g)
    tint = 0.25 + 0.3 * colours[labels] + 0.15 * torch.rand(n, 3, 1, 1, generator=g)  # colour alone is a partial hint
    img = tint + contrast * grating.unsqueeze(1) + 0.1 * torch.randn(n, 3, 32, 32, generator=g)
    return Split((img.clamp(0, 1) * 255).round().to(torch.uint8), labels)
