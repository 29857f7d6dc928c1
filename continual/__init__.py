"""continual: GDumb-style class-incremental learning on Avalanche with condensed memories (DM section 3.5).

Avalanche glue over dm_core: ``CondensedMemory`` (a class-balanced ``ExemplarsBuffer`` storage policy whose images are
made by any method of dm_core's registry), ``GDumbMemoryPlugin`` (a ``SupervisedPlugin``: memory update, model reset,
training on the memory only, in Avalanche's loop), ``save_checkpoint`` / ``load_checkpoint`` (a user's strategy with
its memory and RNG states), the benchmark of docs/method.md's class orders (section 6), and
``run_continual(ContinualConfig)``, the function behind ``python -m continual.run``.

Names are imported on first use, so ``python -m continual.run`` checks its input before Avalanche (slow to import)
is loaded.
"""
import importlib
import warnings

import dm_core.startup  # noqa: F401  (first: a Ctrl-C while torch, Avalanche or NNI load is one line)

# Avalanche imports qpsolvers (for GEM, unused here), which warns at import time when no QP solver is installed.
warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning)

_WHERE = {
    "class_order": "benchmark", "experience_tensors": "benchmark", "make_benchmark": "benchmark",
    "split_steps": "benchmark", "UPDATE_RULE": "builder", "check_options": "builder", "ContinualConfig": "config",
    "prepare": "config", "run_continual": "experiment", "training_seed": "experiment", "METHODS": "builder",
    "SCOPE": "builder", "MemoryBuilder": "builder", "step_seed": "builder", "CondensedMemory": "memory",
    "as_avalanche": "memory", "GDumbMemoryPlugin": "plugin", "restore_": "plugin", "COLUMNS": "results",
    "ResultsTable": "results", "read_results": "results", "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint", "ResidentBatches": "plugin",
}
_MODULES = ("benchmark", "builder", "checkpoint", "config", "device", "experiment", "memory", "plugin", "results",
            "run")
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    elif name in _MODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
