"""DM's successors (M3D, IDM, DataDAM, decomposed DM): each method's defining property, and that each runs in the
engine as DM does (registration, provenance, checkpoints and resume). Small networks and the digits, on the CPU."""
import pytest
import torch
import torch.nn.functional as F

from dm_core import DMError, augment, build_model, make_set, reinit_
from dm_core.cli import main as dm_main
from dm_core.device import make_generator
from dm_core.dm import dm_loss
from dm_core.methods import check_options
from dm_core.successors import (
    ModelQueue,
    attention_map,
    channel_moments,
    datadam_loss,
    gram,
    idm_loss,
    intra_class_diversity,
    m3d_loss,
    mmd2,
    mosaic,
    partition_expand,
)
from dm_core.successors.ddm import class_style, style_losses

CPU = torch.device("cpu")
TINY = dict(model="convnet-w8", batch_real=8, log_every=2, checkpoint_every=3)


def tiny_net(depth: int = 3, seed: int = 0):
    return reinit_(build_model(f"convnet-d{depth}-w8", 1, 4, (16, 16)), make_generator(seed, CPU)).train()


def siamese(k: int, n: int, m: int, seed: int = 1):
    params = augment.sample_params(k, make_generator(seed, CPU), CPU)
    g_real, g_syn = torch.arange(k).repeat_interleave(n), torch.arange(k).repeat_interleave(m)
    return (lambda x: augment.apply(x, params, g_real)), (lambda x: augment.apply(x, params, g_syn))


# ---- M3D ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_mmd_is_zero_for_identical_samples_and_positive_otherwise(kernel):
    x = torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(0))
    assert mmd2(x, x.clone(), kernel).abs().max() < 1e-5
    assert (mmd2(x, x + 0.5, kernel) > 1e-3).all()


