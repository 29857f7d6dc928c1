import pytest
import torch

from dm_core import DSAConfig, condense_dsa
from dm_core.dsa import default_loops, matching_distance


def test_matching_distance_zero_for_identical_gradients_positive_otherwise():
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(8, 3, 3, 3, generator=gen), torch.randn(8, generator=gen), torch.randn(10, 32, generator=gen)]
    assert matching_distance(grads, grads).abs() < 1e-5
    other = [g + torch.randn(g.shape, generator=gen) for g in grads]
    assert matching_distance(other, grads) > 0.1
    # 1-D parameters are ignored; scaling a row changes nothing (cosine)
    assert matching_distance([grads[0], -grads[1], 3 * grads[2]], grads).abs() < 1e-5


@pytest.mark.parametrize("ipc, loops", [(1, (1, 1)), (10, (10, 50)), (50, (50, 10)), (5, (10, 50)),
                                        (100, (50, 10)), (15, (20, 25))])
def test_schedule(ipc, loops):
    assert default_loops(ipc) == loops


def test_a_few_outer_iterations_lower_the_matching_loss(digits):
    config = DSAConfig(ipc=2, iterations=16, outer_loop=3, inner_loop=2, model="convnet-w16", batch_real=16,
                       init="noise", lr_img=1.0, log_every=4, seed=0)
    result = condense_dsa(digits, config, classes=[0, 1, 2, 3], device="cpu", progress=False)
    losses = [loss for _, loss in result.meta["loss_history"]]
    assert result.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert result.meta["method"] == "dsa" and result.meta["outer_loop"] == 3 and result.meta["inner_loop"] == 2
    assert losses[-1] < losses[0]


def test_batchnorm_network_runs(digits):
    config = DSAConfig(ipc=1, iterations=2, outer_loop=2, inner_loop=1, model="convnetbn-w16", batch_real=8)
    result = condense_dsa(digits, config, classes=[3, 5], device="cpu", progress=False)
    assert torch.isfinite(result.images).all() and result.labels.tolist() == [3, 5]
