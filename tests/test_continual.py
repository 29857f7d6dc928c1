"""continual/: memory, class order, model reset, resume and CLI errors, on small generated data (CPU, seconds)."""
from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dm_core import DMError, ImageDataset, TrainConfig, build_model, evaluate_accuracy

TINY_NET = "convnet-d1-w8-relu-instancenorm-avgpool"


def toy_data(num_classes: int = 6, per_class: int = 12, test_per_class: int = 5) -> ImageDataset:
    """Separable 8x8 grey images: class c is noise plus a bright pixel at position c."""
    g = torch.Generator().manual_seed(0)

    def split(n):
        y = torch.arange(num_classes).repeat_interleave(n)
        x = 0.3 * torch.randn(len(y), 1, 8, 8, generator=g)
        x.view(len(y), -1)[torch.arange(len(y)), y * 3] += 3.0
        return x, y

    x_tr, y_tr = split(per_class)
    x_te, y_te = split(test_per_class)
    return ImageDataset("toy", x_tr, y_tr, x_te, y_te, num_classes, (0.0,), (1.0,),
                        tuple(str(c) for c in range(num_classes)))


def config(cl, out: Path, **overrides):
    # workers=1: these tests watch the builders and the trainer in this process (tests/test_continual_workers.py
    # covers the worker processes)
    values = dict(out=out, dataset="digits", steps=2, methods=("random",), ipc=2, seeds=(0,), repeats=1, epochs=3,
                  model=TINY_NET, max_train_per_class=30, device="cpu", progress=False, workers=1)
    values.update(overrides)
    return cl.ContinualConfig(**values)


def test_class_order_is_the_seeded_numpy_permutation(cl):
    for seed in (0, 1, 4):
        np.random.seed(seed)
        expected = np.random.permutation(100).tolist()
        np.random.seed(12345)  # a different global state before the call must not matter
        assert cl.class_order(seed, 100) == expected
    assert cl.class_order(0, 10) == [2, 8, 4, 9, 1, 6, 7, 3, 0, 5]


def test_benchmark_follows_the_class_order_and_keeps_labels(cl):
    data = toy_data()
    order = cl.class_order(3, data.num_classes)
    benchmark = cl.make_benchmark(data, order, steps=3)
    for t, (train, test) in enumerate(zip(benchmark.train_stream, benchmark.test_stream)):
        chunk = order[2 * t:2 * t + 2]
        assert set(train.classes_in_this_experience) == set(chunk)
        labels = sorted(int(train.dataset[i][1]) for i in range(len(train.dataset)))
        assert labels == sorted(chunk * 12)  # original labels, every image of those classes
        assert len(test.dataset) == 2 * 5
    with pytest.raises(DMError, match="do not divide"):
        cl.make_benchmark(data, order, steps=4)


@pytest.mark.parametrize("method,options", [("random", {}), ("dm", {"iterations": 2, "batch_real": 4,
                                                                      "model": TINY_NET})])
def test_memory_holds_ipc_per_seen_class_and_keeps_old_classes(cl, method, options):
    data = toy_data()
    memory = cl.CondensedMemory(method, ipc=3, seed=1, device="cpu", num_classes=data.num_classes, **options)
    benchmark = cl.make_benchmark(data, cl.class_order(1, data.num_classes), steps=3)
    seen, snapshots = [], {}
    for experience in benchmark.train_stream:
        memory.post_adapt(None, experience)
        seen += sorted(experience.classes_in_this_experience)
        images, labels = memory.tensors()
        assert torch.bincount(labels, minlength=data.num_classes)[seen].tolist() == [3] * len(seen)
        assert set(labels.tolist()) == set(seen) and len(memory.buffer) == 3 * len(seen)
        assert memory.buffer[0][2] == 0 and memory.max_size == 3 * data.num_classes  # (x, y, t) like the stream
        for c, old in snapshots.items():  # older classes untouched by this step
            assert torch.equal(memory.memories[(0, c)].images, old)
        snapshots.update({c: memory.memories[(0, c)].images.clone() for c in experience.classes_in_this_experience})
        memory.post_adapt(None, experience)  # the same experience again changes nothing
        assert len(memory.tensors()[1]) == 3 * len(seen)


