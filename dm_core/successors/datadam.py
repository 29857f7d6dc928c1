"""DataDAM (Sajedi et al., ICCV 2023): DM's iteration that also matches the spatial attention maps of the
intermediate layers (docs/successors.md, "DataDAM").

The attention map of a feature map F (C x H x W) is a(F) = sum over channels of |F_c|^p, an H x W map, flattened
and divided by its L2 norm (the Spatial Attention Matching module). Per class, the mean attention map of the real
batch is matched to that of the synthetic images at the output of every activation of the network but the last,
and the final embedding is matched as in DM (the L_MMD term, weight lambda):
    loss = scale * ( sum_layers sum_c ||mean a_real - mean a_syn||^2 + lambda * sum_c ||mean e_real - mean e_syn||^2 )
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
from ..nets import default_model
from ..registry import Method, register_method
from ..synset import SyntheticSet
from ..validate import check_number
from .common import ACTIVATIONS, by_class, embed_with_taps


@dataclass(frozen=True)
class DataDAMConfig(MatchingConfig):
    batch_real: int = 64  # real images per class per iteration (the authors' default)
    # model None: the ConvNet of the image size with batch norm, as the authors condense (docs/successors.md)
    power: float = 1.0  # p of the attention map
    task_balance: float = 0.01  # lambda, the weight of the final-embedding (L_MMD) term
    loss_scale: float = 100.0  # both terms are multiplied by this

    def __post_init__(self):
        super().__post_init__()
        check_number("power", self.power)
        check_number("loss_scale", self.loss_scale)
        check_number("task_balance", self.task_balance, zero=True)

    def default_network(self, data: ImageDataset) -> str:
        return default_model(data.image_size).replace("convnet", "convnetbn", 1)


def attention_map(features: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W): sum over channels of |F_c|^power, each map scaled to unit L2 norm."""
    spatial = features.float().abs().pow(power).sum(dim=1).flatten(1)
    return F.normalize(spatial, p=2.0, dim=1)


def datadam_loss(net, real, syn, num_classes: int, power: float, task_balance: float, loss_scale: float,
                 real_aug=None, syn_aug=None) -> torch.Tensor:
    """The DataDAM loss of a batch grouped by class (classes in the same order in both batches)."""
    k = num_classes

    def class_mean_attention(maps: torch.Tensor) -> torch.Tensor:
        return by_class(attention_map(maps, power), k).mean(dim=1)

    with torch.no_grad():
        real_emb, real_att = embed_with_taps(net, real_aug(real) if real_aug else real, ACTIVATIONS,
                                             class_mean_attention)
    syn_emb, syn_att = embed_with_taps(net, syn_aug(syn) if syn_aug else syn, ACTIVATIONS, class_mean_attention)
    attention = sum(((a - b).pow(2).sum() for a, b in zip(real_att[:-1], syn_att[:-1])),
                    torch.zeros((), device=syn.device))
    embedding = (by_class(real_emb, k).mean(1) - by_class(syn_emb, k).mean(1)).pow(2).sum()
    return loss_scale * (attention + task_balance * embedding)


class DataDAMMatcher(DMMatcher):
    compiles = False  # the loss reads intermediate layers through hooks

    def loss(self, net, real, syn, classes, embed):
        c = self.config
        return datadam_loss(net, real, syn, len(classes), c.power, c.task_balance, c.loss_scale)


def condense_datadam(data: ImageDataset, config: DataDAMConfig = DataDAMConfig(),
                     classes: Sequence[int] | None = None, device: str | torch.device = "auto",
                     checkpoint: str | os.PathLike | None = None, resume: bool = False,
                     progress: bool = True, initial: torch.Tensor | None = None) -> SyntheticSet:
    """DataDAM: ``config.ipc`` images per class of ``classes`` (all by default) by attention and embedding matching."""
    return condense("datadam", DataDAMMatcher, data, config, classes, device, checkpoint, resume, progress, initial)


register_method(Method("datadam", DataDAMConfig, condense_datadam, "DM plus matching of the spatial attention maps "
                       "of intermediate layers", learns=True, per_class=True, order=6))
