import pytest
import torch

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