def test_each_step_builds_from_the_new_classes_only(cl, monkeypatch):
    data = toy_data()
    calls = []

    def spy(method, step_data, ipc, classes, **kwargs):
        calls.append((sorted(classes), sorted(set(step_data.y_train.tolist()))))
        keep = torch.cat([torch.nonzero(step_data.y_train == c).flatten()[:ipc] for c in classes])
        from dm_core import SyntheticSet
        return SyntheticSet(step_data.x_train[keep], step_data.y_train[keep], {})

    monkeypatch.setattr("continual.builder.make_set", spy)
    memory = cl.CondensedMemory("herding", ipc=2, device="cpu")
    for experience in cl.make_benchmark(data, cl.class_order(0, 6), steps=3).train_stream:
        memory.post_adapt(None, experience)
    order = cl.class_order(0, 6)
    assert calls == [(sorted(order[i:i + 2]), sorted(order[i:i + 2])) for i in (0, 2, 4)]


def make_strategy(cl, data, plugin, epochs=0):
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.logging import TextLogger
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    model = build_model(TINY_NET, data.channels, data.num_classes, data.image_size)
    return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), train_epochs=epochs,
                 train_mb_size=16, eval_mb_size=64, device="cpu", plugins=[plugin],
                 evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[TextLogger(io.StringIO())]))


