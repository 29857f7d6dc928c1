"""continual.CondensedMemory and GDumbMemoryPlugin inside Avalanche experiments that continual.run does not build.

Benchmarks come from Avalanche's own generators (nc_benchmark, class_incremental_benchmark, benchmark_from_datasets,
SplitMNIST when MNIST is present) over the offline digits; the strategies are Avalanche's (Naive + ReplayPlugin,
ER_ACE, Naive + GDumbMemoryPlugin). The first three tests are the combinations that failed before (a collate error,
"no attribute 'targets_task_labels'", "expected 3, got 2").
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from dm_core import DMError, TrainConfig, load_dataset

TINY_NET = "convnet-d1-w8-relu-instancenorm-avgpool"
OPTIONS = {"random": {}, "herding": {"epochs": 1, "model": TINY_NET},
           "dm": {"iterations": 3, "batch_real": 8, "model": TINY_NET},
           "dsa": {"iterations": 1, "outer_loop": 2, "inner_loop": 1, "batch_real": 8, "model": TINY_NET}}


@pytest.fixture(scope="module")
def small_digits():
    """Digits with 30 training and 10 test images per class (fast to condense and to train on)."""
    data = load_dataset("digits")

    def first(y, n):
        return torch.cat([torch.nonzero(y == c).flatten()[:n] for c in range(10)]).sort().values

    train, test = first(data.y_train, 30), first(data.y_test, 10)
    return data.x_train[train], data.y_train[train], data.x_test[test], data.y_test[test]


def nc(cl, small_digits, task_labels=False, **kwargs):
    from avalanche.benchmarks import nc_benchmark

    x, y, xt, yt = small_digits
    return nc_benchmark(cl.benchmark.TensorImages(x, y), cl.benchmark.TensorImages(xt, yt), n_experiences=5,
                        task_labels=task_labels, seed=0, **kwargs)


def tiny_model():
    from dm_core import build_model

    return build_model(TINY_NET, 1, 10, (16, 16))


class Batches:
    """An Avalanche plugin that records the labels (and task labels) of every training mini-batch."""

    def __new__(cls):
        from avalanche.core import SupervisedPlugin

        class _Spy(SupervisedPlugin):
            def __init__(self):
                super().__init__()
                self.labels, self.tasks, self.buffer_labels = [], [], []

            def before_training_exp(self, strategy, **kwargs):
                self.labels.append([])
                self.buffer_labels.append([])

            def after_training_iteration(self, strategy, **kwargs):
                self.labels[-1] += strategy.mb_y.tolist()
                self.tasks += strategy.mb_task_id.tolist()
                if getattr(strategy, "mb_buffer_y", None) is not None:
                    self.buffer_labels[-1] += strategy.mb_buffer_y.tolist()

        return _Spy()


def naive(model, plugins, epochs=1):
    from avalanche.training import Naive

    return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), train_mb_size=16,
                 train_epochs=epochs, eval_mb_size=256, device="cpu", plugins=plugins, evaluator=None)


@pytest.mark.parametrize("method", ["random", "herding", "dm"])
def test_replay_plugin_trains_on_stream_plus_memory(cl, small_digits, method):
    """Was: 'each element in list of batch should be of equal size' (memory samples without task labels)."""
    from avalanche.training.plugins import ReplayPlugin

    benchmark = nc(cl, small_digits)
    memory = cl.CondensedMemory(method, ipc=2, num_classes=10, device="cpu", **OPTIONS[method])
    spy = Batches()
    strategy = naive(tiny_model(), [ReplayPlugin(mem_size=memory.max_size, storage_policy=memory), spy])
    first, second = benchmark.train_stream[0], benchmark.train_stream[1]
    strategy.train(first)  # the memory is filled after the experience (ReplayPlugin.after_training_exp)
    assert sorted(memory.tensors()[1].tolist()) == sorted(list(first.classes_in_this_experience) * 2)
    strategy.train(second)
    old, new = set(first.classes_in_this_experience), set(second.classes_in_this_experience)
    assert set(spy.labels[1]) == old | new  # replayed memory samples are in the batches
    assert sum(label in old for label in spy.labels[1]) >= 2 * len(old)
    assert set(spy.tasks) == {0} and memory.buffer[0][2] == 0 and len(memory.buffer[0]) == 3


def test_gdumb_memory_plugin_on_nc_benchmark(cl, small_digits):
    """Was: "'ClassificationDataset' object has no attribute 'targets_task_labels'"."""
    benchmark = nc(cl, small_digits)
    memory = cl.CondensedMemory("random", ipc=2, device="cpu")
    spy = Batches()
    strategy = naive(tiny_model(), [cl.GDumbMemoryPlugin(memory, seed=0), spy], epochs=2)
    seen = set()
    for t, experience in enumerate(benchmark.train_stream[:3]):
        strategy.train(experience)
        seen |= set(experience.classes_in_this_experience)
        assert sorted(spy.labels[t]) == sorted(list(seen) * 2 * 2)  # 2 epochs over 2 images per seen class, only
    assert memory.max_size == 2 * len(seen)  # no num_classes: the budget grows with the classes held


def test_er_ace_with_the_memory_as_its_storage_policy(cl, small_digits):
    """Was: 'not enough values to unpack (expected 3, got 2)' in ER_ACE's replay loader."""
    from avalanche.training import ER_ACE

    benchmark = nc(cl, small_digits)
    model = tiny_model()
    spy = Batches()
    strategy = ER_ACE(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), mem_size=20,
                      batch_size_mem=4, train_mb_size=16, train_epochs=1, device="cpu", plugins=[spy], evaluator=None)
    strategy.storage_policy = cl.CondensedMemory("dm", ipc=2, num_classes=10, device="cpu", **OPTIONS["dm"])
    for experience in benchmark.train_stream[:2]:
        strategy.train(experience)
    first = set(benchmark.train_stream[0].classes_in_this_experience)
    assert spy.buffer_labels[0] == [] and spy.buffer_labels[1]  # replay from the second experience on
    assert set(spy.buffer_labels[1]) <= first | set(benchmark.train_stream[1].classes_in_this_experience)
    assert set(spy.buffer_labels[1]) & first


