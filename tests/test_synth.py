import json

import numpy as np
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.preparation.json2labelImg import createLabelImage

from urbanseg.data.cityscapes import Cityscapes
from urbanseg.data.io import read_mask
from urbanseg.data.labels import CITYSCAPES_BY_ID, cityscapes_color_image, cityscapes_label_set
from urbanseg.data.synth import render_scene, write_dataset


def _tree_bytes(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    write_dataset(tmp_path / "a", {"train": 3, "val": 1}, size=(64, 128), seed=3)
    write_dataset(tmp_path / "b", {"train": 3, "val": 1}, size=(64, 128), seed=3, workers=2)
    write_dataset(tmp_path / "c", {"train": 3, "val": 1}, size=(64, 128), seed=4)
    a, b, c = (_tree_bytes(tmp_path / x) for x in "abc")
    assert len(a) == 4 * 5  # image, labelIds, instanceIds, color, polygons per scene
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_layout_and_file_contents(cityscapes_root):
    images = sorted((cityscapes_root / "leftImg8bit" / "train").glob("*/*_leftImg8bit.png"))
    assert len(images) == 8
    assert {p.parent.name for p in images} == {"aachen", "bochum", "bremen", "cologne"}
    stem = images[0].name[: -len("_leftImg8bit.png")]
    gt = cityscapes_root / "gtFine" / "train" / images[0].parent.name
    label_ids = read_mask(gt / f"{stem}_gtFine_labelIds.png")
    instances = read_mask(gt / f"{stem}_gtFine_instanceIds.png")
    colour = read_mask(gt / f"{stem}_gtFine_color.png")
    assert label_ids.dtype == np.uint8 and label_ids.shape == (64, 128)
    assert instances.dtype == np.uint16
    np.testing.assert_array_equal(colour, cityscapes_color_image(label_ids))
    # instance ids: labelId * 1000 + k for things, the labelId itself for stuff
    things = instances >= 1000
    np.testing.assert_array_equal(instances[things] // 1000, label_ids[things])
    np.testing.assert_array_equal(instances[~things], label_ids[~things])
    assert all(CITYSCAPES_BY_ID[i].has_instances for i in np.unique(label_ids[things]))


def test_polygons_rasterise_with_the_official_tool_to_our_label_ids(cityscapes_root):
    for polygons in sorted((cityscapes_root / "gtFine").rglob("*_gtFine_polygons.json"))[:6]:
        annotation = Annotation()
        annotation.fromJsonFile(str(polygons))
        official = np.asarray(createLabelImage(annotation, "ids"))
        ours = read_mask(str(polygons).replace("_polygons.json", "_labelIds.png"))
        np.testing.assert_array_equal(official, ours)
        assert json.loads(polygons.read_text())["imgWidth"] == 128


def test_a_hundred_scenes_cover_at_least_15_of_the_19_classes():
    labels = cityscapes_label_set()
    seen = np.zeros(256, bool)
    for seed in range(100):
        seen[labels.encode(render_scene(seed, 96, 192)["label_ids"])] = True
    assert seen[:19].sum() >= 15, [n for n, s in zip(labels.class_names, seen) if not s]


def test_scenes_have_road_sky_and_an_ego_hood_at_the_bottom():
    scene = render_scene(11, 128, 256)
    ids = scene["label_ids"]
    assert (ids[-1] == 1).mean() > 0.9  # ego vehicle along the bottom row
    assert (ids[0] == 23).any() or (ids[0] == 11).any()  # sky or buildings at the top
    assert (ids == 7).mean() > 0.05  # road
    assert scene["image"].std() > 20  # a textured photo, not flat colour


def test_dataset_reads_what_synth_wrote(cityscapes_root):
    dataset = Cityscapes(cityscapes_root, "val")
    assert len(dataset) == 5 and dataset.labels.num_classes == 19
    image, mask = dataset[0]
    assert image.shape == (64, 128, 3) and image.dtype == np.uint8
    assert mask.shape == (64, 128) and set(np.unique(mask)) <= set(range(19)) | {255}
