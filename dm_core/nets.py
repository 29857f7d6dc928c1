"""Networks, built from a compact name or a spec through one factory (``build_model``).

The ConvNet family spans the 720-architecture NAS space; AlexNet, VGG-11 and ResNet-18 serve cross-architecture
evaluation. Every network exposes ``embed(x)``: the flattened input of its classifier.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .custom import build_custom, is_custom
from .errors import DMError

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "relu": lambda: nn.ReLU(inplace=True),
    "leakyrelu": lambda: nn.LeakyReLU(0.01, inplace=True),
}
NORMS = ("none", "batchnorm", "layernorm", "instancenorm", "groupnorm")
POOLS = ("none", "maxpool", "avgpool")


def make_norm(norm: str, channels: int, height: int, width: int) -> nn.Module:
    """docs/method.md section 2: instance norm is GroupNorm with one group per channel; layer norm spans [C, H, W]."""
    if norm == "none":
        return nn.Identity()
    if norm == "batchnorm":
        return nn.BatchNorm2d(channels)
    if norm == "layernorm":
        return nn.LayerNorm([channels, height, width])
    if norm == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if norm == "groupnorm":
        return nn.GroupNorm(4, channels, affine=True)
    raise DMError(f"unknown norm {norm!r}: choose one of {', '.join(NORMS)}")


class _Pool2x2(torch.autograd.Function):
    """2x2 average pooling of a contiguous float NCHW tensor with even sides, bit for bit ``F.avg_pool2d(x, 2)``:
    each output is ((a + b) + c) + d times 1/4, a b the top and c d the bottom pair of its window, the order torch's
    CPU kernel adds them in. Faster on the CPU because torch's NCHW kernel runs one window at a time: here the
    columns are first split into even and odd ones (two flat strided copies), then every sum runs over rows of
    contiguous values. Its gradient is ``_Unpool2x2``, whose gradient is this pooling again, as torch's are."""

    @staticmethod
    def forward(ctx, x):
        n, c, h, w = x.shape
        pairs = x.view(-1, 2)
        even = pairs[:, 0].contiguous().view(n, c, h // 2, 2, w // 2)  # a (top row) and c (bottom row)
        odd = pairs[:, 1].contiguous().view(n, c, h // 2, 2, w // 2)  # b and d
        out = even[:, :, :, 0] + odd[:, :, :, 0]
        out += even[:, :, :, 1]
        out += odd[:, :, :, 1]
        return out.mul_(0.25)

    @staticmethod
    def backward(ctx, grad):
        return _Unpool2x2.apply(grad)


class _Unpool2x2(torch.autograd.Function):
    """The gradient of 2x2 average pooling: each value times 1/4, copied to its 2x2 window (what torch's
    ``avg_pool2d_backward`` gives, without its zero fill and window-by-window loop)."""

    @staticmethod
    def forward(ctx, grad):
        n, c, h, w = grad.shape
        quarter = grad * 0.25
        columns = torch.stack([quarter, quarter], dim=-1).view(n, c, h, 2 * w)
        return torch.stack([columns, columns], dim=3).view(n, c, 2 * h, 2 * w)

    @staticmethod
    def backward(ctx, grad):
        return avg_pool2x2(grad)


# Inputs up to 2**22 values (16 MB of float32: ConvNet-w32 on 128 MNIST images is 4.2M) take ``_Pool2x2``; larger
# ones (ConvNet-128 at batch 128, DM's 256 real images per class) pooled slower than torch's kernel that way here
# (0.71x-0.89x), their intermediate copies no longer in the caches.
_FAST_POOL_MAX = 1 << 22

# Whether a tensor is seen through a torch.func transform (vmap, grad); a torch without this check takes torch's kernel.
_transformed = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", lambda x: True)


def avg_pool2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2)``, bit for bit, through ``_Pool2x2`` where that is faster: a contiguous float32/float64
    CPU tensor (N, C, H, W) of at most ``_FAST_POOL_MAX`` values with even H and W, outside ``torch.compile`` (which
    fuses pooling itself) and torch.func transforms. benchmarks/README.md has what it measured (ConvNet-w32 on
    MNIST-shaped images, one thread: training 1.08x, testing 1.4x); tests/test_nets.py checks the bits, first and
    second order."""
    if (x.device.type == "cpu" and x.dim() == 4 and x.dtype in (torch.float32, torch.float64)
            and 0 < x.numel() <= _FAST_POOL_MAX and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0 and x.is_contiguous()
            and not torch.compiler.is_compiling() and not _transformed(x)):
        return _Pool2x2.apply(x)
    return F.avg_pool2d(x, 2)


class AvgPool2x2(nn.AvgPool2d):
    """``nn.AvgPool2d(2, 2)`` computed by ``avg_pool2x2``: the same results, faster on the CPU."""

    def __init__(self):
        super().__init__(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool2x2(x)


class FeatureClassifier(nn.Module):
    """A network as ``features`` (set by subclasses) then a linear ``classifier``; ``embed`` is the classifier input."""

    features: nn.Module
    classifier: nn.Linear

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@dataclass(frozen=True)
class ConvNetSpec:
    """One point of the ConvNet space: depth blocks of conv3x3 -> norm -> act -> pool, then a linear classifier."""

    depth: int = 3
    width: int = 128
    act: str = "relu"
    norm: str = "instancenorm"
    pool: str = "avgpool"

    def __post_init__(self):
        if not 1 <= self.depth <= 8:
            raise DMError(f"ConvNet depth {self.depth} out of range: use 1 to 8")
        if self.width < 1:
            raise DMError(f"ConvNet width {self.width} must be positive")
        if self.act not in ACTIVATIONS:
            raise DMError(f"unknown activation {self.act!r}: choose one of {', '.join(ACTIVATIONS)}")
        if self.norm not in NORMS:
            raise DMError(f"unknown norm {self.norm!r}: choose one of {', '.join(NORMS)}")
        if self.pool not in POOLS:
            raise DMError(f"unknown pooling {self.pool!r}: choose one of {', '.join(POOLS)}")

    @property
    def name(self) -> str:
        return f"convnet-d{self.depth}-w{self.width}-{self.act}-{self.norm}-{self.pool}"

    @classmethod
    def parse(cls, name: str) -> ConvNetSpec:
        """``convnet``, ``convnetbn``, ``convnet-d4``, ``convnet-w64-sigmoid-maxpool``, or a full ``spec.name``."""
        head, *tokens = name.lower().split("-")
        aliases = {"convnet": {}, "convnetbn": {"norm": "batchnorm"}, "convnetin": {"norm": "instancenorm"},
                   "convnetln": {"norm": "layernorm"}, "convnetgn": {"norm": "groupnorm"},
                   "convnetnn": {"norm": "none"}}
        if head not in aliases:
            raise DMError(f"not a ConvNet name: {name!r}")
        fields = dict(aliases[head])
        if (head == "convnet" and len(tokens) == 5 and tokens[2] in ACTIVATIONS and tokens[3] in NORMS
                and tokens[4] in POOLS and all(t[:1] == k and t[1:].isdigit() for t, k in zip(tokens, "dw"))):
            # a full ``spec.name``: positional, so "none" is unambiguous (norm before pooling)
            return cls(int(tokens[0][1:]), int(tokens[1][1:]), tokens[2], tokens[3], tokens[4])
        for token in tokens:
            if token in ACTIVATIONS:
                fields["act"] = token
            elif token in NORMS and token != "none":
                fields["norm"] = token
            elif token in POOLS and token != "none":
                fields["pool"] = token
            elif token in ("nonorm", "nopool"):
                fields["norm" if token == "nonorm" else "pool"] = "none"
            elif token[:1] in "dw" and token[1:].isdigit():
                fields["depth" if token[0] == "d" else "width"] = int(token[1:])
            else:
                raise DMError(f"cannot read {token!r} in model name {name!r}: expected d<depth>, w<width>, "
                              f"an activation, a norm (or nonorm) or a pooling (or nopool)")
        return cls(**fields)


class ConvNet(FeatureClassifier):
    def __init__(self, spec: ConvNetSpec, channels: int, num_classes: int, image_size: tuple[int, int]):
        super().__init__()
        self.spec = spec
        height, width = image_size
        # 28x28 inputs (MNIST) are handled as 32x32: the first conv pads by 3 instead of 1.
        first_pad = 3 if (height, width) == (28, 28) else 1
        layers: list[nn.Module] = []
        in_channels = channels
        for block in range(spec.depth):
            pad = first_pad if block == 0 else 1
            layers.append(nn.Conv2d(in_channels, spec.width, kernel_size=3, padding=pad))
            height, width = height + 2 * pad - 2, width + 2 * pad - 2
            layers.append(make_norm(spec.norm, spec.width, height, width))
            layers.append(ACTIVATIONS[spec.act]())
            if spec.pool != "none":
                if height < 2 or width < 2:
                    raise DMError(f"{spec.name} pools {image_size[0]}x{image_size[1]} images below 1x1: "
                                  f"use a smaller depth or larger images")
                layers.append(nn.MaxPool2d(2, 2) if spec.pool == "maxpool" else AvgPool2x2())
                height, width = height // 2, width // 2
            in_channels = spec.width
        self.features = nn.Sequential(*layers)
        self.feature_dim = in_channels * height * width
        self.classifier = nn.Linear(self.feature_dim, num_classes)



def _conv_norm_act(cin: int, cout: int, kernel: int, pad: int, norm: str, size: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=pad), make_norm(norm, cout, size, size), nn.ReLU(inplace=True)]


class AlexNet(FeatureClassifier):
    """The small-image AlexNet of the DC papers: five convs, three max-pools, one linear layer."""

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int], norm: str = "none"):
        super().__init__()
        size = image_size[0] + (4 if image_size == (28, 28) else 0)
        pad0 = 4 if image_size == (28, 28) else 2
        self.features = nn.Sequential(
            *_conv_norm_act(channels, 128, 5, pad0, norm, size), nn.MaxPool2d(2),
            *_conv_norm_act(128, 192, 5, 2, norm, size // 2), nn.MaxPool2d(2),
            *_conv_norm_act(192, 256, 3, 1, norm, size // 4),
            *_conv_norm_act(256, 192, 3, 1, norm, size // 4),
            *_conv_norm_act(192, 192, 3, 1, norm, size // 4), nn.MaxPool2d(2),
        )
        self.feature_dim = 192 * (size // 8) ** 2
        self.classifier = nn.Linear(self.feature_dim, num_classes)


class VGG11(FeatureClassifier):
    """VGG-11 for 32x32 inputs (instance norm, or batch norm for the BN variant)."""

    plan = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int], norm: str = "instancenorm"):
        super().__init__()
        size = image_size[0] + (4 if image_size == (28, 28) else 0)
        layers: list[nn.Module] = []
        cin, first = channels, True
        for item in self.plan:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                size //= 2
                continue
            layers += _conv_norm_act(cin, item, 3, 3 if first and image_size == (28, 28) else 1, norm, size)
            cin, first = item, False
        self.features = nn.Sequential(*layers)
        self.feature_dim = 512 * size * size
        self.classifier = nn.Linear(self.feature_dim, num_classes)


class BasicBlock(nn.Module):
    """ResNet-18's block: conv 3x3 (stride) -> norm -> ReLU -> conv 3x3 -> norm, plus a shortcut (1x1 conv with the
    stride -> norm where the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str, size: int):
        super().__init__()
        out = size // stride
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), make_norm(norm, cout, out, out),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), make_norm(norm, cout, out, out),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          make_norm(norm, cout, out, out))

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


