"""Many trainings from scratch at once: K independent ``train_model`` + ``evaluate_accuracy`` runs, scheduled for the
device, with the results K separate calls give.

Users spend their time training small networks on small sets: evaluating a set trains 5-20, a continual run one per
step, NAS hundreds. Networks that small leave a processor mostly idle between kernels, so running them one after
another wastes it. What pays differs by device (issue 23, ConvNet-w32, 100 MNIST-shaped images, 5 networks, one SGD
step each, on this project's 2-core EPYC): one after another 227 ms; stacked with torch.func 635 ms; fused as grouped
convolutions 410 ms; but two one-thread processes side by side gave 1.47x the throughput of one two-thread process. So:

- CPU: worker processes of ONE torch thread each (``workers`` of them, at most the cores this process may use),
  started by forkserver (spawn where there is none), each running the very code of the sequential path (``run_job``);
  tensors reach them through shared memory, not copies. A job's result is bit for bit what ``run_job`` gives in a
  process with one torch thread, whichever worker runs it and however many there are. (The sequential path runs
  with torch's thread count; with more than one thread torch splits some reductions differently, so its results
  differ from one-thread ones by float rounding: 1e-8 in the weights after 10 epochs, noise-level in accuracy.)
- CUDA: jobs of one architecture, one training-set shape and one recipe are stacked: their parameters become one
  tensor per layer with a leading network dimension, and ``torch.func.vmap`` of ``functional_call`` runs all K
  networks' forward and backward passes in one kernel per layer. Each network keeps its own generator, so its data
  order and augmentation draws are those of its sequential run; results equal the sequential ones up to float
  rounding (batched convolutions round differently). The stacked path runs eagerly (``config.compile`` is not used
  there). Jobs that cannot be stacked with another run in sequence.
- ``workers=1``: one job after another in this process (the sequential path).

Each job is seeded on its own, so the result never depends on where, when or beside what it ran.
"""
from __future__ import annotations

import copy
import io
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import augment
from .compile import architecture_key
from .device import make_generator, resolve_device
from .errors import DMError
from .nets import build_model, check_model, reinit_
from .precision import precision_scope
from .train import TrainConfig, evaluate_accuracy, train_model
from .validate import check_int, check_seed

MODES = ("auto", "sequential", "processes", "stacked")
MAX_STACK = 32  # networks stacked at once on a GPU under workers="auto" (memory grows with K)


@dataclass(frozen=True)
class TrainJob:
    """One training from scratch and what to measure afterwards.

    ``model``: a network name, ``ConvNetSpec`` or tuple (built for the data), or one's own ``nn.Module`` or factory
    (``dm_core.custom``). ``init`` True: its weights are drawn by ``reinit_`` from a CPU generator seeded with
    ``seed`` (what ``train_and_test`` does); False: an ``nn.Module`` trains from its current weights. The given
    module is never changed (a copy trains). ``config.augment`` None means the six-group default: ``resolve`` it for
    the dataset first. ``tests``: (images, labels) pairs; the result holds the accuracy on each (restricted to
    ``classes`` when given). ``curve_every`` E > 0: also the accuracy on ``tests[0]`` after every E-th epoch and
    after the last (that point is the final accuracy, measured once).
    ``num_classes`` None: one more than the largest label of ``y`` and the tests.
    """

    model: Any
    x: torch.Tensor
    y: torch.Tensor
    config: TrainConfig = TrainConfig()
    seed: int = 0
    tests: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()
    classes: tuple[int, ...] | None = None
    num_classes: int | None = None
    init: bool = True
    curve_every: int = 0
    keep_model: bool = False  # return the trained network (on the CPU)

    def __post_init__(self):
        check_seed(self.seed)
        if len(self.x) == 0 or len(self.x) != len(self.y):
            raise DMError(f"cannot train on {len(self.x)} images with {len(self.y)} labels")
        if self.curve_every:
            check_int("curve_every", self.curve_every)
            if not self.tests:
                raise DMError("curve_every needs test data: give tests=((x, y),)")
        if not self.init and not isinstance(self.model, nn.Module):
            raise DMError("init=False trains a network's current weights: give an nn.Module as model")
        check_model(self.model)  # a bad name fails here, not in a worker
        object.__setattr__(self, "tests", tuple((tx, ty) for tx, ty in self.tests))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))

    def passes(self) -> int:
        """Epochs of the training, the last one counted even when it is partial."""
        return self.config.passes(len(self.x))

    def point_due(self, epoch: int) -> bool:
        """Whether the curve has a point after this full epoch while training (the last one is taken after)."""
        return bool(self.curve_every) and epoch % self.curve_every == 0 and epoch < self.passes()

    def classes_count(self) -> int:
        if self.num_classes is not None:
            return self.num_classes
        return 1 + max(int(t.max()) for t in (self.y, *(ty for _, ty in self.tests)))


