import os

import numpy as np
import pytest

from urbanseg.data import cache as cache_module
from urbanseg.data import Cityscapes, DecodedCache, DirectLoader
from urbanseg.data.io import read_mask, write_png


def test_cached_arrays_equal_direct_decoding(cityscapes_root, tmp_path):
    direct = Cityscapes(cityscapes_root, "val")
    cached = Cityscapes(cityscapes_root, "val", loader=DecodedCache(tmp_path))
    for i in range(len(direct)):
        for a, b in zip(direct[i], cached[i]):
            np.testing.assert_array_equal(a, b)
    again = Cityscapes(cityscapes_root, "val", loader=DecodedCache(tmp_path))
    image, _ = again.loader.pair(again.samples[0].image, again.samples[0].mask)
    assert isinstance(image, np.memmap)


def test_cache_is_reused_without_decoding(cityscapes_root, tmp_path, monkeypatch):
    loader = DecodedCache(tmp_path, size=(32, 64))
    dataset = Cityscapes(cityscapes_root, "val", loader=loader)
    first = [dataset[i] for i in range(len(dataset))]
    assert first[0][0].shape == (32, 64, 3) and first[0][1].shape == (32, 64)

    def fail(path):
        raise AssertionError(f"decoded {path} although it is cached")

    monkeypatch.setattr(cache_module, "read_image", fail)
    monkeypatch.setattr(cache_module, "read_mask", fail)
    second = [Cityscapes(cityscapes_root, "val", loader=DecodedCache(tmp_path, (32, 64)))[i] for i in range(5)]
    for (a, b), (c, d) in zip(first, second):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    with pytest.raises(AssertionError, match="decoded"):  # another size is another entry
        DecodedCache(tmp_path, (16, 32)).pair(dataset.samples[0].image, dataset.samples[0].mask)


def test_changed_source_is_decoded_again(cityscapes_copy, tmp_path):
    dataset = Cityscapes(cityscapes_copy, "val", loader=DecodedCache(tmp_path))
    _, before = dataset[0]
    label = dataset.samples[0].mask
    raw = read_mask(label)
    raw[:] = 7  # all road
    write_png(label, raw)
    stat = label.stat()
    os.utime(label, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    _, after = dataset[0]
    assert (after == 0).all() and not (before == 0).all()


def test_direct_loader_resizes_masks_with_nearest_neighbour(cityscapes_root):
    dataset = Cityscapes(cityscapes_root, "val", loader=DirectLoader((40, 80)))
    _, mask = dataset[0]
    raw_classes = set(np.unique(Cityscapes(cityscapes_root, "val")[0][1]))
    assert mask.shape == (40, 80) and set(np.unique(mask)) <= raw_classes
