"""continual: GDumb-style class-incremental learning on Avalanche with condensed memories (DM section 3.5).

Avalanche glue over dm_core: ``CondensedMemory`` (an ``ExemplarsBuffer`` storage policy filled by ``MemoryBuilder``),
``GDumbMemoryPlugin`` (a ``SupervisedPlugin``), the benchmark of PROTOCOL.md's class orders, and
``run_continual(ContinualConfig)``, the function behind ``python -m continual.run``.
"""
from .benchmark import class_order, make_benchmark, split_steps
from .config import ContinualConfig, prepare
from .experiment import run_continual, training_seed
from .memory import METHODS, SCOPE, CondensedMemory, MemoryBuilder, step_seed
from .plugin import GDumbMemoryPlugin
from .results import COLUMNS, ResultsTable, read_results

__all__ = [
    "COLUMNS", "METHODS", "SCOPE", "CondensedMemory", "ContinualConfig", "GDumbMemoryPlugin", "MemoryBuilder",
    "ResultsTable", "class_order", "make_benchmark", "prepare", "read_results", "run_continual", "split_steps",
    "step_seed", "training_seed",
]
