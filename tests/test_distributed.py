"""torchrun: 2 CPU processes with gloo give the one-process set and the one-process accuracies.

Each launch runs in a network namespace of its own (``unshare --net`` with only the loopback interface up), so the
rendezvous store and gloo's connections cannot be reached from, or reach, anything outside this machine. Where
``unshare`` is not allowed the launch falls back to 127.0.0.1 and GLOO_SOCKET_IFNAME=lo.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow  # every test launches torchrun

ROOT = Path(__file__).resolve().parents[1]
SMALL_DM = ["condense", "--dataset", "digits", "--method", "dm", "--ipc", "2", "--iterations", "12", "--batch-real",
            "16", "--model", "convnet-w16", "--device", "cpu", "--no-progress"]


def _namespace_works() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "--net", "ip", "link", "set", "lo", "up"], capture_output=True)
    return probe.returncode == 0


NAMESPACE = _namespace_works()


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
            "DM_DIST_TIMEOUT": "120"}


def in_namespace(command: list[str]) -> list[str]:
    """``command`` in a network namespace of its own with only loopback up (as it is where unshare is refused)."""
    return ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command] if NAMESPACE else command


def launch(nproc: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
           "127.0.0.1", "--master-port", "29531", "-m", "dm_core", *args]
    return subprocess.run(in_namespace(run), cwd=cwd, env=env(), capture_output=True, text=True, timeout=600)


def single(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dm_core", *args], cwd=cwd, env=env(), capture_output=True,
                          text=True, timeout=600)


def last_json(proc) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_one_process_result(method_args: list[str], tmp_path: Path, tolerance: float) -> dict:
    """2 processes give the one-process set, loss history and final loss, and leave no checkpoint behind."""
    one = single(method_args + ["--out", "one.pt"], tmp_path)
    assert one.returncode == 0, one.stderr
    two = launch(2, method_args + ["--out", "two.pt"], tmp_path)
    assert two.returncode == 0, two.stderr
    assert len(two.stdout.strip().splitlines()) == 1  # rank 0 alone reports
    a = torch.load(tmp_path / "one.pt", weights_only=True)
    b = torch.load(tmp_path / "two.pt", weights_only=True)
    assert (a["images"] - b["images"]).abs().max() <= tolerance
    assert torch.equal(a["labels"], b["labels"])
    assert b["meta"]["world_size"] == 2 and a["meta"]["world_size"] == 1 and last_json(two)["world_size"] == 2
    # the logged loss is the one-process loss (each rank holds its classes' part), not a multiple of it
    for (i, x), (j, y) in zip(a["meta"]["loss_history"], b["meta"]["loss_history"], strict=True):
        assert i == j and y == pytest.approx(x, rel=1e-4)
    assert last_json(two)["final_loss"] == pytest.approx(last_json(one)["final_loss"], rel=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.pt", "two.pt"]  # per-rank checkpoints removed
    return a


def test_sharded_condensation_and_evaluation_equal_one_process(tmp_path):
    assert_one_process_result(SMALL_DM, tmp_path, 1e-6)
    evaluate = ["evaluate", "one.pt", "--epochs", "3", "--repeats", "3", "--model", "convnet-d1-w8", "--device", "cpu",
                "--no-progress"]
    e1, e2 = single(evaluate, tmp_path), launch(2, evaluate, tmp_path)
    assert e1.returncode == 0 and e2.returncode == 0, e1.stderr + e2.stderr
    assert last_json(e1)["accuracies_percent"] == last_json(e2)["accuracies_percent"]
    assert last_json(e1)["mean_percent"] == last_json(e2)["mean_percent"]
    assert last_json(e1)["std_percent"] == last_json(e2)["std_percent"]


@pytest.mark.parametrize("method, options", [
    ("dsa", ["--option", "outer_loop=2", "--option", "inner_loop=1", "--option", "log_every=1"]),
    ("m3d", ["--option", "log_every=2"])])
def test_every_method_shards_to_the_one_process_set_and_loss(method, options, tmp_path):
    """DSA and the successors run in the same engine as DM: sharded over classes, same set, one-process loss."""
    args = ["condense", "--dataset", "digits", "--method", method, "--ipc", "2", "--iterations", "4",
            "--batch-real", "8", "--model", "convnet-w8", "--device", "cpu", "--no-progress", *options]
    synset = assert_one_process_result(args, tmp_path, 1e-5)
    assert synset["meta"]["method"] == method


def test_more_processes_than_classes_and_batchnorm_are_refused_on_rank_0(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "two.npz", x_train=rng.integers(0, 255, (8, 8, 8), dtype=np.uint8), y_train=np.arange(8) % 2,
             x_test=rng.integers(0, 255, (4, 8, 8), dtype=np.uint8), y_test=np.arange(4) % 2)
    args = ["condense", "--dataset", f"npz:{tmp_path / 'two.npz'}", "--method", "dm", "--ipc", "1", "--iterations",
            "2", "--batch-real", "2", "--model", "convnet-d1-w8", "--device", "cpu", "--out", "s.pt", "--no-progress"]
    many = launch(3, args, tmp_path)
    assert many.returncode != 0
    errors = [line for line in many.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: 3 processes for 2 classes (or models): start at most 2 processes"], many.stderr
    bn = launch(2, [a if a != "convnet-d1-w8" else "convnetbn-w8" for a in args], tmp_path)
    errors = [line for line in bn.stderr.splitlines() if line.startswith("error:")]
    assert bn.returncode != 0 and len(errors) == 1 and "BatchNorm" in errors[0], bn.stderr
    assert not (tmp_path / "s.pt").exists()


@pytest.mark.skipif(not NAMESPACE, reason="needs unshare --net (root) to prove the traffic stays inside")
def test_launch_has_no_interface_but_loopback(tmp_path):
    probe = subprocess.run(["unshare", "--net", "sh", "-c", "ip link set lo up && ip -o addr"], capture_output=True,
                           text=True)
    addresses = [line.split()[3] for line in probe.stdout.splitlines()]
    assert addresses and all(a.startswith(("127.", "::1")) for a in addresses)


def processes_in(folder: Path) -> list[Path]:
    """The /proc entries of every process working in ``folder`` (torchrun and its workers, which run in sessions of
    their own)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")) == folder:
                found.append(entry)
        except OSError:  # gone, or not ours to read
            pass
    return found


