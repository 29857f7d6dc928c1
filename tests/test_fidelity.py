"""Where a reported number comes from, dm_core computes what the reference computes (PROTOCOL.md sections 1, 3, 5).

BatchNorm DM uses whole-batch statistics whatever the chunking; DSA's inner loop trains epochs over the synthetic set;
training-time augmentation draws one op group per mini-batch with per-sample parameters; fp32 is the default
precision everywhere and every set records its precision.
"""
import json

import pytest
import torch

from dm_core import DMConfig, DMError, DSAConfig, TrainConfig, augment, condense_dm, condense_dsa, make_set
from dm_core.cli import main as dm_main
from dm_core.device import make_generator

CPU = torch.device("cpu")
BN_FLAGS = ["condense", "--dataset", "digits", "--method", "dm", "--model", "convnetbn-w8", "--ipc", "1",
            "--iterations", "3", "--batch-real", "32", "--seed", "0", "--device", "cpu", "--no-progress"]


# 1. BatchNorm DM ------------------------------------------------------------------------------------------------------

def test_batchnorm_dm_refuses_chunking_with_one_error_line(tmp_path, capsys):
    out = tmp_path / "bn.pt"
    assert dm_main(BN_FLAGS + ["--class-chunk", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "BatchNorm" in err[0] and "--batch-real" in err[0]
    assert not out.exists()
    assert dm_main(BN_FLAGS + ["--class-chunk", "10", "--out", str(out)]) == 0
    assert out.exists()


def test_batchnorm_dm_default_takes_the_whole_batch(digits):
    """On the CPU the automatic chunk used to be one class at batch_real 256 (per-class BN statistics); BN networks
    now always take every class in one pass, so the default equals an explicit all-classes pass."""
    from dm_core.engine import auto_class_chunk

    assert auto_class_chunk(CPU, 10, 256, batchnorm=True) == 10
    config = dict(ipc=1, iterations=3, model="convnetbn-w8", batch_real=32, seed=0)
    auto = condense_dm(digits, DMConfig(**config), device="cpu", progress=False)
    whole = condense_dm(digits, DMConfig(**config, class_chunk=10), device="cpu", progress=False)
    assert torch.equal(auto.images, whole.images)


def test_batchnorm_statistics_are_those_of_the_whole_batch(digits):
    """The loss of one BN iteration equals a hand computation with all classes' real images in one forward pass."""
    from dm_core import build_model, reinit_
    from dm_core.dm import dm_loss

    net = reinit_(build_model("convnetbn-w8", 1, 10, (16, 16)), make_generator(0, CPU)).train()
    real = torch.randn(10 * 6, 1, 16, 16, generator=make_generator(1, CPU))
    syn = torch.randn(10 * 2, 1, 16, 16, generator=make_generator(2, CPU))
    batched = dm_loss(net, real, syn, 10).detach()
    with torch.no_grad():
        real_means = net.embed(real).view(10, 6, -1).mean(1)
    syn_means = net.embed(syn).view(10, 2, -1).mean(1)
    torch.testing.assert_close(batched, (real_means - syn_means).pow(2).sum())
    # per-class passes give other statistics, hence another loss: that is why chunking is refused
    per_class = sum(dm_loss(net, real[c * 6:(c + 1) * 6], syn[c * 2:(c + 1) * 2], 1).detach() for c in range(10))
    assert abs(float(per_class) - float(batched)) > 1e-3


# 2. DSA inner loop: epochs over the synthetic set ---------------------------------------------------------------------

def test_dsa_inner_loop_trains_epochs_over_the_synthetic_set(digits, monkeypatch):
    """30 synthetic images in mini-batches of 8 make 4 SGD steps per epoch: 2 inner epochs are 8 steps, not 2."""
    steps = []
    real_call = augment.DiffAugment.__call__

    def counting(self, x):
        steps.append(len(x))
        return real_call(self, x)

    monkeypatch.setattr(augment.DiffAugment, "__call__", counting)
    config = DSAConfig(ipc=3, iterations=1, outer_loop=2, inner_loop=2, batch_train=8, batch_real=8,
                       model="convnet-w8")
    condense_dsa(digits, config, device="cpu", progress=False)
    assert steps == [8, 8, 8, 6] * 2  # one inner phase (between the 2 outer steps), 2 shuffled epochs of 30 images


# 3. Training-time augmentation: one group per mini-batch ---------------------------------------------------------------

@pytest.mark.parametrize("op", augment.OPS)
def test_single_op_path_equals_the_mixed_path(op):
    """``apply_op`` (what training computes) gives what ``apply`` gives when every draw picks that op."""
    x = torch.randn(16, 3, 12, 12, generator=make_generator(0, CPU))
    u = torch.rand(16, 11, generator=make_generator(1, CPU))
    params = augment.AugmentParams(torch.full((16,), augment.OPS.index(op)), u)
    torch.testing.assert_close(augment.apply_op(x, op, u), augment.apply(x, params), atol=1e-5, rtol=1e-5)


def test_training_augmentation_picks_one_group_per_batch():
    x = torch.randn(32, 3, 12, 12, generator=make_generator(0, CPU))
    aug = augment.DiffAugment(make_generator(3, CPU))
    assert TrainConfig().augment_groups == "batch" and aug.groups == "batch"
    picked = []
    for _ in range(30):
        state = aug.generator.get_state()
        out = aug(x)
        # replay the parameters: exactly one op, applied to the whole batch with per-sample parameters, explains it
        after = aug.generator.get_state()
        aug.generator.set_state(state)
        u = torch.rand(32, 11, generator=aug.generator)
        aug.generator.set_state(after)
        matches = [op for op in augment.OPS if torch.allclose(augment.apply_op(x, op, u), out, atol=1e-5)]
        assert len(matches) == 1
        picked.append(matches[0])
    assert len(set(picked)) >= 4  # the group changes from batch to batch
    # the per-sample option mixes groups inside one batch
    per_sample = augment.DiffAugment(make_generator(3, CPU), groups="sample")
    state = per_sample.generator.get_state()
    mixed = per_sample(x)
    per_sample.generator.set_state(state)
    params = augment.sample_params(32, per_sample.generator, CPU)
    assert len(set(params.op.tolist())) > 1 and torch.allclose(augment.apply(x, params), mixed)


def test_training_augmentation_parameters_differ_per_sample():
    x = torch.randn(1, 1, 16, 16).repeat(64, 1, 1, 1)
    out = augment.DiffAugment(make_generator(5, CPU), strategy="rotate")(x)
    assert len({round(float(v), 4) for v in out.flatten(1).sum(1)}) > 32  # 64 copies, (almost) all rotated apart


def test_unknown_grouping_is_refused():
    with pytest.raises(DMError, match="grouping"):
        TrainConfig(augment_groups="class")


# 4. Precision ---------------------------------------------------------------------------------------------------------

def test_fp32_is_the_default_everywhere():
    assert DMConfig().precision == DSAConfig().precision == TrainConfig().precision == "fp32"
    for config in (DMConfig, DSAConfig, TrainConfig):
        assert not hasattr(config(), "amp")
    with pytest.raises(DMError, match="precision"):
        DMConfig(precision="fp16")


@pytest.mark.parametrize("method, options", [("random", {}), ("herding", {"epochs": 1, "model": "convnet-w8"}),
                                             ("dm", {"iterations": 2, "batch_real": 8, "model": "convnet-w8"}),
                                             ("dsa", {"iterations": 1, "batch_real": 8, "model": "convnet-w8",
                                                      "outer_loop": 1, "inner_loop": 1})])
def test_every_set_records_its_precision(digits, method, options):
    synset = make_set(method, digits, 1, classes=[0, 1], device="cpu", progress=False, **options)
    assert synset.meta["precision"] == "fp32"


def test_bf16_is_an_explicit_option_that_changes_the_numbers(digits):
    config = dict(ipc=1, iterations=2, batch_real=16, model="convnet-w8", seed=0)
    fp32 = condense_dm(digits, DMConfig(**config), classes=[0, 1], device="cpu", progress=False)
    bf16 = condense_dm(digits, DMConfig(**config, precision="bf16"), classes=[0, 1], device="cpu", progress=False)
    assert bf16.meta["precision"] == "bf16" and fp32.meta["precision"] == "fp32"
    assert not torch.equal(fp32.images, bf16.images)
    torch.testing.assert_close(fp32.images, bf16.images, atol=0.2, rtol=0)


def test_cli_records_precision_in_the_set_and_the_evaluation(tmp_path, capsys):
    out = tmp_path / "r.pt"
    assert dm_main(["condense", "--dataset", "digits", "--method", "random", "--ipc", "1", "--out", str(out),
                    "--no-progress"]) == 0
    assert torch.load(out, weights_only=True)["meta"]["precision"] == "fp32"
    capsys.readouterr()
    assert dm_main(["evaluate", str(out), "--epochs", "2", "--repeats", "1", "--model", "convnet-w8", "--device",
                    "cpu", "--no-progress"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["precision"] == "fp32" and figures["augment_groups"] == "batch"
