"""ONNX export (export.py) and the exported-model format (onnx_model.py): every registry model
exports and agrees with PyTorch, an .onnx loads with the checkpoint's API, INT8, bad inputs."""
import dataclasses
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import urbanseg
from urbanseg.config import Config, ModelConfig
from urbanseg.data.io import read_image
from urbanseg.data.labels import camvid_label_set
from urbanseg.data.preset import Preset
from urbanseg.engine.checkpoint import Checkpoint, load_model, save_checkpoint
from urbanseg.engine.model import build_model
from urbanseg.errors import CheckpointError, ConfigError, OutputError
from urbanseg.export import calibration_set, export_command, export_onnx, format_summary
from urbanseg.models import MODELS
from urbanseg.inference import window_starts
from urbanseg.onnx_model import ExportInfo, OnnxBackend, load_onnx, read_metadata, write_metadata

# small variants of each registry entry (random init, no download), as in test_checkpoint.py
SMALL = {"unet_scratch": (None, {"base_channels": 4}), "fcn_resnet50": (None, {}), "danet": ("resnet18", {}),
         "segformer": ("mit_b0", {}), "dpt": ("tu-resnet18", {})}
SIZE = (64, 96)
# Architectures that cannot be exported at a fixed size, with the reason: none today (export.py).
EXPECTED_FAILURES: dict[str, str] = {}
# ... and with dynamic height and width (a one-line error, tested below): adaptive pooling to
# fixed bins is traced as gathers at indices computed from the traced size, which ONNX Runtime
# rejects at any other size.
DYNAMIC_FAILURES = {"pspnet": "adaptive average pooling bins frozen at the traced size",
                    "upernet": "adaptive average pooling bins frozen at the traced size"}


def _cases(names, failures):
    return [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=failures[n])) if n in failures else n
            for n in names]


def _save(tmp_path, name: str, size=SIZE):
    """A random-init checkpoint of `name` whose data root is not on this machine (so the check
    runs on generated scenes); returns its path, model, labels, preset and config."""
    torch.manual_seed(0)
    encoder, options = SMALL.get(name, ("resnet18", {}))
    cfg = Config(model=ModelConfig(name=name, encoder=encoder, options=options))
    cfg.data.root = str(tmp_path / "not-here")
    labels = camvid_label_set()
    model = build_model(cfg.model, labels.num_classes).eval()
    preset = Preset(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), input_size=size, window=size,
                    pad_multiple=getattr(model, "multiple", 1))
    save_checkpoint(tmp_path / "m.pt", Checkpoint(cfg.to_dict(), labels, preset, model.state_dict()))
    return tmp_path / "m.pt", model, labels, preset, cfg


def _torch_probs(model, preset, image):
    x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 - torch.tensor(preset.mean).view(1, 3, 1, 1)) \
        / torch.tensor(preset.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x).softmax(dim=1)[0].numpy()


@pytest.mark.slow
@pytest.mark.parametrize("name", _cases(sorted(MODELS), EXPECTED_FAILURES))
def test_every_model_exports_at_a_fixed_size_and_agrees_with_pytorch(name, tmp_path):
    checkpoint, model, labels, preset, cfg = _save(tmp_path, name)
    report = export_onnx(checkpoint, tmp_path / "m.onnx")
    assert report["size"] == list(SIZE) and report["dynamic"] is False
    assert report["check"]["argmax_agreement"] >= 0.999 and report["check"]["source"] == "generated street scenes"
    meta = read_metadata(onnx.load(str(tmp_path / "m.onnx")), tmp_path / "m.onnx")
    assert meta.labels == labels and meta.preset == preset and meta.config == cfg
    assert meta.export.size == SIZE and not meta.export.dynamic and meta.export.precision == "fp32"
    assert meta.urbanseg_version == urbanseg.__version__ and meta.export.opset == report["opset"] >= 18
    image = np.random.default_rng(1).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    np.testing.assert_allclose(urbanseg.load(tmp_path / "m.onnx").predict_proba(image),
                               _torch_probs(model, preset, image), atol=1e-4)