@dataclass
class JobResult:
    """What one job measured: ``accuracies`` (fractions, one per test pair), ``curve`` ([(epoch, accuracy on
    tests[0])]), ``seconds`` (its own training and testing, wall clock), ``model`` (with ``keep_model``)."""

    accuracies: list[float] = field(default_factory=list)
    curve: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0
    model: nn.Module | None = None


def build_network(job: TrainJob, device: torch.device) -> nn.Module:
    """The job's network before training, on ``device``: built for the data and drawn from the seed, as
    ``train_and_test`` does (no global RNG involved), or a copy of the given module."""
    if not job.init:
        return copy.deepcopy(job.model).to(device)
    net = build_model(job.model, job.x.shape[1], job.classes_count(), tuple(job.x.shape[2:]))
    return reinit_(net, make_generator(job.seed, torch.device("cpu"))).to(device)


def _test_data(job: TrainJob, device: torch.device, moved: dict | None = None) -> list[tuple[torch.Tensor, ...]]:
    """The tests on the device once, restricted to ``classes``: a curve's evaluations copy nothing per epoch.
    ``moved`` shares the copies among jobs that test on the same tensors (a stack of 20 networks, one test set)."""
    moved = {} if moved is None else moved
    out = []
    for x, y in job.tests:
        key = (id(x), id(y), job.classes)
        if key not in moved:
            if job.classes is not None:
                keep = torch.isin(y, torch.as_tensor(job.classes, dtype=y.dtype))
                x, y = x[keep], y[keep]
            moved[key] = (x.to(device), y.to(device))
        out.append(moved[key])
    return out


def _measure(job: TrainJob, net: nn.Module, tests, device: torch.device) -> list[float]:
    return [evaluate_accuracy(net, x, y, device, precision=job.config.precision) for x, y in tests]


def run_job(job: TrainJob, device: str | torch.device = "auto", progress: bool = False,
            on_point: Callable[[int, float], None] | None = None) -> JobResult:
    """One job in this process: ``train_model`` then ``evaluate_accuracy`` on each test (the sequential path, and
    what every worker process runs). ``on_point(epoch, accuracy)`` hears each point of the job's curve as it is
    measured (the last one after the training); it may raise to stop the training."""
    if on_point is not None and not job.curve_every:
        raise DMError("on_point hears a curve's points: give the job a curve_every")
    device = resolve_device(device)
    started = time.perf_counter()
    tests = _test_data(job, device)
    net = build_network(job, device)
    curve: list[tuple[int, float]] = []

    def point(epoch: int, accuracy: float) -> None:
        curve.append((epoch, accuracy))
        if on_point is not None:
            on_point(epoch, accuracy)

    def watch(epoch: int, model: nn.Module) -> None:
        if job.point_due(epoch):
            point(epoch, _measure(job, model, tests[:1], device)[0])

    train_model(net, job.x, job.y, job.config, job.seed, device, progress, watch if job.curve_every else None)
    accuracies = _measure(job, net, tests, device)
    if job.curve_every:
        point(job.passes(), accuracies[0])
    return JobResult(accuracies, curve, time.perf_counter() - started, net.cpu() if job.keep_model else None)


# ---------------------------------------------------------------------------------------------------------------
# Scheduling.

def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_workers(workers: int | str) -> int | str:
    if workers == "auto" or (isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1):
        return workers
    if isinstance(workers, str) and workers.isdigit() and int(workers) >= 1:
        return int(workers)
    raise DMError(f"workers must be auto or a whole number from 1, got {workers!r}")


