"""Proxies: what each architecture is trained on during the search (docs/method.md section 7).

``random50``, ``dsa50``, ``dm50`` (any method and size: ``dm10``, ``herding20``...) train on a small set made by
dm_core's ``make_set`` from the training split only; ``early`` trains on the whole training split for as many SGD steps
as proxy training takes (200 epochs x ceil(50 * classes / 250) batches = 400 steps on CIFAR-10; ``early10`` matches a
10-images-per-class proxy instead); ``whole`` trains on the whole training split for 100 epochs.

Small sets are cached as synthetic-set files keyed by dataset, split, method, size, seed and iterations, so searches in
the same run directory (and ground-truth runs) reuse them; a cached or given file made for another dataset or split is
refused with a DMError.

A proxy is named by what it holds: a set file (``--proxy-file``) records its method and images per class, and a name
such as ``dm3`` must match them (a DM file of 7 images per class is ``dm7``). A set of the user's own, or one whose
provenance is unknown, is named ``custom:NAME``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from dm_core import DMError, ImageDataset, SyntheticSet, get_method, list_methods, make_set
from dm_core.engine import discard_checkpoint

REFERENCE_IPC = 50  # the paper's proxy size, which sets the step count of ``early``
PROXY_EPOCHS = 200
WHOLE_EPOCHS = 100


CUSTOM = "custom"


@dataclass(frozen=True)
class Proxy:
    """A parsed proxy name. ``kind`` is a set method, ``custom``, ``early`` or ``whole``; ``ipc`` is 0 for ``whole``
    and ``custom`` (a custom set holds what its file holds); ``label`` is the NAME of ``custom:NAME``."""

    kind: str
    ipc: int
    label: str = ""

    @property
    def name(self) -> str:
        if self.kind == "whole":
            return "whole"
        if self.kind == CUSTOM:
            return f"{CUSTOM}:{self.label}"
        if self.kind == "early":
            return "early" if self.ipc == REFERENCE_IPC else f"early{self.ipc}"
        return f"{self.kind}{self.ipc}"

    @property
    def is_set(self) -> bool:
        return self.kind in list_methods() or self.kind == CUSTOM

    def default_epochs(self) -> int:
        return WHOLE_EPOCHS if self.kind == "whole" else PROXY_EPOCHS

    def early_iterations(self, num_classes: int, epochs: int, batch_size: int) -> int:
        """SGD steps of proxy training on an ipc-per-class set: epochs x batches per epoch."""
        return epochs * math.ceil(self.ipc * num_classes / batch_size)


def parse_proxy(text: str) -> Proxy:
    if text.strip().lower().startswith(CUSTOM + ":"):
        label = text.strip()[len(CUSTOM) + 1:]
        if not re.fullmatch(r"[A-Za-z0-9._-]+", label):
            raise DMError(f"bad proxy name {text!r}: a set of your own is custom:NAME, NAME made of letters, digits, "
                          f"'.', '_' or '-'")
        return Proxy(CUSTOM, 0, label)
    key = text.strip().lower()
    if key == "whole":
        return Proxy("whole", 0)
    if key == "early":
        return Proxy("early", REFERENCE_IPC)
    match = re.fullmatch(r"([a-z][a-z0-9]*?)(\d+)", key)  # a method name may hold digits: m3d50
    if match and match.group(1) in (*list_methods(), "early") and int(match.group(2)) > 0:
        return Proxy(match.group(1), int(match.group(2)))
    raise DMError(f"unknown proxy {text!r}: use whole, early[IPC], a set method with its images per class "
                  f"({', '.join(m + '50' for m in list_methods())}, dm10, ...), or custom:NAME with its proxy_file")


def load_proxy_file(proxy: Proxy, path: str | Path | None) -> SyntheticSet | None:
    """Check ``--proxy-file`` against the proxy's name before any work; return the loaded set (None without a file).

    ``custom:NAME`` needs a file and takes any set; a method name (``dm3``) needs a file whose provenance says that
    method and that many images per class, in every class it holds.
    """
    if path is None:
        if proxy.kind == CUSTOM:
            raise DMError(f"proxy {proxy.name} names a set of your own: give its file as proxy_file")
        return None
    if not proxy.is_set:
        raise DMError(f"proxy_file goes with a set proxy (dm50, random50, custom:NAME, ...), not {proxy.name}")
    path = Path(path)
    if not path.is_file():
        raise DMError(f"no proxy file at {path}")
    synset = SyntheticSet.load(path)
    check_provenance(proxy, synset, path)
    return synset


def check_provenance(proxy: Proxy, synset: SyntheticSet, path: Path) -> None:
    """The name must say what the file holds (method and images per class), unless it is ``custom:NAME``."""
    if proxy.kind == CUSTOM:
        return
    method, ipc = synset.meta.get("method"), synset.meta.get("ipc")
    if method not in list_methods() or not isinstance(ipc, int):
        raise DMError(f"{path} does not record a {'/'.join(list_methods())} method and images per class "
                      f"(method {method!r}, ipc {ipc!r}): name a set of your own proxy custom:NAME")
    named = f"{method}{ipc}"
    if named != proxy.name:
        raise DMError(f"{path} holds a {method} set of {ipc} images per class, not {proxy.name}: name it {named} "
                      f"(or custom:NAME for a set of your own)")
    counts = torch.bincount(synset.labels[synset.labels >= 0]).tolist() if len(synset) else []
    held = sorted({c for c in counts if c})
    if held != [ipc]:
        raise DMError(f"{path} says {ipc} images per class but holds {len(synset)} images "
                      f"({'/'.join(map(str, held)) or 'none'} per class): name it custom:NAME")


def proxy_file(cache_dir: Path, dataset: str, proxy: Proxy, split_seed: int, seed: int, options: dict) -> Path:
    """The cache file of a proxy set; every option that changes the set is part of the name."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset)
    tags = "".join(f"-{k.replace('_', '')}{v}" for k, v in sorted(options.items()))
    return cache_dir / f"{safe}-{proxy.name}-split{split_seed}-seed{seed}{tags}.pt"