@pytest.mark.parametrize("name", ["unet_scratch", "unet", "pan"])  # ours, an smp U-Net, one with a minimum size
def test_dynamic_exports_agree_with_pytorch_at_any_size(name, tmp_path):
    checkpoint, model, _, preset, _ = _save(tmp_path, name)
    report = export_onnx(checkpoint, tmp_path / "m.onnx", dynamic=True)
    assert report["dynamic"] is True and len(report["check"]["sizes"]) == 2  # the export size and another
    predictor = urbanseg.load(tmp_path / "m.onnx")
    assert predictor.preset == preset
    predictor.preset = dataclasses.replace(preset, input_size=None)  # each image at its own size
    for shape in ((SIZE[0] + 7, SIZE[1] - 9), (40, 50)):  # not multiples of the model's stride; 40x50 < PAN's minimum
        image = np.random.default_rng(2).integers(0, 256, (*shape, 3), dtype=np.uint8)
        np.testing.assert_allclose(predictor.predict_proba(image), _torch_probs(model, preset, image), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DYNAMIC_FAILURES))
def test_a_dynamic_export_that_onnx_runtime_cannot_run_fails_in_one_line_and_writes_nothing(name, tmp_path):
    checkpoint, *_ = _save(tmp_path, name)
    message = rf"^model.name: {name} cannot be exported with dynamic sizes \(ONNX Runtime: .*\); export at a fixed --size$"
    with pytest.raises(ConfigError, match=message) as caught:
        export_onnx(checkpoint, tmp_path / "m.onnx", dynamic=True)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "export.json").exists()


def test_an_onnx_file_gives_the_checkpoints_api_and_probabilities(tiny_checkpoint, cityscapes_root, tmp_path):
    torch_predictor = urbanseg.load(tiny_checkpoint, device="cpu", precision="fp32")
    image = read_image(sorted((cityscapes_root / "leftImg8bit" / "val").rglob("*.png"))[0])
    export_onnx(tiny_checkpoint, tmp_path / "dynamic.onnx", dynamic=True)
    onnx_predictor = urbanseg.load(tmp_path / "dynamic.onnx")
    assert onnx_predictor.backend.name == "onnxruntime" and onnx_predictor.device == torch.device("cpu")
    assert onnx_predictor.labels == torch_predictor.labels and onnx_predictor.preset == torch_predictor.preset
    assert onnx_predictor.config == torch_predictor.config and onnx_predictor.window == torch_predictor.window
    for options in ({}, {"mode": "slide"}, {"flip": True, "scales": (0.75, 1.25)}, {"mode": "slide", "flip": True}):
        expected = torch_predictor.predict_proba(image, **options)
        np.testing.assert_allclose(onnx_predictor.predict_proba(image, **options), expected, atol=1e-4)
        assert (onnx_predictor.predict(image, **options) == expected.argmax(0)).mean() >= 0.999

    # fixed size (the training crop): exact at that size; other shapes are padded or tiled to fit
    report = export_onnx(tiny_checkpoint, tmp_path / "fixed.onnx")
    assert report["size"] == [64, 128]
    fixed = urbanseg.load(tmp_path / "fixed.onnx", device="cpu")
    assert fixed.preset.input_size == fixed.preset.window == (64, 128) == fixed.window
    assert fixed.preset.mean == torch_predictor.preset.mean and fixed.preset.std == torch_predictor.preset.std
    expected = torch_predictor.predict_proba(image)
    np.testing.assert_allclose(fixed.predict_proba(image), expected, atol=1e-4)
    np.testing.assert_allclose(fixed.predict_proba(image, mode="slide"), expected, atol=1e-4)
    for options in ({"flip": True, "scales": (0.5, 1.5)}, {"mode": "slide", "scales": (0.75, 1.25)}):
        probs = fixed.predict_proba(image, **options)
        assert probs.shape == (19, 64, 128)
        np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-4)


def test_a_fixed_graph_serves_smaller_and_larger_inputs_by_padding_and_tiling(tiny_checkpoint, tmp_path):
    export_onnx(tiny_checkpoint, tmp_path / "m.onnx", size=(64, 64))
    backend = load_onnx(tmp_path / "m.onnx").backend
    seen = []
    real_run = OnnxBackend.run
    backend.run = lambda x: seen.append(tuple(x.shape)) or real_run(backend, x)
    x = torch.randn(2, 3, 150, 40)
    assert tuple(backend(x).shape) == (2, 19, 150, 40)
    assert set(seen) == {(2, 3, 64, 64)} and len(seen) == len(window_starts(150, 64))
    assert list(window_starts(150, 64)) == [0, 43, 86] and list(window_starts(64, 64)) == [0]


