"""The HTTP API in-process (FastAPI's TestClient): numbers checked against the predictor called
directly on the same image, every refusal with its status and JSON message, token, full queue."""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import threading

import cv2
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from urbanseg.data.io import read_image
from urbanseg.inference import load
from urbanseg.serve import create_app
from urbanseg.serve import limits as serve_limits


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    return load(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def image_path(cityscapes_root):
    return sorted((cityscapes_root / "leftImg8bit" / "val").rglob("*.png"))[0]


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor, max_upload_mb=1, max_megapixels=1)) as test_client:
        yield test_client


def upload(path) -> dict:
    return {"image": (path.name, path.read_bytes(), "image/png")}


def png_bytes(array: np.ndarray) -> bytes:
    return cv2.imencode(".png", array)[1].tobytes()


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def test_model_info_comes_from_the_model(client, predictor):
    response = client.get("/v1/model")
    assert response.status_code == 200
    info = response.json()
    labels = predictor.labels
    assert [c["name"] for c in info["classes"]] == list(labels.class_names)
    assert [c["color"] for c in info["classes"]] == labels.palette.tolist() == info["palette"]
    size = predictor.preset.input_size
    assert info["input_size"] == (list(size) if size else None) and info["window"] == list(predictor.preset.window)
    assert info["backend"] == "pytorch" and info["label_ids"] is True
    assert info["limits"]["max_upload_mb"] == 1 and info["auth"] is False
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/docs").status_code == 200 and "/v1/segment" in client.get("/openapi.json").json()["paths"]


