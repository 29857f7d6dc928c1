"""Datasets as normalised tensors, and a class-indexed image store on the compute device.

``load_dataset(name)`` returns every split as one float tensor (N, C, H, W), normalised with the dataset's statistics
(docs/method.md section 4). Small-set training and condensation keep such tensors resident on the device, so no
DataLoader runs in a hot loop.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .errors import DMError

DATA_ROOT_ENV = "DM_DATA_ROOT"

# (mean, std) per channel, docs/method.md section 4.
STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashionmnist": ((0.2861,), (0.3530,)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tinyimagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
DATASETS = ("mnist", "fashionmnist", "cifar10", "cifar100", "svhn", "tinyimagenet", "digits", "folder:PATH",
            "npz:PATH")


@dataclass(frozen=True)
class ImageDataset:
    """Train and test images (float32 NCHW, normalised, CPU) with their int64 labels and metadata.

    ``split`` says which training images ``x_train`` holds: None, the dataset's whole training split; or, for the
    training part of a held-out split (``holdout``), ``{"val_fraction": f, "split_seed": s, "part": "train"}``.
    Every set made from the data records it, so a set that could have seen held-out images can be told apart.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    split: dict | None = None

    @property
    def channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.x_train.shape[2:])

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.y_train, minlength=self.num_classes)

    def subset(self, train_indices: torch.Tensor | Sequence[int]) -> ImageDataset:
        """The same dataset with only these training images (the test set is kept)."""
        idx = torch.as_tensor(train_indices, dtype=torch.long)
        return replace(self, x_train=self.x_train[idx], y_train=self.y_train[idx])

    def check_ipc(self, ipc: int, classes: Sequence[int] | None = None) -> None:
        """Fail clearly when a class has fewer training images than ``ipc`` asks for."""
        classes = range(self.num_classes) if classes is None else classes
        counts = self.class_counts()
        if ipc < 1:
            raise DMError(f"ipc must be at least 1, got {ipc}")
        for c in classes:
            if not 0 <= int(c) < self.num_classes:
                raise DMError(f"class {c} is not in {self.name} (classes 0..{self.num_classes - 1})")
            if counts[c] == 0:
                raise DMError(f"class {c} of {self.name} has no training images: labels must run 0..K-1 with "
                              f"every class present in the training split")
            if counts[c] < ipc:
                raise DMError(f"ipc {ipc} is more than the {int(counts[c])} training images of class {c} "
                              f"in {self.name}: use ipc <= {int(counts[c])}")