def worker_of_rank(folder: Path, rank: int) -> int:
    """The pid of the torchrun worker of ``rank`` working in ``folder`` (found by its RANK variable)."""
    for entry in processes_in(folder):
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"-m\0dm_core" in command:
            return int(entry.name)
    raise AssertionError(f"no worker of rank {rank} in {folder}")


def kill_everything_in(folder: Path) -> None:
    """SIGKILL every process working in ``folder``: the whole job dies at once."""
    import signal

    for entry in processes_in(folder):
        try:
            os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            pass


def long_condense(iterations: int) -> list[str]:
    """A DM condensation into s.pt that checkpoints every 20 iterations."""
    return ["condense", "--dataset", "digits", "--method", "dm", "--ipc", "1", "--iterations", str(iterations),
            "--batch-real", "4", "--model", "convnet-d1-w8", "--device", "cpu", "--option", "checkpoint_every=20",
            "--out", "s.pt", "--no-progress"]


def long_sharded_run(tmp_path: Path, args: list[str], port: int, **popen) -> tuple[list[str], subprocess.Popen]:
    """``args`` (a ``long_condense``) run by 2 ranks in ``tmp_path``, started and waited for until both ranks have
    written a checkpoint; (its torchrun command, the process)."""
    import time

    command = in_namespace([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                            "127.0.0.1", "--master-port", str(port), "-m", "dm_core", *args])
    proc = subprocess.Popen(command, cwd=tmp_path, env=env(), start_new_session=True, **popen)
    deadline = time.time() + 300
    while not all(p.exists() for p in rank_checkpoints(tmp_path)) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    return command, proc


def rank_checkpoints(folder: Path) -> list[Path]:
    return [folder / "s.rank0-of-2.ckpt", folder / "s.rank1-of-2.ckpt"]


def test_killed_sharded_run_resumes_from_per_rank_checkpoints(tmp_path):
    args = long_condense(800)
    command, proc = long_sharded_run(tmp_path, args, 29532, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ranks = rank_checkpoints(tmp_path)
    kill_everything_in(tmp_path)  # the whole job dies at once, as on a lost node
    proc.wait(60)
    assert all(p.exists() for p in ranks) and not (tmp_path / "s.pt").exists()
    resumed = subprocess.run(command, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and not any(p.exists() for p in ranks)
    straight = single(args[:-3] + ["--out", "straight.pt", "--no-progress"], tmp_path)
    assert straight.returncode == 0, straight.stderr
    a = torch.load(tmp_path / "s.pt", weights_only=True)["images"]
    b = torch.load(tmp_path / "straight.pt", weights_only=True)["images"]
    assert (a - b).abs().max() <= 1e-6


def test_a_dying_rank_ends_with_one_error_line_and_no_set(tmp_path):
    """A rank killed mid-run: rank 0 says so in one line (``error:`` when gloo notices first, ``stopped by
    SIGTERM:`` when torchrun's SIGTERM reaches it first), no set file appears, and the per-rank checkpoints stay for
    the rerun."""
    import signal

    _, proc = long_sharded_run(tmp_path, long_condense(3000), 29533, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    ranks = rank_checkpoints(tmp_path)
    os.kill(worker_of_rank(tmp_path, 1), signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    # one line from rank 0: gloo's error if it noticed first, else torchrun's SIGTERM
    errors = [line for line in err.splitlines() if line.startswith(("error:", "stopped by SIGTERM:"))]
    assert len(errors) == 1, err
    assert "failed or stopped answering" in errors[0] or "torchrun stops every process" in errors[0]
    assert not (tmp_path / "s.pt").exists() and all(p.exists() for p in ranks)


def test_a_group_that_never_forms_ends_with_one_error_line(tmp_path):
    """Rank 0 of 2 started alone (its peer's node never came up): after DM_DIST_TIMEOUT seconds, one ``error:`` line,
    exit status 2, and nothing written."""
    command = in_namespace([sys.executable, "-m", "dm_core", *SMALL_DM, "--out", "s.pt"])
    lonely = {**env(), "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": "29534", "DM_DIST_TIMEOUT": "3"}
    proc = subprocess.run(command, cwd=tmp_path, env=lonely, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]  # beside c10d's own warnings
    assert len(errors) == 1 and errors[0].startswith("error: could not join the process group"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
