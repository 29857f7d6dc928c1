import pytest
import torch

from dm_core import DMError, SyntheticSet


def make_set():
    return SyntheticSet(torch.randn(6, 1, 8, 8), torch.tensor([0, 0, 1, 1, 2, 2]),
                        {"dataset": "digits", "method": "dm", "ipc": 2, "mean": (0.5,), "std": (0.25,)})


def test_round_trip_with_weights_only(tmp_path):
    original = make_set()
    path = original.save(tmp_path / "set.pt")
    raw = torch.load(path, weights_only=True)  # plain types only
    assert raw["format"].startswith("dm_core.synthetic_set")
    loaded = SyntheticSet.load(path)
    assert torch.equal(loaded.images, original.images) and torch.equal(loaded.labels, original.labels)
    assert loaded.meta["mean"] == [0.5] and loaded.meta["method"] == "dm"


def test_reads_original_dm_files(tmp_path):
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    torch.save({"data": [[images, labels]], "accs_all_exps": {}}, tmp_path / "res_DM.pt")
    loaded = SyntheticSet.load(tmp_path / "res_DM.pt")
    assert torch.equal(loaded.images, images) and loaded.meta["method"] == "dm-original"


@pytest.mark.parametrize("content", [b"not a torch file", b""])
def test_corrupt_files_are_refused_cleanly(tmp_path, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    with pytest.raises(DMError, match="not a readable synthetic-set file"):
        SyntheticSet.load(bad)


def test_foreign_torch_files_are_refused(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "model.pt")
    with pytest.raises(DMError, match="not a synthetic set"):
        SyntheticSet.load(tmp_path / "model.pt")
    with pytest.raises(DMError, match="no synthetic-set file"):
        SyntheticSet.load(tmp_path / "missing.pt")


def test_failed_save_leaves_the_good_file(tmp_path, monkeypatch):
    path = make_set().save(tmp_path / "set.pt")
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        SyntheticSet(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), {}).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["set.pt"]  # no temp file left behind


def test_grid_png(tmp_path):
    from PIL import Image

    path = make_set().save_grid_png(tmp_path / "grid.png")
    with Image.open(path) as im:  # 8x8 images enlarged 8x; 2 images per row, 3 class rows, 1-pixel padding
        assert im.size == (2 * 65 + 1, 3 * 65 + 1) and im.mode == "L"
