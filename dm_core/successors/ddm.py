"""Decomposed distribution matching (Rahimi Malakshan et al., WACV 2025, arXiv 2412.04748): DM's iteration plus
style matching of the intermediate feature maps and an intra-class diversity term (docs/successors.md, "DDM"), as
the authors' code computes them (SaharR1372/DM_Style_matching).

Style is read at every block's activation output (ReLU(norm(conv)), before pooling). Per layer and class, with M the
class's mean feature map (the mean over its images, C x H x W):
- moments (L_MM): mu and sigma of M per channel (spatial mean; sqrt of the unbiased spatial variance + 1e-5);
  (mean over channels of (mu_real - mu_syn)^2 + mean over channels of (sigma_real - sigma_syn)^2) / 2;
- correlations (L_CM): the mean over the class's images of each image's Gram matrix G = F F^T / (C H W);
  ||mean G_real - mean G_syn||_F^2.
Both are averaged over the layers and summed over the classes. Content: DM's distance of class-mean embeddings
(L_MMD), and intra-class diversity (L_ICD): each synthetic image's embedding is pushed away from the mean embedding m
of its k nearest synthetic neighbours of the same class (k = 2, fewer when the class has fewer other images) by
maximising KL(softmax(e) || softmax(m)); L_ICD is minus the class's mean KL, 0 with one image per class.
    loss = L_MMD + mm_weight * L_MM + cm_weight * L_CM + icd_weight * L_ICD
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data import ImageDataset
from ..dm import DMMatcher, MatchingConfig
from ..engine import condense
from ..registry import Method, register_method
from ..synset import SyntheticSet
from ..validate import check_int, check_number
from .common import ACTIVATIONS, by_class, embed_with_taps

STYLE_TAP = ACTIVATIONS  # ReLU(norm(conv)) of every block, before pooling


@dataclass(frozen=True)
class DDMConfig(MatchingConfig):
    mm_weight: float = 10_000.0  # weight of the moments term: the authors' --style_ratio (docs/successors.md)
    cm_weight: float = 10_000.0  # weight of the correlation term: the authors' --style_ratio
    icd_weight: float = 10.0  # weight of the intra-class diversity term: the authors' --icd_ratio
    icd_neighbours: int = 2  # k nearest same-class neighbours (the authors' fixed k)

    def __post_init__(self):
        super().__post_init__()
        for name in ("mm_weight", "cm_weight", "icd_weight"):
            check_number(name, getattr(self, name), zero=True)
        check_int("icd_neighbours", self.icd_neighbours)


MOMENT_EPS = 1e-5


def channel_moments(features: torch.Tensor, eps: float = MOMENT_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> per-map, per-channel spatial mean and standard deviation (unbiased variance + eps), each
    (B, C)."""
    flat = features.float().flatten(2)
    return flat.mean(dim=2), (flat.var(dim=2, unbiased=True) + eps).sqrt()


def gram(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C): each image's channel correlations F F^T / (C H W)."""
    flat = features.float().flatten(2)
    return flat @ flat.transpose(1, 2) / flat.shape[1:].numel()


def class_style(features: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per class: the moments of the class's mean map, (K, C) and (K, C), and the mean of its images' Gram
    matrices, (K, C, C), computed as one product over all its images without a per-image C x C matrix."""
    maps = by_class(features, num_classes)  # (K, n, C, H, W)
    mean, std = channel_moments(maps.mean(dim=1))
    flat = maps.flatten(3)  # (K, n, C, HW)
    n, c, hw = flat.shape[1:]
    mean_gram = torch.einsum("kncs,knds->kcd", flat, flat) / (n * c * hw)
    return mean, std, mean_gram


def style_losses(real_style: list, syn_style: list) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_MM, L_CM) from ``class_style`` tuples of each layer: L_MM is half the mean squared difference over channels
    of the moments, L_CM the squared Frobenius distance of the mean Gram matrices; averaged over layers, summed over
    classes."""
    mm = cm = 0.0
    for (rm, rs, rg), (sm, ss, sg) in zip(real_style, syn_style):
        mm = mm + ((rm - sm).pow(2).mean(-1) + (rs - ss).pow(2).mean(-1)).sum() / 2
        cm = cm + (rg - sg).pow(2).sum()
    layers = max(1, len(real_style))
    return mm / layers, cm / layers


def intra_class_diversity(embeddings: torch.Tensor, neighbours: int = 2) -> torch.Tensor:
    """(K, m, D) synthetic embeddings grouped by class -> L_ICD = - sum over classes of the mean over images of
    KL(softmax(e_i) || softmax(mean of its k nearest same-class neighbours)), k = min(neighbours, m - 1); 0 when
    m == 1 (the authors' code fails there)."""
    k_classes, m, _ = embeddings.shape
    if m < 2:
        return embeddings.new_zeros(())
    k = min(m - 1, neighbours)
    e = embeddings.float()
    with torch.no_grad():
        distance = torch.cdist(e, e)
        distance.diagonal(dim1=1, dim2=2).fill_(float("inf"))
        nearest = distance.topk(k, dim=2, largest=False).indices  # (K, m, k)
    neighbourhood = torch.gather(e.unsqueeze(1).expand(k_classes, m, m, e.shape[-1]), 2,
                                 nearest.unsqueeze(-1).expand(-1, -1, -1, e.shape[-1])).mean(dim=2)
    log_p, log_q = F.log_softmax(e, dim=-1), F.log_softmax(neighbourhood, dim=-1)
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
                       "intermediate layers and intra-class diversity", learns=True, per_class=True, order=7))
