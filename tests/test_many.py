"""Many trainings at once (``dm_core.many``) give what the same trainings one after another give: bit for bit in
worker processes, up to float rounding when stacked; the number of workers changes nothing; a failing worker is one
DMError; Ctrl-C leaves no process behind. Timings live in benchmarks/speed.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from dm_core import DMError, TrainConfig, evaluate_accuracy, evaluate_set, make_set, train_model
from dm_core.many import JobResult, TrainJob, build_network, resolve_workers, run_job, train_many

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
QUICK = TrainConfig(epochs=4, batch_size=24, augment="color_crop_cutout_scale_rotate", compile="off")


def jobs_on(digits, seeds=(0, 1, 2), model="convnet-w8", config=QUICK, n=60, **extra) -> list[TrainJob]:
    x, y = digits.x_train[:n], digits.y_train[:n]
    return [TrainJob(model, x, y, config, seed=s, tests=((digits.x_test, digits.y_test),), num_classes=10,
                     keep_model=True, **extra) for s in seeds]


def assert_same_weights(a: JobResult, b: JobResult, atol: float = 0.0) -> None:
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        if atol == 0:
            assert torch.equal(p, q), name
        else:
            torch.testing.assert_close(p, q, atol=atol, rtol=atol * 10, msg=name)


# the sequential path is today's train_and_test ------------------------------------------------------------------

def test_a_job_is_train_model_then_evaluate_accuracy(digits):
    job = jobs_on(digits, seeds=(3,))[0]
    net = train_model(build_network(job, CPU), job.x, job.y, job.config, seed=3, device="cpu")
    expected = evaluate_accuracy(net, digits.x_test, digits.y_test, "cpu")
    result = run_job(job, "cpu")
    assert result.accuracies == [expected]
    assert_same_weights(result, JobResult(model=net))


def test_the_evaluation_batch_does_not_change_the_accuracy(digits):
    """The CPU's default batch (128) gives what the old default (1024) gave."""
    net = run_job(jobs_on(digits, seeds=(0,))[0], "cpu").model
    accuracies = {b: evaluate_accuracy(net, digits.x_test, digits.y_test, "cpu", batch_size=b) for b in (None, 128,
                                                                                                       1024, 7)}
    assert len(set(accuracies.values())) == 1 and accuracies[None] > 0.2


# stacked networks: the same draws, equal up to rounding -------------------------------------------------------------

@pytest.fixture
def float64():
    """Float64 networks and data: the stacked and sequential paths then agree to 1e-12, which shows they compute the
    same function of the same draws. (In float32 a network whose instance norm meets a nearly constant channel can
    turn the batched convolution's rounding into 1e-4 within a few steps; float64 shrinks that below any doubt.)"""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


@pytest.mark.parametrize("case", ["batch groups", "sample groups", "batchnorm", "own data each", "no augmentation",
                                  "learning-rate drop"])
def test_stacked_training_is_sequential_training(digits, case, float64):
    config, model = QUICK, "convnet-w8"
    if case == "sample groups":
        config = TrainConfig(epochs=4, batch_size=24, augment_groups="sample", compile="off")
    if case == "batchnorm":
        model = "convnetbn-w8"
    if case == "no augmentation":
        config = TrainConfig(epochs=4, batch_size=24, augment="none", compile="off")
    if case == "learning-rate drop":
        config = TrainConfig(iterations=7, batch_size=24, compile="off")
    x, y = digits.x_train.double(), digits.y_train
    tests = ((digits.x_test.double(), digits.y_test),)
    jobs = [TrainJob(model, x[:60], y[:60], config, seed=s, tests=tests, num_classes=10, keep_model=True)
            for s in range(3)]
    if case == "own data each":  # each network its own (same-shaped) set
        jobs = [TrainJob(model, x[60 * i:60 * (i + 1)], y[60 * i:60 * (i + 1)], config, seed=i, tests=tests,
                         num_classes=10, keep_model=True) for i in range(3)]
    one_by_one = train_many(jobs, "cpu", workers=1)
    stacked = train_many(jobs, "cpu", mode="stacked")
    for a, b in zip(one_by_one, stacked):
        assert_same_weights(a, b, atol=1e-12)
        assert a.accuracies == b.accuracies