# Cores from which ``auto`` trains in worker processes on the CPU. On this project's 2-core EPYC the two ways were
# within the host's session-to-session noise (benchmarks/README.md, 2026-12-07): 4 ConvNet-w32 trainings 1.55x faster
# with 2 threads than 1, 1.26x in 2 one-thread processes one session; 1.71x against 1.89x in another, where 20
# trainings went 1.40x in processes against 1.09x in this process, while 5 ConvNet-128 ones lost (0.90x). So below 4
# cores ``auto`` keeps one process: no pool to start, and the results of ``workers=1``. With more cores small
# convolutions scale worse over threads and processes are expected to win; 4 is where that is expected, not measured
# (no such machine was lent): ``workers=N`` chooses for oneself.
PROCESS_CORES = 4


def resolve_workers(workers: int | str, device: torch.device) -> int:
    """How many jobs run at once. CPU: ``auto`` takes the cores this process may use, shared among the torchrun
    ranks of this node (``LOCAL_WORLD_SIZE``), when that is at least ``PROCESS_CORES``, else 1 (one job after
    another, with torch's threads). CUDA: networks stacked at once, ``auto`` up to ``MAX_STACK``."""
    workers = check_workers(workers)
    if workers != "auto":
        return workers
    if device.type == "cuda":
        return MAX_STACK
    cores = available_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return cores if cores >= PROCESS_CORES else 1


def choose_mode(jobs: int, device: torch.device, workers: int) -> str:
    """How ``jobs`` jobs run under mode auto: stacked on CUDA, worker processes on the CPU, sequential when only one
    job runs at a time."""
    if workers <= 1 or jobs <= 1:
        return "sequential"
    return "stacked" if device.type == "cuda" else "processes"


def train_many(jobs: Sequence[TrainJob], device: str | torch.device = "auto", workers: int | str = "auto",
               progress: bool = False, mode: str = "auto", desc: str = "train",
               on_result: Callable[[int, JobResult], None] | None = None) -> list[JobResult]:
    """Run ``jobs`` and return their results in job order, as K ``run_job`` calls would.

    ``on_result(index, result)`` is called in this process as each job finishes (in finishing order), so a caller can
    record finished work before the rest is done: an interrupt then loses only the jobs still running.

    ``workers``: ``auto`` (what the machine has) or N, the most jobs that run at once (CPU: worker processes of one
    thread each; CUDA: networks stacked at once); 1 runs them one after another in this process. ``mode`` forces a
    path: ``sequential``, ``processes`` or ``stacked`` (any device; tests use it). A failing job ends the call with one
    DMError; Ctrl-C stops the workers.
    """
    jobs = list(jobs)
    if mode not in MODES:
        raise DMError(f"unknown mode {mode!r}: use {', '.join(MODES)}")
    for job in jobs:
        if not isinstance(job, TrainJob):
            raise DMError(f"train_many takes TrainJob objects, got {type(job).__name__}")
    device = resolve_device(device)
    count = resolve_workers(workers, device)
    if mode == "auto":
        mode = choose_mode(len(jobs), device, count)
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, dynamic_ncols=True)
    done = _Finished(bar, on_result)
    try:
        if mode == "processes":
            unsent, needs_main = _pickling(jobs)
            if unsent is None:
                return _run_processes(jobs, device, min(count, len(jobs)), done, needs_main)
            warnings.warn(f"{unsent}: training in this process instead of worker processes", RuntimeWarning,
                          stacklevel=2)
        if mode == "stacked":
            return _run_stacked(jobs, device, MAX_STACK if workers == "auto" else count, done)
        results = []
        for index, job in enumerate(jobs):
            results.append(run_job(job, device))
            done(index, results[-1])
        return results
    finally:
        bar.close()


class _Finished:
    """What happens in this process when a job has finished: the progress bar moves, the caller hears of it."""

    def __init__(self, bar, on_result: Callable[[int, JobResult], None] | None):
        self.bar, self.on_result = bar, on_result

    def __call__(self, index: int, result: JobResult) -> None:
        if self.on_result is not None:
            self.on_result(index, result)
        self.bar.update()


