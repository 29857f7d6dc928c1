"""Issue 21: a continual-learning researcher's own Avalanche scripts with a CondensedMemory, item by item.

Every test is written the way such a user writes it: their own benchmark (Avalanche's generators over a
``TensorDataset``), their own strategy and plugin, and the memory in the place of Avalanche's ``ClassBalancedBuffer``.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dm_core import DMError, load_dataset

warnings.filterwarnings("ignore", category=DeprecationWarning)
TINY = {"iterations": 2, "batch_real": 4, "model": "convnet-d1-w8-relu-instancenorm-avgpool"}


@pytest.fixture(scope="module")
def digits_tensors():
    """30 training and 10 test images per class of the offline digits, as a user holds them: plain tensors."""
    data = load_dataset("digits")

    def first(y, n):
        return torch.cat([torch.nonzero(y == c).flatten()[:n] for c in range(10)]).sort().values

    train, test = first(data.y_train, 30), first(data.y_test, 10)
    return data.x_train[train], data.y_train[train], data.x_test[test], data.y_test[test]


def tensor_benchmark(digits_tensors, experiences=5):
    """class_incremental_benchmark over TensorDatasets: samples (x, 0-d tensor label, task label)."""
    from avalanche.benchmarks.scenarios import class_incremental_benchmark

    x, y, xt, yt = digits_tensors
    train, test = TensorDataset(x, y), TensorDataset(xt, yt)
    train.targets, test.targets = y.tolist(), yt.tolist()
    return class_incremental_benchmark({"train": train, "test": test}, class_order=list(range(10)),
                                       num_experiences=experiences)


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 10))


def naive(model, plugins, epochs=1, mb=16):
    from avalanche.training import Naive

    return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), train_mb_size=mb,
                 train_epochs=epochs, eval_mb_size=64, device="cpu", plugins=plugins, evaluator=None)


# 1 ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["random", "dm"])
def test_1_replay_on_a_stream_whose_labels_are_tensors(cl, digits_tensors, method):
    """Was: TypeError: expected Tensor as element 32 in argument 0, but got int (the memory yielded int labels)."""
    from avalanche.training.plugins import ReplayPlugin

    benchmark = tensor_benchmark(digits_tensors)
    memory = cl.CondensedMemory(method, ipc=2, total_num_classes=10, device="cpu", **(TINY if method == "dm" else {}))
    strategy = naive(mlp(), [ReplayPlugin(mem_size=memory.max_size, storage_policy=memory)])
    for experience in benchmark.train_stream[:3]:
        strategy.train(experience)
    x, label, task = memory.buffer[0]
    assert isinstance(label, torch.Tensor) and label.dim() == 0 and task == 0  # as the stream's samples
    assert sorted(memory.classes()) == list(range(6))


def test_1_ni_benchmark_over_tensor_datasets(cl, digits_tensors):
    from avalanche.benchmarks import ni_benchmark
    from avalanche.training.plugins import ReplayPlugin

    x, y, xt, yt = digits_tensors
    train, test = TensorDataset(x, y), TensorDataset(xt, yt)
    train.targets, test.targets = y.tolist(), yt.tolist()
    benchmark = ni_benchmark(train, test, n_experiences=3, seed=0)
    memory = cl.CondensedMemory("random", ipc=2, device="cpu")
    strategy = naive(mlp(), [ReplayPlugin(mem_size=memory.max_size, storage_policy=memory)])
    for experience in benchmark.train_stream:
        strategy.train(experience)
    assert len(memory.buffer) == 20 and memory.max_size == 20  # every class seen in every experience, 2 each


# 2 ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["random", "dm"])
def test_2_an_online_stream_keeps_what_there_is_and_condenses_as_it_grows(cl, digits_tensors, method):
    """Was: DMError: ipc 5 is more than the 2 training images of class 1 (split_online_stream, 10 images each)."""
    from avalanche.benchmarks.scenarios.online import split_online_stream
    from avalanche.training.plugins import ReplayPlugin

    benchmark = tensor_benchmark(digits_tensors)
    online = split_online_stream(benchmark.train_stream[:1], experience_size=10, shuffle=True, seed=0)
    memory = cl.CondensedMemory(method, ipc=5, device="cpu", **(TINY if method == "dm" else {}))
    strategy = naive(mlp(), [ReplayPlugin(mem_size=memory.max_size, storage_policy=memory)], mb=10)
    seen = {0: 0, 1: 0}
    for experience in online:
        strategy.train(experience)
        for label in experience.dataset.targets:
            seen[int(label)] += 1
        counts = torch.bincount(memory.tensors()[1], minlength=2).tolist()
        assert counts[:2] == [min(5, seen[0]), min(5, seen[1])]  # all of a small class, ipc once it has more
    assert memory.memories[(0, 0)].meta.get("method") == method  # condensed once it grew past ipc


# 3 ----------------------------------------------------------------------------------------------------------------
def test_3_er_ace_on_a_stream_without_task_labels(cl, digits_tensors):
    """Was: ValueError: not enough values to unpack (expected 3, got 2): the memory's samples always carry a task
    label, as Avalanche's subsets do."""
    from avalanche.benchmarks.scenarios import benchmark_from_datasets
    from avalanche.benchmarks.utils import DataAttribute
    from avalanche.benchmarks.utils.classification_dataset import ClassificationDataset
    from avalanche.training import ER_ACE

    x, y, _, _ = digits_tensors

    def plain(classes):  # an Avalanche dataset without task labels: samples (x, y)
        keep = torch.isin(y, torch.tensor(classes))
        base = cl.benchmark.TensorImages(x[keep], y[keep])
        return ClassificationDataset([base], data_attributes=[DataAttribute(base.targets, "targets")])

    benchmark = benchmark_from_datasets(train=[plain([0, 1]), plain([2, 3])])
    assert len(benchmark.train_stream[0].dataset[0]) == 2
    model = mlp()
    strategy = ER_ACE(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), mem_size=40,
                      batch_size_mem=4, train_mb_size=16, train_epochs=1, device="cpu", evaluator=None)
    strategy.storage_policy = cl.CondensedMemory("random", ipc=5, device="cpu")
    for experience in benchmark.train_stream:
        strategy.train(experience)
    assert len(strategy.storage_policy.buffer[0]) == 3 and sorted(strategy.storage_policy.classes()) == [0, 1, 2, 3]


