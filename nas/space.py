"""The 720-ConvNet search space (docs/method.md section 7), as a plain enumeration and as an NNI model space.

A ``SearchSpace`` is a product of per-field choices; the full space is depth {1,2,3,4} x width {32,64,128,256} x
activation {sigmoid, relu, leakyrelu} x norm {none, batchnorm, layernorm, instancenorm, groupnorm} x pooling
{none, maxpool, avgpool}. Named subspaces (``tiny``, ``small``, ...) keep quick runs quick; ``parse_space`` also reads
an explicit product such as ``depth=1,2;width=32;act=relu;norm=none,batchnorm;pool=avgpool``.
"""
from __future__ import annotations

import itertools
import numbers
from collections.abc import Mapping
from dataclasses import dataclass

import nni
import torch
from nni.mutable import ensure_frozen
from nni.nas.nn.pytorch import ModelSpace  # (nas/__init__.py quiets NNI's warnings about newer torch classes)
from nni.nas.space import current_model, model_context

from dm_core import ConvNetSpec, DMError, build_model

DEPTHS = (1, 2, 3, 4)
WIDTHS = (32, 64, 128, 256)
ACTS = ("sigmoid", "relu", "leakyrelu")
NORMS = ("none", "batchnorm", "layernorm", "instancenorm", "groupnorm")
POOLS = ("none", "maxpool", "avgpool")
ALLOWED = {"depth": DEPTHS, "width": WIDTHS, "act": ACTS, "norm": NORMS, "pool": POOLS}


@dataclass(frozen=True)
class SearchSpace:
    """A product of choices per ConvNetSpec field; every value must belong to the paper's 720-space."""

    name: str
    depth: tuple[int, ...] = DEPTHS
    width: tuple[int, ...] = WIDTHS
    act: tuple[str, ...] = ACTS
    norm: tuple[str, ...] = NORMS
    pool: tuple[str, ...] = POOLS

    def __post_init__(self):
        for field in ALLOWED:
            values = getattr(self, field)
            if not values:
                raise DMError(f"search space {self.name!r} has no {field} choice: the space is empty")
            if len(set(values)) != len(values):
                raise DMError(f"search space {self.name!r} repeats a {field} choice: {values}")
            unknown = [v for v in values if v not in ALLOWED[field]]
            if unknown:
                raise DMError(f"search space {self.name!r}: {field} {unknown} not in the 720-space "
                              f"(choose from {', '.join(map(str, ALLOWED[field]))})")

    def choices(self) -> dict[str, tuple]:
        return {field: getattr(self, field) for field in ALLOWED}

    def specs(self) -> list[ConvNetSpec]:
        """Every architecture, in a fixed order (depth, width, act, norm, pool; each in the order given)."""
        return [ConvNetSpec(**dict(zip(ALLOWED, values))) for values in itertools.product(*self.choices().values())]

    def __len__(self) -> int:
        size = 1
        for values in self.choices().values():
            size *= len(values)
        return size

    def describe(self) -> str:
        return ";".join(f"{field}={','.join(map(str, values))}" for field, values in self.choices().items())

    def check_input(self, channels: int, num_classes: int, image_size: tuple[int, int]) -> None:
        """Raise DMError (before any training) if some architecture cannot run on this input size.

        Only depth, norm and pooling change shapes, so one small model per (depth, norm, pool) is enough.
        """
        for depth, norm, pool in itertools.product(self.depth, self.norm, self.pool):
            spec = ConvNetSpec(depth, min(self.width), self.act[0], norm, pool)
            build_model(spec, channels, num_classes, image_size)


NAMED_SPACES: dict[str, SearchSpace] = {
    "full": SearchSpace("full"),
    # 108 architectures: shallow-to-medium nets, the three most common norms.
    "small": SearchSpace("small", depth=(1, 2, 3), width=(32, 64), act=("sigmoid", "relu", "leakyrelu"),
                         norm=("none", "batchnorm", "instancenorm"), pool=("maxpool", "avgpool")),
    # 24 architectures that also run on 8x8 inputs (depth <= 2 with pooling).
    "tiny": SearchSpace("tiny", depth=(1, 2), width=(32,), act=("sigmoid", "relu"),
                        norm=("none", "batchnorm", "instancenorm"), pool=("maxpool", "avgpool")),
    # 4 architectures, for tests and smoke runs.
    "micro": SearchSpace("micro", depth=(1, 2), width=(32,), act=("relu",), norm=("none", "instancenorm"),
                         pool=("avgpool",)),
}


