"""continual.run's class orders in worker processes (issue 23): the rows are those of one process, whatever the
number of workers; each order's repeats share its memory files."""
from __future__ import annotations

import pytest

TINY_NET = "convnet-d1-w8-relu-instancenorm-avgpool"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cl():
    pytest.importorskip("avalanche")
    import continual

    return continual


def config(cl, out, **overrides):
    values = dict(out=out, dataset="digits", steps=2, methods=("random", "herding"), ipc=2, seeds=(0, 1),
                  repeats=2, epochs=3, model=TINY_NET, max_train_per_class=30, device="cpu", progress=False,
                  method_options={"herding": {"epochs": 1}})
    values.update(overrides)
    return cl.ContinualConfig(**values)


def rows(cl, path):
    frame = cl.read_results(path)
    key = ["method", "seed", "repeat", "step"]
    return {tuple(r[k] for k in key): (r["accuracy_fraction"], tuple(r["experience_accuracy_fraction"]))
            for r in frame.to_dict("records")}


def test_two_workers_write_the_rows_one_process_writes(cl, tmp_path):
    alone = cl.run_continual(config(cl, tmp_path / "one", workers=1))
    together = cl.run_continual(config(cl, tmp_path / "two", workers=2))
    first, second = rows(cl, alone), rows(cl, together)
    assert len(first) == 2 * 2 * 2 * 2 and first == second
    log = (tmp_path / "two" / "log.txt").read_text()
    assert "(2 workers)" in log and log.count("step=1 ") == 8
    # the repeats of an order shared its memory files: one per (method, seed, step)
    assert len(list((tmp_path / "two" / "memory").glob("*/seed*/step*.pt"))) == 2 * 2 * 2
    # a rerun finds everything done and trains nothing
    again = cl.run_continual(config(cl, tmp_path / "two", workers=2))
    assert rows(cl, again) == second and "(2 workers)" not in (tmp_path / "two" / "log.txt").read_text()[len(log):]
