import re
import shutil

import numpy as np
import pytest
from cityscapesscripts.preparation import createTrainIdLabelImgs

from urbanseg.cli import main
from urbanseg.data.io import read_mask, write_png
from urbanseg.data.prepare import check_cityscapes


def test_generated_tree_is_reported_clean(cityscapes_root, capsys):
    assert main(["prepare", "cityscapes", "--root", str(cityscapes_root)]) == 0
    out = capsys.readouterr().out
    assert "no problems found" in out
    assert re.search(r"train\s+\(all 4 cities\)\s+8\n", out)
    assert re.search(r"val\s+frankfurt\s+3\n", out)


def test_write_train_ids_matches_the_official_script(cityscapes_copy, tmp_path, monkeypatch):
    official_root = tmp_path / "official"
    shutil.copytree(cityscapes_copy, official_root)
    monkeypatch.setenv("CITYSCAPES_DATASET", str(official_root))
    createTrainIdLabelImgs.main()

    report = check_cityscapes(cityscapes_copy, write_train_ids=True, progress=False)
    assert report.ok and report.train_ids_written == 15
    theirs = sorted(official_root.rglob("*_gtFine_labelTrainIds.png"))
    assert len(theirs) == 15
    for official_file in theirs:
        ours = cityscapes_copy / official_file.relative_to(official_root)
        np.testing.assert_array_equal(read_mask(ours), read_mask(official_file))


def _first(root, pattern):
    return sorted(root.rglob(pattern))[0]


def test_problems_are_named_and_exit_non_zero(cityscapes_copy, capsys):
    missing = _first(cityscapes_copy / "gtFine" / "train", "*_labelIds.png")
    missing.unlink()
    corrupt = _first(cityscapes_copy / "leftImg8bit" / "val", "*.png")
    corrupt.write_bytes(b"not a png")
    unknown = sorted((cityscapes_copy / "gtFine" / "val").rglob("*_labelIds.png"))[-1]
    labels = read_mask(unknown)
    labels[0, 0] = 99
    write_png(unknown, labels)
    small = sorted((cityscapes_copy / "gtFine" / "test").rglob("*_labelIds.png"))[0]
    write_png(small, read_mask(small)[:32])

    assert main(["prepare", "cityscapes", "--root", str(cityscapes_copy)]) == 1
    out = capsys.readouterr().out
    assert "4 problem(s)" in out
    assert f"{missing.name.replace('_gtFine_labelIds', '_leftImg8bit')}: no matching _gtFine_labelIds.png" in out
    assert f"{corrupt}: not a readable image" in out
    assert f"{unknown}: unknown label values [99]" in out
    assert f"{small}: label size 128x32 differs from image" in out


def test_not_a_cityscapes_root(tmp_path, capsys):
    assert main(["prepare", "cityscapes", "--root", str(tmp_path)]) == 1
    assert f"{tmp_path}: expected folders leftImg8bit/ and gtFine/" in capsys.readouterr().out


def test_prepare_fills_the_cache(cityscapes_root, tmp_path):
    report = check_cityscapes(cityscapes_root, cache_dir=tmp_path / "cache", cache_size=(32, 64), progress=False)
    assert report.ok
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 2 * 15