# 4 ----------------------------------------------------------------------------------------------------------------
def test_4_er_aml_with_the_memory(cl, digits_tensors):
    """Was: AttributeError: 'CondensedMemory' object has no attribute 'buffer_groups'."""
    from avalanche.training import ER_AML

    benchmark = tensor_benchmark(digits_tensors)
    model = mlp()
    strategy = ER_AML(model=model, feature_extractor=model[:3], optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                      mem_size=40, batch_size_mem=4, train_mb_size=4, train_epochs=1, device="cpu", evaluator=None)
    strategy.storage_policy = cl.CondensedMemory("random", ipc=4, device="cpu")
    for experience in benchmark.train_stream[:3]:
        strategy.train(experience)
    groups = strategy.storage_policy.buffer_groups
    assert sorted(groups) == list(range(6)) and all(len(g.buffer) == 4 for g in groups.values())


def test_4_mir_plugin_with_the_memory(cl, digits_tensors):
    from avalanche.training.plugins import MIRPlugin

    benchmark = tensor_benchmark(digits_tensors)
    mir = MIRPlugin(batch_size_mem=4, mem_size=40, subsample=8)
    mir.storage_policy = cl.CondensedMemory("random", ipc=4, device="cpu")
    strategy = naive(mlp(), [mir])
    for experience in benchmark.train_stream[:3]:
        strategy.train(experience)
    assert sorted(mir.storage_policy.classes()) == list(range(6)) and mir.replay_loader is not None


def test_4_supervised_contrastive_replay_reads_one_class_per_buffer_dataset(cl, digits_tensors):
    """SCR's class means read ``buffer_datasets``: one class per dataset, ``(x, y, t)`` from its eval view."""
    from torch.utils.data import DataLoader

    memory = cl.CondensedMemory("random", ipc=3, device="cpu")
    for experience in tensor_benchmark(digits_tensors).train_stream[:2]:
        memory.post_adapt(None, experience)
    for dataset in memory.buffer_datasets:
        (x, y, t), = list(DataLoader(dataset.eval(), batch_size=64))
        assert len(set(y.tolist())) == 1 and len(y) == 3 and t.tolist() == [0] * 3


