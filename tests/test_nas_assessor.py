"""Intermediate results (--report-every) and NNI assessors (--assessor) in the in-process search."""
from __future__ import annotations

import pytest

from nas import trial as trial_mod
from nas.assessor import Curve, CurveStore
from nas.results import read_records
from nas.search import SearchConfig, run_search
from nas.search import main as search_main

SPACE = "depth=1,2;width=32;act=sigmoid,relu;norm=none,instancenorm;pool=avgpool"  # 8 architectures


pytestmark = pytest.mark.usefixtures("one_thread")


def search(out, **overrides) -> SearchConfig:
    fields = dict(dataset="digits", space=SPACE, proxy="random5", epochs=4, repeats=2, device="cpu", out=str(out),
                  progress=False)
    return SearchConfig(**{**fields, **overrides})


def test_intermediate_results_do_not_change_training_and_end_at_the_final_score(tmp_path):
    plain = read_records(run_search(search(tmp_path / "plain", space="micro")).results)
    summary = run_search(search(tmp_path / "curves", space="micro", report_every=2))
    reported = read_records(summary.results)
    assert sorted((r.arch, r.repeat, r.val_acc) for r in reported) == sorted((r.arch, r.repeat, r.val_acc)
                                                                           for r in plain)
    curves = CurveStore(tmp_path / "curves" / "curves.csv").curves()
    # 4 epochs are the reference's passes 1..5: reported after passes 2 and 4, and after the last
    assert len(curves) == len(reported) == 8 and all(len(c.val_acc) == 3 and c.every == 2 for c in curves)
    final = {(r.arch, r.repeat): r.val_acc for r in reported}
    assert all(c.val_acc[-1] == final[(c.arch, c.repeat)] for c in curves)  # last point = final validation
    assert not (tmp_path / "plain" / "curves.csv").exists()  # sequential without an assessor reports nothing


def test_medianstop_stops_weak_trials_and_a_rerun_neither_trains_nor_ranks_them(tmp_path, monkeypatch):
    full = run_search(search(tmp_path / "full"))
    summary = run_search(search(tmp_path / "run", assessor="Medianstop", assessor_start=1))
    curves = CurveStore(tmp_path / "run" / "curves.csv").curves()
    stopped = {c.arch for c in curves if c.status == "stopped"}
    assert 1 <= summary.stopped == len(stopped) < 8
    assert all(c.assessor == "Medianstop" and c.repeat == 0 and len(c.val_acc) < 4 for c in curves
               if c.status == "stopped")
    rows = read_records(summary.results)
    assert not stopped & {r.arch for r in rows} and summary.trials == 8 - len(stopped)
    assert len(rows) == 2 * (8 - len(stopped))
    # the trials that ran to the end score exactly as without the assessor
    full_scores = dict(full.ranking)
    assert all(full_scores[arch] == score for arch, score in summary.ranking)
    # the first architecture has nothing to be compared with: never stopped
    assert full.ranking and "convnet-d1-w32-sigmoid-none-avgpool" not in stopped

    calls = []
    real = trial_mod.train_architecture
    monkeypatch.setattr(trial_mod, "train_architecture", lambda *a, **k: calls.append(a[0].name) or real(*a, **k))
    many = trial_mod.train_many  # the repeats after the first train there
    monkeypatch.setattr(trial_mod, "train_many", lambda jobs, *a, **k: calls.extend(jobs) or many(jobs, *a, **k))
    again = run_search(search(tmp_path / "run", assessor="Medianstop", assessor_start=1))
    assert calls == [] and again.ranking == summary.ranking and again.stopped == summary.stopped


@pytest.mark.parametrize("argv, message", [
    (["--assessor", "Bogus"], "unknown assessor 'Bogus': choose one of Medianstop, Curvefitting"),
    (["--assessor", "medianstop", "--report-every", "0"], "assessor judges intermediate results: give --report-every"),
    (["--report-every", "-1"], "--report-every must be 0"),
    (["--assessor-start", "2"], "--assessor-start goes with an assessor"),
])
def test_assessor_options_are_checked_before_any_work(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    base = ["--dataset", "digits", "--space", "micro", "--proxy", "random2", "--device", "cpu", "--no-progress",
            "--out", str(out)]
    assert search_main([*base, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


def test_a_curves_file_of_the_previous_layout_is_read_and_upgraded(tmp_path):
    """curves.csv as nas wrote it before (column assessor, empty for a finished curve, points joined by ';')."""
    path = tmp_path / "curves.csv"
    path.write_text("proxy,arch,budget,repeat,every,status,assessor,val_acc_fraction_curve\n"
                    "random5,a,e4-b250,0,2,finished,,0.25;0.5\n"
                    "random5,b,e4-b250,0,2,stopped,Medianstop,0.125\n")
    store = CurveStore(path)
    finished, stopped = store.curves()
    assert (finished.status, finished.assessor, finished.val_acc) == ("finished", "", (0.25, 0.5))
    assert store.stopped("random5", "b", "e4-b250", 2, "Medianstop") == stopped and stopped.val_acc == (0.125,)
    store.add(Curve("random5", "c", "e4-b250", 0, 2, "finished", "", (0.375,)))
    store.add(finished)  # recorded already: nothing new
    lines = path.read_text().splitlines()
    assert lines[0] == "proxy,arch,budget,repeat,every,status,stopped_by,val_acc_fraction_curve"
    assert lines[1:] == ["random5,a,e4-b250,0,2,finished,none,0.25 0.5",
                         "random5,b,e4-b250,0,2,stopped,Medianstop,0.125", "random5,c,e4-b250,0,2,finished,none,0.375"]
    assert store.curves()[:2] == [finished, stopped]