def test_gaussian_mmd_sees_a_spread_the_mean_does_not():
    """Same mean, different variance: DM's (linear) distance is 0, M3D's Gaussian MMD is not."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 40, 3, generator=g)
    x = x - x.mean(1, keepdim=True)
    y = 3 * x
    assert mmd2(x, y, "linear").abs().item() < 1e-5
    assert mmd2(x, y, "gaussian").item() > 0.05


def test_m3d_with_a_linear_kernel_is_dm_loss():
    net, k, n, m = tiny_net(), 4, 6, 2
    real, syn = torch.randn(k * n, 1, 16, 16), torch.randn(k * m, 1, 16, 16)
    real_aug, syn_aug = siamese(k, n, m)
    expected = dm_loss(net, real, syn, k, real_aug, syn_aug)
    torch.testing.assert_close(m3d_loss(net, real, syn, k, "linear", real_aug, syn_aug), expected, rtol=1e-4,
                               atol=1e-4)


# ---- IDM ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("factor", [2, 4])
def test_partition_and_expansion_gives_factor_squared_full_size_sub_images(factor):
    image = torch.arange(64.0).view(1, 1, 8, 8)
    subs = partition_expand(image, factor)
    assert subs.shape == (factor ** 2, 1, 8, 8)
    size = 8 // factor
    for t in range(factor ** 2):  # tile t is row t // factor, column t % factor, enlarged bilinearly
        r, c = divmod(t, factor)
        tile = image[:, :, r * size:(r + 1) * size, c * size:(c + 1) * size]
        torch.testing.assert_close(subs[t:t + 1], F.interpolate(tile, size=(8, 8), mode="bilinear"))
    with pytest.raises(DMError, match="does not divide"):
        partition_expand(image, 3)


def test_a_mosaic_of_real_images_expands_back_to_them():
    tiles = torch.stack([torch.full((1, 8, 8), float(v)) for v in range(8)])  # 2 mosaics of 4 constant tiles
    stored = mosaic(tiles, 2)
    assert stored.shape == (2, 1, 8, 8)
    torch.testing.assert_close(partition_expand(stored, 2), tiles)


def test_model_queue_trains_and_recycles_its_networks():
    g = make_generator(0, CPU)
    queue = ModelQueue(lambda: build_model("convnet-w8", 1, 4, (16, 16)), capacity=3, lr=0.05, generator=g)
    for _ in range(3):
        queue.push()
    modules = [id(n) for n in queue.nets]
    x, y = torch.randn(32, 1, 16, 16), torch.arange(4).repeat(8)
    before = [p.clone() for p in queue.nets[0].parameters()]
    queue.train(0, x, y, steps=3, batch=8)
    assert queue.seen[0] == 24 and 0 <= queue.accuracy(0).item() <= 100
    assert any(not torch.equal(a, b) for a, b in zip(before, queue.nets[0].parameters()))  # trained
    assert queue.accuracy(1).item() == 0 and queue.seen[1] == 0  # untrained networks weigh nothing yet
    oldest = queue.nets[0]
    weights = oldest.features[0].weight.clone()
    queue.push()  # full: the oldest leaves, its module comes back at the end, re-initialised and untrained
    assert len(queue) == 3 and queue.pushed == 4
    assert queue.nets[-1] is oldest and [id(n) for n in queue.nets] == modules[1:] + modules[:1]
    assert not torch.equal(oldest.features[0].weight, weights) and queue.seen[-1] == 0
    assert sorted(queue.draw(3)) == [0, 1, 2]
    clone = ModelQueue(queue.build, 3, 0.05, make_generator(1, CPU))
    clone.load_state_dict(queue.state_dict())
    for a, b in zip(clone.nets, queue.nets):
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p, q)


def test_idm_regulariser_is_cross_entropy_weighted_by_accuracy():
    net, k, n, m = tiny_net(), 4, 6, 2
    real, syn, labels = torch.randn(k * n, 1, 16, 16), torch.randn(k * m, 1, 16, 16), torch.arange(k)
    plain = dm_loss(net, real, syn, k)
    torch.testing.assert_close(idm_loss(net, real, syn, labels, 0.0), plain)
    ce = F.cross_entropy(net(syn), labels.repeat_interleave(m), reduction="none").view(k, m).mean(1).sum()
    torch.testing.assert_close(idm_loss(net, real, syn, labels, 0.5 * 40), plain + 20 * ce, rtol=1e-4, atol=1e-4)


def test_idm_resume_reproduces_the_uninterrupted_run(digits, tmp_path, monkeypatch):
    options = dict(iterations=4, queue_size=3, initial_models=2, push_every=2, train_steps=1, train_batch=8,
                   factor=2, **{**TINY, "checkpoint_every": 2})
    straight = make_set("idm", digits, 1, classes=[0, 1, 2], seed=3, device="cpu", progress=False, **options)
    assert straight.images.shape == (12, 1, 16, 16) and straight.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert straight.meta["images_per_class"] == 4 and straight.meta["factor"] == 2
    assert straight.meta["models_pushed"] == 4  # 2 at the start, then one at iterations 0 and 2
    real_draw, calls = ModelQueue.draw, {"n": 0}

    def interrupting(self, count):
        calls["n"] += 1
        if calls["n"] == 7:  # two draws per iteration: dies in the 4th iteration, after the checkpoint at 2
            raise KeyboardInterrupt
        return real_draw(self, count)

    monkeypatch.setattr(ModelQueue, "draw", interrupting)
    ckpt = tmp_path / "idm.ckpt"
    with pytest.raises(KeyboardInterrupt):
        make_set("idm", digits, 1, classes=[0, 1, 2], seed=3, device="cpu", progress=False, checkpoint=ckpt,
                 **options)
    assert "extra" in torch.load(ckpt, weights_only=True)  # the queue travels with the images
    monkeypatch.setattr(ModelQueue, "draw", real_draw)
    resumed = make_set("idm", digits, 1, classes=[0, 1, 2], seed=3, device="cpu", progress=False, checkpoint=ckpt,
                       resume=True, **options)
    assert torch.equal(resumed.images, straight.images)


# ---- DataDAM --------------------------------------------------------------------------------------------------

def test_attention_map_is_the_normalised_channel_sum_of_powers():
    features = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    for p in (1.0, 2.0, 4.0):
        spatial = features.abs().pow(p).sum(1).flatten(1)
        torch.testing.assert_close(attention_map(features, p), spatial / spatial.norm(dim=1, keepdim=True))
    assert attention_map(features).shape == (2, 16)
    torch.testing.assert_close(attention_map(5 * features, 2.0), attention_map(features, 2.0))  # scale-free
    torch.testing.assert_close(attention_map(-features), attention_map(features))  # |F|: signs do not matter
    spike = torch.zeros(1, 3, 4, 4)
    spike[0, :, 1, 2] = 1.0
    assert attention_map(spike)[0].tolist() == [1.0 if i == 6 else 0.0 for i in range(16)]


def test_datadam_loss_is_zero_on_identical_batches_and_reduces_to_dm_without_intermediate_layers():
    net, k = tiny_net(), 4
    x = torch.randn(k * 3, 1, 16, 16)
    assert datadam_loss(net, x, x.clone(), k, 1.0, 0.01, 100.0).item() < 1e-6
    assert datadam_loss(net, x, torch.randn_like(x), k, 1.0, 0.01, 100.0).item() > 0
    shallow, syn = tiny_net(depth=1), torch.randn(k * 2, 1, 16, 16)  # its only activation is the last one
    torch.testing.assert_close(datadam_loss(shallow, x, syn, k, 1.0, 1.0, 1.0), dm_loss(shallow, x, syn, k))


# ---- decomposed DM --------------------------------------------------------------------------------------------

def test_style_statistics_are_channel_moments_and_gram_matrices():
    """As the authors compute them: the moments of each class's mean map (unbiased std, eps 1e-5), and the mean of
    the class's per-image Gram matrices F F^T / (C H W)."""
    features = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    mean, std = channel_moments(features)
    torch.testing.assert_close(mean, features.mean(dim=(2, 3)))
    torch.testing.assert_close(std, (features.var(dim=(2, 3), unbiased=True) + 1e-5).sqrt(), rtol=1e-4, atol=1e-4)
    flat = features.flatten(2)
    torch.testing.assert_close(gram(features), flat @ flat.transpose(1, 2) / 75)
    class_mean, class_std, class_gram = class_style(features, 2)  # two classes of two images
    class_maps = features.view(2, 2, 3, 5, 5).mean(1)
    torch.testing.assert_close(class_mean, class_maps.mean(dim=(2, 3)))
    torch.testing.assert_close(class_std, (class_maps.var(dim=(2, 3), unbiased=True) + 1e-5).sqrt())
    torch.testing.assert_close(class_gram, gram(features).view(2, 2, 3, 3).mean(1))


