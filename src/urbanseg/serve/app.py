"""The HTTP service: one static page and a small JSON/PNG API around a `Predictor`.

    GET  /             the page (static files in `static/`, no build step, works offline)
    GET  /v1/model     classes (names, colours), input size, backend, limits
    POST /v1/segment   multipart field `image` -> JSON (classes present with pixel shares, size,
                       timing), or one PNG with ?output=labelids|trainids|color|overlay|entropy;
                       ?include=color,entropy,... embeds PNGs in the JSON (one inference, all views)
    GET  /healthz      liveness and queue occupancy (never needs the token)
    GET  /docs         FastAPI's interactive API documentation

Inference runs in a thread pool of `workers` threads, off the event loop, so the server keeps
answering (health checks, 503s) while the model works; `limits.Gate` bounds what may pile up.
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Literal, Optional

import cv2
import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.labels import LabelSet
from ..errors import ConfigError, UrbansegError
from ..predict import WRITERS, Prediction
from ..visualize import overlay
from .limits import UPLOAD_FIELD, Gate, ServeError, decode_image, read_upload

STATIC = Path(__file__).parent / "static"
OUTPUTS = ("labelids", "trainids", "color", "overlay", "entropy")
# The page's own files only: no inline scripts, no third-party hosts; uploads are shown as blob: URLs
# and results as data: URLs.
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
SEGMENT_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": [UPLOAD_FIELD],
    "properties": {UPLOAD_FIELD: {"type": "string", "format": "binary", "description": "the street image"}}}}}}}


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of an HxW or HxWx3 RGB uint8 array."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise RuntimeError(f"PNG encoding failed for an array of shape {array.shape}")
    return encoded.tobytes()


def render(output: str, prediction: Prediction) -> np.ndarray:
    """One output image, drawn by `urbanseg predict`'s writers so both give the same pixels; the
    overlay here has no legend strip, so every PNG has the uploaded image's size."""
    if output == "overlay":
        return overlay(prediction.image, prediction.labels.colorize(prediction.pred), prediction.opacity)
    return WRITERS[output][1](prediction)


def class_shares(pred: np.ndarray, labels: LabelSet) -> list[dict]:
    """The classes present in a label map, largest first, with pixel counts and shares of the image."""
    counts = np.bincount(pred.ravel(), minlength=labels.num_classes)
    order = sorted(np.flatnonzero(counts).tolist(), key=lambda i: -counts[i])
    return [{"index": i, "name": labels.class_names[i], "color": labels.palette[i].tolist(),
             "pixels": int(counts[i]), "share": float(counts[i] / pred.size)} for i in order]


def backend_name(predictor: Any) -> str:
    return getattr(predictor.backend, "name", type(predictor.backend).__name__)


def segment_job(predictor: Any, data: bytes, max_pixels: int, outputs: set[str], opacity: float,
                mode: str, flip: bool, submitted: float) -> dict:
    """Decode, predict once and draw every requested output; runs in a worker thread."""
    started = time.perf_counter()
    image = decode_image(data, max_pixels)
    decoded = time.perf_counter()
    probs = predictor.predict_proba(image, mode=mode, flip=flip)
    pred = probs.argmax(axis=0).astype(np.uint8)
    predicted = time.perf_counter()
    prediction = Prediction(image, probs, pred, predictor.labels, opacity)
    pngs = {output: encode_png(render(output, prediction)) for output in sorted(outputs)}
    done = time.perf_counter()
    return {
        "image": {"width": int(image.shape[1]), "height": int(image.shape[0])},
        "classes": class_shares(pred, predictor.labels),
        "timing_ms": {"queue": (started - submitted) * 1e3, "decode": (decoded - started) * 1e3,
                      "inference": (predicted - decoded) * 1e3, "render": (done - predicted) * 1e3},
        "pngs": pngs,
    }


def model_info(predictor: Any, limits: dict, model_name: Optional[str], auth: bool) -> dict:
    """Everything a client needs to draw a legend and respect the limits, from the model itself."""
    labels, preset = predictor.labels, predictor.preset
    return {
        "name": model_name or labels.name,
        "label_set": labels.name,
        "backend": backend_name(predictor),
        "classes": [{"index": i, "name": name, "color": labels.palette[i].tolist()}
                    for i, name in enumerate(labels.class_names)],
        "palette": labels.palette.tolist(),
        "ignore_index": int(labels.ignore_index),
        "input_size": list(preset.input_size) if preset.input_size else None,
        "window": list(preset.window) if preset.window else None,
        "label_ids": labels.train_to_raw is not None,
        "outputs": list(OUTPUTS),
        "limits": limits,
        "auth": auth,
    }


