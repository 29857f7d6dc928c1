import pytest
import torch
import torch.nn.functional as F

from dm_core import DMError, augment
from dm_core.device import make_generator

CPU = torch.device("cpu")


def draws(n, seed=0, strategy=augment.DEFAULT_STRATEGY):
    return augment.sample_params(n, make_generator(seed, CPU), CPU, strategy)


def test_siamese_same_draw_same_transform():
    x = torch.randn(6, 3, 16, 16)
    params = draws(3)
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    # two batches holding the same images, both mapped to the same per-class draws: identical outputs
    real = augment.apply(x, params, groups)
    syn = augment.apply(x.clone(), params, groups)
    assert torch.equal(real, syn)
    # and the two samples of one class with the same image get the same transform
    same = augment.apply(x[:1].repeat(2, 1, 1, 1), params, torch.tensor([1, 1]))
    assert torch.equal(same[0], same[1])


def test_draws_differ_across_classes_and_calls():
    params = draws(64)
    assert len(set(params.op.tolist())) == len(augment.OPS)  # every op gets picked
    assert not torch.equal(draws(8, seed=1).u, draws(8, seed=2).u)
    assert torch.equal(draws(8, seed=3).u, draws(8, seed=3).u)  # reproducible from a seed


@pytest.mark.parametrize("op", augment.OPS)
def test_every_op_is_differentiable_and_changes_images(op):
    x = torch.randn(8, 3, 16, 16, requires_grad=True)
    out = augment.apply(x, draws(8, seed=4, strategy=op))
    assert out.shape == x.shape
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not torch.allclose(out, x)


def test_crop_is_an_exact_integer_shift_with_zero_padding():
    x = torch.randn(16, 1, 8, 8)
    params = draws(16, seed=5, strategy="crop")
    out = augment.apply(x, params)
    reach = int(8 * augment.CROP_FRACTION + 0.5)
    for i in range(16):
        dx = int((params.u[i, 3] * (2 * reach + 1)).floor()) - reach
        dy = int((params.u[i, 4] * (2 * reach + 1)).floor()) - reach
        padded = F.pad(x[i], (reach, reach, reach, reach))
        expected = padded[:, reach + dy:reach + dy + 8, reach + dx:reach + dx + 8]
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)


def test_cutout_zeroes_a_half_size_square():
    x = torch.ones(4, 1, 8, 8)
    out = augment.apply(x, draws(4, seed=6, strategy="cutout"))
    zeros = (out == 0).flatten(1).sum(1)
    assert (zeros > 0).all() and (zeros <= 16).all()  # at most a 4x4 square, clipped at the border


def test_one_batched_call_equals_per_class_calls():
    x = torch.randn(12, 3, 16, 16)
    params = draws(3, seed=7)
    groups = torch.arange(3).repeat_interleave(4)
    batched = augment.apply(x, params, groups)
    for c in range(3):
        single = augment.apply(x[groups == c], params.take(torch.tensor([c])), torch.zeros(4, dtype=torch.long))
        torch.testing.assert_close(batched[groups == c], single)


def test_unknown_strategy_is_refused():
    with pytest.raises(DMError, match="unknown augmentation"):
        augment.parse_strategy("color_blur")
