"""nas/oneshot.py: the ConvNet space with open choices, NNI's one-shot strategies on a proxy, the selection scored."""
from __future__ import annotations

import json

import pytest
import torch

from nas import oneshot as oneshot_mod
from nas.results import read_records
from nas.search import SearchConfig, run_search
from nas.search import main as search_main
from nas.space import NAMED_SPACES, ConvNetModelSpace

pytestmark = pytest.mark.usefixtures("one_thread")


BUDGET = "e2-b250-aug-color_crop_cutout_scale_rotate-r2"  # 2 epochs, the digits' strategy, the recipe's version


def oneshot(out, strategy, **overrides) -> SearchConfig:
    fields = dict(dataset="digits", space="tiny", proxy="random5", epochs=2, repeats=2, device="cpu", out=str(out),
                  progress=False, strategy=strategy, oneshot_epochs=3)
    return SearchConfig(**{**fields, **overrides})


def test_supernet_keeps_every_choice_open_under_the_multi_trial_labels():
    space = NAMED_SPACES["tiny"]
    supernet = oneshot_mod.ConvNetSupernet(space, 1, 10, (8, 8))
    multi = ConvNetModelSpace(space, 1, 10, (8, 8)).simplify()
    opened = supernet.simplify()
    fixed = {label for label, m in multi.items() if len(m.values) == 1}  # width: one value in tiny
    assert set(opened) == set(multi) - fixed == {"depth", "act", "norm", "pool"}
    assert len(opened["norm"].values) == 3 and len(opened["depth"].values) == 2
    assert supernet(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    sample = {"depth": 1, "act": "sigmoid", "norm": "instancenorm", "pool": "maxpool"}  # depth: index of (1, 2)
    assert supernet.spec(sample).name == "convnet-d2-w32-sigmoid-instancenorm-maxpool"


@pytest.mark.parametrize("strategy", ["DARTS", "RandomOneShot"])
def test_one_shot_selects_an_architecture_and_scores_it_like_a_trial(tmp_path, monkeypatch, strategy):
    summary = run_search(oneshot(tmp_path / "run", strategy))
    (arch, score), = summary.ranking
    assert summary.selected_by == strategy and arch in {s.name for s in NAMED_SPACES["tiny"].specs()}
    rows = read_records(summary.results)
    assert sorted(r.repeat for r in rows) == [0, 1] and {r.arch for r in rows} == {arch}
    assert all(r.proxy == "random5" and r.budget == BUDGET and r.test_acc is not None for r in rows)
    assert score == pytest.approx(sum(r.val_acc for r in rows) / 2)
    book = (tmp_path / "run" / "oneshot.csv").read_text().splitlines()
    assert len(book) == 2 and book[1].startswith(f"{strategy},random5,{BUDGET},0,3,{arch},")

    # the same command again: the selection and the trained repeats are reused, nothing is trained
    monkeypatch.setattr(oneshot_mod, "_search", lambda *a, **k: pytest.fail("the supernet was trained again"))
    again = run_search(oneshot(tmp_path / "run", strategy))
    assert again.ranking == summary.ranking and read_records(summary.results) == rows


@pytest.mark.parametrize("argv, message", [
    (["--strategy", "darts", "--execution", "local"], "goes with execution sequential"),
    (["--strategy", "darts", "--assessor", "Medianstop"], "goes with execution sequential and no assessor"),
    (["--strategy", "grid", "--oneshot-epochs", "3"], "--oneshot-epochs goes with a one-shot strategy"),
    (["--strategy", "darts", "--oneshot-epochs", "0"], "--oneshot-epochs must be at least 1"),
])
def test_one_shot_option_errors(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    base = ["--dataset", "digits", "--space", "micro", "--proxy", "random2", "--device", "cpu", "--no-progress",
            "--out", str(out)]
    assert search_main([*base, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


def test_the_json_line_names_the_one_shot_strategy_that_selected(tmp_path, capsys):
    argv = ["--dataset", "digits", "--space", "micro", "--proxy", "random2", "--device", "cpu", "--no-progress",
            "--out", str(tmp_path / "run"), "--strategy", "randomoneshot", "--oneshot-epochs", "1", "--epochs", "1",
            "--repeats", "1"]
    assert search_main(argv) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (last["selected_by"], last["architectures_ranked"], last["optimize_mode"]) == ("RandomOneShot", 1,
                                                                                           "maximize")
    assert last["best"] in {s.name for s in NAMED_SPACES["micro"].specs()}
    assert [r.arch for r in read_records(tmp_path / "run" / "results.csv")] == [last["best"]]
