"""Synthetic-set files: images, labels and provenance in one ``.pt`` that ``torch.load(weights_only=True)`` reads."""
from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import DMError
from .io import atomic_write_bytes, atomic_write_files, torch_bytes

FORMAT = "dm_core.synthetic_set/1"


def content_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 of the tensors' bytes (CPU, contiguous), as a hex string."""
    digest = hashlib.sha256()
    for tensor in tensors:
        t = tensor.detach().cpu().contiguous()
        digest.update(str((tuple(t.shape), str(t.dtype))).encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def package_version() -> str:
    from . import __version__

    return __version__


@dataclass
class SyntheticSet:
    """A condensed or selected training set: normalised float images (CPU), int64 labels, and a provenance dict.

    ``meta`` holds at least ``dataset``, ``method``, ``ipc``, ``mean``, ``std`` (for de-normalising) and ``seed``;
    condensation adds ``iterations`` and its hyper-parameters. Only plain types go in ``meta`` so that the file loads
    with ``weights_only=True``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.images.dim() != 4 or self.labels.dim() != 1 or len(self.images) != len(self.labels):
            raise DMError(f"a synthetic set needs N x C x H x W images and N labels, got {tuple(self.images.shape)} "
                          f"and {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return len(self.labels)

    def classes(self) -> list[int]:
        return sorted(set(self.labels.tolist()))

    def select_classes(self, classes: Sequence[int]) -> SyntheticSet:
        keep = torch.isin(self.labels, torch.as_tensor(list(classes), dtype=torch.long))
        return SyntheticSet(self.images[keep], self.labels[keep], dict(self.meta))

    @staticmethod
    def concat(sets: Sequence[SyntheticSet], meta: dict | None = None) -> SyntheticSet:
        if not sets:
            raise DMError("nothing to concatenate: no synthetic sets given")
        return SyntheticSet(torch.cat([s.images for s in sets]), torch.cat([s.labels for s in sets]),
                            dict(meta if meta is not None else sets[0].meta))

    def save(self, path: str | os.PathLike, png: str | os.PathLike | None = None) -> Path:
        """Write atomically: an existing good file is replaced only by a complete new one. With ``png``, the image
        grid too, and both or neither (``save_grid_png``)."""
        files = {Path(path): torch_bytes(self.payload())}
        if png is not None:
            files[Path(png)] = self.grid_png()
        return atomic_write_files(files)[0]

    def payload(self) -> dict:
        """What the file holds: the images, labels and provenance, and a SHA-256 of the first two that ``load``
        checks (torch.load itself checks nothing, so flipped bytes would otherwise be trained on)."""
        images, labels = self.images.detach().cpu().float().contiguous(), self.labels.detach().cpu().long()
        return {"format": FORMAT, "images": images, "labels": labels, "meta": _plain(self.meta),
                "sha256": content_digest(images, labels)}

    @classmethod
    def load(cls, path: str | os.PathLike) -> SyntheticSet:
        """Read a file written by ``save``, or by the original DM code (a dict whose 'data' holds
        [[images, labels]])."""
        path = Path(path)
        if not path.is_file():
            raise DMError(f"no synthetic-set file at {path}")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DMError(f"{path} is not a readable synthetic-set file ({first[:120]})") from None
        if isinstance(payload, dict) and payload.get("format") == FORMAT:
            synset = cls.checked(path, payload.get("images"), payload.get("labels"), payload.get("meta", {}))
            stored = payload.get("sha256")  # files written before checksums existed have none
            if stored is not None and stored != content_digest(payload["images"], payload["labels"]):
                raise DMError(f"{path} is damaged: its images or labels do not match the checksum stored with them; "
                              f"make the set again (or restore the file)")
            return synset
        if isinstance(payload, dict) and isinstance(payload.get("data"), (list, tuple)) and payload["data"]:
            entry = payload["data"][-1]
            if isinstance(entry, (list, tuple)) and len(entry) == 2 and all(torch.is_tensor(t) for t in entry):
                return cls.checked(path, entry[0], entry[1], {"method": "dm-original", "source": str(path)})
        raise DMError(f"{path} is a torch file but not a synthetic set (expected a dm_core set or the original DM "
                      f"format {{'data': [[images, labels]]}})")

    @classmethod
    def checked(cls, path: Path, images, labels, meta) -> SyntheticSet:
        """A set read from ``path``, refused with one line when any part is missing or unusable."""
        if not torch.is_tensor(images) or not images.is_floating_point() or images.dim() != 4:
            raise DMError(f"{path} holds no N x C x H x W float 'images' tensor: it is not a usable synthetic set")
        if not torch.is_tensor(labels) or labels.is_floating_point() or labels.is_complex() or labels.dim() != 1:
            raise DMError(f"{path} holds no 1-D integer 'labels' tensor: it is not a usable synthetic set")
        if len(images) != len(labels) or len(labels) == 0:
            raise DMError(f"{path} holds {len(images)} images and {len(labels)} labels: a set needs one label per "
                          f"image and at least one image")
        if int(labels.min()) < 0:
            raise DMError(f"{path} holds a negative label ({int(labels.min())}): labels are class indices")
        if not isinstance(meta, dict):
            raise DMError(f"{path} has provenance ('meta') of type {type(meta).__name__}, not a dict: the file is "
                          f"damaged or foreign")
        if not torch.isfinite(images).all():
            raise DMError(f"{path} holds non-finite pixels (NaN or inf): the run that made it diverged; make it "
                          f"again with a lower --lr-img")
        return cls(images.float(), labels.long(), dict(meta))

    def denormalised(self) -> torch.Tensor:
        mean = torch.tensor(self.meta.get("mean", (0.0,) * self.images.shape[1])).view(1, -1, 1, 1)
        std = torch.tensor(self.meta.get("std", (1.0,) * self.images.shape[1])).view(1, -1, 1, 1)
        return (self.images * std + mean).clamp(0, 1)

    def save_grid_png(self, path: str | os.PathLike, min_size: int = 64) -> Path:
        return atomic_write_bytes(path, self.grid_png(min_size))

    def grid_png(self, min_size: int = 64) -> bytes:
        """A PNG of the images: one row per class, one column per image (the look of the paper's Figure 2); with one
        image per class, one row of classes. Images smaller than ``min_size`` pixels are enlarged (nearest neighbour)
        to stay legible."""
        import io as _io

        import torch.nn.functional as F
        from PIL import Image
        from torchvision.utils import make_grid

        order = torch.argsort(self.labels, stable=True)
        per_class = int(torch.bincount(self.labels).max())
        images = self.denormalised()[order]
        scale = max(1, min_size // images.shape[-1])
        if scale > 1:
            images = F.interpolate(images, scale_factor=scale, mode="nearest")
        grid = make_grid(images, nrow=per_class if per_class > 1 else len(images), padding=1, pad_value=1.0)
        array = grid.permute(1, 2, 0).mul(255).round().byte().numpy()
        buffer = _io.BytesIO()
        Image.fromarray(array[..., 0] if self.images.shape[1] == 1 else array).save(buffer, format="PNG")
        return buffer.getvalue()


def made_set(data, images: torch.Tensor, classes: list[int], method: str, seconds: list[float],
             **meta) -> SyntheticSet:
    """The set a method made: ``images`` grouped by class (``classes`` in order, equally many each), with its
    provenance: the dataset and its normalisation, the method and its settings (``meta``), and the seconds it took
    (``seconds``: the total, and ``segments`` when a resumed run took several)."""
    labels = torch.as_tensor(classes).repeat_interleave(len(images) // len(classes))
    meta = {"dataset": data.name, "method": method, **meta, "train_split": data.split or "all",
            "classes": list(classes), "mean": list(data.mean),
            "std": list(data.std), "image_size": list(data.image_size), "num_classes": data.num_classes,
            "seconds": round(sum(seconds), 3), "version": package_version()}
    if len(seconds) > 1:
        meta["segments"] = [round(s, 3) for s in seconds]
    return SyntheticSet(images.detach().float().contiguous().cpu(), labels, meta)


def _plain(value):
    """Keep meta loadable under weights_only: tuples become lists, unknown objects become strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
