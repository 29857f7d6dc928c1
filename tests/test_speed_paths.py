"""The fast paths compute what the plain ones do (issue 13): only the drawn augmentation ops, classes ordered by op,
compiled training and DM. Timings live in benchmarks/speed.py, not here."""
import pytest
import torch
import torch.nn.functional as F

from dm_core import (
    DMConfig,
    DMError,
    DSAConfig,
    TrainConfig,
    augment,
    build_model,
    condense_dm,
    condense_dsa,
    reinit_,
    train_model,
)
from dm_core import compile as dm_compile
from dm_core.augment import groups_generator
from dm_core.device import make_generator
from dm_core.dm import dm_loss
from dm_core.train import evaluate_accuracy

CPU = torch.device("cpu")


def host_params(ops: list[str], seed: int = 0) -> augment.AugmentParams:
    u = torch.rand(len(ops), 11, generator=make_generator(seed, CPU))
    return augment.AugmentParams(torch.tensor([augment.OPS.index(o) for o in ops]), u)


def mixed(x, params, groups=None):
    """The branchless path (what draws on a GPU take), as the reference of every other path."""
    p = params if groups is None else params.take(groups)
    return augment._apply_mixed(x, p)


# augmentation: only the drawn ops ---------------------------------------------------------------------------------

def test_runs_and_drawn_paths_equal_the_branchless_path():
    ops = ["crop", "crop", "color", "rotate", "flip", "flip", "cutout", "scale", "color"]
    params, run = host_params(ops), 3
    x = torch.randn(len(ops) * run, 3, 12, 12, generator=make_generator(1, CPU))
    groups = torch.arange(len(ops)).repeat_interleave(run)
    expected = mixed(x, params, groups)
    torch.testing.assert_close(augment.apply_runs(x, params, run), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(augment.apply(x, params, groups), expected, atol=1e-5, rtol=1e-5)
    # any grouping, not only runs: samples of one draw scattered through the batch
    scattered = torch.randperm(len(groups), generator=make_generator(2, CPU))
    torch.testing.assert_close(augment.apply(x, params, groups[scattered]), mixed(x, params, groups[scattered]),
                               atol=1e-5, rtol=1e-5)


def test_siamese_runs_keep_real_and_synthetic_under_the_same_draw():
    params = host_params(["rotate", "color", "cutout"], seed=3)
    image = torch.randn(3, 1, 3, 10, 10, generator=make_generator(4, CPU))
    real = augment.apply_runs(image.expand(3, 5, 3, 10, 10).flatten(0, 1), params, 5)
    syn = augment.apply_runs(image.expand(3, 2, 3, 10, 10).flatten(0, 1), params, 2)
    torch.testing.assert_close(real.view(3, 5, 3, 10, 10)[:, 0], syn.view(3, 2, 3, 10, 10)[:, 1])


def test_ops_not_drawn_cost_nothing(monkeypatch):
    calls = {"grid_sample": 0, "cutout": 0}
    grid_sample, hole = F.grid_sample, augment._cutout_hole

    def counting_grid(*a, **k):
        calls["grid_sample"] += 1
        return grid_sample(*a, **k)

    def counting_hole(*a, **k):
        calls["cutout"] += 1
        return hole(*a, **k)

    monkeypatch.setattr(augment.F, "grid_sample", counting_grid)
    monkeypatch.setattr(augment, "_cutout_hole", counting_hole)
    x = torch.randn(8, 3, 12, 12)
    params = host_params(["color", "flip", "color", "flip"])
    augment.apply_runs(x, params, 2)
    augment.apply(x, params, torch.arange(4).repeat_interleave(2))
    assert calls == {"grid_sample": 0, "cutout": 0}
    augment.apply_runs(x, host_params(["crop", "crop", "rotate", "cutout"]), 2)
    assert calls == {"grid_sample": 2, "cutout": 1}  # one call per stretch of one op: crop+crop, rotate
    mixed(x, params, torch.arange(4).repeat_interleave(2))
    assert calls == {"grid_sample": 3, "cutout": 2}  # the branchless path pays for every op


def test_order_by_group_makes_one_stretch_per_op():
    params = host_params(["flip", "crop", "flip", "color", "crop", "flip"])
    order = augment.order_by_group(params)
    assert sorted(order) == list(range(6))
    ops = params.op[order].tolist()
    assert ops == sorted(ops) and order == [3, 1, 4, 0, 2, 5]  # color, then crop, flip, each in draw order


def test_groups_drawn_on_the_host_keep_parameters_on_the_device_generator():
    a = augment.sample_params(50, make_generator(0, CPU), CPU, host=torch.Generator().manual_seed(7))
    b = augment.sample_params(50, make_generator(0, CPU), CPU, host=torch.Generator().manual_seed(7))
    c = augment.sample_params(50, make_generator(0, CPU), CPU, host=torch.Generator().manual_seed(8))
    assert torch.equal(a.op, b.op) and not torch.equal(a.op, c.op) and torch.equal(a.u, c.u)
    assert a.op.device.type == "cpu" and set(a.op.tolist()) == set(range(len(augment.OPS)))
    assert torch.equal(groups_generator(3, 10).get_state(), groups_generator(3, 10).get_state())
    assert not torch.equal(groups_generator(3, 10).get_state(), groups_generator(3, 11).get_state())


def test_the_class_order_leaves_the_dm_loss_unchanged():
    """DM sorts its classes by drawn op; the loss is a sum over classes, so any order gives the same loss."""
    net = reinit_(build_model("convnet-w8", 1, 4, (12, 12)), make_generator(0, CPU)).train()
    k, n, ipc = 4, 5, 2
    real = torch.randn(k * n, 1, 12, 12, generator=make_generator(1, CPU))
    syn = torch.randn(k * ipc, 1, 12, 12, generator=make_generator(2, CPU))
    params = host_params(["rotate", "color", "rotate", "cutout"])
    loss = dm_loss(net, real, syn, k, lambda x: augment.apply_runs(x, params, n),
                   lambda x: augment.apply_runs(x, params, ipc))
    order = augment.order_by_group(params)
    p = augment.AugmentParams(params.op[order], params.u[order])
    loss_sorted = dm_loss(net, real.view(k, n, 1, 12, 12)[order].flatten(0, 1),
                          syn.view(k, ipc, 1, 12, 12)[order].flatten(0, 1), k,
                          lambda x: augment.apply_runs(x, p, n), lambda x: augment.apply_runs(x, p, ipc))
    torch.testing.assert_close(loss_sorted, loss)
    groups = torch.arange(k)
    branchless = dm_loss(net, real, syn, k, lambda x: mixed(x, params, groups.repeat_interleave(n)),
                         lambda x: mixed(x, params, groups.repeat_interleave(ipc)))
    torch.testing.assert_close(branchless, loss, rtol=1e-4, atol=1e-6)


# the compile decision ----------------------------------------------------------------------------------------------

def test_compile_decision_follows_the_cost_model(monkeypatch):
    monkeypatch.setattr(dm_compile, "unavailable_reason", lambda device: None)
    cost = dm_compile.COSTS["cpu"]
    pays = cost.compile_seconds / cost.saving * cost.eager_flops  # FLOPs at which one graph pays for itself
    key = ("test", "never compiled")
    assert not dm_compile.should_compile("off", CPU, [key], 1e30)
    assert dm_compile.should_compile("on", CPU, [key], 0)
    assert not dm_compile.should_compile("auto", CPU, [key], 0.9 * pays)
    assert dm_compile.should_compile("auto", CPU, [key], 1.1 * pays)
    assert not dm_compile.should_compile("auto", CPU, [key, ("test", "another shape")], 1.1 * pays)
    monkeypatch.setitem(dm_compile._COMPILED, key, object())  # compiled before in this process: free now
    assert dm_compile.should_compile("auto", CPU, [key], 1.0)
    monkeypatch.setattr(dm_compile, "unavailable_reason", lambda device: "no C++ compiler")
    assert not dm_compile.should_compile("auto", CPU, [key], 1e30)
    with pytest.raises(DMError, match="no C\\+\\+ compiler"):
        dm_compile.should_compile("on", CPU, [key], 0)
    with pytest.raises(DMError, match="compile mode"):
        TrainConfig(compile="yes")


def test_short_runs_stay_eager(digits, monkeypatch):
    """The tests' (and users') small runs never pay a compile."""
    import dm_core.dsa
    import dm_core.engine
    import dm_core.train

    for module in (dm_core.engine, dm_core.train, dm_core.dsa):
        monkeypatch.setattr(module, "compiled", lambda *a: pytest.fail("compiled a short run"))
    condense_dm(digits, DMConfig(ipc=1, iterations=3, batch_real=8, model="convnet-w8"), classes=[0, 1],
                device="cpu", progress=False)
    condense_dsa(digits, DSAConfig(ipc=1, iterations=2, batch_real=8, model="convnet-w8", outer_loop=2,
                                   inner_loop=1), classes=[0, 1], device="cpu", progress=False)
    net = build_model("convnet-w8", 1, 10, (16, 16))
    train_model(net, digits.x_train[:64], digits.y_train[:64], TrainConfig(epochs=2, batch_size=32), device="cpu")


@pytest.mark.parametrize("mode", ["off", "on"])
def test_the_compile_flag_reaches_dm_herding_and_evaluate(mode, tmp_path, monkeypatch, capsys):
    """``--compile MODE`` is the mode every compile decision of the command is asked with."""
    import json

    import dm_core.engine
    import dm_core.train
    from dm_core.cli import main

    asked = []
    monkeypatch.setattr(dm_core.engine, "should_compile", lambda m, *a: asked.append(("dm", m)) or False)
    monkeypatch.setattr(dm_core.train, "compile_pays", lambda net, x, config, *a, **k:
                        asked.append(("train", config.compile)) or False)
    common = ["--dataset", "digits", "--ipc", "1", "--model", "convnet-d1-w4", "--device", "cpu", "--no-progress",
              "--compile", mode]
    assert main(["condense", "--method", "dm", "--iterations", "2", "--batch-real", "4", *common,
                 "--out", str(tmp_path / "dm.pt")]) == 0
    assert main(["condense", "--method", "herding", "--option", "epochs=1", *common,
                 "--out", str(tmp_path / "h.pt")]) == 0
    assert main(["evaluate", str(tmp_path / "dm.pt"), "--epochs", "1", "--repeats", "1", "--model", "convnet-d1-w4",
                 "--device", "cpu", "--no-progress", "--compile", mode]) == 0
    assert asked == [("dm", mode), ("train", mode), ("train", mode)]  # DM, herding's feature net, evaluate
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["compile"] == mode


# compiled = eager, up to rounding -----------------------------------------------------------------------------------

def needs_compiler(test):
    """A test that compiles: slow (tens of seconds of compiling), and only where torch.compile can run."""
    skip = pytest.mark.skipif(dm_compile.unavailable_reason(CPU) is not None, reason="torch.compile cannot run here")
    return pytest.mark.slow(skip(test))


@needs_compiler
def test_compiled_training_matches_eager_training(digits):
    x, y = digits.x_train[:96], digits.y_train[:96]
    nets, accuracies = {}, {}
    for mode in ("off", "on"):
        net = reinit_(build_model("convnet-d1-w4", 1, 10, (16, 16)), make_generator(0, CPU))
        nets[mode] = train_model(net, x, y, TrainConfig(epochs=15, batch_size=48, compile=mode), seed=0,
                                 device="cpu")
        accuracies[mode] = evaluate_accuracy(nets[mode], digits.x_test, digits.y_test, "cpu")
    assert accuracies["off"] > 0.3  # it learned something
    assert abs(accuracies["on"] - accuracies["off"]) <= 0.03
    for a, b in zip(nets["off"].parameters(), nets["on"].parameters()):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-2)


