import torch

from dm_core import make_set
from dm_core.select import herding_order


def test_herding_mean_is_closer_than_random_picks():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(300, 32, generator=gen) * torch.linspace(0.1, 3, 32)
    target = features.mean(0)
    picked = herding_order(features, 10)
    assert len(set(picked.tolist())) == 10
    herding_gap = (features[picked].mean(0) - target).norm()
    random_gaps = torch.stack([(features[torch.randperm(300, generator=gen)[:10]].mean(0) - target).norm()
                               for _ in range(200)])
    assert herding_gap < random_gaps.min()


def test_random_selection_is_class_balanced_and_seeded(digits):
    a = make_set("random", digits, 3, seed=1)
    assert a.labels.tolist() == [c for c in range(10) for _ in range(3)]
    assert torch.equal(a.images, make_set("random", digits, 3, seed=1).images)
    assert not torch.equal(a.images, make_set("random", digits, 3, seed=2).images)
    # every picked image is a real training image of its class
    for img, label in zip(a.images, a.labels):
        same = (digits.x_train[digits.y_train == label] == img).flatten(1).all(1)
        assert same.any()


def test_herding_selects_real_images_of_the_requested_classes(digits):
    result = make_set("herding", digits, 2, classes=[4, 9], seed=0, device="cpu", model="convnet-w16",
                      epochs=2)
    assert result.labels.tolist() == [4, 4, 9, 9]
    assert result.meta["method"] == "herding"
    for img, label in zip(result.images, result.labels):
        assert (digits.x_train[digits.y_train == label] == img).flatten(1).all(1).any()
