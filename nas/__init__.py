"""nas: NNI-driven architecture search over the 720-ConvNet space on condensed proxies (DM section 3.6).

``python -m nas.search`` ranks the space on a proxy, ``python -m nas.groundtruth`` measures the whole-data accuracy of
the proxies' top architectures, ``python -m reports nas RUN`` renders Table 5 and Figure F8. See docs/nas.md.

For a NasExperiment of your own: ``nas.ConvNetModelSpace`` (the space), ``nas.evaluator(...)`` (an NNI Evaluator that
trains and records like the command), ``nas.spec_from_sample`` (any strategy's export, one-shot included, as the
architecture it names).
"""
import importlib
import warnings

import dm_core.startup  # noqa: F401  (first: a Ctrl-C while torch, Avalanche or NNI load is one line)

# NNI 3.0 inspects every torch.nn class when its NAS modules are first imported and warns about the classes newer
# torch versions added; harmless here, and a command's stderr is kept for its one error line.
warnings.filterwarnings("ignore", message=".*is found to be not a nn.Module.*", category=RuntimeWarning)

# name -> module. Loaded on first use, so that reading result files (nas.results, reports) does not import NNI.
_EXPORTS = {
    "ConvNetModelSpace": "space", "SearchSpace": "space", "NAMED_SPACES": "space", "parse_space": "space",
    "canonical_sample": "space", "spec_from_sample": "space", "ConvNetSupernet": "oneshot",
    "SearchConfig": "plan", "SearchSummary": "plan", "run_search": "search", "evaluator": "evaluation",
    "GroundTruthConfig": "groundtruth", "run_groundtruth": "groundtruth",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nas' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