def test_class_incremental_benchmark_of_a_users_dataset(cl, small_digits):
    """A stream built by class_incremental_benchmark from a plain dataset, memory made without any dm_core data."""
    from avalanche.benchmarks.scenarios import class_incremental_benchmark
    from torch.utils.data import TensorDataset

    x, y, xt, yt = small_digits
    pixels = x * 0.3 + 0.5  # "un-normalised" images in the user's own scale
    train, test = TensorDataset(pixels, y), TensorDataset(xt * 0.3 + 0.5, yt)
    train.targets, test.targets = y.tolist(), yt.tolist()
    benchmark = class_incremental_benchmark({"train": train, "test": test}, class_order=list(range(10)),
                                            num_experiences=5)
    memory = cl.CondensedMemory("dm", ipc=3, device="cpu", **OPTIONS["dm"])
    memory.post_adapt(None, benchmark.train_stream[0])
    images, labels = memory.tensors()
    assert images.shape == (6, 1, 16, 16) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    first = pixels[torch.isin(y, torch.tensor([0, 1]))]
    assert memory.mean[0] == pytest.approx(first.mean().item(), rel=1e-4)  # measured on the first experience
    assert memory.std[0] == pytest.approx(first.std().item(), rel=1e-3)
    assert images.min() >= first.min() - 0.5 and images.max() <= first.max() + 0.5  # in the stream's own scale
    # the builder worked on unit-scale images
    assert memory.memories[(0, 0)].images.std().item() == pytest.approx(1.0, abs=0.6)


def test_task_incremental_stream_keeps_a_budget_per_task_and_class(cl, small_digits):
    benchmark = nc(cl, small_digits, task_labels=True, class_ids_from_zero_in_each_exp=True)
    memory = cl.CondensedMemory("random", ipc=2, device="cpu")
    for experience in benchmark.train_stream[:3]:
        memory.post_adapt(None, experience)
    assert sorted(memory.memories) == [(t, c) for t in range(3) for c in (0, 1)]
    assert memory.task_labels().tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert [memory.buffer[i][2] for i in (0, 4, 8)] == [0, 1, 2]


def returning_benchmark(cl, small_digits, per_class_second=None):
    """Experience 0: classes 0, 1 (even-indexed images); experience 1: classes 1, 2 (class 1's odd images)."""
    from avalanche.benchmarks.scenarios import benchmark_from_datasets

    x, y, _, _ = small_digits

    def part(classes, parity):
        idx = torch.cat([torch.nonzero(y == c).flatten()[parity::2] for c in classes])
        return cl.as_avalanche(x[idx], y[idx], torch.zeros(len(idx), dtype=torch.long))

    return benchmark_from_datasets(train=[part([0, 1], 0), part([1, 2], 1)])


