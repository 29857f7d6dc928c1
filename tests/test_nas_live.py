"""A live ``--execution local --concurrency 2`` search: NNI's manager, trial subprocesses, a crash, a resume.

The command runs inside a network namespace of its own (``unshare --net``, only ``lo`` up), so the NNI manager, which
binds every interface, is reachable from nothing outside the test and no packet leaves the machine. The manager is
killed (SIGKILL) once two repeats are recorded; the command must stop with one ``error:`` line, its trial
processes must die with the manager, and re-running the same command must finish the search with exactly the rows
that the in-process sequential search records with the same seeds: none lost, none trained twice.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from nas.results import read_records
from nas.search import SearchConfig, run_search

SPACE = "depth=1;width=32;act=relu;norm=none,instancenorm,batchnorm;pool=avgpool"  # 3 architectures
ARGS = dict(dataset="digits", space=SPACE, proxy="random5", epochs=2, repeats=2, device="cpu")


def _netns_prefix() -> list[str] | None:
    """``unshare`` arguments that give a private network namespace here (root: --net; else a user namespace)."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    for prefix in (["unshare", "--net"], ["unshare", "--map-root-user", "--net"]):
        probe = subprocess.run([*prefix, "sh", "-c", "ip link set lo up"], capture_output=True)
        if probe.returncode == 0:
            return prefix
    return None


NETNS = _netns_prefix()
pytestmark = pytest.mark.skipif(NETNS is None, reason="no network namespace can be made here (unshare --net)")


def _start(out: Path, home: Path) -> subprocess.Popen:
    flags = " ".join(f"--{k.replace('_', '-')} '{v}'" for k, v in ARGS.items())
    command = (f"ip link set lo up && exec {sys.executable} -m nas.search {flags} --out {out} --no-progress "
               f"--execution local --concurrency 2 --port 18080")
    env = {**os.environ, "HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    return subprocess.Popen([*NETNS, "sh", "-c", command], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[1])


def _manager(process: subprocess.Popen) -> psutil.Process | None:
    for child in psutil.Process(process.pid).children(recursive=True):
        if any("nni_node" in part for part in child.cmdline()):
            return child
    return None


def _wait_for_rows(path: Path, process: subprocess.Popen, rows: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if path.is_file() and len(read_records(path)) >= rows:
            return
        time.sleep(0.2)
    raise AssertionError(f"no row in {path} after {timeout} s (exit {process.poll()})")


def test_local_execution_live_killed_and_resumed(tmp_path):
    torch.set_num_threads(1)
    reference = read_records(run_search(SearchConfig(**ARGS, out=str(tmp_path / "seq"), progress=False)).results)
    out, home = tmp_path / "live", tmp_path / "home"
    home.mkdir()

    first = _start(out, home)
    try:
        _wait_for_rows(out / "results.csv", first, rows=2, timeout=240)
        manager = _manager(first)
        assert manager is not None, "the NNI manager is not running"
        trials = manager.children(recursive=True)
        before = {r.key: r for r in read_records(out / "results.csv")}
        manager.send_signal(signal.SIGKILL)
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "NNI manager stopped answering" in errors[0], err
    assert "Traceback" not in err
    gone, alive = psutil.wait_procs(trials, timeout=10)
    assert not alive, f"trial processes outlived the manager: {alive}"
    after_crash = {r.key: r for r in read_records(out / "results.csv")}
    assert 2 <= len(after_crash) < len(reference)

    resumed = _start(out, home)
    stdout, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err
    last = json.loads(stdout.strip().splitlines()[-1])
    assert (last["proxy"], last["architectures_ranked"]) == ("random5", 3)
    rows = read_records(out / "results.csv")
    keys = [r.key for r in rows]
    assert len(keys) == len(set(keys)) == len(reference)  # nothing lost, nothing twice
    assert all(rows_by_key == after_crash[k] for k, rows_by_key in {r.key: r for r in rows}.items()
               if k in after_crash)  # what was recorded before the crash was not trained again
    assert before.keys() <= after_crash.keys()
    strip = lambda rs: sorted((r.arch, r.repeat, r.seed, r.val_acc, r.test_acc) for r in rs)  # noqa: E731
    assert strip(rows) == strip(reference)  # trial subprocesses give the sequential mode's results