def test_style_losses_vanish_for_the_same_style_and_grow_with_a_different_one():
    features = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    same = [class_style(features, 2)]
    mm, cm = style_losses(same, [class_style(features.clone(), 2)])
    assert mm == 0 and cm == 0
    scaled = features.clone()
    scaled[:, 0] *= 3  # one channel three times as strong: its moments and correlations change
    mm, cm = style_losses(same, [class_style(scaled, 2)])
    assert mm > 0 and cm > 0


def test_intra_class_diversity_pushes_a_class_apart():
    g = torch.Generator().manual_seed(2)
    assert intra_class_diversity(torch.randn(3, 1, 8, generator=g)) == 0  # one image per class: nothing to spread
    tight = torch.randn(2, 5, 8, generator=g) * 0.1
    assert intra_class_diversity(tight).item() < 0
    assert intra_class_diversity(10 * tight).item() < intra_class_diversity(tight).item()  # wider: more diverse
    e = tight.clone().requires_grad_(True)
    intra_class_diversity(e).backward()
    spread = lambda z: torch.cdist(z, z).mean()  # noqa: E731
    assert spread(tight - 0.5 * e.grad) > spread(tight)  # a descent step moves the images apart


# ---- the engine -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,extra", [
    ("m3d", {"factor": 1}), ("datadam", {}), ("ddm", {}),
    ("idm", {"queue_size": 2, "initial_models": 1, "train_steps": 1, "train_batch": 8, "factor": 1})])
def test_each_method_runs_in_the_engine_with_dm_s_provenance(digits, method, extra):
    synset = make_set(method, digits, 2, classes=[3, 5], seed=1, device="cpu", progress=False, iterations=4,
                      **TINY, **extra)
    assert synset.images.shape == (4, 1, 16, 16) and synset.labels.tolist() == [3, 3, 5, 5]
    assert torch.isfinite(synset.images).all()
    meta = synset.meta
    assert meta["method"] == method and meta["precision"] == "fp32" and meta["iterations"] == 4
    assert meta["classes"] == [3, 5] and len(meta["loss_history"]) == 2 and meta["images_per_class"] == 2