class BasicBlockAP(nn.Module):
    """The block of the ResNet DM learns with (the reference's ResNet18BN_AP, docs/method.md section 2): every conv
    has stride 1 and downsampling is 2x2 average pooling, in the body after the first conv's norm and ReLU, in the
    shortcut after its 1x1 conv and before its norm."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str, size: int):
        super().__init__()
        out = size // stride
        down = [AvgPool2x2()] if stride == 2 else []
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), make_norm(norm, cout, size, size), nn.ReLU(inplace=True),
            *down,
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), make_norm(norm, cout, out, out),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), *down,
                                          make_norm(norm, cout, out, out))

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


RESNET18_PLAN = ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1))


class ResNet18(FeatureClassifier):
    """ResNet-18 for small images (a 3x3 stem, no max-pooling). ``avg_pool_down``: the "AP" variant DM learns with,
    whose embedding is the flattened last map (512 x 4 x 4 on 32x32 inputs: no global pooling); otherwise global
    average pooling to 512 features, as in the cross-architecture evaluation."""

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int], norm: str = "instancenorm",
                 avg_pool_down: bool = False):
        super().__init__()
        size = image_size[0]
        layers: list[nn.Module] = [nn.Conv2d(channels, 64, 3, padding=1, bias=False), make_norm(norm, 64, size, size),
                                   nn.ReLU(inplace=True)]
        block, cin = (BasicBlockAP if avg_pool_down else BasicBlock), 64
        for cout, stride in RESNET18_PLAN:
            layers.append(block(cin, cout, stride, norm, size))
            cin, size = cout, size // stride
        if not avg_pool_down:
            layers.append(nn.AdaptiveAvgPool2d(1))
            size = 1
        self.features = nn.Sequential(*layers)
        self.feature_dim = 512 * size * size
        self.classifier = nn.Linear(self.feature_dim, num_classes)


@dataclass(frozen=True)
class ModelEntry:
    """A registered network: ``build(channels, num_classes, image_size)`` makes a fresh one."""

    name: str
    build: Callable[[int, int, tuple[int, int]], nn.Module]
    summary: str
    min_size: int = 1  # the smallest image side it takes


_MODELS: dict[str, ModelEntry] = {}
CONVNET_PATTERN = "convnet-d<depth>-w<width>-<act>-<norm>-<pool>"


def register_model(name: str, build: Callable[[int, int, tuple[int, int]], nn.Module], summary: str = "",
                   min_size: int = 1) -> ModelEntry:
    """Add a network under ``name`` (lower case); ``build(channels, num_classes, image_size)`` returns a fresh
    ``nn.Module`` with ``embed(x)`` (the input of its classifier) and ``forward(x)`` (the logits)."""
    if name != name.lower() or name in _MODELS or name.startswith("convnet-"):
        raise ValueError(f"model name {name!r}: use a new lower-case name (convnet-* names are the ConvNet family's)")
    entry = ModelEntry(name, build, summary, min_size)
    _MODELS[name] = entry
    return entry


def list_models() -> list[str]:
    """Every network name: the registered ones, and the pattern of the ConvNet family's names."""
    return [*_MODELS, CONVNET_PATTERN]


