"""Ctrl-C while a command is still importing torch ends it with one ``interrupted:`` line and status 130 (no import
traceback, nothing written); a program that imports dm_core keeps Python's own Ctrl-C."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dm_core

ROOT = Path(__file__).resolve().parents[1]

COMMANDS = {
    "dm_core": ["condense", "--dataset", "digits", "--method", "random", "--ipc", "1", "--out", "x.pt"],
    "continual.run": ["--dataset", "digits", "--steps", "5", "--memory", "random", "--ipc", "1", "--out", "x"],
    "nas.search": ["--dataset", "digits", "--proxy", "random1", "--space", "micro", "--out", "x"],
    "reports": ["nas", "x", "--out", "x"],
}


def torch_loading(pid: int) -> bool:
    """Whether the process has mapped torch's C++ library: it is importing torch (or past it)."""
    try:
        return "libtorch_cpu" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc to see torch loading (Linux)")
@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_ctrl_c_while_torch_loads_is_one_line(module, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", module, *COMMANDS[module]], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not torch_loading(proc.pid) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the command ended before torch loaded"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert proc.returncode == 130 and "Traceback" not in err.decode(), err.decode()
    assert len(lines) == 1 and lines[0].startswith("interrupted: "), err.decode()
    assert out == b"" and list(tmp_path.iterdir()) == []


def test_a_program_importing_dm_core_keeps_pythons_ctrl_c():
    assert dm_core.startup is not None  # imported, and under pytest (not a toolkit command) it armed nothing
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("module, armed", [("continual.run", True), ("reports.nas", True), ("dm_core.records", False),
                                           ("nni.tools", False), ("pytest", False)])
def test_only_the_toolkits_commands_are_armed(monkeypatch, module, armed):
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-m", module, "--help"])
    try:
        dm_core.startup.arm()
        assert (signal.getsignal(signal.SIGINT) is not signal.default_int_handler) == armed
    finally:
        dm_core.startup.disarm()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("body_status", [0, 2])
def test_ctrl_c_after_the_work_is_one_line_too(monkeypatch, capsys, body_status):
    """The shell's last moments (leaving torchrun's group, the JSON line): a Ctrl-C there is one line, no traceback;
    a command that already failed keeps its own status and line."""
    import argparse

    from dm_core import DMError, distributed, shell

    def body(args):
        if body_status:
            raise DMError("bad input")
        return {"done": True}

    def interrupted_leave(graceful):
        raise KeyboardInterrupt

    monkeypatch.setattr(distributed, "leave_group", interrupted_leave)
    status = shell.run_command(argparse.ArgumentParser(prog="x"), body, lambda args, exc: "kept", argv=[])
    err = capsys.readouterr().err.strip().splitlines()
    if body_status:
        assert status == 2 and err == ["error: bad input"]
    else:
        assert status == 130 and len(err) == 1 and err[0].startswith("interrupted: after the work was done")


EXIT = """
import atexit, sys, threading, time
from dm_core.shell import exit_process
atexit.register(lambda: open(sys.argv[1] + "/atexit", "w").write("ran"))
worker = threading.Thread(target=lambda: (time.sleep(0.3), open(sys.argv[1] + "/thread", "w").write("joined")))
worker.start()
print("unflushed", end="")
exit_process(3)
"""


def test_exit_process_joins_threads_runs_atexit_and_flushes(tmp_path):
    done = subprocess.run([sys.executable, "-c", EXIT, str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 3, done.stderr[-2000:]
    assert done.stdout == "unflushed"
    assert (tmp_path / "atexit").read_text() == "ran" and (tmp_path / "thread").read_text() == "joined"


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2])
def test_ctrl_c_while_a_finished_command_exits_is_silent(tmp_path, delay):
    """Once the JSON line is out, a Ctrl-C no longer kills the process with no word (status -2) or prints an atexit
    traceback, as Python's own teardown did: the command ends with its status."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dm_core", *COMMANDS["dm_core"], "--no-progress"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("{"), proc.stderr.read()[-2000:]
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130) and "Traceback" not in err, (proc.returncode, err[-2000:])
    assert proc.returncode == 130 or err == ""


def _wrapped_in_set_name():
    class Descriptor:
        def __set_name__(self, owner, name):
            raise KeyboardInterrupt  # a Ctrl-C while a library defines its classes (matplotlib's, under Avalanche)

    class Owner:  # noqa: F841 - Python wraps the exception above into a RuntimeError here (3.11)
        attribute = Descriptor()


def _failed_cleanup():
    try:
        raise KeyboardInterrupt
    finally:
        raise ValueError("cleanup failed while the Ctrl-C unwound")


@pytest.mark.parametrize("body", [_wrapped_in_set_name, _failed_cleanup], ids=["set_name", "cleanup"])
def test_a_ctrl_c_inside_another_exception_is_still_one_line(capsys, body):
    import argparse

    from dm_core import shell

    status = shell.run_command(argparse.ArgumentParser(prog="x"), lambda args: body(), lambda args, exc: "kept",
                               argv=[])
    assert status == 130 and capsys.readouterr().err.strip().splitlines() == ["interrupted: kept"]


def test_a_bug_without_a_ctrl_c_still_shows_its_traceback():
    import argparse

    from dm_core import shell

    def bug(args):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        shell.run_command(argparse.ArgumentParser(prog="x"), bug, lambda args, exc: "kept", argv=[])