def check_proxy_set(synset: SyntheticSet, data: ImageDataset, split_seed: int, path: Path,
                    x_val: torch.Tensor | None = None) -> None:
    """Refuse a set made for another dataset, split or image shape (one line, before any training), and one that may
    hold the search's validation images: it must have been made from the search's training part (its provenance's
    ``train_split``). A set that does not record its split is checked against the validation images themselves
    (``x_val``): none of its images may be one of them."""
    made_for = synset.meta.get("dataset")
    if made_for is not None and made_for != data.name:
        raise DMError(f"proxy file {path} was made for dataset {made_for!r}, not {data.name!r}: "
                      f"delete it, or choose another out folder or proxy_file")
    wanted = data.split or {}
    seen = synset.meta.get("train_split")
    legacy = synset.meta.get("nas_split_seed")  # sets the search cached before ``train_split`` was recorded
    if isinstance(seen, dict):
        same = (seen.get("part") == "train" and seen.get("split_seed") == wanted.get("split_seed")
                and abs(float(seen.get("val_fraction", -1)) - float(wanted.get("val_fraction", -2))) < 1e-9)
        if not same:
            raise DMError(f"proxy file {path} was made from the training part of another split ({_split(seen)}), "
                          f"not this search's ({_split(wanted)}): {_remake(synset, data, wanted, path)}")
    elif seen == "all":
        raise DMError(f"proxy file {path} was made from every training image of {data.name}, so it may hold the "
                      f"search's validation images: {_remake(synset, data, wanted, path)}")
    elif legacy is not None:
        if int(legacy) != split_seed:
            raise DMError(f"proxy file {path} was made from the training split of split_seed {legacy}, not "
                          f"{split_seed}")
    elif x_val is not None and _holds_any(synset.images, x_val):
        raise DMError(f"proxy file {path} holds images of the search's validation split: "
                      f"{_remake(synset, data, wanted, path)}")
    if tuple(synset.images.shape[1:]) != (data.channels, *data.image_size):
        raise DMError(f"proxy file {path} holds {tuple(synset.images.shape[1:])} images, but {data.name} images are "
                      f"{(data.channels, *data.image_size)}")
    if len(synset) == 0 or int(synset.labels.max()) >= data.num_classes or int(synset.labels.min()) < 0:
        raise DMError(f"proxy file {path} has labels outside the {data.num_classes} classes of {data.name}")