def test_stacked_float32_training_reaches_the_same_accuracy(digits):
    one_by_one = train_many(jobs_on(digits), "cpu", workers=1)
    stacked = train_many(jobs_on(digits), "cpu", mode="stacked")
    for a, b in zip(one_by_one, stacked):
        assert_same_weights(a, b, atol=1e-3)
        assert abs(a.accuracies[0] - b.accuracies[0]) <= 0.01


def test_stacking_groups_architectures_and_keeps_the_job_order(digits, float64):
    """Jobs of another architecture (or a lone one) run in sequence; results come back in job order; curves come
    with them."""
    digits = replace(digits, x_train=digits.x_train.double(), x_test=digits.x_test.double())
    jobs = jobs_on(digits, seeds=(0, 1), curve_every=2) + jobs_on(digits, seeds=(2,), model="convnet-d1-w4",
                                                                  curve_every=2)
    jobs = [jobs[0], jobs[2], jobs[1]]
    one_by_one = train_many(jobs, "cpu", workers=1)
    stacked = train_many(jobs, "cpu", mode="stacked")
    for a, b in zip(one_by_one, stacked):
        assert_same_weights(a, b, atol=1e-12)
        assert a.curve == b.curve and [e for e, _ in a.curve] == [2, 4, 5]  # and the last
    assert type(stacked[1].model.features[0]) is nn.Conv2d and stacked[1].model.features[0].out_channels == 4


@pytest.mark.parametrize("cores, local_world, expected", [(1, 1, 1), (2, 1, 1), (3, 1, 1), (4, 1, 4), (16, 1, 16),
                                                        (16, 4, 4), (6, 2, 1)])
def test_auto_takes_worker_processes_from_four_cores(monkeypatch, cores, local_world, expected):
    """On fewer cores one process with all its threads trained faster than one-thread processes (measured on 2)."""
    import dm_core.many as many

    monkeypatch.setattr(many, "available_cores", lambda: cores)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
    assert resolve_workers("auto", CPU) == expected
    assert many.choose_mode(5, CPU, expected) == ("processes" if expected > 1 else "sequential")
    assert resolve_workers(2, CPU) == 2  # asked for: always as asked


def test_workers_are_checked_and_resolved():
    assert resolve_workers(3, CPU) == 3 and resolve_workers("2", CPU) == 2 and resolve_workers("auto", CPU) >= 1
    for bad in (0, -1, "many", 1.5, True):
        with pytest.raises(DMError, match="workers must be auto"):
            resolve_workers(bad, CPU)
    with pytest.raises(DMError, match="unknown mode"):
        train_many([], "cpu", mode="threads")
    with pytest.raises(DMError, match="unknown model"):
        TrainJob("resnet50", torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(DMError, match="curve_every needs"):
        TrainJob("convnet-w8", torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), curve_every=1)
    with pytest.raises(DMError, match="on_point hears a curve"):
        run_job(TrainJob("convnet-w8", torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)), "cpu",
                on_point=print)