def _convnet(**fields) -> Callable[[int, int, tuple[int, int]], nn.Module]:
    return lambda c, n, s: ConvNet(ConvNetSpec(**fields), c, n, s)


register_model("convnet", _convnet(), "the paper's ConvNet: depth 3, width 128, ReLU, instance norm, average pooling")
register_model("convnetbn", _convnet(norm="batchnorm"), "the ConvNet with batch norm")
register_model("alexnet", lambda c, n, s: AlexNet(c, n, s, norm="none"), "AlexNet of the DC papers", 28)
register_model("alexnetbn", lambda c, n, s: AlexNet(c, n, s, norm="batchnorm"), "AlexNet with batch norm", 28)
register_model("vgg11", lambda c, n, s: VGG11(c, n, s, norm="instancenorm"), "VGG-11, instance norm", 28)
register_model("vgg11bn", lambda c, n, s: VGG11(c, n, s, norm="batchnorm"), "VGG-11, batch norm", 28)
register_model("resnet18", lambda c, n, s: ResNet18(c, n, s, norm="instancenorm"), "ResNet-18, instance norm")
register_model("resnet18bn", lambda c, n, s: ResNet18(c, n, s, norm="batchnorm"), "ResNet-18, batch norm")
register_model("resnet18ap", lambda c, n, s: ResNet18(c, n, s, norm="instancenorm", avg_pool_down=True),
               "ResNet-18 with average-pooling downsampling")
