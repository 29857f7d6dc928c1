"""Shared fixtures. Tests run on the CPU, small and seeded.

MNIST comes from $DM_DATA_ROOT (CI points it at ../shared/data). Without it the MNIST tests skip, unless
$DM_REQUIRE_DATA=1 (set by .ci/run), when a missing MNIST fails them instead.
"""
import os
import signal
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# A shell without job control starts background commands (`pytest ... &`) with Ctrl-C ignored, and an ignored signal
# stays ignored in every process started from here: the commands whose Ctrl-C the tests check would never see it.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def _matplotlib_cache(tmp_path_factory):
    """One matplotlib cache for the session (its folder is under $HOME by default, which every test replaces): built
    once here, so no subprocess prints matplotlib's "building the font cache" notice among the lines a test reads."""
    folder = tmp_path_factory.mktemp("matplotlib")
    os.environ["MPLCONFIGDIR"] = str(folder)
    try:
        import matplotlib.font_manager  # noqa: F401  (builds the cache in MPLCONFIGDIR)
    except ImportError:  # dm_core alone installed: nothing of matplotlib's runs
        pass
    yield folder


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Avalanche and NNI write under $HOME: keep that inside the test's temp area."""
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture
def one_thread():
    """One torch thread for the test (``pytestmark = pytest.mark.usefixtures("one_thread")``): on a small shared CPU,
    extra threads only add contention (720 forwards take 13 s, not 90)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    """The continual package, imported with HOME in a temp dir (Avalanche writes ~/.avalanche when imported) and one
    torch thread."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        torch.set_num_threads(1)
        import continual

        yield continual


@pytest.fixture(scope="session")
def digits():
    from dm_core import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def mnist():
    from dm_core import DMError, load_dataset

    root = os.environ.get("DM_DATA_ROOT") or str(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    try:
        return load_dataset("mnist", root, download=False)
    except DMError as exc:
        if os.environ.get("DM_REQUIRE_DATA") == "1":
            pytest.fail(f"MNIST is required here (DM_REQUIRE_DATA=1): {exc}")
        pytest.skip(f"MNIST not available: {exc}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI ($DM_REQUIRE_ALL=1, set by .ci/run) a skipped test is a failed one: every test must really run there
    (MNIST present, network namespaces allowed, NNI and Avalanche installed)."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("DM_REQUIRE_ALL") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped, but $DM_REQUIRE_ALL=1 requires every test to run: {report.longrepr}"