def _error(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for item in exc.errors():
        where = ".".join(str(p) for p in item.get("loc", ()) if p not in ("query", "body"))
        parts.append(f"{where}: {item.get('msg', 'invalid')}" if where else item.get("msg", "invalid"))
    return "; ".join(parts) or "invalid request"


def _download_name(upload_name: str, output: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(upload_name).stem)[:80] or "image"
    return f"{stem}{WRITERS[output][0] if output in WRITERS else '_overlay.png'}"


def create_app(predictor: Any, max_upload_mb: float = 20, max_megapixels: float = 12, queue: int = 8,
               workers: int = 1, token: Optional[str] = None, model_name: Optional[str] = None) -> FastAPI:
    """The FastAPI app serving `predictor` (a `urbanseg.inference.Predictor` or anything with its API).

    max_upload_mb: largest upload (413 above); max_megapixels: largest width*height (413 above,
    checked before decoding); workers: inference threads; queue: requests allowed to wait for
    one (503 + Retry-After beyond); token: if set, /v1/* need `Authorization: Bearer <token>`.
    """
    for option, value, least in (("--max-upload-mb", max_upload_mb, 1e-6), ("--max-megapixels", max_megapixels, 1e-6),
                                 ("--queue", queue, 0), ("--workers", workers, 1)):
        if value < least:
            raise ConfigError(f"{option}: expected at least {least:g}, got {value}")
    max_bytes, max_pixels = int(max_upload_mb * 2**20), int(max_megapixels * 1e6)
    gate = Gate(workers, queue)
    pools: list[ThreadPoolExecutor] = []  # created on first use, shut down with the server: the app can be served again

    def pool() -> ThreadPoolExecutor:
        if not pools:
            pools.append(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="urbanseg-inference"))
        return pools[0]

    limits = {"max_upload_mb": max_upload_mb, "max_megapixels": max_megapixels, "queue": queue, "workers": workers}
    bearer = HTTPBearer(auto_error=False, description="the token given to `urbanseg serve --token`")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        while pools:
            pools.pop().shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="urbanseg", version="1", lifespan=lifespan,
                  description="Semantic segmentation of street scenes. Upload an image to `/v1/segment`.")
    app.state.gate = gate  # for tests and monitoring

    async def authorize(credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials else ""
        if not hmac.compare_digest(given.encode(), token.encode()):  # constant time: no timing oracle
            raise ServeError(401, "missing or wrong token: send 'Authorization: Bearer <token>'",
                             {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(ServeError)
    async def on_serve_error(_: Request, exc: ServeError) -> JSONResponse:
        # After a response uvicorn drains (and discards) the rest of an unread body; for an upload
        # over the limit, closing the connection stops a client from pushing bytes after the 413.
        close = {"Connection": "close"} if exc.status == 413 else {}
        return _error(exc.status, exc.message, {**exc.headers, **close})

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.exception_handler(Exception)
    async def on_bug(_: Request, exc: Exception) -> JSONResponse:
        # still logged with its traceback by Starlette; the client gets JSON like every other answer
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    @app.exception_handler(UrbansegError)
    async def on_urbanseg_error(_: Request, exc: UrbansegError) -> JSONResponse:
        return _error(400, str(exc))

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_CSP,
                                                            "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", summary="Liveness and queue occupancy")
    async def healthz() -> dict:
        return {"status": "ok", "in_flight": gate.active, "capacity": gate.capacity}

    @app.get("/v1/model", summary="Classes, colours, input size, backend and limits",
             dependencies=[Depends(authorize)])
    async def model() -> dict:
        return model_info(predictor, limits, model_name, token is not None)

    @app.post("/v1/segment", summary="Segment one image", openapi_extra=SEGMENT_BODY,
              dependencies=[Depends(authorize)], response_model=None,
              responses={200: {"content": {"image/png": {}}}, 413: {}, 415: {}, 503: {}})
    async def segment(
        request: Request,
        output: Literal["json", "labelids", "trainids", "color", "overlay", "entropy"] = "json",
        include: str = Query("", description="PNGs to embed in the JSON as data URLs, e.g. color,entropy"),
        opacity: float = Query(0.5, ge=0.0, le=1.0, description="colour weight of the overlay"),
        mode: Literal["whole", "slide"] = "whole",
        flip: bool = False,
    ) -> Response:
        received = time.perf_counter()
        embedded = {name.strip() for name in include.split(",") if name.strip()}
        unknown = sorted(embedded - set(OUTPUTS))
        if unknown:
            raise ServeError(400, f"include: unknown output '{unknown[0]}' (expected {', '.join(OUTPUTS)})")
        outputs = embedded | ({output} if output != "json" else set())
        if "labelids" in outputs and predictor.labels.train_to_raw is None:
            raise ServeError(400, "output labelids: this model's classes have no label ids; ask for trainids")
        if not gate.try_enter():
            raise gate.full_error()
        handed_over = False
        try:
            data, name = await read_upload(request, max_bytes)
            future = pool().submit(segment_job, predictor, data, max_pixels, outputs, opacity, mode, flip,
                                 time.perf_counter())
            # the slot is freed when the job ends, not when this handler does: a client that hangs up
            # must not let more jobs pile into the pool than the gate admits
            future.add_done_callback(lambda f: gate.leave(
                None if f.cancelled() or f.exception() else time.perf_counter() - received))
            handed_over = True
            result = await asyncio.wrap_future(future)
        finally:
            if not handed_over:
                gate.leave()
        pngs = result.pop("pngs")
        result["timing_ms"]["total"] = (time.perf_counter() - received) * 1e3
        result["timing_ms"] = {k: round(v, 2) for k, v in result["timing_ms"].items()}
        timing = ", ".join(f"{k};dur={v:.1f}" for k, v in result["timing_ms"].items())
        if output != "json":
            return Response(pngs[output], media_type="image/png", headers={
                "Server-Timing": timing, "Content-Disposition": f'inline; filename="{_download_name(name, output)}"'})
        result["backend"] = backend_name(predictor)
        result["images"] = {k: "data:image/png;base64," + base64.b64encode(pngs[k]).decode() for k in sorted(embedded)}
        return JSONResponse(result, headers={"Server-Timing": timing})

    return app