def test_export_json_reads_back(tiny_checkpoint, tmp_path):
    report = export_onnx(tiny_checkpoint, tmp_path / "model.onnx")
    saved = json.loads((tmp_path / "export.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["file_bytes"] == (tmp_path / "model.onnx").stat().st_size
    assert saved["checkpoint"] == str(tiny_checkpoint) and saved["model"] == "unet_scratch"
    assert saved["check"]["images"] == 5 and saved["check"]["source"].startswith("images of the val split")
    assert saved["check"]["argmax_agreement"] >= 0.999 and saved["check"]["max_abs_logit_diff"] < 1e-3
    assert saved["opset"] >= 18 and saved["size"] == [64, 128] and saved["dynamic"] is False
    assert all(value > 0 for value in saved["timings"].values())
    assert f"opset {saved['opset']}" in format_summary(report)


def test_a_graph_that_disagrees_with_pytorch_is_not_written(tiny_checkpoint, tmp_path, monkeypatch):
    def garbage(self, images):
        return torch.randn(images.shape[0], 19, *images.shape[-2:])

    monkeypatch.setattr(OnnxBackend, "run", garbage)
    out = tmp_path / "model.onnx"
    with pytest.raises(OutputError, match="not written: ONNX Runtime and PyTorch predict the same class on only") as caught:
        export_onnx(tiny_checkpoint, out)
    assert str(caught.value).startswith(str(out)) and "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # no model, no report, no temporary file
    out.write_bytes(b"an earlier export")
    with pytest.raises(OutputError):
        export_onnx(tiny_checkpoint, out)
    assert out.read_bytes() == b"an earlier export"


def test_int8_quantisation_reports_size_agreement_and_miou(tiny_checkpoint, cityscapes_root, tmp_path):
    out = tmp_path / "model.onnx"
    report = export_command(tiny_checkpoint, out, size=None, dynamic=False, opset=None, quantize="int8",
                            calibration="train", calibration_images=4)
    int8 = report["int8"]
    assert int8["onnx"] == str(tmp_path / "model.int8.onnx")
    assert int8["file_bytes"] == (tmp_path / "model.int8.onnx").stat().st_size < out.stat().st_size
    assert 0.0 <= int8["argmax_agreement_with_fp32"] <= 1.0 and int8["calibration_images"] == 4
    assert int8["calibration"].startswith("images of the train split")
    assert set(int8["miou"]) == {"images", "fp32", "int8"} and int8["miou"]["images"] == 5
    assert json.loads((tmp_path / "export.json").read_text())["int8"]["file_bytes"] == int8["file_bytes"]
    quantized = urbanseg.load(tmp_path / "model.int8.onnx")
    assert read_metadata(onnx.load(str(tmp_path / "model.int8.onnx")), "x").export.precision == "int8"
    assert quantized.predict(np.zeros((64, 128, 3), np.uint8)).shape == (64, 128)
    assert "int8" in format_summary(report)


def test_calibration_images_come_from_a_folder_or_a_split(tiny_checkpoint, cityscapes_root):
    config = load_model(tiny_checkpoint).config
    images, source = calibration_set(config, str(cityscapes_root / "leftImg8bit" / "val" / "frankfurt"), 2)
    assert len(images) == 2 and images[0].shape == (64, 128, 3) and "frankfurt" in source
    images, source = calibration_set(config, None, 100)  # default: the training split, all 8 of it
    assert len(images) == 8 and "train split" in source
    with pytest.raises(ConfigError, match="^--calibration: 'nowhere' is neither a folder nor a usable split"):
        calibration_set(config, "nowhere", 2)


def _identity_model() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["logits"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 4, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_metadata_round_trips_and_names_the_file_when_it_does_not_fit():
    labels, preset, config = camvid_label_set(), Preset(input_size=(48, 64), window=(32, 32)), Config()
    model = _identity_model()
    model.metadata_props.add(key="author", value="someone")  # other tools' entries are kept
    for export in (ExportInfo((32, 48), dynamic=False, opset=18), ExportInfo((32, 48), True, 128, 18, "int8")):
        write_metadata(model, labels, preset, config, export)
        meta = read_metadata(model, "m.onnx")
        assert meta.labels == labels and meta.config == config and meta.export == export
        assert meta.preset == (preset if export.dynamic else dataclasses.replace(preset, input_size=(32, 48),
                                                                                 window=(32, 48)))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["author"] == "someone" and json.loads(props["urbanseg.labels"])["class_names"][0] == "sky"
    props["urbanseg.format"] = json.dumps({"name": "urbanseg-onnx", "version": 99})
    with pytest.raises(CheckpointError, match="^m.onnx: exported model format urbanseg-onnx version 99, this urbanseg"):
        read_metadata(props, "m.onnx")
    del props["urbanseg.format"]
    with pytest.raises(CheckpointError, match="^m.onnx: an ONNX model without urbanseg metadata"):
        read_metadata(props, "m.onnx")
    props = {**{p.key: p.value for p in model.metadata_props}, "urbanseg.preset": "{}"}
    with pytest.raises(CheckpointError, match="^m.onnx: unreadable urbanseg metadata"):
        read_metadata(props, "m.onnx")


def test_bad_inputs_fail_in_one_line(tiny_checkpoint, tmp_path):
    def one_line(error_class, match, function, *args, **kwargs):
        with pytest.raises(error_class, match=match) as caught:
            function(*args, **kwargs)
        assert "\n" not in str(caught.value)

    one_line(CheckpointError, "missing.pt: checkpoint not found", export_onnx, tmp_path / "missing.pt",
             tmp_path / "m.onnx")
    one_line(CheckpointError, "missing.onnx: exported model not found", urbanseg.load, tmp_path / "missing.onnx")
    (tmp_path / "text.onnx").write_text("not a model")
    one_line(CheckpointError, "text.onnx: not a readable ONNX model", urbanseg.load, tmp_path / "text.onnx")
    onnx.save(_identity_model(), tmp_path / "foreign.onnx")
    one_line(CheckpointError, "foreign.onnx: an ONNX model without urbanseg metadata", urbanseg.load,
             tmp_path / "foreign.onnx")
    out = tmp_path / "m.onnx"
    one_line(ConfigError, "^--opset: the exporter .* writes opset 18 or newer, got 13", export_onnx, tiny_checkpoint,
             out, opset=13)
    one_line(ConfigError, "^--quantize: expected int8", export_command, tiny_checkpoint, out, quantize="int4")
    one_line(ConfigError, "^--calibration: only used with --quantize int8", export_command, tiny_checkpoint, out,
             calibration="train")
    one_line(ConfigError, "^--out: expected a file name ending in .onnx", export_command, tiny_checkpoint,
             tmp_path / "m.pt")
    one_line(ConfigError, "^--size: a --dynamic model takes any size", export_command, tiny_checkpoint, out,
             size=(64, 64), dynamic=True)
    assert not out.exists()


def test_an_architecture_the_exporter_cannot_handle_is_one_line_naming_the_reason(tmp_path, monkeypatch):
    class Eigen(torch.nn.Module):  # an op with no ONNX function
        def __init__(self, num_classes: int):
            super().__init__()
            self.head = torch.nn.Conv2d(3, num_classes, 1)

        def forward(self, x):
            return self.head(x) + torch.linalg.eigh(x[0, 0, :4, :4] @ x[0, 0, :4, :4].T)[0].sum()

    monkeypatch.setitem(MODELS, "eigen", lambda num_classes: Eigen(num_classes))
    cfg = Config(model=ModelConfig(name="eigen"))
    labels = camvid_label_set()
    save_checkpoint(tmp_path / "m.pt", Checkpoint(cfg.to_dict(), labels, Preset(input_size=(16, 16)),
                                                  Eigen(labels.num_classes).state_dict()))
    with pytest.raises(ConfigError, match=r"^model.name: eigen cannot be exported to ONNX \(.*linalg_eigh") as caught:
        export_onnx(tmp_path / "m.pt", tmp_path / "m.onnx")
    assert "\n" not in str(caught.value) and not (tmp_path / "m.onnx").exists()


def test_without_onnxruntime_loading_an_onnx_file_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['onnxruntime'] = None\n"
            "import urbanseg\n"
            "try:\n    urbanseg.load(sys.argv[1])\n"
            "except urbanseg.errors.ConfigError as error:\n    print(error)\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.onnx")], capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip() == ('onnxruntime: not installed; exporting and running .onnx models needs '
                                     '`pip install "urbanseg[deploy]"`'), result.stderr