def test_options_are_checked_before_any_work():
    check_options("m3d", 1, kernel="linear", factor=2)
    for method, options, match in [("m3d", {"kernel": "cubic"}, "kernel"), ("idm", {"queue_size": 0}, "queue_size"),
                                   ("datadam", {"power": 0}, "power"), ("ddm", {"icd_weight": -1}, "icd_weight"),
                                   ("ddm", {"sigma": 1}, "unknown option"), ("idm", {"factor": 0}, "factor"),
                                   ("m3d", {"iterations": "many"}, "iterations")]:
        with pytest.raises(DMError, match=match):
            check_options(method, 1, **options)


def test_batchnorm_networks_take_the_whole_batch(digits):
    with pytest.raises(DMError, match="BatchNorm"):
        make_set("m3d", digits, 1, device="cpu", progress=False, iterations=1, class_chunk=2,
                 **{**TINY, "model": "convnetbn-w8"})


def test_cli_condenses_with_m3d_and_resumes_after_an_interruption(tmp_path, capsys, monkeypatch):
    out = tmp_path / "m3d.pt"
    flags = ["condense", "--dataset", "digits", "--method", "m3d", "--ipc", "1", "--iterations", "4",
             "--batch-real", "4", "--model", "convnet-w8", "--option", "checkpoint_every=2", "--option",
             "kernel=gaussian", "--device", "cpu", "--out", str(out), "--no-progress"]
    import dm_core.successors.m3d as m3d_module

    real_mmd, calls = m3d_module.mmd2, {"n": 0}

    def interrupting(*args):
        calls["n"] += 1
        if calls["n"] == 4:  # one pass per iteration (10 digits classes, 4 real each, fit one pass): iteration 4
            raise KeyboardInterrupt
        return real_mmd(*args)

    monkeypatch.setattr(m3d_module, "mmd2", interrupting)
    assert dm_main(flags) == 130
    assert out.with_suffix(".ckpt").is_file() and not out.exists()
    monkeypatch.setattr(m3d_module, "mmd2", real_mmd)
    capsys.readouterr()
    assert dm_main(flags) == 0
    assert '"method": "m3d"' in capsys.readouterr().out and out.is_file() and not out.with_suffix(".ckpt").exists()


def test_continual_accepts_every_method():
    from continual.builder import METHODS as MEMORY_METHODS

    for method in ("m3d", "idm", "datadam", "ddm"):
        assert method in MEMORY_METHODS


def test_nas_accepts_every_method():
    from nas.proxy import parse_proxy

    for method in ("m3d", "idm", "datadam", "ddm"):
        assert parse_proxy(f"{method}50").kind == method and parse_proxy(f"{method}50").ipc == 50


@pytest.mark.parametrize("method,extra", [("m3d", {}), ("idm", {"queue_size": 2, "initial_models": 1,
                                                                "train_steps": 1, "train_batch": 4})])
def test_a_continual_memory_builds_and_continues_with_a_successor(digits, method, extra):
    """New classes are condensed; a returning class continues from its memory images (``initial``)."""
    from continual.builder import MemoryBuilder

    keep = torch.isin(digits.y_train, torch.tensor([0, 1]))
    images, labels = digits.x_train[keep][::4], digits.y_train[keep][::4]
    builder = MemoryBuilder(method, 1, seed=2, device="cpu",
                            options={"iterations": 2, "model": "convnet-w8", "batch_real": 4, **extra})
    held = {0: digits.x_train[digits.y_train == 0][:1]}
    synset = builder(images, labels, step=1, held=held)
    assert synset.labels.tolist() == [1, 0] and torch.isfinite(synset.images).all()
    assert synset.meta["returning_classes"] == [0] and synset.meta["method"] == method
    assert not torch.equal(synset.images[1], held[0][0])  # the memory image was optimised further


# ---- the authors' defaults (issue 20) ---------------------------------------------------------------------------