def _pickling(jobs: Sequence[TrainJob]) -> tuple[str | None, bool]:
    """(why a job's network cannot be sent to a worker (a lambda factory, a class defined in a function) or None,
    whether a network refers to the main module, which the workers must then import)."""
    needs_main = False
    for job in jobs:
        if isinstance(job.model, (str, tuple)):
            continue
        try:
            needs_main = _refers_to_main(job.model) or needs_main
        except Exception as exc:  # pickling errors come as PicklingError, AttributeError or TypeError
            return (f"the network {type(job.model).__name__} cannot be sent to a worker process "
                    f"({type(exc).__name__})"), False
    return None, needs_main


class _ShapePickler(pickle.Pickler):
    """Pickles an object's structure without its arrays' contents: what a worker would have to import shows in the
    bytes (``__main__`` for anything the main script defines) at the cost of the object graph, not of its data."""

    def persistent_id(self, obj):
        return id(obj) if isinstance(obj, (torch.Tensor, np.ndarray)) else None


def _refers_to_main(obj) -> bool:
    """Whether unpickling ``obj`` in another process would import the main module (raises if it cannot pickle)."""
    buffer = io.BytesIO()
    _ShapePickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return b"__main__" in buffer.getvalue()


@contextmanager
def _main_module_hidden(hide: bool):
    """While workers start, the main module looks like an interactive session's, so they do not import it.

    multiprocessing's workers re-run the main script (or module) to find what it defines, which would repeat the
    script's unguarded work (loading data, condensing a set) in every worker. They only need it when a job's network
    is defined there; otherwise this hides ``__file__`` and ``__spec__``, the two things multiprocessing reads.
    """
    main = sys.modules.get("__main__")
    if not hide or main is None:
        yield
        return
    saved = {name: getattr(main, name) for name in ("__file__", "__spec__") if hasattr(main, name)}
    try:
        if "__file__" in saved:
            del main.__file__
        main.__spec__ = None
        yield
    finally:
        for name, value in saved.items():
            setattr(main, name, value)


# ---------------------------------------------------------------------------------------------------------------
# CPU: worker processes.

