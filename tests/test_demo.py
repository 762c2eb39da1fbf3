"""The demo end to end with tiny settings: every promised file exists and is readable."""
import json
import math

import pytest

from urbanseg.cli import main
from urbanseg.data.io import read_image
from urbanseg.demo import run_demo


@pytest.mark.slow
def test_demo_writes_everything_it_promises(tmp_path, capsys):
    out = tmp_path / "demo"
    result = run_demo(out, train=8, val=3, size=(64, 128), progress=False,
                      overrides=["trainer.max_minutes=null", "trainer.max_steps=4", "data.batch_size=4",
                                 "data.crop=[64, 128]", "data.workers=0"])
    printed = capsys.readouterr().out
    assert "validation mIoU" in printed and "five largest classes" in printed and "five smallest classes" in printed
    assert str(out / "run" / "report.html") in printed and str(out / "predictions") in printed

    metrics = json.loads((out / "run" / "eval-val" / "metrics.json").read_text())
    assert metrics["settings"]["resolution"] == [64, 128]
    for key in ("miou", "pixel_accuracy", "mean_accuracy", "category_miou", "fw_iou"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert result["metrics"]["miou"] == pytest.approx(metrics["miou"])

    run = out / "run"
    for path in ("config.yaml", "metrics.csv", "checkpoints/best.pt", "checkpoints/last.pt", "figures/curves.png",
                 "figures/class_iou.png", "figures/confusion_matrix.png", "eval-val/confusion_matrix.png"):
        assert (run / path).stat().st_size > 0, path
    for png in [*(run / "figures").glob("*.png"), *(run / "samples").glob("*.png")]:
        assert read_image(png).ndim == 3
    predictions = sorted((out / "predictions").iterdir())
    assert len(predictions) == 3 * 3  # colour, overlay and entropy for 3 validation images
    assert all(read_image(p).shape[1] == 128 for p in predictions)
    report = (run / "report.html").read_text()
    assert report.count("data:image/png;base64") >= 4 and "Per-class IoU" in report and "Config" in report

    # running it again replaces the demo folder; another folder is never overwritten
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.txt").write_text("keep me")
    assert main(["demo", "--out", str(other)]) == 2
    assert "exists and is not a demo folder" in capsys.readouterr().err
    assert (other / "thesis.txt").read_text() == "keep me"


def test_training_gets_the_time_the_other_steps_leave(tmp_path, capsys):
    from urbanseg.demo import AFTER_TRAINING_SECONDS, training_budget

    assert training_budget(5.5, 15.0) == pytest.approx((5.5 * 60 - 15.0 - AFTER_TRAINING_SECONDS) / 60)
    with pytest.raises(ValueError, match="--minutes 1: too short; generating the data takes 50 s"):
        training_budget(1.0, 50.0)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--minutes", "0.9"]) == 2  # 54 s: ~10 s data, 20 s after, 24 s left
    assert "--minutes 0.9: too short; generating the data takes" in capsys.readouterr().err
    assert main(["demo", "--out", str(out), "--minutes", "nan"]) == 2
    assert "--minutes nan: expected a positive number of minutes" in capsys.readouterr().err
    assert not out.exists()  # refused before writing anything


def test_the_recipe_follows_the_hardware(monkeypatch):
    """fp32-only CPUs get the lighter model; a GPU or native bf16 gets ResNet-18; both recipes load."""
    import torch

    from urbanseg import demo
    from urbanseg.config import load_config
    from urbanseg.engine import precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert demo.demo_recipe() == demo.RECIPE_FP32
    assert load_config(demo.RECIPE_FP32).model.encoder == "tu-regnetx_002"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert demo.demo_recipe() == demo.RECIPE
    assert load_config(demo.RECIPE).model.encoder == "resnet18"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert demo.demo_recipe() == demo.RECIPE