def parse_space(text: str) -> SearchSpace:
    """A named space (``full``, ``small``, ``tiny``, ``micro``) or ``field=v1,v2;field=...`` (missing fields: all)."""
    text = text.strip()
    if text in NAMED_SPACES:
        return NAMED_SPACES[text]
    if "=" not in text:
        raise DMError(f"unknown search space {text!r}: use one of {', '.join(NAMED_SPACES)} "
                      f"or 'depth=1,2;width=32;act=relu;norm=none;pool=avgpool'")
    values: dict[str, tuple] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        field, _, listed = part.partition("=")
        field = field.strip()
        if field not in ALLOWED:
            raise DMError(f"unknown search-space field {field!r} in {text!r}: use {', '.join(ALLOWED)}")
        items = [v.strip() for v in listed.split(",") if v.strip()]
        try:
            values[field] = tuple(int(v) for v in items) if field in ("depth", "width") else tuple(items)
        except ValueError:
            raise DMError(f"search-space field {field} needs integers, got {listed!r}") from None
    return SearchSpace(text, **values)


def canonical_sample(sample: Mapping, space: SearchSpace | None = None) -> dict:
    """The architecture of ``space`` that ``sample`` names, as the multi-trial space's sample: ``{"depth": 2,
    "width": 32, "act": "relu", "norm": "none", "pool": "avgpool"}``.

    ``sample`` may come from any strategy of either space: the multi-trial space's values (``ConvNetModelSpace``), or
    a one-shot export of ``ConvNetSupernet``, whose depth is an ``InputChoice``'s list of chosen indices into the
    space's depths (``[1]``: the second depth), whose width is the text of its ``LayerChoice`` key (``"32"``), and
    which leaves out the labels that have a single value in the space. Other keys are ignored. ``space`` defaults to
    the 720-space; a depth given as indices needs the space that made the export. DMError when the sample names no
    architecture of the space.
    """
    indexed = space is not None
    space = space if space is not None else NAMED_SPACES["full"]
    canonical = {}
    for field, choices in space.choices().items():
        if field not in sample:
            if len(choices) > 1:
                raise DMError(f"sample {dict(sample)} has no {field}: give one of {', '.join(map(str, choices))}")
            canonical[field] = choices[0]
            continue
        value = sample[field]
        if field == "depth" and isinstance(value, (list, tuple)):
            if not indexed:
                raise DMError(f"sample {dict(sample)}: a depth of chosen indices ({value}) indexes the depths of the "
                              f"space that exported it: pass that space")
            if len(value) != 1 or not isinstance(value[0], int) or not 0 <= value[0] < len(choices):
                raise DMError(f"sample {dict(sample)}: depth {value} is not one index of the space's depths "
                              f"{choices}")
            value = choices[value[0]]
        elif field in ("depth", "width") and isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        elif field in ("depth", "width") and isinstance(value, numbers.Integral) and not isinstance(value, bool):
            value = int(value)  # e.g. a numpy integer from a strategy's sampler
        if value not in choices or isinstance(value, bool):
            raise DMError(f"sample {dict(sample)}: {field} {value!r} is not in the space "
                          f"({', '.join(map(str, choices))})")
        canonical[field] = value
    return canonical


def spec_from_sample(sample: Mapping, space: SearchSpace | None = None) -> ConvNetSpec:
    """The ConvNetSpec of a sample of either space (see ``canonical_sample``)."""
    return ConvNetSpec(**canonical_sample(sample, space))


class ConvNetModelSpace(ModelSpace):
    """The search space as an NNI model space: one ``nni.choice`` per ConvNetSpec field, frozen into a dm_core ConvNet.

    NNI re-runs ``__init__`` inside a frozen context for every sampled architecture, so ``self.spec`` is the concrete
    architecture of the instance an evaluator receives (during the initial dry run: the first value of each choice).
    The context's sample may be in either space's format (``canonical_sample``), so any strategy's export, one-shot
    included, becomes an architecture of this space.
    """

    def __init__(self, space: SearchSpace, channels: int, num_classes: int, image_size: tuple[int, int]):
        super().__init__()
        self.space, self.channels, self.num_classes, self.image_size = space, channels, num_classes, tuple(image_size)
        self._arguments = (space, channels, num_classes, tuple(image_size))
        building = current_model()  # the sample NNI builds this instance for, or None (the space itself)
        sample = canonical_sample(building, space) if building is not None else None
        chosen = {field: ensure_frozen(self.add_mutable(nni.choice(field, list(values))), sample=sample)
                  for field, values in space.choices().items()}
        self.spec = ConvNetSpec(**chosen)
        self.net = build_model(self.spec, channels, num_classes, tuple(image_size))

    def freeze(self, sample: Mapping) -> ConvNetModelSpace:
        """The model of one architecture, ``sample`` in either space's format (NNI's "raw" model format calls this;
        "simplified" re-runs __init__)."""
        with model_context(canonical_sample(sample, self._arguments[0])):
            return ConvNetModelSpace(*self._arguments)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
