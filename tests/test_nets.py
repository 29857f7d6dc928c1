import pytest
import torch
import torch.nn.functional as F

from dm_core import ConvNetSpec, DMError, build_model, reinit_
from dm_core.device import make_generator


@pytest.mark.parametrize("size", [(28, 28), (32, 32)])
def test_default_convnet_shapes(size):
    net = build_model("convnet", 1, 10, size)
    x = torch.randn(2, 1, *size)
    assert net(x).shape == (2, 10)
    assert net.embed(x).shape == (2, 2048)  # 128 * 4 * 4: 28x28 is handled as 32x32


@pytest.mark.parametrize("name", ["convnetbn", "convnet-d4", "convnet-w32-sigmoid-layernorm-maxpool",
                                  "convnet-d1-w16-leakyrelu-groupnorm-nopool", "convnet-d2-nonorm",
                                  "alexnet", "alexnetbn", "vgg11", "vgg11bn", "resnet18", "resnet18bn", "resnet18ap"])
def test_factory_builds_every_family(name):
    net = build_model(name, 3, 7, (32, 32)).eval()
    x = torch.randn(2, 3, 32, 32)
    assert net(x).shape == (2, 7)
    assert net.embed(x).shape[0] == 2


def test_spec_names_round_trip():
    spec = ConvNetSpec(depth=2, width=64, act="sigmoid", norm="batchnorm", pool="maxpool")
    assert ConvNetSpec.parse(spec.name) == spec
    assert ConvNetSpec.parse("convnetbn") == ConvNetSpec(norm="batchnorm")
    assert build_model(spec, 3, 10, (32, 32)).spec == spec
    assert build_model((2, 64, "sigmoid", "batchnorm", "maxpool"), 3, 10, (32, 32)).spec == spec


@pytest.mark.parametrize("bad", ["resnet50", "convnet-x3", "convnet-d9"])
def test_unknown_models_are_refused(bad):
    with pytest.raises(DMError):
        build_model(bad, 3, 10, (32, 32))


def test_pooling_below_one_pixel_is_refused():
    with pytest.raises(DMError, match="below 1x1"):
        build_model("convnet-d4", 1, 10, (8, 8))


def test_reinit_is_seeded_and_fresh():
    net = build_model("convnet", 3, 10, (32, 32))
    first = [p.clone() for p in reinit_(net, make_generator(1, torch.device("cpu"))).parameters()]
    again = [p.clone() for p in reinit_(net, make_generator(1, torch.device("cpu"))).parameters()]
    other = [p.clone() for p in reinit_(net, make_generator(2, torch.device("cpu"))).parameters()]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_every_spec_name_of_the_space_parses_back():
    import itertools

    from dm_core import ConvNetSpec
    from dm_core.nets import ACTIVATIONS, NORMS, POOLS

    for act, norm, pool in itertools.product(ACTIVATIONS, NORMS, POOLS):
        spec = ConvNetSpec(2, 32, act, norm, pool)
        assert ConvNetSpec.parse(spec.name) == spec


# ---------------------------------------------------------------------------------------------------------------
# AvgPool2x2: torch's 2x2 average pooling, bit for bit, faster on the CPU.

def _torch_pooling(net):
    """The same network with torch's own nn.AvgPool2d where it has AvgPool2x2."""
    import copy

    from dm_core.nets import AvgPool2x2

    twin = copy.deepcopy(net)
    for module in list(twin.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, AvgPool2x2):
                setattr(module, name, torch.nn.AvgPool2d(2, 2))
    return twin


@pytest.mark.parametrize("shape", [(3, 5, 32, 32), (2, 7, 16, 8), (4, 3, 2, 2), (1, 1, 6, 10)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_avgpool2x2_is_torchs_pooling_bit_for_bit(shape, dtype):
    from dm_core.nets import AvgPool2x2, _Pool2x2

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g, dtype=dtype) * 1e3).requires_grad_()
    grad = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, generator=g, dtype=dtype)
    ours, theirs = _Pool2x2.apply(x), F.avg_pool2d(x, 2)
    assert torch.equal(ours, theirs) and torch.equal(AvgPool2x2()(x), theirs)
    assert torch.equal(torch.autograd.grad(ours, x, grad)[0], torch.autograd.grad(theirs, x, grad)[0])


@pytest.mark.parametrize("case", ["odd", "channels_last", "bf16", "vmap", "large", "empty"])
def test_avgpool2x2_falls_back_to_torch_where_it_does_not_apply(case):
    from dm_core.nets import AvgPool2x2

    x = torch.randn(2, 3, 9 if case == "odd" else 8, 8)
    if case == "large":  # past _FAST_POOL_MAX: torch's kernel
        x = torch.randn(1, 1, 2048, 2050)
    if case == "empty":
        x = torch.randn(0, 3, 8, 8)
    if case == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    if case == "bf16":
        x = x.bfloat16()
    pool = AvgPool2x2()
    if case == "vmap":
        stacked = torch.randn(4, 2, 3, 8, 8)
        expected = F.avg_pool2d(stacked.view(8, 3, 8, 8), 2).view(4, 2, 3, 4, 4)
        assert torch.equal(torch.func.vmap(pool)(stacked), expected)
        return
    assert torch.equal(pool(x), F.avg_pool2d(x, 2))


def test_a_convnet_trains_and_matches_gradients_as_with_torchs_pooling():
    """Training (first order) and gradient matching (second order, as DSA differentiates) give the very bits
    of the same network built with nn.AvgPool2d."""
    from dm_core import TrainConfig, build_model, reinit_, train_model

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 1, 28, 28, generator=g), torch.arange(20) % 10
    net = reinit_(build_model("convnet-w16", 1, 10, (28, 28)), torch.Generator().manual_seed(1))
    twin = _torch_pooling(net)
    assert not any(isinstance(m, torch.nn.AvgPool2d) and type(m) is not torch.nn.AvgPool2d for m in twin.modules())
    config = TrainConfig(epochs=3, batch_size=8, compile="off").resolve("mnist")
    ours, theirs = (train_model(n, x, y, config, seed=2, device="cpu") for n in (net, twin))
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)

    def matching_gradient(model):
        syn = x[:10].clone().requires_grad_()
        params = list(model.parameters())
        real = torch.autograd.grad(F.cross_entropy(model.train()(x[10:]), y[10:]), params)
        fake = torch.autograd.grad(F.cross_entropy(model(syn), y[:10]), params, create_graph=True)
        loss = sum(((r - f) ** 2).sum() for r, f in zip(real, fake))
        return torch.autograd.grad(loss, syn)[0]

    assert torch.equal(matching_gradient(ours), matching_gradient(theirs))