def _context():
    """forkserver: one server imports torch once, each worker is a cheap fork of it (a fork of this process could
    inherit torch's thread pools mid-use); spawn where there is no forkserver (Windows). The server preloads torch
    and torch._dynamo, which a process's first optimiser step imports (2.3 s of a worker's first job here, 0.04 s
    once preloaded); imports only, no computation, so no thread pool exists to fork. Not dm_core: the server starts
    with a fresh interpreter's sys.path (Python 3.11 ignores the parent's there), where another dm_core may come
    first; each worker imports dm_core (0.1 s) after taking this process's sys.path."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "torch._dynamo"])
        _start_server()
        return ctx
    return multiprocessing.get_context("spawn")


def _start_server() -> None:
    """Start the fork server (if not yet running) and return at once: it imports torch in its own interpreter (about
    3 s of a command's first pool here) while this process goes on. It starts with SIGINT ignored, as it would set
    itself once loaded, so a Ctrl-C meant for the command never prints a traceback from its imports. (Only an ignored
    disposition survives exec, so this process ignores SIGINT for the fork and exec, 4 ms here: blocking it instead
    keeps nothing for the child, and another thread of this process may take the signal.)"""
    from multiprocessing import forkserver

    previous = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: the handler cannot change, the server starts as it is
        previous = None
    try:
        forkserver.ensure_running()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def prepare_workers(jobs: int, device: str | torch.device = "auto", workers: int | str = "auto") -> None:
    """Called by a command as soon as it knows it will train ``jobs`` networks: if ``train_many`` will run them in
    worker processes, their server starts now and loads torch while the command reads its data, so the pool costs
    0.15 s instead of 3 s when it comes. Does nothing otherwise (one job, one worker, a GPU)."""
    device = resolve_device(device)
    if choose_mode(jobs, device, resolve_workers(workers, device)) == "processes":
        _context()


def _exit_with_parent(alive) -> None:
    """Block on the pipe only the parent writes to: its end closes when the parent dies, however it died."""
    try:
        alive.recv()
    except (EOFError, OSError):
        pass
    os._exit(1)


@contextmanager
def _signal_blocked(signum: int):
    """Hold back ``signum`` (delivered on leaving) where the platform can; elsewhere do nothing."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signum})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})


def _worker(conn, alive, device: str) -> None:
    """A worker: one torch thread; jobs in, results out, until told to stop or the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # how the parent ends a worker
    if "fork" in multiprocessing.get_all_start_methods():
        # locks made here (tqdm's) then need no named semaphore, which a worker ended by SIGTERM would leave to the
        # resource tracker's "leaked semaphore" warning; this process starts no process of its own
        multiprocessing.set_start_method("fork", force=True)
    torch.set_num_threads(1)
    # SIGTERM sent to a process goes to any thread that does not block it, and its default action ends the whole
    # process: threads made here (this one, and the resource-sharing thread a sent tensor starts) inherit a mask that
    # blocks it, so only the main thread takes it, and only where its mask allows
    with _signal_blocked(signal.SIGTERM):
        threading.Thread(target=_exit_with_parent, args=(alive,), daemon=True).start()
    while True:
        try:
            conn.poll(None)
            # A job's tensors arrive as file descriptors fetched from the parent in a handshake: a worker ended
            # mid-handshake makes the parent's sharing thread print a traceback, so SIGTERM waits until it is done.
            with _signal_blocked(signal.SIGTERM):
                item = conn.recv()
        except (EOFError, OSError):
            return
        if item is None:
            return
        index, job = item
        try:
            result = run_job(job, device) if isinstance(job, TrainJob) else job()
        except Exception as exc:
            kind = "dm" if isinstance(exc, DMError) else type(exc).__name__
            reply = ("failed", index, kind, (str(exc).strip().splitlines() or [""])[0][:300])
        else:
            reply = ("done", index, result)
        with _signal_blocked(signal.SIGTERM):  # a reply is sent whole
            conn.send(reply)


class _Pool:
    """Worker processes, each with its job pipe and its parent-alive pipe; ended on exit, whatever happened."""

    def __init__(self, count: int, device: torch.device, needs_main: bool):
        ctx = _context()
        self.workers = []
        try:
            for _ in range(count):
                mine, theirs = ctx.Pipe()
                alive_r, alive_w = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_worker, args=(theirs, alive_r, str(device)), daemon=True)
                with _main_module_hidden(not needs_main):
                    proc.start()
                theirs.close()
                alive_r.close()
                self.workers.append((proc, mine, alive_w))
        except BaseException:  # Ctrl-C while starting: end the ones started
            self.close(graceful=False)
            raise

    def close(self, graceful: bool) -> None:
        for proc, conn, _ in self.workers:
            if graceful and proc.is_alive():
                try:
                    conn.send(None)
                except OSError:
                    pass
            else:
                proc.terminate()
        for proc, conn, alive in self.workers:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            conn.close()
            alive.close()


def run_in_workers(tasks: Sequence[Callable[[], Any]], workers: int, progress: bool = False, desc: str = "work",
                   on_result: Callable[[int, Any], None] | None = None) -> list:
    """Independent pieces of work in worker processes of one torch thread each, at most ``workers`` at once: each
    task is a picklable callable without arguments (a module-level function in ``functools.partial``), run by
    the same workers ``train_many`` uses, so Ctrl-C, a dying worker and a failing task behave as there (one DMError
    naming the task). Results come back in task order; ``on_result(index, result)`` hears of each as it finishes."""
    tasks = list(tasks)
    for task in tasks:
        if not callable(task):
            raise DMError(f"run_in_workers takes callables, got {type(task).__name__}")
    needs_main = any(_refers_to_main(task) for task in tasks)  # structure only: a task may hold a dataset
    bar = tqdm(total=len(tasks), desc=desc, disable=not progress, dynamic_ncols=True)
    try:
        return _run_processes(tasks, torch.device("cpu"), max(1, min(workers, len(tasks))), _Finished(bar, on_result),
                              needs_main)
    finally:
        bar.close()


def _run_processes(jobs: list, device: torch.device, count: int, done: _Finished, needs_main: bool) -> list:
    results: list = [None] * len(jobs)
    pending = deque(enumerate(jobs))
    busy: dict[int, int] = {}  # worker number -> job index
    pool = _Pool(count, device, needs_main)
    graceful = False
    try:
        def give(w: int) -> None:
            index, job = pending.popleft()
            try:
                pool.workers[w][1].send((index, job))
            except (RuntimeError, OSError) as exc:  # tensors could not go to shared memory (a small /dev/shm)
                raise DMError(f"could not share the training data with worker processes ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:160]}): use workers=1") from None
            busy[w] = index

        for w in range(count):
            if pending:
                give(w)
        while busy:
            handles = {}
            for w in busy:
                proc, conn, _ = pool.workers[w]
                handles[conn] = w
                handles[proc.sentinel] = w
            for ready in multiprocessing.connection.wait(list(handles)):
                w = handles[ready]
                if w not in busy:
                    continue
                proc, conn, _ = pool.workers[w]
                try:
                    message = conn.recv() if conn.poll() else None
                except (EOFError, OSError):  # the worker closed its end: it is gone
                    message = None
                if message is None:
                    if proc.is_alive() and not conn.closed:
                        proc.join(1)
                    if proc.is_alive():
                        continue
                    raise DMError(f"the worker process training job {busy[w] + 1} of {len(jobs)} died (exit code "
                                  f"{proc.exitcode}): rerun with workers=1 to see why (a network defined in a "
                                  f"script makes the workers import it: keep the script's work under "
                                  f"'if __name__ == \"__main__\":')")
                if message[0] == "failed":
                    _, index, kind, text = message
                    if kind == "dm":
                        raise DMError(text)
                    raise DMError(f"job {index + 1} of {len(jobs)} failed in a worker process ({kind}: {text}): "
                                  f"rerun with workers=1 to see the traceback")
                _, index, result = message
                results[index] = result
                del busy[w]
                if pending:  # the worker gets its next job before the caller records this one
                    give(w)
                done(index, result)
        graceful = True
    finally:
        pool.close(graceful)
    return results


# ---------------------------------------------------------------------------------------------------------------
# Stacked networks (CUDA; any device when forced).

def _stack_key(job: TrainJob, net: nn.Module) -> tuple:
    """Jobs with the same key can share every kernel: same function of the weights, same shapes, same schedule."""
    return (architecture_key(net), tuple(job.x.shape), job.x.dtype, tuple(job.y.shape), job.config,
            job.curve_every)


def _run_stacked(jobs: list[TrainJob], device: torch.device, limit: int, done: _Finished) -> list[JobResult]:
    results: list[JobResult | None] = [None] * len(jobs)
    nets = [build_network(job, device) for job in jobs]
    groups: dict[tuple, list[int]] = {}
    for i, (job, net) in enumerate(zip(jobs, nets)):
        groups.setdefault(_stack_key(job, net), []).append(i)
    for members in groups.values():
        for start in range(0, len(members), limit):
            chunk = members[start:start + limit]
            if len(chunk) == 1:  # nothing to stack with: the sequential path
                outcome = [run_job(jobs[chunk[0]], device)]
            else:
                outcome = _train_stack([jobs[i] for i in chunk], [nets[i] for i in chunk], device)
            for i, result in zip(chunk, outcome):
                results[i] = result
                done(i, result)
    return results


def _augment_stack(augmenters: list[augment.DiffAugment], xb: torch.Tensor, groups: str) -> torch.Tensor:
    """Each network's batch augmented by its own augmenter, drawing in the order its sequential run draws; the ops
    are per-sample, so networks that drew the same group are augmented in one call."""
    b = xb.shape[1]
    if groups == "sample":
        draws = [a.draw(b, xb.device) for a in augmenters]
        params = augment.AugmentParams(torch.cat([d.op for d in draws]), torch.cat([d.u for d in draws]))
        return augment.apply(xb.flatten(0, 1), params).view_as(xb)
    draws = [a.draw_batch(b, xb.device) for a in augmenters]
    out = torch.empty_like(xb)
    for op in dict.fromkeys(op for op, _ in draws):
        ks = [i for i, (o, _) in enumerate(draws) if o == op]
        u = torch.cat([draws[i][1] for i in ks])
        rows = torch.tensor(ks, device=xb.device)
        out[rows] = augment.apply_op(xb[rows].flatten(0, 1), op, u).view(len(ks), b, *xb.shape[2:])
    return out


def _train_stack(jobs: list[TrainJob], nets: list[nn.Module], device: torch.device) -> list[JobResult]:
    """``train_model`` for K networks of one architecture at once: the same schedule, each network's own draws."""
    from torch.func import functional_call, vmap

    started = time.perf_counter()
    config, k = jobs[0].config, len(jobs)
    shared = all(j.x is jobs[0].x and j.y is jobs[0].y for j in jobs)
    x = jobs[0].x.to(device) if shared else torch.stack([j.x for j in jobs]).to(device)
    y = jobs[0].y.to(device) if shared else torch.stack([j.y for j in jobs]).to(device)
    rows = torch.arange(k, device=device)[:, None]
    moved: dict = {}
    tests = [_test_data(job, device, moved) for job in jobs]
    generators = [make_generator(job.seed, device) for job in jobs]
    augmenters = ([augment.DiffAugment(g, config.strategy, config.augment_groups) for g in generators]
                  if config.strategy != "none" else None)
    base = nets[0].train()
    names = [n for n, _ in base.named_parameters()]
    buffer_names = [n for n, _ in base.named_buffers()]
    params = {n: torch.stack([dict(net.named_parameters())[n].detach() for net in nets]).requires_grad_()
              for n in names}
    buffers = {n: torch.stack([dict(net.named_buffers())[n] for net in nets]) for n in buffer_names}

    def loss(p, b, xb, yb):
        return F.cross_entropy(functional_call(base, (p, b), (xb,)).float(), yb)

    step_losses = vmap(loss)

    def sgd(lr: float) -> torch.optim.SGD:
        # elementwise, so SGD over the stacked tensors is every network's own SGD
        return torch.optim.SGD(list(params.values()), lr=lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)

    def network(i: int) -> nn.Module:
        """Network i as a module of its own (a copy of its slices), for testing."""
        net = nets[i]
        with torch.no_grad():
            for n, t in net.named_parameters():
                t.copy_(params[n][i])
            for n, t in net.named_buffers():
                t.copy_(buffers[n][i])
        return net

    curves: list[list[tuple[int, float]]] = [[] for _ in jobs]
    optimizer = sgd(config.lr)
    per_epoch, total, decay_at = config.schedule(len(jobs[0].x))
    order = None
    for step in range(total):
        within = step % per_epoch
        if within == 0:
            order = torch.stack([torch.randperm(len(jobs[0].x), generator=g, device=device) for g in generators])
        if step == decay_at:  # as train_model: a fresh optimiser at a tenth of the rate
            optimizer = sgd(config.lr * 0.1)
        idx = order[:, within * config.batch_size:(within + 1) * config.batch_size]
        xb, yb = (x[idx], y[idx]) if shared else (x[rows, idx], y[rows, idx])
        if augmenters is not None:
            xb = _augment_stack(augmenters, xb, config.augment_groups)
        optimizer.zero_grad(set_to_none=True)
        with precision_scope(device, config.precision):
            losses = step_losses(params, buffers, xb, yb)
        losses.sum().backward()  # the sum's gradient for each network's slice is its own loss's gradient
        optimizer.step()
        if within == per_epoch - 1 and jobs[0].point_due((step + 1) // per_epoch):
            for i, job in enumerate(jobs):
                curves[i].append(((step + 1) // per_epoch, _measure(job, network(i), tests[i][:1], device)[0]))
            base.train()
    results = []
    for i, job in enumerate(jobs):
        net = network(i)
        kept = copy.deepcopy(net).cpu().eval() if job.keep_model else None
        accuracies = _measure(job, net, tests[i], device)
        if job.curve_every:  # the last point is the final accuracy
            curves[i].append((job.passes(), accuracies[0]))
        results.append(JobResult(accuracies, curves[i], 0.0, kept))
    for result in results:  # the stack's time, shared out
        result.seconds = (time.perf_counter() - started) / k
    return results