def test_4_balanced_buffer_semantics_under_avalanche_names(cl, digits_tensors):
    """max_size / adaptive_size / total_num_classes as ClassBalancedBuffer takes them; ipc the DM way; resize
    shrinks; an empty memory is an empty dataset; max_size is never below what the memory holds."""
    from avalanche.benchmarks import nc_benchmark

    stream = tensor_benchmark(digits_tensors).train_stream
    empty = cl.CondensedMemory("random", max_size=20, device="cpu")
    assert len(empty.buffer) == 0 and empty.buffer_datasets == [] and empty.max_size == 20
    adaptive = cl.CondensedMemory("random", max_size=20, adaptive_size=True, device="cpu")
    adaptive.post_adapt(None, stream[0])
    assert torch.bincount(adaptive.tensors()[1]).tolist() == [10, 10]  # 20 over the 2 classes seen
    adaptive.post_adapt(None, stream[1])
    assert torch.bincount(adaptive.tensors()[1]).tolist() == [5] * 4  # the held classes made room
    adaptive.resize(None, 8)
    assert torch.bincount(adaptive.tensors()[1]).tolist() == [2] * 4 and adaptive.max_size == 8
    fixed = cl.CondensedMemory("random", max_size=20, adaptive_size=False, total_num_classes=10, device="cpu")
    fixed.post_adapt(None, stream[0])
    assert torch.bincount(fixed.tensors()[1]).tolist() == [2, 2] and fixed.max_size == 20
    with pytest.raises(DMError, match="total_num_classes"):
        cl.CondensedMemory("random", max_size=20, adaptive_size=False)
    with pytest.raises(DMError, match="not both"):
        cl.CondensedMemory("random", ipc=2, max_size=20)
    x, y, xt, yt = digits_tensors
    tasks = nc_benchmark(TensorDataset(x, y), TensorDataset(xt, yt), n_experiences=5, task_labels=True, seed=0,
                         class_ids_from_zero_in_each_exp=True)
    restarting = cl.CondensedMemory("random", ipc=2, total_num_classes=2, device="cpu")
    for experience in tasks.train_stream[:3]:
        restarting.post_adapt(None, experience)
    assert len(restarting.buffer) == 12 and restarting.max_size == 12  # classes 0, 1 in three tasks


# 5 ----------------------------------------------------------------------------------------------------------------
def test_5_one_memory_fed_by_two_benchmarks_keeps_both(cl, digits_tensors):
    """Was: classes 0-3 instead of 0-7 (experiences remembered by stream name and number: both "train", 0..)."""
    from avalanche.benchmarks.scenarios import class_incremental_benchmark

    x, y, xt, yt = digits_tensors

    def benchmark(classes):
        keep, keep_t = torch.isin(y, torch.tensor(classes)), torch.isin(yt, torch.tensor(classes))
        train, test = TensorDataset(x[keep], y[keep]), TensorDataset(xt[keep_t], yt[keep_t])
        train.targets, test.targets = y[keep].tolist(), yt[keep_t].tolist()
        return class_incremental_benchmark({"train": train, "test": test}, class_order=classes, num_experiences=2)

    memory = cl.CondensedMemory("random", ipc=2, device="cpu")
    for b in (benchmark([0, 1, 2, 3]), benchmark([4, 5, 6, 7])):
        for experience in b.train_stream:
            memory.post_adapt(None, experience)
            memory.post_adapt(None, experience)  # offered twice, taken in once
    assert sorted(memory.classes()) == list(range(8)) and len(memory.buffer) == 16


