"""Where a reported number comes from, dm_core computes what the reference computes (docs/method.md sections 1, 3, 5).

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


# 3. Training-time augmentation: one group per mini-batch --------------------------------------------------------------

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


# 5. Second fidelity pass (issue 20): the learning ResNet, strategies by dataset, DSA, defaults, schedule --------------

def test_the_learning_resnet_is_the_references():
    """resnet18bnap: stride-1 convs, pooling after the first conv's norm and ReLU, pooled shortcut, no global
    pooling: the embedding is the flattened 512 x 4 x 4 map, the classifier Linear(8192, classes)."""
    from torch import nn

    from dm_core import build_model

    net = build_model("resnet18bnap", 3, 10, (32, 32))
    assert net.embed(torch.zeros(2, 3, 32, 32)).shape == (2, 8192)
    assert (net.classifier.in_features, net.classifier.out_features) == (8192, 10)
    assert sum(p.numel() for p in net.parameters()) == 11_250_762  # counted by hand from the reference's layers
    assert all(m.stride == (1, 1) for m in net.modules() if isinstance(m, nn.Conv2d))
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in net.modules())
    # the first downsampling block (after the stem and two blocks): conv -> norm -> ReLU -> avgpool -> conv -> norm
    block = net.features[5]

    def kinds(layers):  # dm_core's AvgPool2x2 is nn.AvgPool2d(2, 2), computed faster on the CPU
        return ["AvgPool2d(2, 2)" if isinstance(m, nn.AvgPool2d) and (m.kernel_size, m.stride) == (2, 2)
                else type(m).__name__ for m in layers]

    assert kinds(block.body) == ["Conv2d", "BatchNorm2d", "ReLU", "AvgPool2d(2, 2)", "Conv2d", "BatchNorm2d"]
    assert kinds(block.shortcut) == ["Conv2d", "AvgPool2d(2, 2)", "BatchNorm2d"]
    assert build_model("resnet18bnap", 1, 10, (28, 28)).embed(torch.zeros(1, 1, 28, 28)).shape == (1, 512 * 3 * 3)
    assert build_model("resnet18bn", 3, 10, (32, 32)).classifier.in_features == 512  # the non-AP ResNets stay


@pytest.mark.parametrize("dataset, strategy", [
    ("mnist", "color_crop_cutout_scale_rotate"), ("svhn", "color_crop_cutout_scale_rotate"),
    ("digits", "color_crop_cutout_scale_rotate"), ("fashionmnist", "color_crop_cutout_flip_scale_rotate"),
    ("cifar10", "color_crop_cutout_flip_scale_rotate"), ("cifar100", "color_crop_cutout_flip_scale_rotate")])
def test_digits_are_never_flipped(dataset, strategy):
    assert augment.default_strategy(dataset) == strategy


def test_the_strategy_in_force_is_recorded_and_can_be_set(digits, tmp_path, capsys):
    synset = make_set("dm", digits, 1, classes=[0, 1], device="cpu", progress=False, iterations=1, batch_real=4,
                      model="convnet-d1-w8")
    assert synset.meta["augment"] == "color_crop_cutout_scale_rotate"
    assert synset.meta["defaults_used"]["augment"] == "color_crop_cutout_scale_rotate"
    flipped = make_set("dm", digits, 1, classes=[0, 1], device="cpu", progress=False, iterations=1, batch_real=4,
                       model="convnet-d1-w8", augment="color_crop_cutout_flip_scale_rotate")
    assert flipped.meta["augment"] == "color_crop_cutout_flip_scale_rotate" and "augment" not in \
        flipped.meta["defaults_used"]
    out = tmp_path / "s.pt"
    assert dm_main(["condense", "--dataset", "digits", "--method", "random", "--ipc", "1", "--out", str(out),
                    "--no-progress"]) == 0
    for given, used in ((None, "color_crop_cutout_scale_rotate"), ("crop", "crop"), ("none", "none")):
        capsys.readouterr()
        assert dm_main(["evaluate", str(out), "--epochs", "1", "--repeats", "1", "--model", "convnet-d1-w8",
                        "--device", "cpu", "--no-progress", *(["--augment", given] if given else [])]) == 0
        assert json.loads(capsys.readouterr().out.splitlines()[-1])["augment"] == used
    assert TrainConfig().resolve("digits").augment == "color_crop_cutout_scale_rotate"
    assert TrainConfig(augment="none").resolve("digits").augment == "none"


def test_dsa_schedule_has_the_cifar100_exception():
    from dm_core.dsa import default_loops

    assert default_loops(50, "cifar100") == (10, 10)
    assert default_loops(50, "cifar10") == (50, 10) and default_loops(10, "cifar100") == (10, 50)
    assert DSAConfig(ipc=50).loops("cifar100") == (10, 10)


def test_dsa_batchnorm_statistics_come_from_16_images_per_class_in_one_pass(digits, monkeypatch):
    """A separate draw of bn_batch_per_class (16) real images of every class, in one train-mode pass, then frozen."""
    from torch import nn

    passes = []
    real_forward = nn.BatchNorm2d.forward

    def spy(self, x):
        if self.training:
            passes.append(x.shape[0])
        return real_forward(self, x)

    monkeypatch.setattr(nn.BatchNorm2d, "forward", spy)
    config = DSAConfig(ipc=1, iterations=1, outer_loop=2, inner_loop=1, model="convnetbn-d1-w8", batch_real=32)
    assert config.bn_batch_per_class == 16
    condense_dsa(digits, config, classes=[2, 5, 7], device="cpu", progress=False)
    statistics = [n for n in passes if n == 3 * 16]
    assert len(statistics) == 2  # one per outer step, all three classes at once; matching runs in eval mode
    assert 3 * 32 not in passes  # the matching batch never sets the statistics


def test_dataset_dependent_defaults_are_resolved_and_recorded():
    from dataclasses import replace

    from dm_core import ImageDataset

    def fake(name, size, classes=10):
        x = torch.zeros(classes, 3, size, size)
        return ImageDataset(name, x, torch.arange(classes), x, torch.arange(classes), classes, (0.5,) * 3,
                            (0.5,) * 3, tuple(map(str, range(classes))))

    tiny = DMConfig(ipc=10).resolve(fake("tinyimagenet", 64))
    assert tiny.iterations == 10_000 and tiny.model == "convnet-d4"
    cifar = DMConfig(ipc=10).resolve(fake("cifar10", 32))
    assert cifar.iterations == 20_000 and cifar.model == "convnet" and cifar.lr_img == 1.0
    assert DMConfig(ipc=100).resolve(fake("cifar10", 32)).lr_img == 10.0
    assert DMConfig(ipc=100).resolve(fake("cifar100", 32, 100)).lr_img == 1.0  # CIFAR-100 keeps 1 at 100 ipc
    assert DMConfig(ipc=125).resolve(fake("cifar100", 32, 100)).lr_img == 1.0
    assert DMConfig(ipc=10, iterations=5).defaults_for(fake("cifar10", 32)) == {
        "lr_img": 1.0, "model": "convnet", "augment": "color_crop_cutout_flip_scale_rotate"}
    assert replace(DSAConfig(ipc=1), iterations=None).resolve(fake("tinyimagenet", 64)).model == "convnet-d4"


def test_herding_says_its_feature_network_is_the_toolkits_choice(digits):
    synset = make_set("herding", digits, 1, classes=[0, 1], device="cpu", progress=False, epochs=1,
                      model="convnet-d1-w8")
    assert "toolkit's choice" in synset.meta["feature_network"] and synset.meta["feature_epochs"] == 1


def test_evaluation_follows_the_references_schedule(monkeypatch):
    """epochs E: passes 0..E, lr x 0.1 after pass E // 2 + 1, with a fresh optimiser (momentum restarts)."""
    from dm_core import build_model, train_model

    assert TrainConfig(epochs=1000, batch_size=256).schedule(500) == (2, 1001 * 2, 502 * 2)
    assert TrainConfig(epochs=10, batch_size=10).schedule(20) == (2, 22, 14)
    made = []
    real_sgd = torch.optim.SGD

    def counting(params, lr, **kwargs):
        made.append(lr)
        return real_sgd(params, lr, **kwargs)

    monkeypatch.setattr(torch.optim, "SGD", counting)
    net = build_model("convnet-d1-w4", 1, 2, (8, 8))
    epochs = []
    train_model(net, torch.randn(8, 1, 8, 8), torch.arange(8) % 2, TrainConfig(epochs=4, batch_size=4,
                                                                                augment="none"),
                device="cpu", on_epoch=lambda epoch, model: epochs.append(epoch))
    assert epochs == [1, 2, 3, 4, 5] and made == [0.01, pytest.approx(0.001)]


def test_cutout_centre_reaches_the_far_border():
    """The reference draws the centre of an even-sized hole from 0..size inclusive."""
    x = torch.ones(2, 1, 16, 16)
    u = torch.zeros(2, 11)
    u[0, 5] = u[0, 6] = 0.0
    u[1, 5] = u[1, 6] = 0.9999  # the largest centre: 16, so only a 4x4 corner (rows 12..15) is cut
    out = augment.apply_op(x, "cutout", u)
    assert (out[0, 0, :4, :4] == 0).all() and (out[0] == 0).sum() == 16
    assert (out[1, 0, 12:, 12:] == 0).all() and (out[1] == 0).sum() == 16