def fake_data(name: str, size: int = 32, classes: int = 10, std: float = 0.25):
    from dm_core import ImageDataset

    x = torch.zeros(classes, 3, size, size)
    return ImageDataset(name, x, torch.arange(classes), x, torch.arange(classes), classes, (0.5,) * 3, (std,) * 3,
                        tuple(map(str, range(classes))))


def test_the_successors_defaults_are_their_authors():
    from dm_core import DataDAMConfig, DDMConfig, IDMConfig, M3DConfig

    assert DataDAMConfig(ipc=10).resolve(fake_data("cifar10")).model == "convnetbn"  # the authors' BN ConvNet
    assert DataDAMConfig(ipc=10).resolve(fake_data("tinyimagenet", 64)).model == "convnetbn-d4"
    idm = {ipc: IDMConfig(ipc=ipc).resolve(fake_data("cifar100", classes=100)) for ipc in (1, 10, 50)}
    assert all(c.factor == 2 and c.lr_img == 0.2 for c in idm.values())
    assert (idm[10].ce_weight, idm[10].train_steps, idm[10].accuracy_reset_every) == (0.1, 50, 100)
    assert (idm[50].ce_weight, idm[50].train_steps, idm[50].accuracy_reset_every) == (0.1, 10, 500)
    assert (idm[1].batch_real, idm[1].push_every, idm[10].batch_real, idm[10].push_every) == (5000, 5, 256, 30)
    cifar10 = IDMConfig(ipc=10).resolve(fake_data("cifar10"))
    assert (cifar10.ce_weight, cifar10.train_steps) == (0.5, 10)
    ddm = DDMConfig()
    assert (ddm.mm_weight, ddm.cm_weight, ddm.icd_weight, ddm.icd_neighbours) == (10_000, 10_000, 10, 2)
    m3d = M3DConfig(ipc=10).resolve(fake_data("cifar10", std=0.25))
    assert (m3d.iterations, m3d.batch_real, m3d.factor, m3d.augment, m3d.iterations_per_model) == (
        5000, 128, 2, "color_crop_cutout", 5)
    assert m3d.lr_img == pytest.approx(5e-3 / 0.25 ** 2)  # 5e-3 of [0, 1] pixels, in normalised units


def test_idm_resets_the_networks_accuracy_every_interval(digits, monkeypatch):
    resets = []
    real_reset = ModelQueue.reset_accuracy
    monkeypatch.setattr(ModelQueue, "reset_accuracy", lambda self: resets.append(len(resets)) or real_reset(self))
    make_set("idm", digits, 1, classes=[0, 1], device="cpu", progress=False, iterations=7, accuracy_reset_every=3,
             queue_size=2, initial_models=1, train_steps=1, train_batch=8, factor=1, **TINY)
    assert len(resets) == 2  # before iterations 3 and 6, never at 0


def test_ddm_taps_the_activations_and_averages_over_layers():
    from dm_core.successors.ddm import STYLE_TAP

    assert STYLE_TAP == (torch.nn.ReLU, torch.nn.LeakyReLU, torch.nn.Sigmoid)
    one = [class_style(torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(s)), 2) for s in (0, 1)]
    other = [class_style(torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(s)), 2) for s in (2, 3)]
    mm, cm = style_losses(one, other)
    first, second = style_losses(one[:1], other[:1]), style_losses(one[1:], other[1:])
    torch.testing.assert_close(mm, (first[0] + second[0]) / 2)
    torch.testing.assert_close(cm, (first[1] + second[1]) / 2)
    assert intra_class_diversity(torch.randn(1, 2, 4), neighbours=2).isfinite()  # k capped at the others (1)


def test_m3d_keeps_a_network_for_five_iterations_and_its_images_in_the_pixel_range(digits, monkeypatch):
    import dm_core.successors.m3d as m3d_module

    draws = []
    real_reinit = m3d_module.reinit_
    monkeypatch.setattr(m3d_module, "reinit_", lambda net, g: draws.append(1) or real_reinit(net, g))
    synset = make_set("m3d", digits, 1, classes=[0, 1], device="cpu", progress=False, iterations=11, factor=1,
                      lr_img=50.0, **{k: v for k, v in TINY.items() if k != "batch_real"})
    assert len(draws) == 3  # iterations 0, 5 and 10
    pixels = synset.images * digits.std[0] + digits.mean[0]
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
