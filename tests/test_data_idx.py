"""MNIST and Fashion-MNIST read from their IDX files without torchvision's datasets: the same tensors and class names
torchvision gives, a clear error for a damaged file, and torchvision still used where the files are not unpacked."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dm_core import DMError, load_dataset
from dm_core.data import STATS, _build


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def fake_mnist(root: Path, folder: str = "MNIST", train: int = 30, test: int = 20, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3": rng.integers(0, 256, (train, 28, 28)), "train-labels-idx1": np.arange(train) % 10,
              "t10k-images-idx3": rng.integers(0, 256, (test, 28, 28)), "t10k-labels-idx1": np.arange(test) % 10}
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for name, array in arrays.items():
        write_idx(raw / f"{name}-ubyte", array)
    return arrays


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_idx_files_load_as_torchvision_loads_them(tmp_path, name, folder):
    import torchvision.datasets as tvd

    fake_mnist(tmp_path, folder)
    data = load_dataset(name, tmp_path, download=False)
    cls = getattr(tvd, folder)
    train, test = cls(str(tmp_path), train=True), cls(str(tmp_path), train=False)
    theirs = _build(name, train.data, train.targets, test.data, test.targets, STATS[name], train.classes)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(data, field), getattr(theirs, field)), field
        assert getattr(data, field).dtype == getattr(theirs, field).dtype
    assert data.class_names == theirs.class_names == tuple(train.classes)


def test_the_full_mnist_loads_as_torchvision_loads_it(mnist):
    import torchvision.datasets as tvd

    root = os.environ.get("DM_DATA_ROOT") or str(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    train, test = tvd.MNIST(root, train=True), tvd.MNIST(root, train=False)
    assert torch.equal(mnist.x_train, _build("mnist", train.data, train.targets, test.data, test.targets,
                                             STATS["mnist"]).x_train)
    assert torch.equal(mnist.y_test, test.targets) and len(mnist.x_train) == 60000


def test_loading_mnist_does_not_import_torchvision(tmp_path):
    fake_mnist(tmp_path)
    code = ("import sys; from dm_core import load_dataset; d = load_dataset('mnist', sys.argv[1], download=False); "
            "print(len(d.x_train), 'torchvision' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["30", "False"]


def test_a_truncated_idx_file_is_refused_in_one_line(tmp_path):
    fake_mnist(tmp_path)
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DMError, match="truncated or damaged, download it again") as caught:
        load_dataset("mnist", tmp_path, download=False)
    assert "\n" not in str(caught.value)
    images.write_bytes(b"not an idx file")
    with pytest.raises(DMError, match="is not an IDX file"):
        load_dataset("mnist", tmp_path, download=False)


def test_without_unpacked_files_torchvision_still_decides(tmp_path):
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    with pytest.raises(DMError, match="mnist is not under"):
        load_dataset("mnist", tmp_path, download=False)