register_model("resnet18bnap", lambda c, n, s: ResNet18(c, n, s, norm="batchnorm", avg_pool_down=True),
               "the ResNet DM learns with (ResNet18BN_AP)")


def _entry(model) -> ModelEntry | ConvNetSpec:
    """The registry entry or ConvNet spec a name (or spec, or tuple) stands for; DMError when there is none."""
    if isinstance(model, tuple):
        return ConvNetSpec(*model)
    if isinstance(model, ConvNetSpec):
        return model
    key = str(model).lower()
    if key in _MODELS:
        return _MODELS[key]
    if key.startswith("convnet"):
        return ConvNetSpec.parse(key)
    raise DMError(f"unknown model {model!r}: choose one of {', '.join(list_models())}")


def build_model(model, channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    """The one factory: a registered name, a ConvNet name (``convnet-d4``, ``convnet-w64-sigmoid-maxpool``, a full
    ``ConvNetSpec.name``), a ``ConvNetSpec``, a (depth, width, act, norm, pool) tuple, or one's own network (an
    ``nn.Module``, copied, or a factory of them; ``dm_core.custom``)."""
    image_size = tuple(image_size)
    if is_custom(model):
        return build_custom(model, channels, num_classes, image_size)
    entry = _entry(model)
    if isinstance(entry, ConvNetSpec):
        return ConvNet(entry, channels, num_classes, image_size)
    if min(image_size) < entry.min_size:
        raise DMError(f"{entry.name} needs images of at least {entry.min_size}x{entry.min_size}, got "
                      f"{image_size[0]}x{image_size[1]}: use a ConvNet")
    return entry.build(channels, num_classes, image_size)


def check_model(model) -> None:
    """Fail early (no data needed) on a model ``build_model`` cannot read; one's own network is checked when it is
    first built for a dataset."""
    if is_custom(model):
        return
    if not isinstance(model, (str, ConvNetSpec, tuple)):
        raise DMError(f"model must be a network name, a ConvNetSpec, an nn.Module or a factory of them, got "
                      f"{model!r}")
    _entry(model)


def default_model(image_size: tuple[int, int]) -> str:
    """The ConvNet of an image size (docs/method.md section 2): depth 3, depth 4 from 64x64 on (TinyImageNet)."""
    return "convnet-d4" if min(image_size) >= 64 else "convnet"


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _uniform_(tensor: torch.Tensor, bound: float, generator: torch.Generator) -> None:
    """U(-bound, bound) in the tensor's logical order, whatever its memory format (``uniform_`` fills memory order,
    so a channels_last weight would get the same numbers in other places): one seed, one network, on every path."""
    if tensor.is_contiguous():
        tensor.uniform_(-bound, bound, generator=generator)
    else:
        tensor.copy_(torch.empty(tensor.shape, dtype=tensor.dtype, device=tensor.device).uniform_(
            -bound, bound, generator=generator))


@torch.no_grad()
def reinit_(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-initialise every parameter in place, drawing from ``generator`` (PyTorch's default init scheme).

    Conv and linear layers get U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases, which is what
    kaiming_uniform_(a=sqrt(5)) amounts to; norms get weight 1, bias 0 and fresh running statistics. In place, so a
    DM iteration costs no module construction. The numbers do not depend on the memory format.
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            _uniform_(module.weight, bound, generator)
            if module.bias is not None:
                _uniform_(module.bias, bound, generator)
        elif isinstance(module, (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._BatchNorm)):
            if module.weight is not None:
                module.weight.fill_(1.0)
                module.bias.zero_()
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
        elif next(module.parameters(recurse=False), None) is not None:
            _reset_other(module, generator)
    return model


def _reset_other(module: nn.Module, generator: torch.Generator) -> None:
    """A layer of one's own network that ``reinit_`` has no rule for: its ``reset_parameters()``, run under torch's
    global generator seeded from ``generator`` (then restored), so the draw is still the run's own."""
    reset = getattr(module, "reset_parameters", None)
    if not callable(reset):
        raise DMError(f"{type(module).__name__} has parameters dm_core cannot re-initialise: give it a "
                      f"reset_parameters() method")
    seed = int(torch.randint(2 ** 62, (1,), generator=generator, device=generator.device))
    device = next(module.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        reset()