def test_model_is_reset_to_its_initial_values_before_each_step_and_trained_on_the_memory(cl):
    """Avalanche's loop trains with the paper's recipe: every experience starts from the initial values, sees the
    whole memory (only) each epoch, and ends with the weights dm_core.train_model gives, bit for bit."""
    import copy

    from avalanche.core import SupervisedPlugin

    from dm_core import train_model

    class Spy(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.starts, self.labels, self.epochs = [], [], []

        def before_training_exp(self, strategy, **kwargs):
            self.labels.append([])
            self.epochs.append(0)

        def before_training_epoch(self, strategy, **kwargs):
            if strategy.clock.train_exp_epochs == 0:
                self.starts.append({k: v.clone() for k, v in strategy.model.state_dict().items()})

        def after_training_iteration(self, strategy, **kwargs):
            self.labels[-1] += strategy.mb_y.tolist()
            assert strategy.loss.item() > 0  # the loss Avalanche's metrics see

        def after_training_epoch(self, strategy, **kwargs):
            self.epochs[-1] += 1

    data = toy_data()
    memory = cl.CondensedMemory("random", ipc=2, seed=0)
    config = TrainConfig(epochs=3)
    plugin = cl.GDumbMemoryPlugin(memory, seed=7, train_config=config)
    strategy = make_strategy(cl, data, plugin)
    spy = Spy()
    strategy.plugins.append(spy)
    initial_model = copy.deepcopy(strategy.model)
    initial = {k: v.clone() for k, v in strategy.model.state_dict().items()}
    benchmark = cl.make_benchmark(data, cl.class_order(0, 6), steps=3)
    for t, experience in enumerate(benchmark.train_stream):
        strategy.train(experience)
        assert all(torch.equal(spy.starts[t][k], v) for k, v in initial.items())
        images, labels = memory.tensors()
        # the whole memory, only, for the recipe's passes: epochs 0..3 (TrainConfig's epochs=3 is the reference's 3)
        assert sorted(spy.labels[t]) == sorted(labels.tolist() * 4) and spy.epochs[t] == 4
        assert len(labels) == 2 * 2 * (t + 1)
        reference = train_model(copy.deepcopy(initial_model), images, labels, config, seed=cl.step_seed(7, t),
                                device="cpu")
        assert all(torch.equal(reference.state_dict()[k], v) for k, v in strategy.model.state_dict().items())
        assert not all(torch.equal(strategy.model.state_dict()[k], v) for k, v in initial.items())  # it trained
    assert strategy.train_epochs == 0  # the strategy's own epochs back after each experience


def test_stream_accuracy_is_the_accuracy_on_seen_classes(cl):
    data = toy_data()
    memory = cl.CondensedMemory("random", ipc=4, seed=0)
    plugin = cl.GDumbMemoryPlugin(memory, seed=0, train_config=TrainConfig(epochs=20, augment="none"))
    strategy = make_strategy(cl, data, plugin)
    benchmark = cl.make_benchmark(data, cl.class_order(2, 6), steps=3)
    for t, experience in enumerate(benchmark.train_stream):
        strategy.train(experience)
        avalanche = strategy.eval(benchmark.test_stream[:t + 1])[cl.experiment.STREAM_ACCURACY]
        ours = evaluate_accuracy(strategy.model, data.x_test, data.y_test, "cpu", classes=memory.classes())
        assert avalanche == pytest.approx(ours, abs=1e-12)


def test_plugin_refuses_to_train_twice(cl):
    data = toy_data()
    memory = cl.CondensedMemory("random", ipc=2)
    strategy = make_strategy(cl, data, cl.GDumbMemoryPlugin(memory, train_config=TrainConfig()), epochs=1)
    with pytest.raises(DMError, match="train_epochs=0"):
        strategy.train(cl.make_benchmark(data, list(range(6)), 3).train_stream[0])


def test_plugin_without_train_config_lets_the_strategy_train_on_the_memory(cl):
    from avalanche.core import SupervisedPlugin

    class SeenLabels(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.labels = []

        def after_training_iteration(self, strategy, **kwargs):
            self.labels += strategy.mb_y.tolist()

    data = toy_data()
    memory = cl.CondensedMemory("random", ipc=2)
    spy = SeenLabels()
    strategy = make_strategy(cl, data, cl.GDumbMemoryPlugin(memory), epochs=2)
    strategy.plugins.append(spy)
    strategy.train(cl.make_benchmark(data, list(range(6)), 3).train_stream[0])
    assert sorted(spy.labels) == [0] * 4 + [1] * 4  # 2 epochs over 2 images of each class, not the 24 real ones


def digits_test_labels():
    from dm_core import load_dataset

    return load_dataset("digits").y_test


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_writes_the_run_dir_and_resume_skips_finished_units(cl, tmp_path, monkeypatch):
    import continual.builder
    import continual.plugin

    out = tmp_path / "run"
    cfg = config(cl, out, methods=("random", "dm"), seeds=(0, 1), repeats=2, iterations=2,
                 method_options={"dm": {"batch_real": 8}})
    cl.run_continual(cfg)
    rows = read_rows(out / "results.csv")
    assert len(rows) == 2 * 2 * 2 * 2
    assert list(rows[0]) == list(cl.COLUMNS)
    assert {(r["method"], r["seed"], r["repeat"], r["step"]) for r in rows} == {
        (m, str(s), str(r), str(t)) for m in ("random", "dm") for s in (0, 1) for r in (0, 1) for t in range(2)}
    assert sorted({int(r["classes_seen"]) for r in rows}) == [5, 10]
    assert all(0.0 <= float(r["accuracy_fraction"]) <= 1.0 for r in rows)
    for r in rows:  # one accuracy per seen test experience; the stream's is their test-size-weighted mean
        per_experience = [float(a) for a in r["experience_accuracy_fraction"].split()]
        assert len(per_experience) == int(r["step"]) + 1 and r["precision"] == "fp32"
        assert r["augment"] == "color_crop_cutout_scale_rotate"  # the strategy in force: the digits' (no flip)
        order = cl.class_order(int(r["seed"]), 10)
        sizes = [int(torch.isin(digits_test_labels(), torch.tensor(order[5 * e:5 * e + 5])).sum())
                 for e in range(len(per_experience))]
        weighted = sum(a * n for a, n in zip(per_experience, sizes)) / sum(sizes)
        assert weighted == pytest.approx(float(r["accuracy_fraction"]), abs=2e-6)
    files = sorted(p.relative_to(out).as_posix() for p in (out / "memory").rglob("*.pt"))
    # each file named by its step and a digest of everything it is made of
    assert [re.sub(r"-[0-9a-f]{16}\.pt$", ".pt", f) for f in files] == [
        f"memory/{m}/seed{s}/step{t:02d}.pt" for m in ("dm", "random") for s in (0, 1) for t in range(2)]
    assert (out / "config.json").is_file() and "accuracy=" in (out / "log.txt").read_text()

    # Interrupt: drop the last two evaluation rows and dm seed 1's last memory file, then run again.
    kept = rows[:-2]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cl.COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
    (deleted,) = (out / "memory/dm/seed1").glob("step01-*.pt")
    deleted.unlink()
    built, trained = [], []
    real_make_set, real_batches = continual.builder.make_set, continual.plugin.ResidentBatches
    monkeypatch.setattr("continual.builder.make_set",
                        lambda method, data, ipc, classes, **kw: built.append((method, classes)) or
                        real_make_set(method, data, ipc, classes, **kw))
    monkeypatch.setattr("continual.plugin.ResidentBatches",
                        lambda *a, **kw: trained.append(1) or real_batches(*a, **kw))
    cl.run_continual(cfg)
    again = read_rows(out / "results.csv")
    assert again[:-2] == kept and len(again) == len(rows)
    assert [(r["method"], r["seed"], r["repeat"], r["step"]) for r in again[-2:]] == \
        [(r["method"], r["seed"], r["repeat"], r["step"]) for r in rows[-2:]]
    assert built == [("dm", sorted(cl.class_order(1, 10)[5:10]))]  # only the deleted memory unit
    assert len(trained) == 2  # only the two missing evaluation units


def test_run_dir_refuses_other_protocol_settings(cl, tmp_path):
    out = tmp_path / "run"
    cl.run_continual(config(cl, out, steps=2, ipc=1, epochs=1))
    with pytest.raises(DMError, match="ipc 1 -> 2"):
        cl.prepare(config(cl, out, steps=2, ipc=2, epochs=1))
    cl.prepare(config(cl, out, steps=2, ipc=1, epochs=1, methods=("dm",), seeds=(3,)))  # more units are fine


def test_a_run_directory_takes_new_methods_with_their_own_options(cl, tmp_path):
    """A second run of another method, with options of its own, goes into the same directory; a method keeps the
    options its rows were made with (or none, if it ran with its defaults)."""
    import json

    out = tmp_path / "run"
    dm = dict(methods=("dm",), method_options={"dm": {"batch_real": 8}})
    cl.run_continual(config(cl, out, epochs=1, iterations=1, **dm))
    cl.run_continual(config(cl, out, epochs=1, iterations=1, methods=("herding",),
                            method_options={"herding": {"epochs": 1}}))
    stored = json.loads((out / "config.json").read_text())
    assert stored["method_options"] == {"dm": {"batch_real": 8}, "herding": {"epochs": 1}}
    assert stored["methods"] == ["dm", "herding"]
    cl.prepare(config(cl, out, epochs=1, iterations=1, **{**dm, "seeds": (5,)}))  # dm again, same options: resumes
    with pytest.raises(DMError, match=r"dm options \{'batch_real': 8\} -> \{'batch_real': 4\}"):
        cl.prepare(config(cl, out, epochs=1, iterations=1, **{**dm, "method_options": {"dm": {"batch_real": 4}}}))
    with pytest.raises(DMError, match=r"herding options \{'epochs': 1\} -> \{\}"):
        cl.prepare(config(cl, out, epochs=1, iterations=1, methods=("herding",)))
    # random ran with its defaults (none) ...
    cl.run_continual(config(cl, out, epochs=1, iterations=1, methods=("random",)))
    stored = json.loads((out / "config.json").read_text())
    stored["method_options"].pop("herding")  # ... as did rows whose options an older config.json does not hold
    (out / "config.json").write_text(json.dumps(stored))
    with pytest.raises(DMError, match=r"herding options \{\} -> \{'epochs': 2\}"):
        cl.prepare(config(cl, out, epochs=1, iterations=1, methods=("herding",),
                          method_options={"herding": {"epochs": 2}}))


@pytest.mark.parametrize("argv,message", [
    (["--steps", "3"], "does not divide the 10 classes"),
    (["--ipc", "1000"], "ipc 1000 is more than"),
    (["--dataset", "npz:/no/such/file.npz"], "no array file"),
    (["--dataset", "nosuchdata"], "unknown dataset"),
    (["--option", "gdumb.lr=1"], "unknown method(s) gdumb"),
    (["--model", "nosuchnet"], "nosuchnet"),
    (["--repeats", "0"], "--repeats: must be at least 1"),
])
def test_cli_rejects_bad_input_with_one_line(cl, tmp_path, capsys, argv, message):
    from continual.run import main

    out = tmp_path / "never"
    from cli_harness import run_cli

    status, _, err = run_cli(main, ["--dataset", "digits", "--out", str(out), "--no-progress", *argv], capsys)
    assert status == 2
    if argv[0] == "--repeats":  # refused by argparse: its usage lines, then the one error line
        lines = err.strip().splitlines()
        assert lines[0].startswith("usage: ") and all(line.startswith(("usage:", " ")) for line in lines[:-1])
        assert "error: " in lines[-1] and message in lines[-1]
    else:
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not out.exists()  # no work started


def test_cli_rejects_unknown_memory_method(cl, capsys):
    from continual.run import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--memory", "gdumb"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_cli_runs_a_tiny_protocol(cl, tmp_path, capsys):
    from continual.run import main

    out = tmp_path / "cli"
    argv = ["--dataset", "digits", "--steps", "2", "--memory", "all", "--ipc", "1", "--seeds", "3", "--repeats", "1",
            "--epochs", "2", "--iterations", "1", "--model", TINY_NET, "--max-train-per-class", "20",
            "--option", "herding.epochs=1", "--option", "dm.batch_real=8", "--option", "dsa.batch_real=8",
            "--device", "cpu", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = read_rows(out / "results.csv")
    assert summary["rows"] == 8 and sorted(summary["final_accuracy_percent"]) == ["dm", "dsa", "herding", "random"]
    assert summary["final_accuracy_percent"]["random"] == pytest.approx(
        100 * float(next(r for r in rows if r["method"] == "random" and r["step"] == "1")["accuracy_fraction"]),
        abs=0.01)
    assert sorted({r["method"] for r in rows}) == ["dm", "dsa", "herding", "random"] and len(rows) == 8


def test_cli_compile_flag_reaches_the_training_and_the_builders(cl, tmp_path, monkeypatch):
    """``--compile off`` is the mode of the DM and herding builders (the training after every step runs in
    Avalanche's loop, not compiled); it is not a protocol setting, so a run directory resumes under another mode."""
    import dm_core.engine
    import dm_core.train
    from continual.run import main

    asked = []
    monkeypatch.setattr(dm_core.engine, "should_compile", lambda mode, *a: asked.append(("dm", mode)) or False)
    monkeypatch.setattr(dm_core.train, "compile_pays", lambda net, x, config, *a, **k:
                        asked.append(("train", config.compile)) or False)
    argv = ["--dataset", "digits", "--steps", "2", "--memory", "dm", "--ipc", "1", "--seeds", "3", "--repeats", "1",
            "--epochs", "1", "--iterations", "1", "--model", TINY_NET, "--max-train-per-class", "20",
            "--option", "dm.batch_real=8", "--device", "cpu", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main([*argv, "--compile", "off"]) == 0
    assert asked == [("dm", "off")] * 2  # per step: the memory; the training in Avalanche's loop asks nothing
    asked.clear()
    assert main([*argv, "--memory", "herding", "--option", "herding.epochs=1", "--compile", "on"]) == 0
    assert asked == [("train", "on")] * 2  # per step: herding's feature network
    assert {r["method"] for r in read_rows(tmp_path / "run" / "results.csv")} == {"dm", "herding"}


@pytest.mark.skipif(not (Path(os.environ.get("DM_DATA_ROOT", "/work/shared/data")) / "MNIST").is_dir(),
                    reason="MNIST not present")
def test_mnist_protocol_is_prepared(cl, tmp_path):
    cfg = config(cl, tmp_path / "m", dataset="mnist", data_root=os.environ.get("DM_DATA_ROOT", "/work/shared/data"),
                 steps=5, ipc=5, max_train_per_class=50)
    data = cl.prepare(cfg)
    assert data.num_classes == 10 and torch.bincount(data.y_train).tolist() == [50] * 10
    assert len(data.y_test) == 10_000


def test_loggers_are_avalanches_own(cl, tmp_path):
    from avalanche.logging import CSVLogger, TensorboardLogger, TextLogger

    import continual.experiment

    made = []
    real = continual.experiment.make_loggers

    def spy(names, out, unit, log_file):
        loggers = real(names, out, unit, log_file)
        made.append([type(logger) for logger in loggers])
        return loggers

    out = tmp_path / "logged"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("continual.experiment.make_loggers", spy)
        cl.run_continual(config(cl, out, loggers=("text", "csv", "tensorboard")))
    assert made == [[TextLogger, CSVLogger, TensorboardLogger]]
    unit = Path("random") / "seed0" / "repeat0"
    evaluations = read_rows(out / "logs" / "csv" / unit / "eval_results.csv")
    # after step 0: experience 0; after step 1: experiences 0 and 1, with Avalanche's per-experience accuracies
    assert [(r["eval_exp"], r["training_exp"]) for r in evaluations] == [("0", "0"), ("0", "1"), ("1", "1")]
    results = read_rows(out / "results.csv")
    last = [float(a) for a in results[-1]["experience_accuracy_fraction"].split()]
    assert [float(r["eval_accuracy"]) for r in evaluations[1:]] == pytest.approx(last, abs=1e-4)
    assert list((out / "logs" / "tensorboard" / unit).glob("events.out.tfevents.*"))
    assert "Top1_Acc_Stream/eval_phase/test_stream" in (out / "log.txt").read_text()
