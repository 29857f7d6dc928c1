"""M3D (Zhang et al., AAAI 2024): DM's iteration with the squared maximum mean discrepancy of a Gaussian kernel in
place of the distance between class means, so every moment of the embedding distributions is matched, not only the
first (docs/successors.md, "M3D").

Per class c, with real embeddings X (n) and synthetic embeddings Y (m) of the same network and augmentation:
    MMD^2(X, Y) = mean k(X, X) + mean k(Y, Y) - 2 mean k(X, Y)
(the biased, V-statistic estimate: it is the squared RKHS distance of the two empirical mean embeddings, so it is
0 for identical samples and positive otherwise). With the linear kernel k(x, y) = <x, y> it is exactly DM's
||mean X - mean Y||^2. The Gaussian kernel is a sum over bandwidths s * b, s in {1/4, 1/2, 1, 2, 4}, around b =
the mean squared distance between the pooled embeddings of the class (not differentiated).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..data import ImageDataset
from ..dm import DMConfig, DMMatcher
from ..engine import condense, embedding
from ..errors import DMError
from ..nets import reinit_
from ..registry import Method, register_method
from ..synset import SyntheticSet
from ..validate import check_int
from .common import by_class

KERNELS = ("gaussian", "linear")
BANDWIDTH_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)


PIXEL_LR_IMG = 5e-3  # the authors' image learning rate, on images in [0, 1] (docs/successors.md, "M3D")


@dataclass(frozen=True)
class M3DConfig(DMConfig):
    """M3D's settings. The defaults are the authors' configuration (docs/successors.md, "M3D", names the files):
    5,000 iterations, 128 real images per class, 2 x 2 partition, one network for 5 iterations, colour/crop/cutout
    augmentation, images kept in the pixel range, and the image learning rate 5e-3 of [0, 1] pixels (``lr_img``
    None: that rate in this toolkit's normalised units, 5e-3 / std^2)."""

    iterations: int | None = 5000
    batch_real: int = 128
    augment: str | None = "color_crop_cutout"
    factor: int = 2
    kernel: str = "gaussian"  # or "linear" (DM's loss)
    iterations_per_model: int = 5  # image steps each random network serves
    clamp: bool = True  # keep the images in [0, 1] pixels after every step

    def __post_init__(self):
        super().__post_init__()
        if self.kernel not in KERNELS:
            raise DMError(f"unknown M3D kernel {self.kernel!r}: use {' or '.join(KERNELS)}")
        check_int("iterations_per_model", self.iterations_per_model)

    def default_lr_img(self, data: ImageDataset) -> float:
        # a step of lr in pixels is a step of lr / std in normalised units, along a gradient std times larger
        return PIXEL_LR_IMG / (sum(data.std) / len(data.std)) ** 2


def _squared_distances(z: torch.Tensor) -> torch.Tensor:
    """(K, N, D) -> (K, N, N) squared Euclidean distances, differentiable everywhere (no square root)."""
    sq = z.pow(2).sum(-1)
    return (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2 * z @ z.transpose(-1, -2)).clamp_min(0)


def kernel_matrix(z: torch.Tensor, kernel: str = "gaussian") -> torch.Tensor:
    """(K, N, D) -> (K, N, N): the kernel between every pair of the N points of each of the K groups."""
    if kernel == "linear":
        return z @ z.transpose(-1, -2)
    if kernel != "gaussian":
        raise DMError(f"unknown M3D kernel {kernel!r}: use {' or '.join(KERNELS)}")
    d2 = _squared_distances(z)
    n = z.shape[1]
    bandwidth = (d2.detach().sum(dim=(1, 2)) / max(n * n - n, 1)).clamp_min(1e-12).view(-1, 1, 1)
    return sum(torch.exp(-d2 / (bandwidth * s)) for s in BANDWIDTH_MULTIPLIERS)


def mmd2(x: torch.Tensor, y: torch.Tensor, kernel: str = "gaussian") -> torch.Tensor:
    """(K, n, D) and (K, m, D) -> (K,): the biased squared MMD of each group's two samples."""
    n = x.shape[1]
    k = kernel_matrix(torch.cat([x, y], dim=1), kernel)
    return k[:, :n, :n].mean(dim=(1, 2)) + k[:, n:, n:].mean(dim=(1, 2)) - 2 * k[:, :n, n:].mean(dim=(1, 2))


def m3d_loss(net, real: torch.Tensor, syn: torch.Tensor, num_classes: int, kernel: str = "gaussian",
             real_aug=None, syn_aug=None, real_embed=None, syn_embed=None) -> torch.Tensor:
    """Sum over classes of MMD^2 between the real and synthetic embeddings (batches grouped by class); the
    arguments as ``dm_loss``'s."""
    with torch.no_grad():
        real_emb = by_class((real_embed or embedding)(net, real_aug(real) if real_aug else real), num_classes)
    syn_emb = by_class((syn_embed or embedding)(net, syn_aug(syn) if syn_aug else syn), num_classes)
    return mmd2(real_emb, syn_emb, kernel).sum()


class M3DMatcher(DMMatcher):
    def network(self, iteration: int):
        if iteration % self.config.iterations_per_model == 0:
            reinit_(self.net, self.run.generator)
        return self.net

    def after_step(self, net, iteration: int, step: int) -> None:
        if self.config.clamp:  # the authors clamp their [0, 1] images after every step; here in normalised units
            data = self.run.data
            mean = torch.tensor(data.mean, device=self.device).view(1, -1, 1, 1)
            std = torch.tensor(data.std, device=self.device).view(1, -1, 1, 1)
            with torch.no_grad():
                self.run.images.copy_(torch.maximum(torch.minimum(self.run.images, (1 - mean) / std), -mean / std))

    def loss(self, net, real, syn, classes, embed):
        return m3d_loss(net, real, syn, len(classes), self.config.kernel, real_embed=lambda n, x: embed("real", x),
                        syn_embed=lambda n, x: embed("syn", x))

    def meta(self):
        return {"bandwidth_multipliers": list(BANDWIDTH_MULTIPLIERS)} if self.config.kernel == "gaussian" else {}


def condense_m3d(data: ImageDataset, config: M3DConfig = M3DConfig(), classes: Sequence[int] | None = None,
                 device: str | torch.device = "auto", checkpoint: str | os.PathLike | None = None,
                 resume: bool = False, progress: bool = True, initial: torch.Tensor | None = None) -> SyntheticSet:
    """M3D: ``config.ipc`` images per class of ``classes`` (all by default) by minimising the kernel MMD."""
    return condense("m3d", M3DMatcher, data, config, classes, device, checkpoint, resume, progress, initial)


register_method(Method("m3d", M3DConfig, condense_m3d, "DM with a Gaussian-kernel MMD: every moment of the "
                       "embeddings matched", learns=True, per_class=True, order=4))
