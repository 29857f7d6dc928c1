"""A researcher's own network, written the way they would write it, wherever a model is taken (issue 21, item 14)."""
import pytest
import torch
from torch import nn

from dm_core import DMError, TrainConfig, evaluate_set, make_set

pytestmark = pytest.mark.usefixtures("one_thread")


class MyNet(nn.Module):
    """A plain classifier with no ``embed``: its embedding is the input of its last Linear."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(8 * 8 * 8, classes)

    def forward(self, x):
        return self.head(self.body(x))


class WithEmbed(MyNet):
    """A network that says what its embedding is."""

    def embed(self, x):
        return self.body(x) * 2


class Scaled(nn.Module):
    """A layer dm_core has no rule for, with its own reset_parameters()."""

    def __init__(self, n: int):
        super().__init__()
        self.scale = nn.Parameter(torch.empty(n))
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.uniform_(self.scale, 0.5, 1.5)

    def forward(self, x):
        return x * self.scale.view(1, -1, 1, 1)


@pytest.mark.parametrize("method, options", [
    ("dm", {}), ("m3d", {}), ("datadam", {}), ("ddm", {}),
    ("idm", {"queue_size": 2, "initial_models": 1, "train_steps": 1, "train_batch": 8}),
    ("dsa", {"outer_loop": 2, "inner_loop": 1}), ("herding", {"epochs": 1})])
def test_every_method_condenses_with_my_network(digits, method, options):
    budget = {} if method == "herding" else {"iterations": 2, "batch_real": 8}
    synset = make_set(method, digits, 1, classes=[3, 8], device="cpu", progress=False, model=MyNet(), **budget,
                      **options)
    tiles = synset.meta.get("factor", 1) ** 2  # m3d and idm store factor x factor mosaics, expanded (their default 2)
    assert synset.labels.tolist() == [3] * tiles + [8] * tiles and torch.isfinite(synset.images).all()
    assert tiles == (4 if method in ("m3d", "idm") else 1)
    assert synset.meta["model"] == "custom:MyNet"


def test_my_network_as_a_module_or_a_factory_gives_the_same_seeded_set(digits):
    options = dict(classes=[0, 1, 2], device="cpu", progress=False, iterations=3, batch_real=8, seed=4)
    module = make_set("dm", digits, 2, model=MyNet(), **options)
    again = make_set("dm", digits, 2, model=MyNet(), **options)
    factory = make_set("dm", digits, 2, model=MyNet, **options)
    sized = make_set("dm", digits, 2, model=lambda channels, classes, size: MyNet(classes), **options)
    assert torch.equal(module.images, again.images)  # the weights it came with do not matter: DM re-draws them
    assert torch.equal(module.images, factory.images) and torch.equal(module.images, sized.images)


def test_an_embed_method_is_the_embedding(digits):
    plain = make_set("dm", digits, 1, classes=[0, 1], device="cpu", progress=False, iterations=2, batch_real=8,
                     model=MyNet())
    doubled = make_set("dm", digits, 1, classes=[0, 1], device="cpu", progress=False, iterations=2, batch_real=8,
                       model=WithEmbed())
    assert not torch.equal(plain.images, doubled.images)


def test_a_layer_without_a_rule_is_reset_from_the_run_s_seed(digits):
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), Scaled(4), nn.Flatten(), nn.Linear(4 * 16 * 16, 10))
    options = dict(classes=[0, 1], device="cpu", progress=False, iterations=2, batch_real=8)
    a = make_set("dm", digits, 1, model=net, **options)
    torch.manual_seed(123)  # torch's global generator does not decide anything
    b = make_set("dm", digits, 1, model=net, **options)
    assert torch.equal(a.images, b.images)


def test_evaluating_with_my_network(digits):
    synset = make_set("random", digits, 5, seed=0)
    result = evaluate_set(synset, digits, MyNet, repeats=2, config=TrainConfig(epochs=10), device="cpu",
                          progress=False)
    assert len(result.accuracies) == 2 and all(0.3 < a <= 1 for a in result.accuracies)


class NoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 10, 3)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


class Opaque(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(10))
        self.head = nn.Linear(256, 10)

    def forward(self, x):
        return self.head(x.flatten(1)) + self.bias


@pytest.mark.parametrize("model, match", [
    (NoLinear(), "neither an embed"), (nn.Linear(3, 10), "cannot take 1x16x16 images"),
    (MyNet(classes=7), r"not \(batch, 10\)"), (lambda: "convnet", "returned a str"),
    (Opaque(), "reset_parameters"), (3, "must be a network name")])
def test_a_network_that_cannot_be_used_is_refused_in_one_line(digits, model, match):
    with pytest.raises(DMError, match=match) as refused:
        make_set("dm", digits, 1, classes=[0, 1], device="cpu", progress=False, iterations=1, batch_real=4,
                 model=model)
    assert "\n" not in str(refused.value)
