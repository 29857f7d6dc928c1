import pytest
import torch

from dm_core import DMConfig, DMError, augment, build_model, condense_dm, reinit_
from dm_core.device import make_generator
from dm_core.dm import dm_loss

CPU = torch.device("cpu")
SMALL = dict(model="convnet-w16", batch_real=16, log_every=5, checkpoint_every=5)


def test_batched_loss_equals_per_class_loss():
    net = reinit_(build_model("convnet-w16", 1, 4, (16, 16)), make_generator(0, CPU)).train()
    k, n, ipc = 4, 6, 2
    real, syn = torch.randn(k * n, 1, 16, 16), torch.randn(k * ipc, 1, 16, 16)
    params = augment.sample_params(k, make_generator(1, CPU), CPU)
    g_real, g_syn = torch.arange(k).repeat_interleave(n), torch.arange(k).repeat_interleave(ipc)
    batched = dm_loss(net, real, syn, k, lambda x: augment.apply(x, params, g_real),
                      lambda x: augment.apply(x, params, g_syn))
    per_class = 0.0
    for c in range(k):
        p = params.take(torch.tensor([c]))
        r = net.embed(augment.apply(real[c * n:(c + 1) * n], p, torch.zeros(n, dtype=torch.long))).mean(0)
        s = net.embed(augment.apply(syn[c * ipc:(c + 1) * ipc], p, torch.zeros(ipc, dtype=torch.long))).mean(0)
        per_class = per_class + ((r - s) ** 2).sum()
    torch.testing.assert_close(batched, per_class, rtol=1e-5, atol=1e-6)


def test_loss_falls_from_noise(digits):
    config = DMConfig(ipc=2, iterations=60, init="noise", lr_img=1.0, seed=0, **SMALL)
    result = condense_dm(digits, config, device="cpu", progress=False)
    losses = [loss for _, loss in result.meta["loss_history"]]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:2]) / 2


def test_deterministic_subset_and_labels(digits):
    config = DMConfig(ipc=3, iterations=6, seed=3, **SMALL)
    a = condense_dm(digits, config, classes=[7, 2], device="cpu", progress=False)
    b = condense_dm(digits, config, classes=[7, 2], device="cpu", progress=False)
    assert torch.equal(a.images, b.images)
    assert a.labels.tolist() == [7, 7, 7, 2, 2, 2]
    assert a.meta["method"] == "dm" and a.meta["classes"] == [7, 2] and a.meta["iterations"] == 6


def test_chunking_changes_memory_not_results(digits):
    """The draws are made for all classes before the chunks run, so any chunking gives the same images."""
    base = DMConfig(ipc=2, iterations=5, seed=1, **SMALL)
    whole = condense_dm(digits, DMConfig(**{**base.__dict__, "class_chunk": 10}), device="cpu", progress=False)
    for chunk in (1, 3):
        chunked = condense_dm(digits, DMConfig(**{**base.__dict__, "class_chunk": chunk}), device="cpu",
                              progress=False)
        torch.testing.assert_close(chunked.images, whole.images, rtol=1e-4, atol=1e-4)


def test_resume_reproduces_the_uninterrupted_run(digits, tmp_path, monkeypatch):
    config = DMConfig(ipc=1, iterations=12, seed=5, **SMALL)
    straight = condense_dm(digits, config, classes=[0, 1, 2], device="cpu", progress=False)

    import dm_core.dm as dm_module
    calls = {"n": 0}
    real_reinit = dm_module.reinit_

    def interrupting(net, generator):
        calls["n"] += 1
        if calls["n"] == 8:  # dies during iteration 8, after the checkpoint at 5
            raise KeyboardInterrupt
        return real_reinit(net, generator)

    monkeypatch.setattr(dm_module, "reinit_", interrupting)
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        condense_dm(digits, config, classes=[0, 1, 2], device="cpu", checkpoint=ckpt, progress=False)
    assert ckpt.exists()
    monkeypatch.setattr(dm_module, "reinit_", real_reinit)
    resumed = condense_dm(digits, config, classes=[0, 1, 2], device="cpu", checkpoint=ckpt, resume=True,
                          progress=False)
    assert torch.equal(resumed.images, straight.images)
    with pytest.raises(DMError, match="another run"):
        condense_dm(digits, DMConfig(ipc=1, iterations=12, seed=6, **SMALL), classes=[0, 1, 2], device="cpu",
                    checkpoint=ckpt, resume=True, progress=False)