def test_page_and_its_files_are_served_without_external_resources(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/app.css"):
        assert client.get(asset).status_code == 200
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/app.css").text):
        assert "http://" not in text and "https://" not in text  # no CDN: works offline


def test_segment_json_equals_the_predictor_on_the_same_image(client, predictor, image_path):
    response = client.post("/v1/segment", files=upload(image_path))
    assert response.status_code == 200, response.text
    result = response.json()
    pred = predictor.predict_proba(read_image(image_path)).argmax(axis=0)
    counts = np.bincount(pred.ravel(), minlength=predictor.labels.num_classes)
    assert result["image"] == {"width": 128, "height": 64}
    assert {c["index"]: c["pixels"] for c in result["classes"]} == {i: int(n) for i, n in enumerate(counts) if n}
    for cls in result["classes"]:
        assert cls["name"] == predictor.labels.class_names[cls["index"]]
        assert cls["share"] == pytest.approx(counts[cls["index"]] / pred.size, abs=1e-12)
    assert sum(c["share"] for c in result["classes"]) == pytest.approx(1.0, abs=1e-9)
    assert [c["pixels"] for c in result["classes"]] == sorted((c["pixels"] for c in result["classes"]), reverse=True)
    assert set(result["timing_ms"]) == {"queue", "decode", "inference", "render", "total"}
    assert result["backend"] == "pytorch" and result["images"] == {}
    assert "inference;dur=" in response.headers["server-timing"]


@pytest.mark.parametrize("output", ["labelids", "trainids", "color", "overlay", "entropy"])
def test_each_output_is_a_png_of_the_image_size(client, predictor, image_path, output):
    response = client.post(f"/v1/segment?output={output}", files=upload(image_path))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    png = decode(response.content)
    assert png.shape[:2] == (64, 128)
    pred = predictor.predict(read_image(image_path))
    if output == "trainids":
        np.testing.assert_array_equal(png, pred)
    elif output == "labelids":
        np.testing.assert_array_equal(png, predictor.labels.train_to_raw[pred])
    elif output == "color":
        np.testing.assert_array_equal(cv2.cvtColor(png, cv2.COLOR_BGR2RGB), predictor.labels.colorize(pred))
    else:
        assert png.shape == (64, 128, 3)
    assert f"_{'labelIds' if output == 'labelids' else 'trainIds' if output == 'trainids' else output}.png" in \
        response.headers["content-disposition"]


def test_include_embeds_every_view_from_one_inference(client, predictor, image_path, monkeypatch):
    calls = []
    original = predictor.predict_proba
    monkeypatch.setattr(predictor, "predict_proba", lambda *a, **k: calls.append(1) or original(*a, **k))
    result = client.post("/v1/segment?include=color,entropy,labelids", files=upload(image_path)).json()
    assert len(calls) == 1
    assert sorted(result["images"]) == ["color", "entropy", "labelids"]
    for url in result["images"].values():
        assert url.startswith("data:image/png;base64,")
        assert decode(base64.b64decode(url.split(",", 1)[1])).shape[:2] == (64, 128)


def test_a_raw_image_body_is_accepted_too(client, image_path):
    response = client.post("/v1/segment", content=image_path.read_bytes(), headers={"Content-Type": "image/png"})
    assert response.status_code == 200 and response.json()["image"]["width"] == 128


def chunks(data: bytes, size: int = 8192):
    for start in range(0, len(data), size):
        yield data[start:start + size]


def test_bad_requests_get_a_status_and_a_json_message(client, image_path, monkeypatch):
    big = np.random.default_rng(0).integers(0, 256, (600, 600, 3), np.uint8)  # ~1 MB of noise: incompressible
    huge = np.zeros((1100, 1000), np.uint8)  # 1.1 megapixels in a few kB of PNG
    damaged = image_path.read_bytes()[:200]  # a valid header, then nothing
    cases = [
        ({"files": {"image": ("notes.txt", b"hello, not an image", "text/plain")}}, 415, "not an image"),
        ({"files": {"image": ("empty.png", b"", "image/png")}}, 400, "empty upload"),
        ({"files": {"other": ("a.png", image_path.read_bytes(), "image/png")}}, 400, "field 'image' is missing"),
        ({"data": {"image": "text"}, "files": {"x": ("x", b"x")}}, 400, "must be a file"),
        ({"files": {"image": ("big.png", png_bytes(big) * 2, "image/png")}}, 413, "larger than the limit of 1 MB"),
        ({"files": {"image": ("bomb.png", png_bytes(huge), "image/png")}}, 413, "1000x1100 = 1.1 megapixels"),
        ({"files": {"image": ("cut.png", damaged, "image/png")}}, 415, "not a readable image"),
        ({"content": b"x" * 10, "headers": {"Content-Type": "image/png", "Content-Length": "5000000"}}, 413, "limit"),
        ({"content": chunks(b"x" * 2_000_000), "headers": {"Content-Type": "image/png"}}, 413, "limit"),
    ]
    decoded = []  # sizes of the byte strings given to the decoder
    decoder = serve_limits.decode_image_bytes
    monkeypatch.setattr(serve_limits, "decode_image_bytes",
                        lambda data, source: decoded.append(len(data)) or decoder(data, source))
    for kwargs, status, message in cases:
        response = client.post("/v1/segment", **kwargs)
        assert response.status_code == status, (kwargs.get("files"), response.text)
        assert message in response.json()["error"]
    assert len(png_bytes(huge)) not in decoded  # the pixel limit is checked before decoding
    assert client.app.state.gate.active == 0  # every refused request gave its slot back
    response = client.post("/v1/segment?output=bogus", files=upload(image_path))
    assert response.status_code == 422 and "output" in response.json()["error"]
    response = client.post("/v1/segment?include=color,probs", files=upload(image_path))
    assert response.status_code == 400 and "include: unknown output 'probs'" in response.json()["error"]
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    assert client.post("/v1/segment", files=upload(image_path)).status_code == 200  # still serving


def test_labelids_needs_label_ids_in_the_model(predictor, image_path, monkeypatch):
    monkeypatch.setattr(predictor, "labels", dataclasses.replace(predictor.labels, train_to_raw=None))
    with TestClient(create_app(predictor)) as client:
        response = client.post("/v1/segment?output=labelids", files=upload(image_path))
        assert response.status_code == 400 and "no label ids" in response.json()["error"]
        assert client.get("/v1/model").json()["label_ids"] is False


def test_token_guards_the_api_but_not_the_health_check(predictor, image_path):
    with TestClient(create_app(predictor, token="s3cret")) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
            response = client.get("/v1/model", headers=headers)
            assert response.status_code == 401 and "token" in response.json()["error"]
            assert response.headers["www-authenticate"] == "Bearer"
        assert client.post("/v1/segment", files=upload(image_path)).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert client.get("/v1/model", headers=good).json()["auth"] is True
        assert client.post("/v1/segment", files=upload(image_path), headers=good).status_code == 200
        assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200


def test_a_failing_model_gives_a_json_500_and_the_server_goes_on(predictor, image_path, monkeypatch):
    with TestClient(create_app(predictor), raise_server_exceptions=False) as client:
        with monkeypatch.context() as patch:
            patch.setattr(predictor, "predict_proba", lambda *a, **k: 1 / 0)
            response = client.post("/v1/segment", files=upload(image_path))
        assert response.status_code == 500 and "internal error (ZeroDivisionError)" in response.json()["error"]
        assert client.app.state.gate.active == 0
        assert client.post("/v1/segment", files=upload(image_path)).status_code == 200


def test_invalid_limits_name_the_option(predictor):
    with pytest.raises(ValueError, match="--queue: expected at least 0"):
        create_app(predictor, queue=-1)
    with pytest.raises(ValueError, match="--workers"):
        create_app(predictor, workers=0)


class BlockedPredictor:
    """The real predictor behind a gate the test opens: requests pile up while it is closed."""

    def __init__(self, predictor):
        self.inner, self.labels, self.preset = predictor, predictor.labels, predictor.preset
        self.backend = predictor.backend
        self.release = threading.Event()

    def predict_proba(self, image, **options):
        assert self.release.wait(30), "the test never released the predictor"
        return self.inner.predict_proba(image, **options)


def test_a_full_queue_answers_503_with_retry_after(predictor, image_path):
    blocked = BlockedPredictor(predictor)
    app = create_app(blocked, workers=1, queue=1)
    body = image_path.read_bytes()

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve.test", timeout=60) as client:
            def post():
                return client.post("/v1/segment", files={"image": ("a.png", body, "image/png")})

            first, second = asyncio.ensure_future(post()), asyncio.ensure_future(post())
            for _ in range(500):  # one running, one waiting: the gate is full
                if app.state.gate.active == 2:
                    break
                await asyncio.sleep(0.01)
            refused = await post()
            health = await client.get("/healthz")
            blocked.release.set()
            return refused, health, await first, await second

    refused, health, first, second = asyncio.run(scenario())
    assert refused.status_code == 503 and "server busy" in refused.json()["error"]
    assert int(refused.headers["retry-after"]) >= 1
    assert health.status_code == 200 and health.json()["in_flight"] == 2  # the event loop stayed free
    assert first.status_code == second.status_code == 200
    assert app.state.gate.active == 0


def test_an_exported_onnx_model_is_served_the_same_way(tiny_checkpoint, predictor, image_path, tmp_path):
    """`urbanseg serve model.onnx`: the same API on ONNX Runtime, the same classes found."""
    from urbanseg.export import export_onnx

    export_onnx(tiny_checkpoint, tmp_path / "model.onnx")
    with TestClient(create_app(load(tmp_path / "model.onnx", device="cpu"))) as onnx_client:
        info = onnx_client.get("/v1/model").json()
        assert info["backend"] == "onnxruntime"
        assert [c["name"] for c in info["classes"]] == list(predictor.labels.class_names)
        assert onnx_client.post("/v1/segment", files=upload(image_path)).status_code == 200
        response = onnx_client.post("/v1/segment?output=trainids", files=upload(image_path))
    assert response.status_code == 200, response.text
    agreement = (decode(response.content) == predictor.predict(read_image(image_path))).mean()
    assert agreement >= 0.99  # the exporter's own check asks 99.9% on its images