@pytest.mark.parametrize("method", ["random", "herding", "dm", "dsa"])
def test_a_returning_class_is_updated_within_its_budget(cl, small_digits, method):
    benchmark = returning_benchmark(cl, small_digits)
    memory = cl.CondensedMemory(method, ipc=3, seed=1, device="cpu", **OPTIONS[method])
    memory.post_adapt(None, benchmark.train_stream[0])
    before = {k: v.images.clone() for k, v in memory.memories.items()}
    before_images, before_labels = memory.tensors()
    memory.post_adapt(None, benchmark.train_stream[1])
    images, labels = memory.tensors()
    assert torch.bincount(labels).tolist() == [3, 3, 3]
    assert torch.equal(memory.memories[(0, 0)].images, before[(0, 0)])  # not in the experience: untouched
    assert not torch.equal(memory.memories[(0, 1)].images, before[(0, 1)])  # returning: updated
    assert memory.memories[(0, 1)].meta["returning_classes"] == [1]
    if method in ("random", "herding"):  # reselected from the memory plus the new images
        x, y, _, _ = small_digits
        pool = torch.cat([before_images[before_labels == 1], x[y == 1][1::2]])  # in the stream's space
        picked = images[labels == 1]
        assert all(any(torch.allclose(image, p, atol=1e-5) for p in pool) for image in picked)


def test_dm_continues_from_the_memory_images(cl, small_digits, monkeypatch):
    """DM's update of a returning class starts from its memory images (``initial``) and draws its real batches from
    the class's new images only."""
    import continual.builder

    benchmark = returning_benchmark(cl, small_digits)
    memory = cl.CondensedMemory("dm", ipc=3, device="cpu", iterations=1, model=TINY_NET)
    memory.post_adapt(None, benchmark.train_stream[0])
    before = memory.memories[(0, 1)].images.clone()
    calls = []
    real = continual.builder.make_set
    monkeypatch.setattr("continual.builder.make_set", lambda method, data, ipc, classes, **kw: calls.append(
        (classes, data.y_train[torch.isin(data.y_train, torch.tensor(classes))].tolist(), kw.get("initial")))
        or real(method, data, ipc, classes, **kw))
    memory.post_adapt(None, benchmark.train_stream[1])
    (new, new_labels, new_start), (back, back_labels, back_start) = calls
    assert (new, new_labels, new_start) == ([2], [2] * 15, None)  # new class 2 from real init
    assert (back, back_labels) == ([1], [1] * 15) and torch.equal(back_start, before)  # 1 continued from its memory


def test_memory_checks_its_arguments_before_any_work(cl):
    with pytest.raises(DMError, match="unknown option.*bogus"):
        cl.CondensedMemory("dm", ipc=2, bogus=1)
    with pytest.raises(DMError, match="unknown memory method"):
        cl.CondensedMemory("gdumb", ipc=2)
    with pytest.raises(DMError, match="unknown option.*iterations for random"):
        cl.CondensedMemory("random", ipc=2, iterations=3)
    with pytest.raises(DMError):
        cl.CondensedMemory("dm", ipc=2, iterations=-1)
    with pytest.raises(DMError, match="ipc"):
        cl.CondensedMemory("dm", ipc=0)