# 6 ----------------------------------------------------------------------------------------------------------------
def test_6_a_cache_folder_is_keyed_by_method_options_and_data(cl, digits_tensors, tmp_path):
    """Was: a dm memory pointed at a folder written by a random memory returned the random images."""
    stream = tensor_benchmark(digits_tensors).train_stream
    random_memory = cl.CondensedMemory("random", ipc=2, device="cpu", cache_dir=tmp_path)
    random_memory.post_adapt(None, stream[0])
    dm_memory = cl.CondensedMemory("dm", ipc=2, device="cpu", cache_dir=tmp_path, **TINY)
    dm_memory.post_adapt(None, stream[0])
    assert dm_memory.memories[(0, 0)].meta["method"] == "dm"
    assert not torch.equal(dm_memory.tensors()[0], random_memory.tensors()[0])
    other = cl.CondensedMemory("dm", ipc=2, device="cpu", cache_dir=tmp_path, **{**TINY, "iterations": 3})
    other.post_adapt(None, stream[0])
    assert other.memories[(0, 0)].meta["iterations"] == 3
    again = cl.CondensedMemory("dm", ipc=2, device="cpu", cache_dir=tmp_path, **TINY)
    again.post_adapt(None, stream[0])  # the same recipe and data: read back, identical
    assert torch.equal(again.tensors()[0], dm_memory.tensors()[0])
    assert len(list(tmp_path.glob("step00-*.pt"))) == 3


# 8 ----------------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
@pytest.mark.parametrize("method", ["random", "herding", "dm"])
def test_8_a_cuda_memory_without_cuda_is_refused_when_made(cl, method):
    """Was: accepted, then failing after the first experience trained (dm), or silently on the CPU (random)."""
    with pytest.raises(DMError, match="CUDA is not available here") as refused:
        cl.CondensedMemory(method, ipc=2, device="cuda")
    assert "--device" not in str(refused.value)
    with pytest.raises(DMError, match="unsupported device 'gpu'"):
        cl.CondensedMemory(method, ipc=2, device="gpu")