def _split(split: dict) -> str:
    return f"val_fraction {split.get('val_fraction')}, split_seed {split.get('split_seed')}"


def _remake(synset: SyntheticSet, data: ImageDataset, split: dict, path: Path) -> str:
    """How to make a valid proxy file: the same method and size, from the search's training part."""
    method, ipc = synset.meta.get("method", "METHOD"), synset.meta.get("ipc", "IPC")
    return (f"make it from the search's training part, e.g. python -m dm_core condense --dataset {data.name} "
            f"--method {method} --ipc {ipc} --val-fraction {split.get('val_fraction')} --split-seed "
            f"{split.get('split_seed')} --out {path.with_name(path.stem + '-train' + path.suffix)}")


def _holds_any(images: torch.Tensor, x_val: torch.Tensor) -> bool:
    """Whether any of ``images`` equals one of ``x_val`` exactly (compared by a per-image sum first)."""
    sums = x_val.flatten(1).sum(1)
    for image in images:
        close = (sums - image.sum()).abs() < 1e-4
        if close.any() and (x_val[close] == image).flatten(1).all(1).any():
            return True
    return False


@dataclass(frozen=True)
class ProxySet:
    synset: SyntheticSet
    path: Path
    seconds: float  # time to make the set (0 when it came from the cache)
    cached: bool


def load_or_make_proxy_set(proxy: Proxy, train: ImageDataset, cache_dir: Path, split_seed: int, seed: int,
                           options: dict, device: torch.device | str, progress: bool = True,
                           given_file: Path | None = None, x_val: torch.Tensor | None = None) -> ProxySet:
    """The proxy set of a set-method proxy: the given file, else the cached file, else made now and cached.

    ``options`` go to ``make_set`` (condensation ``iterations``, ``batch_real``); random selection takes none.
    A dm/dsa condensation checkpoints beside the cache file, so an interrupted one resumes.
    """
    if not proxy.is_set:
        raise ValueError(f"proxy {proxy.name} trains on the training split, it has no set")
    if proxy.kind != CUSTOM:  # random and herding select images: no condensation iterations, no real batch
        options = {k: v for k, v in options.items() if get_method(proxy.kind).supports(k)}
    if given_file is not None:
        synset = load_proxy_file(proxy, given_file)
        check_proxy_set(synset, train, split_seed, given_file, x_val)
        return ProxySet(synset, given_file, float(synset.meta.get("nas_make_seconds", 0.0)), True)
    if proxy.kind == CUSTOM:
        raise DMError(f"proxy {proxy.name} names a set of your own: give its file as proxy_file")
    path = proxy_file(cache_dir, train.name, proxy, split_seed, seed, options)
    if path.is_file():
        synset = SyntheticSet.load(path)
        check_proxy_set(synset, train, split_seed, path)
        check_provenance(proxy, synset, path)
        return ProxySet(synset, path, float(synset.meta.get("nas_make_seconds", 0.0)), True)
    checkpoint = path.with_name(path.stem + ".ckpt") if get_method(proxy.kind).learns else None
    synset = make_set(proxy.kind, train, proxy.ipc, seed=seed, device=device, progress=progress,
                      checkpoint=checkpoint, resume=checkpoint is not None, **options)
    seconds = float(synset.meta["seconds"])  # every segment of a resumed condensation, not this call's alone
    meta = {**synset.meta, "dataset": train.name, "nas_split_seed": split_seed, "nas_make_seconds": seconds}
    synset = SyntheticSet(synset.images.detach().cpu(), synset.labels.cpu(), meta)
    synset.save(path)
    discard_checkpoint(checkpoint)  # the cached set supersedes it
    return ProxySet(synset, path, seconds, False)
