import numpy as np
import pytest
from cityscapesscripts.helpers import labels as official

from urbanseg.data.labels import (
    CAMVID_CLASSES,
    CITYSCAPES_LABELS,
    camvid_label_set,
    cityscapes_label_set,
    folder_label_set,
)



def test_cityscapes_table_matches_cityscapesscripts_field_by_field():
    theirs = official.labels
    assert len(CITYSCAPES_LABELS) == len(theirs) == 35
    for ours, ref in zip(CITYSCAPES_LABELS, theirs):
        assert ours.name == ref.name
        assert ours.id == ref.id
        assert ours.train_id == ref.trainId
        assert ours.category == ref.category
        assert ours.cat_id == ref.categoryId
        assert ours.has_instances == ref.hasInstances
        assert ours.ignore_in_eval == ref.ignoreInEval
        assert tuple(ours.color) == tuple(ref.color)


def test_official_lookup_tables_follow_the_table():
    labels = cityscapes_label_set()
    assert labels.num_classes == 19
    for ref in official.labels:
        if ref.id < 0:
            continue
        expected = ref.trainId if 0 <= ref.trainId < 255 else 255
        assert labels.raw_to_train[ref.id] == expected, ref.name
    for train_id, ref in official.trainId2label.items():
        if 0 <= train_id < 19:
            assert labels.class_names[train_id] == ref.name
            assert tuple(labels.palette[train_id]) == ref.color
            assert labels.categories[train_id] == ref.category
            assert labels.train_to_raw[train_id] == ref.id
    # ids 34..255 are not Cityscapes labels
    assert labels.known_raw[:34].all() and not labels.known_raw[34:].any()


def test_encode_maps_ids_and_rejects_unknown_values_naming_the_source():
    labels = cityscapes_label_set()
    raw = np.array([[7, 8, 0], [26, 33, 1]], np.uint8)
    np.testing.assert_array_equal(labels.encode(raw), [[0, 1, 255], [13, 18, 255]])
    with pytest.raises(ValueError, match=r"x_gtFine_labelIds.png: unknown label values \[40, 77\]"):
        labels.encode(np.array([[40, 7, 77]], np.uint8), source="x_gtFine_labelIds.png")


def test_class_set_as_configuration():
    every = cityscapes_label_set("all")
    assert every.num_classes == 27 and every.class_names[0] == "road" and "parking" in every.class_names
    merged = cityscapes_label_set({"flat": ["road", "sidewalk", "parking"], "vehicle": ["car", "truck", "bus"]})
    raw = np.array([7, 8, 9, 26, 27, 11, 0], np.uint8)
    np.testing.assert_array_equal(merged.encode(raw), [0, 0, 0, 1, 1, 255, 255])
    assert merged.categories == ("flat", "vehicle")
    # dropping rare classes: the official 19 without train and motorcycle
    names = [l.name for l in sorted(CITYSCAPES_LABELS, key=lambda l: l.train_id) if 0 <= l.train_id < 255]
    kept = {n: [n] for n in names if n not in ("train", "motorcycle")}
    dropped = cityscapes_label_set(kept)
    assert dropped.num_classes == 17
    np.testing.assert_array_equal(dropped.encode(np.array([31, 32, 33], np.uint8)), [255, 255, 16])


@pytest.mark.parametrize(
    "classes, message",
    [
        ("nineteen", "data.classes: expected 'official', 'all' or a mapping"),
        ({"x": ["road", "roadd"]}, "data.classes.x: unknown Cityscapes label 'roadd'"),
        ({"x": ["road"], "y": ["road"]}, "data.classes.y: label 'road' is already in another class"),
        ({"x": []}, "data.classes.x: lists no Cityscapes labels"),
    ],
)
def test_class_set_errors_name_the_key(classes, message):
    with pytest.raises(ValueError, match=message):
        cityscapes_label_set(classes)


def test_camvid_table():
    labels = camvid_label_set()
    assert labels.num_classes == 11 == len(CAMVID_CLASSES)
    np.testing.assert_array_equal(labels.encode(np.array([0, 10, 11], np.uint8)), [0, 10, 255])
    with pytest.raises(ValueError, match="unknown label values \\[12\\]"):
        labels.encode(np.array([12], np.uint8))


def test_folder_label_set_and_colorize():
    labels = folder_label_set(["a", "b"], ignore_index=9, palette=[(1, 2, 3), (4, 5, 6)])
    np.testing.assert_array_equal(labels.encode(np.array([0, 1, 9], np.uint8)), [0, 1, 255])
    np.testing.assert_array_equal(labels.colorize(np.array([1, 255], np.uint8)), [[4, 5, 6], [0, 0, 0]])
    with pytest.raises(ValueError, match="palette: expected 2 colours"):
        folder_label_set(["a", "b"], palette=[(1, 2, 3)])
    with pytest.raises(ValueError, match="ignore_index"):
        folder_label_set(["a", "b"], ignore_index=1)
