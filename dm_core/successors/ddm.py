"""Decomposed distribution matching (Rahimi Malakshan et al., WACV 2025, arXiv 2412.04748): DM's iteration plus
style matching of the intermediate feature maps and an intra-class diversity term (docs/successors.md, "DDM").

Style is read at every convolution's output (before the norm that would remove it). Per layer and class:
- moments (L_MM): each image's per-channel spatial mean mu and standard deviation sigma, averaged over the class's
  images; (||mean mu_real - mean mu_syn||^2 + ||mean sigma_real - mean sigma_syn||^2) / C;
- correlations (L_CM): each image's Gram matrix G = F F^T / (C H W) of its C channel maps, averaged over the class;
  ||mean G_real - mean G_syn||_F^2.
Content: DM's distance of class-mean embeddings (L_MMD), and intra-class diversity (L_ICD): each synthetic image's
embedding is pushed away from the mean embedding m of its k nearest synthetic neighbours of the same class
(k = round(0.2 * images per class), at least 1) by maximising KL(softmax(e) || softmax(m)); L_ICD is minus the
class's mean KL, 0 with one image per class.
    loss = L_MMD + mm_weight * L_MM + cm_weight * L_CM + icd_weight * L_ICD
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data import ImageDataset
from ..dm import DMMatcher, MatchingConfig
from ..engine import condense
from ..registry import Method, register_method
from ..synset import SyntheticSet
from ..validate import check_number
from .common import by_class, embed_with_taps

STYLE_TAP = (nn.Conv2d,)


@dataclass(frozen=True)
class DDMConfig(MatchingConfig):
    mm_weight: float = 100.0  # weight of the moments term (lambda * alpha); docs/successors.md on its scale
    cm_weight: float = 100.0  # weight of the correlation term (lambda)
    icd_weight: float = 10.0  # weight of the intra-class diversity term (beta)
    icd_neighbours: float = 0.2  # k = this fraction of the images per class (at least 1)

    def __post_init__(self):
        super().__post_init__()
        for name in ("mm_weight", "cm_weight", "icd_weight"):
            check_number(name, getattr(self, name), zero=True)
        check_number("icd_neighbours", self.icd_neighbours)


def channel_moments(features: torch.Tensor, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> per-image, per-channel spatial mean and standard deviation, each (B, C)."""
    flat = features.float().flatten(2)
    mean = flat.mean(dim=2)
    std = (flat.var(dim=2, unbiased=False) + eps).sqrt()
    return mean, std


def gram(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C): each image's channel correlations F F^T / (C H W)."""
    flat = features.float().flatten(2)
    return flat @ flat.transpose(1, 2) / flat.shape[1:].numel()


def class_style(features: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class means of the moments and of the Gram matrices: (K, C), (K, C), (K, C, C). The mean Gram of a class is
    computed as one product over all its images, without a per-image C x C matrix."""
    mean, std = channel_moments(features)
    flat = by_class(features.flatten(2), num_classes)  # (K, n, C, HW)
    n, c, hw = flat.shape[1:]
    mean_gram = torch.einsum("kncs,knds->kcd", flat, flat) / (n * c * hw)
    return by_class(mean, num_classes).mean(1), by_class(std, num_classes).mean(1), mean_gram


def style_losses(real_style: list, syn_style: list) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_MM, L_CM) from ``class_style`` tuples of each layer: L_MM is the mean squared difference over channels of
    the class-mean moments, L_CM the squared Frobenius distance of the class-mean Gram matrices, both summed over
    layers and classes."""
    mm = cm = 0.0
    for (rm, rs, rg), (sm, ss, sg) in zip(real_style, syn_style):
        mm = mm + ((rm - sm).pow(2).sum() + (rs - ss).pow(2).sum()) / rm.shape[-1]
        cm = cm + (rg - sg).pow(2).sum()
    return mm, cm


def intra_class_diversity(embeddings: torch.Tensor, fraction: float = 0.2) -> torch.Tensor:
    """(K, m, D) synthetic embeddings grouped by class -> L_ICD = - sum over classes of the mean over images of
    KL(softmax(e_i) || softmax(mean of its k nearest same-class neighbours)); 0 when m == 1."""
    k_classes, m, _ = embeddings.shape
    if m < 2:
        return embeddings.new_zeros(())
    k = min(m - 1, max(1, round(fraction * m)))
    e = embeddings.float()
    with torch.no_grad():
        distance = torch.cdist(e, e)
        distance.diagonal(dim1=1, dim2=2).fill_(float("inf"))
        nearest = distance.topk(k, dim=2, largest=False).indices  # (K, m, k)
    neighbours = torch.gather(e.unsqueeze(1).expand(k_classes, m, m, e.shape[-1]), 2,
                              nearest.unsqueeze(-1).expand(-1, -1, -1, e.shape[-1])).mean(dim=2)
    log_p, log_q = F.log_softmax(e, dim=-1), F.log_softmax(neighbours, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (K, m)
    return -kl.mean(dim=1).sum()


class DDMMatcher(DMMatcher):
    compiles = False  # the loss reads intermediate layers through hooks

    def loss(self, net, real, syn, classes, embed):
        k, c = len(classes), self.config
        style = lambda maps: class_style(maps, k)  # noqa: E731
        with torch.no_grad():
            real_emb, real_style = embed_with_taps(net, real, STYLE_TAP, style)
        syn_emb, syn_style = embed_with_taps(net, syn, STYLE_TAP, style)
        syn_emb = by_class(syn_emb, k)
        content = (by_class(real_emb, k).mean(1) - syn_emb.mean(1)).pow(2).sum()
        mm, cm = style_losses(real_style, syn_style)
        icd = intra_class_diversity(syn_emb, c.icd_neighbours) if c.icd_weight else 0.0
        return content + c.mm_weight * mm + c.cm_weight * cm + c.icd_weight * icd


def condense_ddm(data: ImageDataset, config: DDMConfig = DDMConfig(), classes: Sequence[int] | None = None,
                 device: str | torch.device = "auto", checkpoint: str | os.PathLike | None = None,
                 resume: bool = False, progress: bool = True, initial: torch.Tensor | None = None) -> SyntheticSet:
    """Decomposed DM: ``config.ipc`` images per class of ``classes`` (all by default)."""
    return condense("ddm", DDMMatcher, data, config, classes, device, checkpoint, resume, progress, initial)


register_method(Method("ddm", DDMConfig, condense_ddm, "decomposed DM: DM plus style (moments, Gram matrices) of "
                       "intermediate layers and intra-class diversity", learns=True, per_class=True))
