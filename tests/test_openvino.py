"""The OpenVINO backend (openvino_model.py): the same exported file and Predictor API as ONNX
Runtime, the same numbers in f32, safe from several threads, and bad inputs in one line."""
import importlib
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import urbanseg
from urbanseg.data.io import read_image
from urbanseg.errors import CheckpointError, ConfigError
from urbanseg.export import export_onnx

import urbanseg.openvino_model  # noqa: F401  (the test extra installs openvino)


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint exported twice: at its training size (fixed) and with dynamic sizes."""
    folder = tmp_path_factory.mktemp("openvino")
    export_onnx(tiny_checkpoint, folder / "fixed.onnx")
    export_onnx(tiny_checkpoint, folder / "dynamic.onnx", dynamic=True)
    return folder


@pytest.fixture(scope="module")
def image(cityscapes_root):
    return read_image(sorted((cityscapes_root / "leftImg8bit" / "val").rglob("*.png"))[0])


@pytest.mark.parametrize("name", ["fixed.onnx", "dynamic.onnx"])
def test_openvino_in_f32_gives_onnx_runtimes_probabilities_in_every_mode(exported, image, name):
    reference = urbanseg.load(exported / name)  # ONNX Runtime
    predictor = urbanseg.load(exported / name, backend="openvino", precision="fp32")
    assert predictor.backend.name == "openvino" and predictor.backend.precision == "f32"
    assert predictor.labels == reference.labels and predictor.preset == reference.preset
    assert predictor.config == reference.config and predictor.window == reference.window
    for options in ({}, {"mode": "slide"}, {"flip": True, "scales": (0.75, 1.25)}):
        np.testing.assert_allclose(predictor.predict_proba(image, **options), reference.predict_proba(image, **options),
                                   atol=1e-4)


def test_the_default_precision_is_the_plugins_choice_and_still_predicts(exported, image):
    predictor = urbanseg.load(exported / "fixed.onnx", backend="openvino")
    assert predictor.backend.precision in ("f32", "bf16", "f16")
    probs = predictor.predict_proba(image)
    assert probs.shape == (19, *image.shape[:2])
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-3)
    agreement = (probs.argmax(0) == urbanseg.load(exported / "fixed.onnx").predict(image)).mean()
    assert agreement >= 0.95  # a 6-step model's classes are near ties, the most bf16 can flip


def test_threads_share_one_compiled_model_safely(exported, image):
    predictor = urbanseg.load(exported / "fixed.onnx", backend="openvino", precision="fp32")
    expected = predictor.predict_proba(image)
    images = [image, image[::-1].copy(), image] * 3
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(predictor.predict_proba, images))
    for result, source in zip(results, images):
        reference = expected if source is image else predictor.predict_proba(source)
        np.testing.assert_allclose(result, reference, atol=1e-6)


def test_bad_inputs_fail_in_one_line(exported, tiny_checkpoint, tmp_path):
    def one_line(error_class, match, *args, **kwargs):
        with pytest.raises(error_class, match=match) as caught:
            urbanseg.load(*args, **kwargs)
        assert "\n" not in str(caught.value)

    one_line(CheckpointError, "missing.onnx: exported model not found", tmp_path / "missing.onnx", backend="openvino")
    (tmp_path / "text.onnx").write_text("not a model")
    one_line(CheckpointError, "text.onnx: not a model OpenVINO can read", tmp_path / "text.onnx", backend="openvino")
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["logits"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 4, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "foreign.onnx")
    one_line(CheckpointError, "foreign.onnx: an ONNX model without urbanseg metadata", tmp_path / "foreign.onnx",
             backend="openvino")
    one_line(ConfigError, "^device: the OpenVINO backend runs on the CPU here, got 'cuda'", exported / "fixed.onnx",
             backend="openvino", device="cuda")
    one_line(ConfigError, "^precision: expected one of auto, fp32, bf16 for the OpenVINO backend, got 'int4'",
             exported / "fixed.onnx", backend="openvino", precision="int4")
    one_line(ConfigError, "^backend: expected one of", exported / "fixed.onnx", backend="tensorrt")
    one_line(ConfigError, r"^backend: openvino runs exported models \(.onnx\)", tiny_checkpoint, backend="openvino")


def test_without_the_extra_the_backend_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    monkeypatch.delitem(sys.modules, "urbanseg.openvino_model")
    with pytest.raises(ConfigError, match=r'^openvino: not installed; .* `pip install "urbanseg\[openvino\]"`$'):
        importlib.import_module("urbanseg.openvino_model")


def test_predict_and_evaluate_take_the_backend_from_the_command_line(exported, cityscapes_root, tmp_path, capsys):
    from urbanseg.cli import main
    from urbanseg.data.io import read_mask

    val = cityscapes_root / "leftImg8bit" / "val"
    for backend in ("onnxruntime", "openvino"):
        assert main(["predict", str(exported / "fixed.onnx"), str(val), "--out", str(tmp_path / backend),
                     "--format", "trainids", "--backend", backend]) == 0
    written = sorted((tmp_path / "openvino").rglob("*.png"))
    assert len(written) == 5
    for path in written:  # OpenVINO picks its own precision here; the classes agree almost everywhere
        other = tmp_path / "onnxruntime" / path.relative_to(tmp_path / "openvino")
        assert (read_mask(path) == read_mask(other)).mean() >= 0.95
    assert main(["evaluate", str(exported / "fixed.onnx"), "--data-root", str(cityscapes_root), "--backend", "openvino",
                 "--out", str(tmp_path / "eval")]) == 0
    assert "mIoU" in capsys.readouterr().out and (tmp_path / "eval" / "metrics.json").is_file()
    assert main(["predict", str(exported / "fixed.onnx"), str(val), "--out", str(tmp_path / "x"),
                 "--backend", "pytorch"]) == 2
    assert capsys.readouterr().err.startswith("urbanseg: error: backend: pytorch runs checkpoints (.pt)")