# 7 ----------------------------------------------------------------------------------------------------------------
def test_7_gdumb_with_the_fast_trainer_on_a_multi_head_model_inside_avalanches_loop(cl, digits_tensors, tmp_path):
    """Was: MTSimpleMLP.forward() missing task_labels, and a training no metric or logger saw. The paper's trainer
    now runs in Avalanche's loop: a multi-head model gets its task labels, the epoch metrics and the CSV logger see
    every epoch and its loss, and evaluation losses are real."""
    import csv

    from avalanche.benchmarks import nc_benchmark
    from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
    from avalanche.logging import CSVLogger
    from avalanche.models import MTSimpleMLP
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    from dm_core import TrainConfig

    x, y, xt, yt = digits_tensors
    benchmark = nc_benchmark(TensorDataset(x, y), TensorDataset(xt, yt), n_experiences=5, task_labels=True, seed=0)
    model = MTSimpleMLP(input_size=256, hidden_size=32)
    memory = cl.CondensedMemory("random", ipc=3, device="cpu")
    logs = tmp_path / "logs"
    evaluator = EvaluationPlugin(accuracy_metrics(epoch=True, stream=True), loss_metrics(epoch=True, stream=True),
                                 loggers=[CSVLogger(log_folder=str(logs))])
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), train_epochs=0,
                     train_mb_size=16, eval_mb_size=64, device="cpu", evaluator=evaluator,
                     plugins=[cl.GDumbMemoryPlugin(memory, train_config=TrainConfig(epochs=4, augment="none"))])
    for experience in benchmark.train_stream[:2]:
        strategy.train(experience)
        metrics = strategy.eval(benchmark.test_stream[:2])
    losses = [v for k, v in metrics.items() if k.startswith("Loss_Stream/eval_phase/test_stream")]
    assert losses and all(v > 0 for v in losses)
    with open(logs / "training_results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # every epoch of both experiences: epochs=4 is the reference's passes 0..4
    assert len(rows) == 2 * 5 and all(float(r["training_loss"]) > 0 for r in rows)


def test_7_compiling_inside_avalanches_loop_is_refused_with_what_to_use(cl):
    from dm_core import TrainConfig

    with pytest.raises(DMError, match="compile='auto'"):
        cl.GDumbMemoryPlugin(cl.CondensedMemory("random", ipc=2, device="cpu"),
                             train_config=TrainConfig(compile="on"))


@pytest.mark.slow
def test_7_continual_run_takes_the_interactive_logger_and_writes_training_rows(tmp_path, capsys):
    import csv

    from continual.run import main

    out = tmp_path / "run"
    argv = ["--dataset", "digits", "--steps", "2", "--memory", "random", "--ipc", "2", "--seeds", "0", "--repeats",
            "1", "--epochs", "3", "--model", TINY["model"], "--max-train-per-class", "20", "--device", "cpu",
            "--logger", "interactive,csv", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    logs = out / "logs" / "csv" / "random" / "seed0" / "repeat0"
    with open(logs / "training_results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 4 and all(float(r["training_loss"]) > 0 for r in rows)  # --epochs 3: passes 0..3
    with open(logs / "eval_results.csv", newline="") as f:
        assert all(float(r["eval_loss"]) > 0 for r in csv.DictReader(f))


# 9 ----------------------------------------------------------------------------------------------------------------
def replay_strategy(cl, memory):
    from avalanche.training.plugins import ReplayPlugin

    torch.manual_seed(0)
    model = mlp()
    return naive(model, [ReplayPlugin(mem_size=memory.max_size, storage_policy=memory)])


@pytest.mark.parametrize("method", ["random", "dm"])
def test_9_a_users_strategy_resumes_bit_for_bit_from_a_checkpoint(cl, digits_tensors, tmp_path, method):
    """Train three experiences at once; or two, checkpoint, rebuild everything, resume, train the third: the same
    weights and the same memory, to the bit (the replay DataLoader shuffles from torch's global RNG)."""
    from continual.checkpoint import load_checkpoint, save_checkpoint

    options = TINY if method == "dm" else {}
    stream = tensor_benchmark(digits_tensors).train_stream
    memory = cl.CondensedMemory(method, ipc=2, total_num_classes=10, device="cpu", **options)
    straight = replay_strategy(cl, memory)
    for experience in stream[:3]:
        straight.train(experience)

    path = tmp_path / "run.ckpt"
    first = cl.CondensedMemory(method, ipc=2, total_num_classes=10, device="cpu", **options)
    stopped = replay_strategy(cl, first)
    for t, experience in enumerate(stream[:2]):
        stopped.train(experience)
        save_checkpoint(path, stopped, first, experiences_done=t + 1)
    torch.manual_seed(12345)  # a new process: other random states

    fresh = cl.CondensedMemory(method, ipc=2, total_num_classes=10, device="cpu", **options)
    resumed = replay_strategy(cl, fresh)
    done = load_checkpoint(path, resumed, fresh)
    assert done == 2
    for experience in stream[done:3]:
        resumed.train(experience)
    assert all(torch.equal(a, b) for a, b in zip(straight.model.state_dict().values(),
                                                  resumed.model.state_dict().values()))
    assert torch.equal(fresh.tensors()[0], memory.tensors()[0])
    assert load_checkpoint(tmp_path / "none.ckpt", resumed, fresh) == 0
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(DMError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "bad.ckpt", resumed, fresh)


def test_9_gdumb_plugin_state_is_checkpointed(cl, digits_tensors, tmp_path):
    """GDumbMemoryPlugin's initial model goes with the checkpoint: the resumed run resets to the same values."""
    from continual.checkpoint import load_checkpoint, save_checkpoint
    from dm_core import TrainConfig

    stream = tensor_benchmark(digits_tensors).train_stream

    def build():
        memory = cl.CondensedMemory("random", ipc=2, device="cpu")
        torch.manual_seed(0)
        model = mlp()
        plugin = cl.GDumbMemoryPlugin(memory, seed=3, train_config=TrainConfig(epochs=2))
        return memory, naive(model, [plugin], epochs=0)

    memory, straight = build()
    for experience in stream[:3]:
        straight.train(experience)
    memory, stopped = build()
    for experience in stream[:2]:
        stopped.train(experience)
    save_checkpoint(tmp_path / "g.ckpt", stopped, memory)
    fresh, resumed = build()
    with torch.no_grad():
        for p in resumed.model.parameters():
            p.add_(1.0)  # the rebuilt model starts elsewhere: the checkpoint's initial values must win
    assert load_checkpoint(tmp_path / "g.ckpt", resumed, fresh) == 2
    resumed.train(stream[2])
    assert all(torch.equal(a, b) for a, b in zip(straight.model.state_dict().values(),
                                                  resumed.model.state_dict().values()))