def test_batchnorm_variant_runs(digits):
    result = condense_dm(digits, DMConfig(ipc=2, iterations=3, model="convnetbn-w16", batch_real=8),
                         device="cpu", progress=False)
    assert result.images.shape == (20, 1, 16, 16) and torch.isfinite(result.images).all()


def test_non_finite_loss_is_an_error(digits):
    with pytest.raises(DMError, match="non-finite|became"):
        condense_dm(digits, DMConfig(ipc=1, iterations=10, lr_img=1e30, init="noise", log_every=2, **{
            k: v for k, v in SMALL.items() if k != "log_every"}), device="cpu", progress=False)


def test_ipc_above_class_size_is_refused(digits):
    with pytest.raises(DMError, match="ipc 500 is more than"):
        condense_dm(digits, DMConfig(ipc=500, iterations=1), device="cpu", progress=False)


def test_out_of_memory_halves_the_class_chunk(digits, monkeypatch):
    """A pass that runs out of memory is redone with half the classes per forward pass."""
    import dm_core.dm as dm_module

    real_loss = dm_module.dm_loss
    seen = []

    def short_of_memory(net, real, synthetic, num_classes, *args, **kwargs):
        seen.append(num_classes)
        if num_classes > 3:
            raise torch.cuda.OutOfMemoryError("simulated")
        return real_loss(net, real, synthetic, num_classes, *args, **kwargs)

    monkeypatch.setattr(dm_module, "dm_loss", short_of_memory)
    result = condense_dm(digits, DMConfig(ipc=1, iterations=3, class_chunk=10, **SMALL), device="cpu", progress=False)
    assert seen[:3] == [10, 5, 2] and set(seen[2:]) == {2}  # all 10 classes, then 5, then 2 per pass from then on
    assert torch.isfinite(result.images).all() and result.labels.tolist() == list(range(10))


def test_auto_chunk_bounds_cpu_passes():
    from dm_core.engine import auto_class_chunk

    assert auto_class_chunk(torch.device("cpu"), 100, 256) == 1
    assert auto_class_chunk(torch.device("cpu"), 10, 64) == 2
    assert auto_class_chunk(torch.device("cpu"), 3, 8) == 3
    assert auto_class_chunk(torch.device("cuda"), 100, 256) == 100


@pytest.mark.parametrize("when", ["in", "after"])
def test_ctrl_c_in_or_after_the_last_iteration_is_not_lost(digits, tmp_path, monkeypatch, when):
    """A Ctrl-C during the last iteration stops the run there with a checkpoint (the rerun just finishes, bit for
    bit); one after its check still ends the call with KeyboardInterrupt: the run never swallows it."""
    import os
    import signal

    from dm_core.engine import Condensation, Interrupted

    config = DMConfig(ipc=1, iterations=6, seed=5, **SMALL)
    straight = condense_dm(digits, config, classes=[0, 1], device="cpu", progress=False)
    real_end = Condensation.end_iteration

    def ctrl_c_at_the_end(self, done, *args):
        if done == config.iterations and when == "in":
            os.kill(os.getpid(), signal.SIGINT)
        real_end(self, done, *args)
        if done == config.iterations and when == "after":
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Condensation, "end_iteration", ctrl_c_at_the_end)
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt) as stopped:
        condense_dm(digits, config, classes=[0, 1], device="cpu", checkpoint=ckpt, progress=False)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.setattr(Condensation, "end_iteration", real_end)
    if when == "in":
        assert isinstance(stopped.value, Interrupted) and stopped.value.iteration == config.iterations
    else:
        assert type(stopped.value) is KeyboardInterrupt
    resumed = condense_dm(digits, config, classes=[0, 1], device="cpu", checkpoint=ckpt, resume=True, progress=False)
    assert torch.equal(resumed.images, straight.images)
    assert resumed.meta["loss_history"] == straight.meta["loss_history"]
