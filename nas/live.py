"""Training-service executions (``--execution local|remote|kubeflow|frameworkcontroller``): a live NNI experiment.

The launching process runs the strategy and starts NNI's manager (a Node.js server, ``NasExperiment`` with the "ts"
engine); the manager starts one trial process per architecture (``local``: subprocesses of the manager, at most
``--concurrency`` at once), which rebuilds its task from plain settings (``evaluate_in_trial_process``) and records
each repeat in the shared ``results.csv``.

Resume is re-running the same command, not NNI's ``resume``: a new experiment starts, and architectures whose repeats
are all recorded are answered from ``results.csv`` in the launching process (``AnswerFromRecords``), without a trial;
a half-done one trains only its missing repeats. If the manager dies mid-run, the command stops with one ``error:``
line, and a ``local`` trial process dies with it (Linux parent-death signal), so no orphan keeps training an
architecture that the rerun trains again.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import asdict

import requests
from nni.experiment import launcher
from nni.nas.evaluator import FunctionalEvaluator
from nni.nas.execution.event import ModelEventType
from nni.nas.experiment import NasExperiment, NasExperimentConfig
from nni.nas.space import ExecutableModelSpace, ModelStatus
from nni.nas.strategy import Strategy
from nni.nas.strategy.middleware import Chain, StrategyMiddleware

from dm_core import DMError

from .evaluation import evaluate_architecture
from .plan import SearchPlan, training_service_fields
from .space import ConvNetModelSpace

_PR_SET_PDEATHSIG = 1


def evaluate_in_trial_process(model, settings: dict) -> None:
    """Evaluator function of the training-service executions: runs in a trial process, which rebuilds the search's
    task from its plain settings (the launching process made and cached the proxy set: the trial only loads it)."""
    if settings.get("execution") == "local":
        _die_with_parent()
    evaluate_architecture(model, settings)


def _die_with_parent() -> None:
    """Ask Linux to kill this trial process when its parent (NNI's manager) dies; exit now if it already has."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: an orphan would finish its architecture and record it
        return
    if os.getppid() != parent or parent == 1:
        os._exit(1)


def run_training_service(plan: SearchPlan, model_space: ConvNetModelSpace, strategy: Strategy,
                         answer: Callable[[ExecutableModelSpace], float | None]) -> None:
    """Run the experiment to the end; DMError if the NNI manager dies, KeyboardInterrupt on Ctrl-C.

    ``answer(model)``: the score of an architecture that needs no trial (see ``AnswerFromRecords``), else None."""
    answering = AnswerFromRecords(answer, plan.max_trials)
    experiment = build_experiment(plan, model_space, Chain(strategy, answering))
    with _quiet_once_manager_dies(experiment) as watch, _patient_manager_start():
        failed = False
        try:
            finished = experiment.run(port=plan.config.port)
            if finished is not None:
                _wait_for(experiment, answering.submitted)
        except requests.RequestException as exc:
            failed = True
            watch.check()
            experiment._proc = None  # the manager is gone: NNI's stop() would try to kill it again and complain
            raise DMError(f"the NNI manager stopped answering during the search ({type(exc).__name__}); finished "
                          f"trials are in {plan.run.results}: rerun the same command to continue") from None
        finally:
            try:
                experiment.stop()
            except Exception:  # noqa: BLE001 - after the manager died, stopping it can only fail; the error is told
                if not failed:
                    raise
    if finished is None:  # NasExperiment.run swallows Ctrl-C after stopping the experiment
        raise KeyboardInterrupt


# NNI loggers that report a lost manager with tracebacks (the websocket channel, the strategy, the experiment).
_LOUD_WHEN_MANAGER_DIES = ("nni.runtime.command_channel.websocket.channel", "nni.runtime.tuner_command_channel.channel",
                           "nni.nas.strategy.base", "nni.experiment.experiment")


class _ManagerWatch:
    """Whether the NNI manager process has exited (sticky: stays true after NNI forgets the process)."""

    def __init__(self, experiment):
        self.experiment = experiment
        self.dead = False

    def check(self) -> bool:
        if not self.dead:
            process = getattr(self.experiment, "_proc", None)
            self.dead = process is not None and process.poll() is not None
        return self.dead


@contextmanager
def _patient_manager_start(seconds: int = 60):
    """NNI waits about 3 s for its manager's REST server to answer, then gives up; a busy machine needs longer."""
    check, logger = launcher._check_rest_server, logging.getLogger("nni.experiment")
    level = logger.level
    logger.setLevel(logging.ERROR)  # one "Timeout, retry..." warning per second of waiting
    launcher._check_rest_server = lambda port, retry=3, url_prefix=None: check(port, max(retry, seconds), url_prefix)
    try:
        yield
    finally:
        launcher._check_rest_server = check
        logger.setLevel(level)


def _wait_for(experiment, models: list) -> None:
    """Wait until every model sent to a trial has ended. NNI's own wait returns when no trial shows up as running
    for a few seconds, which happens when the trials of a resumed search are still being created."""
    while not all(model.status.completed() for model in models):
        experiment.get_status()  # raises if the manager is gone
        time.sleep(1)


@contextmanager
def _quiet_once_manager_dies(experiment):
    """Once the manager process has exited, NNI's threads log tracebacks (lost websocket, failed strategy) and its
    listener thread dies with one; the command tells the user in one line instead, so those are dropped."""
    watch = _ManagerWatch(experiment)
    keep = lambda record: not watch.check()  # noqa: E731 - a logging filter
    loggers = [logging.getLogger(name) for name in _LOUD_WHEN_MANAGER_DIES]
    default_hook = threading.excepthook
    threading.excepthook = lambda args: None if watch.check() else default_hook(args)
    for logger in loggers:
        logger.addFilter(keep)
    try:
        yield watch
    finally:
        threading.excepthook = default_hook
        for logger in loggers:
            logger.removeFilter(keep)


def build_experiment(plan: SearchPlan, model_space: ConvNetModelSpace, strategy: Strategy | None) -> NasExperiment:
    """The NNI experiment of a training-service execution, configured but not started."""
    platform = plan.config.execution
    settings = {**asdict(plan.config), "out": str(plan.run.path.resolve())}
    evaluator = FunctionalEvaluator(evaluate_in_trial_process, settings=settings)
    exp_config = NasExperimentConfig("ts", "simplified", platform)
    exp_config.experiment_name = f"nas-{plan.proxy.name}"
    exp_config.trial_concurrency = plan.config.concurrency
    exp_config.max_trial_number = plan.max_trials
    exp_config.experiment_working_directory = str((plan.run.path / "nni").resolve())
    exp_config.trial_gpu_number = 1 if plan.device.type == "cuda" else 0
    if plan.config.training_service is not None:
        fields = training_service_fields(plan.config.training_service)
        try:  # NNI's config classes turn nested dicts (machine_list, worker, ...) into their own types
            exp_config.training_service = type(exp_config.training_service)(platform=platform, **fields)
        except (TypeError, ValueError, AttributeError) as exc:  # NNI names an unknown field with AttributeError
            raise DMError(f"{plan.config.training_service}: not valid for NNI's {platform} training service "
                          f"({str(exc).splitlines()[0]})") from None
    if platform == "local" and plan.device.type == "cuda":
        exp_config.training_service.use_active_gpu = True
    return NasExperiment(model_space, evaluator, strategy, exp_config)


class AnswerFromRecords(StrategyMiddleware):
    """Between the strategy and the engine: a model that needs no training is answered here, without a trial.

    ``answer(model)`` returns its score (all repeats recorded, or stopped earlier by the assessor) or None (train
    it). The middleware also holds the search's trial budget, so answered models count against ``--max-trials``
    exactly as on the first run.
    """

    def __init__(self, answer: Callable[[ExecutableModelSpace], float | None], budget: int):
        super().__init__()
        self.answer = answer
        self.left = budget
        self.answered: list = []
        self.submitted: list = []  # sent to the engine (kept alive here: the engine holds weak references)

    def submit_models(self, *models) -> None:
        to_train = []
        for model in models:
            self.left -= 1
            score = self.answer(model)
            if score is None:
                to_train.append(model)
                continue
            self.answered.append(model)
            self.dispatch_model_event(ModelEventType.FinalMetric, metric=score, model=model)
            self.dispatch_model_event(ModelEventType.TrainingEnd, status=ModelStatus.Trained, model=model)
        if to_train:
            self.submitted.extend(to_train)
            self.engine.submit_models(*to_train)

    def budget_available(self) -> bool:
        return self.left > 0 and self.engine.budget_available()

    def list_models(self, status=None) -> Iterable:
        yield from self.engine.list_models(status)
        yield from (m for m in self.answered if status is None or m.status == status)

    def register_model_event_callback(self, event_type, callback) -> None:
        super().register_model_event_callback(event_type, callback)  # events dispatched here
        self.engine.register_model_event_callback(event_type, callback)  # events of trained models

    def unregister_model_event_callback(self, event_type, callback) -> None:
        super().unregister_model_event_callback(event_type, callback)
        self.engine.unregister_model_event_callback(event_type, callback)

    def load_state_dict(self, state_dict: dict) -> None:
        self.left = state_dict.get("left", self.left)

    def state_dict(self) -> dict:
        return {"left": self.left}