def test_dsa_compiles_its_inner_loop_where_it_pays(digits, monkeypatch):
    """DSA asks the cost model about its inner loop's training steps (not its matching step) with the FLOPs of the
    iterations ahead, and "off" never compiles."""
    import dm_core.dsa

    asked = []
    monkeypatch.setattr(dm_core.dsa, "should_compile", lambda mode, device, keys, flops: asked.append(
        (mode, [k[0] for k in keys], flops)) or False)
    config = dict(ipc=2, batch_real=8, model="convnet-w8", outer_loop=3, inner_loop=2)
    for iterations in (1, 2):
        condense_dsa(digits, DSAConfig(iterations=iterations, **config), classes=[0, 1], device="cpu",
                     progress=False)
    assert [(m, k) for m, k, _ in asked] == [("auto", ["train"]), ("auto", ["train"])]
    assert asked[1][2] == 2 * asked[0][2] > 0  # twice the iterations, twice the work
    with pytest.raises(DMError, match="compile mode"):
        DSAConfig(compile="yes")


@needs_compiler
def test_compiled_dsa_matches_eager_dsa(digits):
    config = dict(ipc=2, iterations=2, batch_real=8, model="convnet-d1-w4", outer_loop=2, inner_loop=2, seed=0)
    eager = condense_dsa(digits, DSAConfig(**config, compile="off"), classes=[0, 1, 2], device="cpu", progress=False)
    fast = condense_dsa(digits, DSAConfig(**config, compile="on"), classes=[0, 1, 2], device="cpu", progress=False)
    torch.testing.assert_close(fast.images, eager.images, atol=1e-4, rtol=1e-4)


@needs_compiler
def test_compiled_dm_matches_eager_dm(digits):
    config = dict(ipc=2, iterations=3, batch_real=8, model="convnet-d1-w4", seed=0)
    eager = condense_dm(digits, DMConfig(**config, compile="off"), classes=[0, 1, 2], device="cpu", progress=False)
    fast = condense_dm(digits, DMConfig(**config, compile="on"), classes=[0, 1, 2], device="cpu", progress=False)
    torch.testing.assert_close(fast.images, eager.images, atol=1e-4, rtol=1e-4)
