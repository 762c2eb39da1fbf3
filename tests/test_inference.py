import json

import numpy as np
import pytest
import torch
from PIL import Image

import urbanseg
from urbanseg.cli import main
from urbanseg.data.io import read_image, read_mask, write_png
from urbanseg.data.labels import CITYSCAPES_BY_ID


def test_python_api_accepts_paths_pil_and_arrays(tiny_checkpoint, cityscapes_root):
    predictor = urbanseg.load(tiny_checkpoint, device="cpu")
    path = sorted((cityscapes_root / "leftImg8bit" / "val").rglob("*.png"))[0]
    array = read_image(path)
    from_path = predictor.predict(path)
    assert from_path.shape == (64, 128) and from_path.dtype == np.uint8 and from_path.max() < 19
    np.testing.assert_array_equal(predictor.predict(Image.fromarray(array)), from_path)
    np.testing.assert_array_equal(predictor.predict(array), from_path)
    probs = predictor.predict_proba(array)
    assert probs.shape == (19, 64, 128)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(probs.argmax(axis=0), from_path)
    with pytest.raises(ValueError, match="image: expected HxWx3 RGB"):
        predictor.predict(np.zeros((4, 4, 5), np.uint8))


def test_sliding_window_on_an_image_that_fits_equals_whole(tiny_checkpoint, cityscapes_root):
    predictor = urbanseg.load(tiny_checkpoint, device="cpu", precision="fp32")
    assert predictor.window == (64, 128)
    image = read_image(sorted((cityscapes_root / "leftImg8bit" / "val").rglob("*.png"))[0])
    np.testing.assert_allclose(predictor.predict_proba(image, mode="slide"), predictor.predict_proba(image), atol=1e-6)
    predictor.window = (40, 72)  # smaller windows overlap: still a full-size, normalised result
    slid = predictor.predict_proba(image, mode="slide")
    assert slid.shape == (19, 64, 128)
    np.testing.assert_allclose(slid.sum(axis=0), 1.0, atol=1e-4)
    tta = predictor.predict_proba(image, scales=(0.75, 1.0, 1.25), flip=True)
    np.testing.assert_allclose(tta.sum(axis=0), 1.0, atol=1e-4)
    # flipping the input mirrors a flip-averaged prediction exactly
    np.testing.assert_allclose(predictor.predict_proba(image[:, ::-1], flip=True),
                               predictor.predict_proba(image, flip=True)[:, :, ::-1], atol=1e-5)


def test_evaluate_a_checkpoint_at_full_resolution(tiny_checkpoint, cityscapes_root, tmp_path, capsys):
    code = main(["evaluate", str(tiny_checkpoint), "--data-root", str(cityscapes_root), "--split", "val",
                 "--mode", "slide", "--tta", "flip", "--scales", "1.0,1.25", "--out", str(tmp_path)])
    assert code == 0
    assert "pixel accuracy" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["settings"]["checkpoint"] == str(tiny_checkpoint)
    assert metrics["settings"]["mode"] == "slide"
    assert metrics["settings"]["scales"] == [1.0, 1.25] and metrics["settings"]["flip"] is True
    assert metrics["settings"]["resolution"] == [64, 128]
    total = np.array(metrics["confusion_matrix"]).sum() + sum(metrics["unassigned_predictions"])
    evaluated_ids = [k for k, v in CITYSCAPES_BY_ID.items() if 0 <= v.train_id < 255]
    labelled = sum(np.isin(read_mask(p), evaluated_ids).sum()
                   for p in (cityscapes_root / "gtFine" / "val").rglob("*_labelIds.png"))
    assert total == labelled  # every labelled pixel at full resolution counted once
    assert 0.0 <= metrics["miou"] <= 1.0 and "iiou" in metrics


def test_predict_writes_every_format_and_skips_unreadable_files(tiny_checkpoint, cityscapes_root, tmp_path, capsys):
    images = tmp_path / "images"
    sources = sorted((cityscapes_root / "leftImg8bit" / "val").rglob("*.png"))[:2]
    for source in sources:
        write_png(images / source.name, read_image(source))
    (images / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    code = main(["predict", str(tiny_checkpoint), str(images), str(tmp_path / "nothing*.png").replace("nothing*", "images/*"),
                 "--out", str(out), "--format", "color,overlay,labelids,trainids,probs,entropy"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"{images / 'broken.png'}: not a readable image" in err
    stem = sources[0].stem
    labelids = read_mask(out / f"{stem}_labelIds.png")
    trainids = read_mask(out / f"{stem}_trainIds.png")
    assert labelids.shape == (64, 128) and set(np.unique(labelids)) <= {k for k, v in CITYSCAPES_BY_ID.items() if v.train_id < 19}
    for label_id in np.unique(labelids):
        assert (trainids[labelids == label_id] == CITYSCAPES_BY_ID[int(label_id)].train_id).all()
    assert read_image(out / f"{stem}_color.png").shape == (64, 128, 3)
    assert read_image(out / f"{stem}_overlay.png").shape[0] > 64  # legend strip underneath
    assert np.load(out / f"{stem}_probs.npy").shape == (19, 64, 128)
    assert read_image(out / f"{stem}_entropy.png").shape == (64, 128, 3)
    assert len(list(out.iterdir())) == 2 * 6


def test_bad_checkpoints_and_arguments(tmp_path, capsys, tiny_checkpoint):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert main(["predict", str(bad), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert f"{bad}: not a readable urbanseg checkpoint" in capsys.readouterr().err
    assert main(["predict", str(tiny_checkpoint), str(tmp_path / "none.png"), "--out", str(tmp_path / "o")]) == 2
    assert "none.png: no such file or folder" in capsys.readouterr().err
    assert main(["predict", str(tiny_checkpoint), str(bad), "--out", str(tmp_path / "o"), "--format", "colour"]) == 2
    assert "--format: unknown format 'colour'" in capsys.readouterr().err
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    assert main(["predict", str(tmp_path / "foreign.pt"), str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "not an urbanseg checkpoint" in capsys.readouterr().err
