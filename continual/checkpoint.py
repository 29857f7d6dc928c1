"""Checkpoint and resume a user's own Avalanche strategy with its condensed memory, RNG states included.

    for t, experience in enumerate(benchmark.train_stream):
        if t < done:
            continue
        strategy.train(experience)
        save_checkpoint("run.ckpt", strategy, memory, experiences_done=t + 1)

    # a new process: build the strategy, its plugins and the memory as before, then
    done = load_checkpoint("run.ckpt", strategy, memory)   # 0 when there is no checkpoint yet

A checkpoint holds what a strategy carries from one experience to the next: the model's and the optimiser's state,
the strategy's clock, the state of every plugin that has one (``GDumbMemoryPlugin``'s initial model, a
``state_dict()`` of the user's own plugins), the memory, and the random states of Python, NumPy and torch (CPU and
CUDA), so that the experiences after it train as they would have without the stop: bit for bit on the same machine.
It is written atomically between experiences. The objects are rebuilt by the user's own code (the checkpoint holds
states, not code), so the strategy must be made the same way before ``load_checkpoint``.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from dm_core import DMError, atomic_torch_save

FORMAT = "continual-strategy-checkpoint/1"


def rng_states() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _plugin_states(strategy) -> dict:
    """{index in strategy.plugins: state} of the plugins that keep state across experiences."""
    states = {}
    for i, plugin in enumerate(strategy.plugins):
        if hasattr(plugin, "state_dict") and hasattr(plugin, "load_state_dict"):
            states[i] = (type(plugin).__name__, plugin.state_dict())
    return states


def save_checkpoint(path: str | Path, strategy, memory=None, experiences_done: int | None = None) -> Path:
    """Write the strategy's and the memory's state after an experience (atomically: a stop while writing keeps
    the previous checkpoint). ``experiences_done`` defaults to the experiences the strategy has trained on."""
    done = strategy.clock.train_exp_counter if experiences_done is None else experiences_done
    state = {"format": FORMAT, "experiences_done": int(done), "model": strategy.model.state_dict(),
             "optimizer": strategy.optimizer.state_dict(), "clock": dict(vars(strategy.clock)),
             "plugins": _plugin_states(strategy), "memory": None if memory is None else memory.state_dict(),
             "rng": rng_states()}
    return atomic_torch_save(state, path)


def load_checkpoint(path: str | Path, strategy, memory=None) -> int:
    """Restore a checkpoint into a strategy (and memory) built as when it was written; returns the experiences it
    had trained on (0 when ``path`` does not exist yet)."""
    path = Path(path)
    if not path.is_file():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a damaged or foreign file
        raise DMError(f"{path} is not a readable checkpoint ({type(exc).__name__}): move it aside to start over") \
            from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DMError(f"{path} is not a continual strategy checkpoint: move it aside to start over")
    if (memory is None) != (state["memory"] is None):
        raise DMError(f"{path} was written {'with' if state['memory'] is not None else 'without'} a memory: load it "
                      f"the same way")
    plugins = _plugin_states(strategy)
    if {i: name for i, (name, _) in plugins.items()} != {i: name for i, (name, _) in state["plugins"].items()}:
        raise DMError(f"{path} was written by a strategy with other plugins: build the strategy as before")
    strategy.model.load_state_dict(state["model"])
    strategy.optimizer.load_state_dict(state["optimizer"])
    vars(strategy.clock).update(state["clock"])
    for i, (_, plugin_state) in state["plugins"].items():
        strategy.plugins[i].load_state_dict(plugin_state)
    if memory is not None:
        memory.load_state_dict(state["memory"])
    set_rng_states(state["rng"])
    return int(state["experiences_done"])
