import numpy as np
import pytest

from engine_helpers import write_camvid
from urbanseg.data import DATASETS, CamVid, Cityscapes, DataError, FolderDataset
from urbanseg.data.io import read_mask, write_png
from urbanseg.data.labels import CAMVID_CLASSES


def test_cityscapes_maps_label_ids_to_train_ids(cityscapes_root):
    dataset = Cityscapes(cityscapes_root, "train")
    assert len(dataset) == 8
    sample = dataset.samples[0]
    raw = read_mask(sample.mask)
    _, mask = dataset[0]
    lut = {7: 0, 8: 1, 11: 2, 21: 8, 23: 10, 26: 13, 1: 255, 0: 255}
    for raw_id, train_id in lut.items():
        if (raw == raw_id).any():
            assert (mask[raw == raw_id] == train_id).all()
    assert dataset.labels.class_names[13] == "car"
    assert sample.group == sample.image.parent.name


def test_cityscapes_class_set_and_cities(cityscapes_root):
    dataset = Cityscapes(cityscapes_root, "train", classes={"road": ["road"], "car": ["car"]}, cities=["aachen"])
    assert len(dataset) == 2 and dataset.labels.class_names == ("road", "car")
    _, mask = dataset[0]
    assert set(np.unique(mask)) <= {0, 1, 255}


def test_cityscapes_errors_name_the_file(cityscapes_copy, tmp_path):
    with pytest.raises(ValueError, match="split: expected one of train, val, test"):
        Cityscapes(cityscapes_copy, "training")
    with pytest.raises(DataError, match=f"{tmp_path / 'nowhere'}/leftImg8bit/train: folder not found"):
        Cityscapes(tmp_path / "nowhere", "train")

    label = sorted((cityscapes_copy / "gtFine" / "val").rglob("*_labelIds.png"))[0]
    raw = read_mask(label)
    raw[3, 3] = 200
    write_png(label, raw)
    dataset = Cityscapes(cityscapes_copy, "val")
    with pytest.raises(ValueError, match=f"{label}: unknown label values \\[200\\]"):
        dataset[0]

    image = dataset.samples[1].image
    image.write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=f"{image}: not a readable image"):
        dataset[1]

    write_png(dataset.samples[2].mask, raw[:10, :10])
    with pytest.raises(DataError, match="label size 10x10 differs from image"):
        dataset[2]

    orphan = sorted((cityscapes_copy / "gtFine" / "train").rglob("*_labelIds.png"))[0]
    orphan.unlink()
    with pytest.raises(DataError, match="no matching _gtFine_labelIds.png"):
        Cityscapes(cityscapes_copy, "train")


def test_camvid_layout(tmp_path):
    write_camvid(tmp_path, {"train": 3, "val": 3}, (24, 32))
    dataset = CamVid(tmp_path, "val")
    assert len(dataset) == 3 and dataset.labels.num_classes == len(CAMVID_CLASSES) == 11
    raw = read_mask(dataset.samples[0].mask)
    _, mask = dataset[0]
    np.testing.assert_array_equal(mask[raw < 11], raw[raw < 11])
    assert (mask[raw == 11] == 255).all()
    (tmp_path / "valannot" / "0001TP_000001.png").unlink()
    with pytest.raises(DataError, match="0001TP_000001.png: no file with the same name"):
        CamVid(tmp_path, "val")


def test_folder_dataset_index_and_colour_masks(tmp_path):
    rng = np.random.default_rng(1)
    write_png(tmp_path / "img" / "a.png", rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    index_mask = rng.choice(np.array([0, 1, 2, 9], np.uint8), size=(8, 8))
    write_png(tmp_path / "idx" / "a.png", index_mask)
    dataset = FolderDataset(tmp_path / "img", tmp_path / "idx", ["a", "b", "c"], ignore_index=9)
    _, mask = dataset[0]
    np.testing.assert_array_equal(mask, np.where(index_mask == 9, 255, index_mask))

    palette = [(10, 20, 30), (200, 0, 0), (0, 200, 0)]
    colour = np.array(palette, np.uint8)[index_mask % 3]
    write_png(tmp_path / "rgb" / "a.png", colour)
    dataset = FolderDataset(tmp_path / "img", tmp_path / "rgb", ["a", "b", "c"], palette=palette)
    _, mask = dataset[0]
    np.testing.assert_array_equal(mask, index_mask % 3)
    colour[0, 0] = (1, 1, 1)
    write_png(tmp_path / "rgb" / "a.png", colour)
    with pytest.raises(DataError, match=r"a.png: colour \(1, 1, 1\) is not in the palette"):
        dataset[0]


def test_folder_without_palette_rejects_colour_masks_and_bad_values(tmp_path):
    write_png(tmp_path / "img" / "a.png", np.zeros((4, 4, 3), np.uint8))
    write_png(tmp_path / "msk" / "a.png", np.zeros((4, 4, 3), np.uint8))
    dataset = FolderDataset(tmp_path / "img", tmp_path / "msk", ["a", "b"])
    with pytest.raises(ValueError, match="expected a single-channel label image"):
        dataset[0]
    write_png(tmp_path / "msk" / "a.png", np.full((4, 4), 5, np.uint8))
    with pytest.raises(ValueError, match=r"unknown label values \[5\]"):
        dataset[0]
    with pytest.raises(DataError, match="folder not found"):
        FolderDataset(tmp_path / "missing", tmp_path / "msk", ["a"])


def test_registry_names_every_dataset():
    assert DATASETS == {"cityscapes": Cityscapes, "camvid": CamVid, "folder": FolderDataset}


def test_build_dataset_goes_through_the_registry(cityscapes_root, monkeypatch):
    """Adding a dataset is a class plus one line in DATASETS: build_dataset finds it by name."""
    from urbanseg import data
    from urbanseg.config import DataConfig

    class EveryOtherCity(Cityscapes):
        options = ("classes",)

        @classmethod
        def from_config(cls, cfg, split, transform=None, loader=None):
            return cls(cfg.root, split, cities=["aachen"], transform=transform, loader=loader)

    monkeypatch.setitem(data.DATASETS, "aachen_only", EveryOtherCity)
    dataset = data.build_dataset(DataConfig(dataset="aachen_only", root=str(cityscapes_root)), "train")
    assert isinstance(dataset, EveryOtherCity) and {s.group for s in dataset.samples} == {"aachen"}
    with pytest.raises(ValueError, match="data.dataset: expected one of cityscapes, camvid, folder, aachen_only, got 'x'"):
        data.build_dataset(DataConfig(dataset="x", root=str(cityscapes_root)), "train")


@pytest.mark.parametrize("dataset, key, value, owner", [
    ("camvid", "classes", "all", "cityscapes"),
    ("cityscapes", "class_names", ["a", "b"], "folder"),
    ("cityscapes", "palette", [[1, 2, 3]], "folder"),
    ("camvid", "ignore_index", 11, "folder"),
])
def test_keys_of_another_dataset_are_an_error_not_ignored(tmp_path, dataset, key, value, owner):
    from urbanseg.config import DataConfig
    from urbanseg.data import build_dataset
    from urbanseg.errors import ConfigError

    cfg = DataConfig(dataset=dataset, root=str(tmp_path), **{key: value})
    with pytest.raises(ConfigError, match=f"data.{key}: only the {owner} dataset reads it, but data.dataset is "
                                          f"'{dataset}'; remove it"):
        build_dataset(cfg, "train")