def holdout(data: ImageDataset, val_fraction: float = 0.1, seed: int = 0) -> tuple[ImageDataset, torch.Tensor,
                                                                                   torch.Tensor]:
    """(training part, validation images, validation labels): ``round(val_fraction * N)`` training images drawn
    uniformly at random with ``seed`` are held out (the NAS protocol's validation split, docs/method.md section 7);
    the training part records the split it comes from."""
    n = len(data.y_train)
    n_val = round(val_fraction * n)
    if not (0 < val_fraction < 1) or not 0 < n_val < n:
        raise DMError(f"a validation fraction of {val_fraction} leaves no validation or no training image of the {n} "
                      f"training images of {data.name}: use a fraction in (0, 1)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, train = order[:n_val].sort().values, order[n_val:].sort().values
    part = replace(data.subset(train), split={"val_fraction": val_fraction, "split_seed": seed, "part": "train"})
    return part, data.x_train[val], data.y_train[val]


def resolve_classes(data: ImageDataset, classes: Sequence[int] | None, ipc: int) -> list[int]:
    """``classes`` as a list of distinct class ids of ``data`` (all by default), each holding at least ``ipc``
    training images."""
    classes = list(range(data.num_classes)) if classes is None else [int(c) for c in classes]
    if not classes:
        raise DMError("no classes given: give at least one class")
    if len(set(classes)) != len(classes):
        raise DMError(f"classes repeat in {classes}")
    data.check_ipc(ipc, classes)
    return classes


def class_store(data: ImageDataset, classes: list[int], device: torch.device) -> ClassStore:
    """A ``ClassStore`` of only these classes' training images (a continual step condenses its new classes only)."""
    keep = torch.isin(data.y_train, torch.as_tensor(classes))
    return ClassStore(data.x_train[keep], data.y_train[keep], data.num_classes, device)


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: the argument, else $DM_DATA_ROOT, else ./data."""
    return Path(root or os.environ.get(DATA_ROOT_ENV) or "data").expanduser()


def _normalise(x_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    x = x_uint8.float().div_(255)
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def _channel_stats(x_uint8: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = x_uint8.float().div(255)
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())


CHANNELS = (1, 3)


def _to_nchw(images: np.ndarray | torch.Tensor, what: str = "images") -> torch.Tensor:
    """N x H x W (grey), N x H x W x C or N x C x H x W with C = 1 or 3; anything else is refused, not guessed."""
    x = torch.as_tensor(np.asarray(images))
    if x.dim() == 3:
        return x.unsqueeze(1)
    if x.dim() == 4:
        last, second = x.shape[-1] in CHANNELS, x.shape[1] in CHANNELS
        if last and second:
            raise DMError(f"{what} of shape {tuple(x.shape)} could be N x C x H x W or N x H x W x C (both dimension 1 "
                          f"and dimension 3 could hold the channels): give images whose layout is unambiguous")
        if last:
            return x.permute(0, 3, 1, 2).contiguous()
        if second:
            return x
        raise DMError(f"{what} of shape {tuple(x.shape)} have neither 1 nor 3 channels first or last: give "
                      f"N x H x W x C or N x C x H x W images with C = 1 (grey) or 3 (RGB)")
    raise DMError(f"{what} must be N x H x W, N x H x W x C or N x C x H x W, got shape {tuple(x.shape)}")


def _labels(y, count: int, what: str) -> torch.Tensor:
    """Integer class labels 0..K-1, one per image; floats, strings, negatives and other shapes are refused."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DMError(f"{what} must be a 1-D array of class indices, got shape {y.shape}")
    if len(y) != count:
        raise DMError(f"{what} holds {len(y)} labels for {count} images: give one label per image")
    if count == 0:
        raise DMError(f"{what} is empty: each split needs at least one image")
    if y.dtype.kind not in "iu":
        raise DMError(f"{what} must hold integer class indices, got {y.dtype} values")
    if y.min() < 0:
        raise DMError(f"{what} holds a negative label ({int(y.min())}): labels are class indices 0..K-1")
    return torch.as_tensor(y.astype(np.int64))


def _build(name, x_train, y_train, x_test, y_test, stats=None, class_names=None) -> ImageDataset:
    x_train, x_test = _to_nchw(x_train, "x_train"), _to_nchw(x_test, "x_test")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DMError(f"x_train images are {tuple(x_train.shape[1:])} but x_test images are "
                      f"{tuple(x_test.shape[1:])}: both splits need one shape")
    y_train = _labels(y_train, len(x_train), "y_train")
    y_test = _labels(y_test, len(x_test), "y_test")
    mean, std = stats or _channel_stats(x_train)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    if num_classes < 2 or len(torch.unique(y_train)) < 2:
        raise DMError(f"{name} has {len(torch.unique(y_train))} class(es) in its training split: condensing and "
                      f"classifying need at least 2 classes")
    if class_names is not None and len(class_names) != num_classes:
        raise DMError(f"{len(class_names)} class names for labels 0..{num_classes - 1}: give one name per class")
    names = tuple(class_names) if class_names is not None else tuple(str(c) for c in range(num_classes))
    return ImageDataset(name, _normalise(x_train, mean, std), y_train, _normalise(x_test, mean, std), y_test,
                        num_classes, tuple(mean), tuple(std), names)


_TORCHVISION = {
    "mnist": ("MNIST", "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"),
    "fashionmnist": ("FashionMNIST", "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"),
    "cifar10": ("CIFAR10", "cifar-10-batches-py/ (from cifar-10-python.tar.gz)"),
    "cifar100": ("CIFAR100", "cifar-100-python/ (from cifar-100-python.tar.gz)"),
    "svhn": ("SVHN", "train_32x32.mat and test_32x32.mat"),
}


# Class names as torchvision gives them, so a set's provenance does not depend on which reader loaded the files.
_IDX_CLASSES = {
    "mnist": tuple(f"{d} - {w}" for d, w in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"))),
    "fashionmnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                     "Ankle boot"),
}


def _read_idx(path: Path) -> torch.Tensor:
    """One IDX file (MNIST's format: two zero bytes, a type byte, the number of dimensions, each dimension as a
    big-endian int32, then the values) of unsigned bytes, as a uint8 tensor."""
    raw = path.read_bytes()
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or not 1 <= raw[3] <= 3:
        raise DMError(f"{path} is not an IDX file of bytes: put the uncompressed files from the dataset's site there")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", raw[3], 4))
    start = 4 + 4 * len(dims)
    if len(raw) != start + int(np.prod(dims)):
        raise DMError(f"{path} holds {len(raw) - start} values for a shape of {dims}: the file is truncated or "
                      f"damaged, download it again")
    return torch.from_numpy(np.frombuffer(raw, np.uint8, offset=start).reshape(dims).copy())


def _load_idx(name: str, root: Path) -> ImageDataset | None:
    """MNIST or Fashion-MNIST read from its four uncompressed IDX files (what torchvision unpacks under
    ``<root>/<MNIST|FashionMNIST>/raw``) without importing torchvision's datasets (1.2 s of a command here); None
    when a file is missing, so torchvision can look further and download."""
    folder = root / _TORCHVISION[name][0] / "raw"
    paths = [folder / f"{split}-{kind}-ubyte" for split in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")]
    if not all(p.is_file() for p in paths):
        return None
    x_tr, y_tr, x_te, y_te = (_read_idx(p) for p in paths)
    return _build(name, x_tr, y_tr, x_te, y_te, STATS[name], _IDX_CLASSES[name])


def _load_torchvision(name: str, root: Path, download: bool) -> ImageDataset:
    if name in _IDX_CLASSES and (data := _load_idx(name, root)) is not None:
        return data
    import torchvision.datasets as tvd

    cls_name, files = _TORCHVISION[name]
    cls = getattr(tvd, cls_name)
    try:
        if name == "svhn":
            train, test = (cls(str(root), split=s, download=download) for s in ("train", "test"))
            x_tr, y_tr, x_te, y_te = train.data, train.labels, test.data, test.labels
        else:
            train, test = (cls(str(root), train=t, download=download) for t in (True, False))
            x_tr, y_tr, x_te, y_te = train.data, train.targets, test.data, test.targets
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError... depending on what is missing
        raise DMError(f"{name} is not under {root} and could not be downloaded ({type(exc).__name__}): put {files} "
                      f"in {root}, or point --data-root / ${DATA_ROOT_ENV} at the folder holding them") from None
    names = getattr(train, "classes", None)
    return _build(name, x_tr, y_tr, x_te, y_te, STATS[name], names if names else None)


def _load_digits() -> ImageDataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, offline), shown as 16x16 so every ConvNet of the space fits.

    Every fifth image is a test image (360 test, 1,437 train), a fixed split.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DMError("the digits dataset comes with scikit-learn: pip install scikit-learn (or the toolkit's "
                      "[digits] extra)") from None

    digits = load_digits()
    x = torch.as_tensor(digits.images * (255 / 16)).round().to(torch.uint8)
    x = x.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    y = torch.as_tensor(digits.target)
    test = torch.arange(len(y)) % 5 == 0
    return _build("digits", x[~test], y[~test], x[test], y[test])


def _load_npz(path: Path) -> ImageDataset:
    if not path.is_file():
        raise DMError(f"no array file at {path}: give npz:PATH to a .npz holding x_train, y_train, x_test, y_test")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            parts = [arrays[k] for k in ("x_train", "y_train", "x_test", "y_test")]
            names = [str(s) for s in arrays["class_names"]] if "class_names" in arrays else None
    except KeyError as exc:
        raise DMError(f"{path} lacks the array {exc}: give x_train, y_train, x_test, y_test") from None
    except Exception as exc:  # numpy raises ValueError, OSError, EOFError, zipfile.BadZipFile... on a bad file
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise DMError(f"{path} is not a readable .npz of x_train, y_train, x_test, y_test ({first})") from None
    if parts[0].dtype != np.uint8 or parts[2].dtype != np.uint8:
        raise DMError(f"{path}: x_train and x_test must be uint8 images (NHWC or NCHW)")
    return _build(f"npz:{path}", *parts, class_names=names)


GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _read_images(paths: Sequence[Path], grey: bool) -> torch.Tensor:
    """N x C x H x W uint8: one channel when every image of the dataset is grey, else RGB. Every file must be a
    readable image of the size of the first one (a folder of mixed sizes is refused, not silently resized)."""
    from PIL import Image

    images, size = [], None
    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
                if size is None:
                    size, first = im.size, p
                elif im.size != size:
                    raise DMError(f"{p} is {im.size[0]}x{im.size[1]} but {first} is {size[0]}x{size[1]}: a folder "
                                  f"dataset needs images of one size (resize them first)")
                images.append(np.asarray(im.convert("L" if grey else "RGB")))
        except DMError:
            raise
        except Exception as exc:  # PIL: UnidentifiedImageError, OSError("image file is truncated"), ...
            raise DMError(f"{p} is not a readable image ({type(exc).__name__}): remove or replace it") from None
    stacked = torch.as_tensor(np.stack(images))
    return stacked.unsqueeze(1) if grey else stacked.permute(0, 3, 1, 2).contiguous()


def _all_grey(paths: Sequence[Path]) -> bool:
    from PIL import Image

    for p in paths:
        try:
            with Image.open(p) as im:
                if im.mode not in GREY_MODES:
                    return False
        except Exception as exc:
            raise DMError(f"{p} is not a readable image ({type(exc).__name__}): remove or replace it") from None
    return True


def _load_folder(path: Path, name: str, stats=None) -> ImageDataset:
    """An ImageFolder tree: PATH/train/<class>/*.png and PATH/test/<class>/* (or val/)."""
    train_dir = path / "train"
    test_dir = next((path / s for s in ("test", "val") if (path / s).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DMError(f"{path} needs train/ and test/ (or val/) folders with one sub-folder of images per class")
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not classes:
        raise DMError(f"{train_dir} has no class folders")
    orphans = sorted(d.name for d in test_dir.iterdir() if d.is_dir() and d.name not in classes
                     and d.name != "images")
    if orphans:
        raise DMError(f"{test_dir} has class folders that {train_dir} lacks ({', '.join(orphans[:3])}): every class "
                      f"needs training images")
    suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}

    def scan(root: Path):
        paths, labels = [], []
        for label, c in enumerate(classes):
            for p in sorted((root / c).rglob("*")) if (root / c).is_dir() else []:
                if p.suffix.lower() in suffixes:
                    paths.append(p)
                    labels.append(label)
        return paths, labels

    train_paths, y_train = scan(train_dir)
    test_paths, y_test = scan(test_dir)
    if not test_paths:
        test_paths, y_test = _tinyimagenet_val(test_dir, classes)
    if not train_paths or not test_paths:
        raise DMError(f"{path}: found {len(train_paths)} train and {len(test_paths)} test images; need both")
    grey = _all_grey([*train_paths, *test_paths])
    x = _read_images([*train_paths, *test_paths], grey)
    return _build(name, x[:len(train_paths)], y_train, x[len(train_paths):], y_test, stats, classes)


def _tinyimagenet_val(val_dir: Path, classes: list[str]):
    """TinyImageNet's val/ keeps its images flat, with labels in val_annotations.txt."""
    notes = val_dir / "val_annotations.txt"
    if not notes.is_file():
        return [], []
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for line in notes.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[1] in index:
            paths.append(val_dir / "images" / fields[0])
            labels.append(index[fields[1]])
    return paths, labels


def load_dataset(name: str, root: str | os.PathLike | None = None, download: bool = True) -> ImageDataset:
    """Load a dataset by name (see ``DATASETS``); ``root`` as in ``data_root``."""
    key = name.strip()
    lowered = key.lower().replace("-", "").replace("_", "")
    if lowered in _TORCHVISION:
        return _load_torchvision(lowered, data_root(root), download)
    if lowered == "digits":
        return _load_digits()
    if lowered == "tinyimagenet":
        folder = data_root(root) / "tiny-imagenet-200"
        if not folder.is_dir():
            raise DMError(f"TinyImageNet is not at {folder}: unpack tiny-imagenet-200.zip there (train/ and val/)")
        return _load_folder(folder, "tinyimagenet", STATS["tinyimagenet"])
    if key.startswith("folder:"):
        return _load_folder(Path(key[len("folder:"):]).expanduser(), key)
    if key.startswith("npz:"):
        return _load_npz(Path(key[len("npz:"):]).expanduser())
    raise DMError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")


class ClassStore:
    """Training images sorted by class and resident on the device; draws class-balanced real batches on the device.

    ``sample`` draws, for each requested class, ``n`` distinct images of that class with one ``rand`` and one
    ``topk`` call for all classes together, so a DM iteration spends no host work on data.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 device: torch.device | str = "cpu"):
        order = torch.argsort(labels, stable=True)
        self.device = torch.device(device)
        self.images = images[order].to(self.device)
        self.labels = labels[order].to(self.device)
        self.num_classes = num_classes
        self.counts = torch.bincount(labels.cpu(), minlength=num_classes)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts
        self._counts = self.counts.to(self.device)
        self._offsets = self.offsets.to(self.device)

    @classmethod
    def from_dataset(cls, data: ImageDataset, device: torch.device | str = "cpu") -> ClassStore:
        return cls(data.x_train, data.y_train, data.num_classes, device)

    def class_images(self, c: int) -> torch.Tensor:
        start = int(self.offsets[c])
        return self.images[start:start + int(self.counts[c])]

    def sample(self, classes: torch.Tensor | Sequence[int], n: int, generator: torch.Generator) -> torch.Tensor:
        """(len(classes) * n, C, H, W): ``n`` distinct images of each class, grouped by class in the given order."""
        classes_cpu = torch.as_tensor(classes, dtype=torch.long).cpu()
        fewest = int(self.counts[classes_cpu].min())
        if n > fewest:
            raise DMError(f"cannot draw {n} distinct images from a class holding {fewest}")
        return self.images[self.sample_indices(classes_cpu.to(self.device), n, int(self.counts.max()), generator)]

    def sample_indices(self, classes: torch.Tensor, n: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """Device-only: flat indices of ``n`` distinct images per class (``width`` >= the largest class count)."""
        keys = torch.rand(classes.shape[0], width, generator=generator, device=self.device)
        beyond = torch.arange(width, device=self.device) >= self._counts[classes].unsqueeze(1)
        keys = keys.masked_fill(beyond, 2.0)  # never picked: real keys are < 1
        picked = keys.topk(n, dim=1, largest=False).indices
        return (self._offsets[classes].unsqueeze(1) + picked).flatten()