def test_workers_reach_evaluate_from_the_command_line(tmp_path, monkeypatch, capsys):
    import dm_core.many
    from dm_core.cli import main

    asked = []
    real = dm_core.many.train_many

    def spy(jobs, device, workers, **kw):
        asked.append(workers)
        return real(jobs, device, 1, **kw)

    monkeypatch.setattr(dm_core.many, "train_many", spy)
    assert main(["condense", "--dataset", "digits", "--method", "random", "--ipc", "1", "--out", str(tmp_path / "r.pt"),
                 "--no-progress"]) == 0
    common = [str(tmp_path / "r.pt"), "--epochs", "1", "--repeats", "2", "--model", "convnet-d1-w4", "--device", "cpu",
              "--no-progress"]
    assert main(["evaluate", *common]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["workers"] == "auto"
    assert main(["evaluate", *common, "--workers", "3"]) == 0
    assert asked == ["auto", 3]
    with pytest.raises(SystemExit):
        main(["evaluate", *common, "--workers", "0"])
    assert "expected auto or a whole number" in capsys.readouterr().err


# worker processes: bit for bit, whatever their number ------------------------------------------------------------

@pytest.mark.slow
def test_worker_processes_reproduce_one_thread_sequential_training_bit_for_bit(digits, one_thread):
    jobs = jobs_on(digits, seeds=(0, 1, 2, 3, 4))
    one_by_one = train_many(jobs, "cpu", workers=1)
    for workers in (2, 3):
        parallel = train_many(jobs, "cpu", workers=workers, mode="processes")
        assert [r.accuracies for r in parallel] == [r.accuracies for r in one_by_one]
        for a, b in zip(one_by_one, parallel):
            assert_same_weights(a, b)


@pytest.mark.slow
def test_evaluate_set_does_not_depend_on_workers(digits, one_thread):
    synset = make_set("random", digits, 3, seed=0, device="cpu", progress=False)
    config = TrainConfig(epochs=3, batch_size=16)
    runs = {w: evaluate_set(synset, digits, "convnet-d1-w8", 4, config, seed=5, device="cpu", progress=False,
                            workers=w).accuracies for w in (1, 2, 3)}
    assert runs[1] == runs[2] == runs[3]


class Exploding(nn.Module):
    """Fine on the 2-image probe that checks one's own network, fails on a training batch."""

    def __init__(self, how: str = "raise"):
        super().__init__()
        self.how = how
        self.fc = nn.Linear(256, 10)

    def forward(self, x):
        if len(x) > 2:
            if self.how == "exit":
                os._exit(3)
            raise ValueError("boom in a training batch")
        return self.fc(x.flatten(1))


@pytest.mark.slow
def test_a_failing_worker_ends_the_call_with_one_dmerror(digits):
    x, y = digits.x_train[:40], digits.y_train[:40]
    good = TrainJob("convnet-d1-w4", x, y, TrainConfig(epochs=1, batch_size=20), seed=0, num_classes=10)
    with pytest.raises(DMError, match=r"job 2 of 2 failed in a worker process \(ValueError: boom in a training batch"):
        train_many([good, TrainJob(Exploding(), x, y, TrainConfig(epochs=1, batch_size=20), num_classes=10)], "cpu",
                   workers=2, mode="processes")
    with pytest.raises(DMError, match=r"died \(exit code 3\)"):
        train_many([TrainJob(Exploding("exit"), x, y, TrainConfig(epochs=1, batch_size=20), num_classes=10), good],
                   "cpu", workers=2, mode="processes")
    # a DMError inside a worker keeps its own words
    bad = TrainJob("convnet-d4-w4", x[:, :, :2, :2], y, TrainConfig(epochs=1, batch_size=20), num_classes=10)
    with pytest.raises(DMError, match="pools 2x2 images below 1x1"):
        train_many([good, bad], "cpu", workers=2, mode="processes")


class Unpicklable(torch.Tensor):
    """A tensor whose contents refuse to be pickled: a probe that pickled the data would fail on it."""

    def __reduce_ex__(self, protocol):
        raise AssertionError("the data was pickled")


class MadeHere:  # defined in a test module, i.e. somewhere a worker would import
    pass


def test_the_main_module_probe_reads_structure_not_data(monkeypatch):
    import functools

    from dm_core import many
    data = torch.zeros(4, 3).as_subclass(Unpicklable)
    assert not many._refers_to_main(functools.partial(print, data, {"x": data}))
    monkeypatch.setattr(MadeHere, "__module__", "__main__")  # as if the user's script defined it
    monkeypatch.setattr(sys.modules["__main__"], "MadeHere", MadeHere, raising=False)
    assert many._refers_to_main(functools.partial(print, data, MadeHere()))
    assert many._pickling([TrainJob(nn.Linear(3, 2), data, torch.zeros(4, dtype=torch.long))]) == (None, False)


UNGUARDED = """
import torch
from dm_core import TrainConfig
from dm_core.many import TrainJob, train_many

with open("runs.txt", "a") as f:  # work a worker must not repeat
    f.write("ran\\n")
x, y = torch.randn(32, 1, 8, 8), torch.arange(32) % 4
jobs = [TrainJob("convnet-d1-w4", x, y, TrainConfig(epochs=2, batch_size=16), seed=s, num_classes=4) for s in range(2)]
print(len(train_many(jobs, "cpu", workers=2, mode="processes")))
"""


@pytest.mark.slow
def test_a_script_without_a_main_guard_is_not_rerun_by_the_workers(tmp_path):
    (tmp_path / "script.py").write_text(UNGUARDED)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2"] and (tmp_path / "runs.txt").read_text() == "ran\n"


# Ctrl-C and a killed parent leave no process behind ------------------------------------------------------------

SCRIPT = """
import torch
from dm_core import TrainConfig
from dm_core.many import TrainJob, train_many

if __name__ == "__main__":
    x, y = torch.randn(64, 1, 16, 16), torch.arange(64) % 4
    config = TrainConfig(epochs=10 ** 6, batch_size=32, augment="none", compile="off")
    train_many([TrainJob("convnet-d1-w4", x, y, config, seed=s, num_classes=4) for s in range(2)], "cpu", workers=2,
               mode="processes")
"""


def processes_in(folder: Path) -> list[int]:
    """Pids of the processes working in ``folder`` (the parent, the forkserver, the workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")) == folder:
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def wait_for(condition, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="finds processes through /proc")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["int", "term", "kill"])
def test_stopping_the_parent_leaves_no_worker_behind(tmp_path, signum):
    (tmp_path / "script.py").write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "script.py"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        # the parent, the forkserver and two workers
        assert wait_for(lambda: len(processes_in(tmp_path)) >= 4, 120), "the workers never started"
        time.sleep(1)
        proc.send_signal(signum)
        proc.wait(60)
        assert wait_for(lambda: not processes_in(tmp_path), 30), f"left behind: {processes_in(tmp_path)}"
    finally:
        for pid in processes_in(tmp_path):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode != 0


@pytest.mark.slow
def test_ctrl_c_in_evaluate_with_workers_is_one_line_and_no_orphan(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "dm_core", "condense", "--dataset", "digits", "--method", "random", "--ipc",
                    "1", "--out", "r.pt", "--no-progress"], check=True, cwd=tmp_path, env=env, capture_output=True,
                   timeout=300)
    proc = subprocess.Popen([sys.executable, "-m", "dm_core", "evaluate", "r.pt", "--epochs", "1000000", "--repeats",
                             "2", "--workers", "2", "--model", "convnet-d1-w4", "--device", "cpu", "--no-progress"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: len(processes_in(tmp_path)) >= 4, 120), "the workers never started"
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert wait_for(lambda: not processes_in(tmp_path), 30), f"left behind: {processes_in(tmp_path)}"
    finally:
        for pid in processes_in(tmp_path):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("interrupted") and "nothing was saved" in lines[-1] and out == ""


# the prepared GPU check runs (on the CPU here) ---------------------------------------------------------------------

@pytest.mark.slow
def test_the_gpu_check_runs_on_the_cpu(tmp_path):
    """``gpu_check.py --smoke`` runs its checks' code on the CPU (where the CPU-drawn draws are the CPU's own, so
    every difference is zero); ``gpu_check.sh`` parses."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--smoke", "--out",
                           str(tmp_path), "--only", "dm_same_draws", "training_same_draws", "many_stacked"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "checks.json").read_text())
    assert set(report["checks"]) == {"dm_same_draws", "training_same_draws", "many_stacked"}
    assert report["checks"]["dm_same_draws"]["images_relative_difference"] == 0
    assert report["checks"]["training_same_draws"]["fp64_weights_relative_difference"] == 0
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")]).returncode == 0


PREPARE = """
import os, signal, sys, time
from multiprocessing import forkserver
from dm_core import prepare_workers
prepare_workers(int(sys.argv[1]), "cpu", sys.argv[2])
pid = forkserver._forkserver._forkserver_pid
if pid is None:
    print("none")
    raise SystemExit
os.kill(pid, signal.SIGINT)  # a Ctrl-C while the server still imports torch: ignored, no traceback
time.sleep(1.0)
print("alive" if os.waitpid(pid, os.WNOHANG) == (0, 0) else "dead")
"""


@pytest.mark.parametrize("jobs, workers, expected", [(5, "2", "alive"), (5, "1", "none"), (1, "2", "none")])
def test_prepare_workers_starts_the_server_only_for_worker_processes(jobs, workers, expected):
    done = subprocess.run([sys.executable, "-c", PREPARE, str(jobs), workers], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [expected]
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr
