"""An NNI ``Evaluator`` that scores architectures of ``ConvNetModelSpace`` as ``nas.search`` does, for a user's own
``NasExperiment``::

    from nni.nas.experiment import NasExperiment, NasExperimentConfig
    from nni.nas.strategy import Random
    import nas

    space = nas.ConvNetModelSpace(nas.parse_space("micro"), channels=1, num_classes=10, image_size=(16, 16))
    evaluator = nas.evaluator(dataset="digits", proxy="random5", epochs=20, repeats=2, out="runs/mine")
    experiment = NasExperiment(space, evaluator, Random(seed=0), NasExperimentConfig("sequential", "simplified"))
    experiment.run()
    best = nas.spec_from_sample(experiment.export_top_models(formatter="dict")[0], space.space)
    experiment.stop()

``evaluator(**settings)`` takes the training settings of ``SearchConfig`` (proxy, dataset, repeats, epochs,
batch_size, augment, ...; not the strategy or execution, which are the experiment's), checks them, loads the data and
makes (or loads from the run folder's cache) the proxy set at once, as the command does before its first trial. It
returns a ``FunctionalEvaluator`` of plain settings, so it also ships to the trial processes of NNI's training
services, which load the cached proxy. Each model is trained ``repeats`` times from the seeds seed, seed + 1, ...,
every repeat is recorded in OUT/results.csv (a rerun reuses them; ``python -m reports nas OUT`` reads them), and the
mean validation accuracy, a fraction in [0, 1], goes to NNI as the final result: strategies must MAXIMISE it.
"""
from __future__ import annotations

from dataclasses import asdict, fields

from nni.nas.evaluator import FunctionalEvaluator

from dm_core import DMError

from .plan import SearchConfig, SearchPlan, make_evaluator, start_task
from .space import ConvNetModelSpace
from .trial import TrainTask

# SearchConfig fields that belong to the experiment (its strategy, engine and model space), not to the evaluator.
EXPERIMENT_FIELDS = ("space", "strategy", "max_trials", "execution", "concurrency", "port", "training_service",
                     "oneshot_epochs")

# The task of each evaluator's settings, in this process: the sequential engine calls the evaluator once per model,
# and the data and proxy set are loaded once.
_TASKS: dict[SearchConfig, tuple[SearchPlan, TrainTask]] = {}


def evaluator(**settings) -> FunctionalEvaluator:
    """The NNI evaluator of ``settings`` (see the module docstring); DMError on bad settings, before any work."""
    known = {f.name for f in fields(SearchConfig)} - set(EXPERIMENT_FIELDS)
    unknown = sorted(set(settings) - known)
    if unknown:
        raise DMError(f"evaluator settings {', '.join(unknown)}: not an evaluator's (the experiment has its own "
                      f"strategy, engine and model space); use {', '.join(sorted(known))}")
    config = SearchConfig(**{"progress": False, **settings})
    _task(config, record=True)
    return FunctionalEvaluator(evaluate_architecture, settings=asdict(config))


def evaluate_architecture(model, settings: dict) -> None:
    """The evaluator's function: train and record the repeats of ``model`` (a frozen ``ConvNetModelSpace``) and
    report their mean validation accuracy to NNI."""
    if not isinstance(model, ConvNetModelSpace):
        raise DMError(f"nas.evaluator scores architectures of nas.ConvNetModelSpace, not a {type(model).__name__}")
    plan, task = _task(SearchConfig(**settings), record=False)
    shape = (task.x.shape[1], task.num_classes, tuple(task.x.shape[2:]))
    if (model.channels, model.num_classes, model.image_size) != shape:
        raise DMError(f"the model space was built for {model.channels}-channel {model.image_size} images of "
                      f"{model.num_classes} classes; {plan.config.dataset} has {shape[0]}-channel {shape[2]} "
                      f"images of {shape[1]} classes")
    make_evaluator(plan, task)(model)


def _task(config: SearchConfig, record: bool) -> tuple[SearchPlan, TrainTask]:
    if config not in _TASKS:
        plan = config.resolve()
        _, task = start_task(plan, record=record, check_space=False)
        _TASKS[config] = (plan, task)
    return _TASKS[config]