class OddNet(nn.Module):
    """Layers dm_core never builds (Conv1d, PReLU, BatchNorm1d) and buffers of its own, one non-persistent."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 5)
        self.act = nn.PReLU(4)
        self.norm = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 10)
        self.register_buffer("calls", torch.zeros(()))
        self.register_buffer("scratch", torch.zeros(3), persistent=False)

    def forward(self, x):
        if self.training:
            self.calls += 1
            self.scratch += torch.arange(3.0)
        return self.head(self.norm(self.act(self.conv(x.flatten(1).unsqueeze(1)))).mean(-1))


def tensors_of(model):
    return {n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]}


@pytest.mark.parametrize("own_trainer", [False, True])
def test_reset_restores_every_parameter_and_buffer(cl, small_digits, own_trainer):
    """Before every experience the model is back at its initial values: parameters and buffers of layers dm_core
    never builds, a non-persistent buffer, and no optimiser momentum left over."""
    from avalanche.core import SupervisedPlugin

    starts = []  # (tensors, optimiser state entries) as training of an experience begins

    class AtStart(SupervisedPlugin):
        def before_training_epoch(self, strategy, **kwargs):
            if strategy.clock.train_exp_epochs == 0:
                starts.append((tensors_of(strategy.model), len(strategy.optimizer.state)))

    model = OddNet()
    initial = tensors_of(model)
    assert set(initial) == {"conv.weight", "conv.bias", "act.weight", "norm.weight", "norm.bias", "head.weight",
                            "head.bias", "calls", "scratch", "norm.running_mean", "norm.running_var",
                            "norm.num_batches_tracked"}
    memory = cl.CondensedMemory("random", ipc=2, device="cpu")
    config = TrainConfig(epochs=2, augment="none") if own_trainer else None
    plugin = cl.GDumbMemoryPlugin(memory, seed=0, train_config=config)
    strategy = naive(model, [plugin, AtStart()], epochs=0 if own_trainer else 1)
    strategy.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for t, experience in enumerate(nc(cl, small_digits).train_stream[:3]):
        strategy.train(experience)
        start, momentum_entries = starts[t]
        assert [n for n in initial if not torch.equal(start[n], initial[n])] == []
        assert momentum_entries == 0
        trained = tensors_of(strategy.model)
        changed = {n for n in initial if not torch.equal(trained[n], initial[n])}
        assert changed >= {"conv.weight", "act.weight", "head.weight", "calls", "scratch", "norm.running_mean"}
    assert len(starts) == 3


def test_restore_copies_a_grown_model(cl):
    small, grown = nn.Linear(3, 2), nn.Linear(3, 4)
    assert cl.restore_(grown, small) is not grown and torch.equal(cl.restore_(grown, small).weight, small.weight)
    other = nn.Linear(3, 2)
    assert cl.restore_(other, small) is other and torch.equal(other.weight, small.weight)


@pytest.mark.skipif(not (Path(os.environ.get("DM_DATA_ROOT", "/work/shared/data")) / "MNIST" / "raw").is_dir(),
                    reason="MNIST not present")
def test_split_mnist_fills_the_memory(cl):
    from avalanche.benchmarks.classic import SplitMNIST

    benchmark = SplitMNIST(5, seed=0, dataset_root=os.environ.get("DM_DATA_ROOT", "/work/shared/data"))
    memory = cl.CondensedMemory("random", ipc=4)
    experience = benchmark.train_stream[0]
    memory.post_adapt(None, experience)
    images, labels = memory.tensors()
    assert images.shape == (8, 1, 28, 28) and sorted(set(labels.tolist())) == sorted(
        experience.classes_in_this_experience)
    assert memory.mean[0] == pytest.approx(0.0, abs=0.15) and memory.std[0] == pytest.approx(1.0, abs=0.15)
    assert len(memory.buffer[0]) == 3  # (x, y, t) as SplitMNIST's samples


def test_a_model_that_grows_is_reset_too(cl, small_digits):
    """An Avalanche IncrementalClassifier grows with the classes: the reset gives a copy of the initial values,
    grown the same way, and the strategy trains that copy."""
    from avalanche.core import SupervisedPlugin
    from avalanche.models import IncrementalClassifier

    heads = []

    class AtStart(SupervisedPlugin):
        def before_training_epoch(self, strategy, **kwargs):
            heads.append(strategy.model[1].classifier.weight.detach().clone())

    model = nn.Sequential(nn.Flatten(), IncrementalClassifier(256, initial_out_features=2))
    initial = model[1].classifier.weight.detach().clone()
    memory = cl.CondensedMemory("random", ipc=2, device="cpu")
    strategy = naive(model, [cl.GDumbMemoryPlugin(memory), AtStart()], epochs=1)
    benchmark = nc(cl, small_digits)
    for experience in benchmark.train_stream[:3]:
        strategy.train(experience)
    top = [max(max(e.classes_in_this_experience) for e in benchmark.train_stream[:t + 1]) + 1 for t in range(3)]
    assert [len(h) for h in heads] == [max(2, n) for n in top]  # the head grew with the classes
    assert all(torch.equal(h[:2], initial) for h in heads)  # the first units start from their initial values
    assert torch.equal(heads[2][:len(heads[1])], heads[1])  # units added earlier start where they started before
