"""nas/strategies.py: --strategy takes the short names, any NNI strategy class, or a user's module:Class."""
from __future__ import annotations

import importlib.util
import itertools

import pytest
from nni.nas.strategy import Strategy

from nas.results import read_records
from nas.search import SearchConfig, run_search
from nas.search import main as search_main
from nas.space import NAMED_SPACES
from nas.strategies import parse_strategy


class FirstInOrder(Strategy):
    """A user's strategy: the first three architectures of the grid, in order."""

    def _run(self) -> None:
        for model in itertools.islice(self.model_space.grid(), 3):
            self.engine.submit_models(model)
        self.engine.wait_models()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass


def make_list() -> list:  # not a strategy
    return []


def test_names_resolve_case_insensitively_and_one_shot_is_told_apart():
    assert parse_strategy("grid").name == "grid" and not parse_strategy("grid").one_shot
    assert parse_strategy("regularizedevolution").name == "RegularizedEvolution"
    assert parse_strategy("TPE").build(4, seed=0).__class__.__name__ == "TPE"
    assert parse_strategy("darts").one_shot and parse_strategy("RandomOneShot").one_shot
    assert parse_strategy(f"{__name__}:FirstInOrder").name == f"{__name__}:FirstInOrder"


def test_a_users_strategy_class_drives_the_search(tmp_path):
    config = SearchConfig(dataset="digits", space="micro", proxy="random5", epochs=1, repeats=1, device="cpu",
                          out=str(tmp_path / "run"), progress=False, strategy=f"{__name__}:FirstInOrder")
    summary = run_search(config)
    first_three = [s.name for s in NAMED_SPACES["micro"].specs()[:3]]
    assert sorted(r.arch for r in read_records(summary.results)) == sorted(first_three)


@pytest.mark.parametrize("strategy, message", [
    ("bogus", "unknown strategy 'bogus': choose one of grid, random, evolution, tpe, GridSearch"),
    ("no_such_module_xyz:Thing", "cannot import 'no_such_module_xyz'"),
    (f"{__name__}:Missing", "has no class or function 'Missing'"),
    ("nas.space:SearchSpace", "is not a subclass of nni.nas.strategy.Strategy"),
    (f"{__name__}:make_list", "gave a list, not an NNI Strategy"),
    ("PolicyBasedRL", "strategy PolicyBasedRL cannot start: NNI's PolicyBasedRL needs tianshou"),
    ("ENAS", "strategy ENAS cannot start: NNI's ENAS needs tianshou"),
])
def test_unknown_or_unusable_strategies_are_one_error_line(tmp_path, capsys, strategy, message):
    if "tianshou" in message and importlib.util.find_spec("tianshou") is not None:
        pytest.skip("tianshou is installed here")
    out = tmp_path / "run"
    argv = ["--dataset", "digits", "--space", "micro", "--proxy", "random2", "--epochs", "1", "--repeats", "1",
            "--device", "cpu", "--no-progress", "--out", str(out), "--strategy", strategy]
    assert search_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (out / "results.csv").exists()


def test_every_listed_name_resolves_or_names_what_it_needs():
    from dm_core import DMError
    from nas.strategies import MULTI_TRIAL, NEEDS_TIANSHOU, ONE_SHOT, available

    has_tianshou = importlib.util.find_spec("tianshou") is not None
    for name in (*MULTI_TRIAL, *ONE_SHOT):
        assert name in available()
        if name in NEEDS_TIANSHOU and not has_tianshou:
            with pytest.raises(DMError, match="needs tianshou"):
                parse_strategy(name)
        else:
            assert parse_strategy(name).name == name
